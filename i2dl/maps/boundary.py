"""Fusion of eco-region models at region boundaries: the weight of each region's model."""

from __future__ import annotations

from typing import Any

import numpy as np
from rasterio.windows import Window

from i2dl.io.vector import burn_window


def region_boundary_weights(
    regions: Any, values: np.ndarray, transform: Any, width: int, height: int,
    buffer_px: float, window: Window,
) -> dict[int, np.ndarray]:
    """Weights of the eco-region models on the pixels of a window (fusion at boundaries).

    A region's weight at a pixel is ``max(0, 1 - d / buffer_px)``, with ``d`` the
    distance (pixels, Euclidean, between centres) from the pixel to the nearest pixel of
    that region: 1 inside the region, decreasing linearly to 0 at ``buffer_px`` pixels
    from it. So, within ``buffer_px`` of a boundary, the models of both sides classify the
    pixel and their probabilities are averaged with these weights; exactly on the
    boundary the two sides weigh almost alike, and beyond the buffer only the pixel's own
    region counts, as without fusion. (iota2 fuses neighbouring region models at region
    boundaries; this linear distance weighting is i2dl's documented rule.)

    The regions are burnt on the window enlarged by ``ceil(buffer_px)`` pixels (clipped to
    the grid), so the weights do not depend on the window cut.

    Args:
        regions: eco-region polygons in the grid's CRS.
        values: (P,) region id of each polygon.
        transform: affine transform of the grid.
        width: grid width, pixels.
        height: grid height, pixels.
        buffer_px: buffer width in pixels (> 0).
        window: the window.

    Returns:
        ``{region: (h, w) float64 weights}`` for the regions with a positive weight; pixels
        in no region get no weight from any region (they stay unclassified).
    """
    from scipy.ndimage import distance_transform_edt

    pad = int(np.ceil(buffer_px))
    r0 = max(int(window.row_off) - pad, 0)
    c0 = max(int(window.col_off) - pad, 0)
    r1 = min(int(window.row_off + window.height) + pad, height)
    c1 = min(int(window.col_off + window.width) + pad, width)
    big = burn_window(regions, values, transform, Window(c0, r0, c1 - c0, r1 - r0))
    ri, ci = int(window.row_off) - r0, int(window.col_off) - c0
    h, w = int(window.height), int(window.width)
    inner = big[ri : ri + h, ci : ci + w]
    out: dict[int, np.ndarray] = {}
    for r in np.unique(big[big >= 0]):
        d = distance_transform_edt(big != r)[ri : ri + h, ci : ci + w]
        wr = np.clip(1.0 - d / buffer_px, 0.0, 1.0) * (inner >= 0)
        if (wr > 0).any():
            out[int(r)] = wr
    return out


