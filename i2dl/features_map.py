"""Feature maps (iota2's features map builder, ``i2_features_map``), stage ``features-map``.

Writes the feature time series of the ``data`` config — sensor bands, indices, gap-filled
dates, user and external features, exactly what ``prepare`` and ``infer`` read — to
GeoTIFF, chunk by chunk, per tile, then mosaics the tiles (iota2's output tree):

```
<run>/customF/<tile>_chunk_<i>.tif    one file per chunk (block window)
<run>/by_tiles/<tile>.tif             the chunks of a tile merged
<run>/final/features_map.tif          the tiles merged into one mosaic
```

This module writes one tile (chunks, then their mosaic); the stage
(:mod:`i2dl.stages.features_map`) runs it for every tile and mosaics the tiles.

Bands are date-major (band ``t * C + c``) and their descriptions name the feature and the
date (``NDVI_20170203``); invalid observations are NaN (the nodata value).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rich.progress import Progress

from i2dl.io.files import atomic_path
from i2dl.io.geotiff import block_windows, geotiff_profile, mosaic

log = logging.getLogger(__name__)


def band_descriptions(source: Any) -> list[str]:
    """``<channel>_<YYYYMMDD>`` for every band, date-major (``<channel>_t<i>`` without dates)."""
    stamps = [d.strftime("%Y%m%d") for d in source.dates] or [
        f"t{i}" for i in range(source.n_dates)
    ]
    return [f"{c}_{s}" for s in stamps for c in source.band_names]


def _write_chunk(path: Path, bands: np.ndarray, crs: Any, transform: Any, names: list[str]) -> Path:
    """Write one chunk's bands: (T*C, h, w) float32, NaN = invalid, atomically."""
    count, height, width = bands.shape
    profile = geotiff_profile(width, height, count, "float32", crs, transform, nodata=np.nan)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(bands)
        dst.descriptions = tuple(names)
    return path


def write_tile_features(source: Any, tile: str, out: Path, chunk_size: int) -> Path:
    """Write one tile's features chunk by chunk, then merge the chunks.

    Args:
        source: the tile's :class:`~i2dl.io.sensors.base.TimeSeriesSource`.
        tile: tile name used in the file names.
        out: the run folder.
        chunk_size: chunk (block window) side in pixels.

    Returns:
        ``<out>/by_tiles/<tile>.tif``.

    Raises:
        ConfigError: ``chunk_size`` < 1.
    """
    names = band_descriptions(source)
    windows = block_windows(source.width, source.height, chunk_size, "features_map.chunk_size")
    chunks = []
    with Progress() as bar:
        task = bar.add_task(f"features {tile}", total=len(windows))
        for i, win in enumerate(windows):
            x, valid = source.read(win)  # (h, w, T, C)
            x = np.where(valid[..., None], x, np.nan).astype(np.float32)
            h, w = x.shape[:2]
            bands = x.reshape(h, w, -1).transpose(2, 0, 1)  # date-major (T*C, h, w)
            transform = rasterio.windows.transform(win, source.transform)
            path = out / "customF" / f"{tile}_chunk_{i}.tif"
            chunks.append(_write_chunk(path, bands, source.crs, transform, names))
            bar.advance(task)
    return mosaic(chunks, out / "by_tiles" / f"{tile}.tif", names, nodata=np.nan)

