"""Feature computation as iota2 does it before classification.

* :mod:`i2dl.features.gapfill`: linear temporal gap-filling onto a regular date grid
  (iota2 ``sensors_data_interpolation``), in torch on the CPU or CUDA.
* :mod:`i2dl.features.indices`: NDVI, NDWI, Brightness appended to the bands (iota2's
  default features).
* :mod:`i2dl.features.external`: user Python functions on chunks (iota2 external
  features), with padded reads for spatial filters.
* :mod:`i2dl.features.stack`: the sensors of a tile composed into one feature series
  (:class:`~i2dl.features.stack.FeatureStack`), and :mod:`i2dl.features.source`, which
  opens the source of a ``data`` config (:func:`~i2dl.features.source.open_source`).
  Neither is imported here, so that importing the feature functions (as the networks do)
  does not load the sensor readers.
"""

from i2dl.features.external import (
    ChunkData,
    apply_external,
    load_functions,
    padded_window,
    read_padded,
)
from i2dl.features.gapfill import gapfill, interpolate, linear_gapfill, regular_grid
from i2dl.features.indices import SENSOR_ROLES, compute_indices, normalized_index

__all__ = [
    "SENSOR_ROLES",
    "ChunkData",
    "apply_external",
    "compute_indices",
    "gapfill",
    "interpolate",
    "linear_gapfill",
    "load_functions",
    "normalized_index",
    "padded_window",
    "read_padded",
    "regular_grid",
]
