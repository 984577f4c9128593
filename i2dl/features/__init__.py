"""Feature computation as iota2 does it before classification.

* :mod:`i2dl.features.gapfill`: linear temporal gap-filling onto a regular date grid
  (iota2 ``sensors_data_interpolation``), NumPy or torch/CUDA.
* :mod:`i2dl.features.indices`: NDVI, NDWI, Brightness appended to the bands (iota2's
  default features).
* :mod:`i2dl.features.external`: user Python functions on chunks (iota2 external
  features), with padded reads for spatial filters.
"""

from i2dl.features.external import (
    ChunkData,
    apply_external,
    load_functions,
    padded_window,
    read_padded,
)
from i2dl.features.gapfill import gapfill, gapfill_numpy, gapfill_torch, regular_grid
from i2dl.features.indices import SENSOR_ROLES, compute_indices, normalized_index

__all__ = [
    "SENSOR_ROLES",
    "ChunkData",
    "apply_external",
    "compute_indices",
    "gapfill",
    "gapfill_numpy",
    "gapfill_torch",
    "load_functions",
    "normalized_index",
    "padded_window",
    "read_padded",
    "regular_grid",
]
