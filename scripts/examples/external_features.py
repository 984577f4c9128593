"""Example external-feature functions for i2dl (iota2 "external features").

Point the configuration at this file (``external_features.module``) and list the
functions to call (``external_features.functions: [mean_ndvi, laplacian_of_mean_ndvi]``).
Each function receives ``data`` (:class:`i2dl.features.external.ChunkData`) for one chunk
and returns ``(array (H, W, F), F names)``.

``laplacian_of_mean_ndvi`` is the spatial filter of iota2's external-features labwork
(``laplace_ndvi``): it looks at neighbouring pixels, so it needs a padding of at least
1 pixel around each chunk, or chunk borders show seams.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import laplace


def mean_ndvi(data, band: str = "NDVI"):
    """Mean over dates of the NDVI channel.

    Args:
        data: the chunk; ``data.get(band)`` is (H, W, T).
        band: name of the NDVI channel.

    Returns:
        (H, W, 1) float32 and ``["mean_ndvi"]``.
    """
    ndvi = data.get(band)
    return np.mean(ndvi, axis=2, dtype=np.float32)[..., None], ["mean_ndvi"]


def laplacian_of_mean_ndvi(data, band: str = "NDVI"):
    """3x3 Laplacian of the date-averaged NDVI (edges of fields, hedges, roads).

    The image border repeats the edge pixels (``mode="nearest"``), so a chunk read with
    a 1-pixel padding gives exactly the whole-image result.

    Args:
        data: the chunk; ``data.get(band)`` is (H, W, T).
        band: name of the NDVI channel.

    Returns:
        (H, W, 1) float32 and ``["lap_mean_ndvi"]``.
    """
    mean, _ = mean_ndvi(data, band)
    filtered = laplace(mean[..., 0], mode="nearest")
    return filtered[..., None].astype(np.float32), ["lap_mean_ndvi"]
