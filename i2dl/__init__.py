"""i2dl: iota2's deep-learning workflow for satellite image time series, GPU-first.

Stages (each a function and a ``python -m i2dl <stage>`` subcommand):
``prepare`` (rasters + polygons -> Zarr sample store), ``fit`` (Lightning training),
``evaluate`` (confusion matrix, OA, kappa, F1), ``infer`` (chunked map writing) and
``train`` (all of them, the main job).
"""

from __future__ import annotations

from i2dl.config import check_packages

__version__ = "0.1.0"

check_packages()
