"""Stage ``features-map`` (iota2's features map builder, ``i2_features_map``).

Writes the feature time series of the ``data`` config — sensor bands, indices, gap-filled
dates, user and external features, exactly what ``prepare`` and ``infer`` read — to
GeoTIFF, chunk by chunk, per tile, then mosaics the tiles (iota2's output tree):

```
<run>/customF/<tile>_chunk_<i>.tif    one file per chunk (block window)
<run>/by_tiles/<tile>.tif             the chunks of a tile merged
<run>/final/features_map.tif          the tiles merged into one mosaic
```

Bands are date-major (band ``t * C + c``) and their descriptions name the feature and the
date (``NDVI_20170203``); invalid observations are NaN (the nodata value).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from omegaconf import DictConfig
from rasterio.merge import merge
from rich.progress import Progress

from i2dl.cli import stage_logging
from i2dl.io.raster import block_windows
from i2dl.io.sources import data_tiles, open_source

log = logging.getLogger(__name__)


def band_descriptions(source: Any) -> list[str]:
    """``<channel>_<YYYYMMDD>`` for every band, date-major (``<channel>_t<i>`` without dates)."""
    stamps = [d.strftime("%Y%m%d") for d in source.dates] or [
        f"t{i}" for i in range(source.n_dates)
    ]
    return [f"{c}_{s}" for s in stamps for c in source.band_names]


def _profile(source: Any, width: int, height: int, transform: Any, count: int) -> dict:
    return {
        "driver": "GTiff", "crs": source.crs, "transform": transform, "width": width,
        "height": height, "count": count, "dtype": "float32", "nodata": np.nan,
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
        "predictor": 3, "BIGTIFF": "IF_SAFER",
    }


def _write_atomic_tif(path: Path, data: np.ndarray, profile: dict, names: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            dst.descriptions = tuple(names)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _merge_files(files: list[Path], out: Path, names: list[str]) -> Path:
    """Merge GeoTIFFs on their common grid (first file wins where they overlap)."""
    sources = [rasterio.open(f) for f in files]
    try:
        mosaic, transform = merge(sources, nodata=np.nan)
        profile = _profile(sources[0], mosaic.shape[2], mosaic.shape[1], transform, mosaic.shape[0])
        profile["crs"] = sources[0].crs
    finally:
        for s in sources:
            s.close()
    return _write_atomic_tif(out, mosaic.astype(np.float32), profile, names)


def write_tile_features(source: Any, tile: str, out: Path, chunk_size: int) -> Path:
    """Write one tile's features chunk by chunk, then merge the chunks.

    Args:
        source: the tile's :class:`~i2dl.io.sensors.base.TimeSeriesSource`.
        tile: tile name used in the file names.
        out: the run folder.
        chunk_size: chunk (block window) side in pixels.

    Returns:
        ``<out>/by_tiles/<tile>.tif``.
    """
    names = band_descriptions(source)
    windows = block_windows(source.width, source.height, chunk_size)
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
            _write_atomic_tif(path, bands, _profile(source, w, h, transform, len(names)), names)
            chunks.append(path)
            bar.advance(task)
    return _merge_files(chunks, out / "by_tiles" / f"{tile}.tif", names)


def run_features_map(cfg: DictConfig) -> Path:
    """Stage ``features-map``: features of every tile, then the mosaic.

    Returns:
        ``<run>/final/features_map.tif``.

    Raises:
        InputDataError: tiles with different features (bands or dates) cannot be mosaicked.
    """
    from i2dl.errors import InputDataError
    from i2dl.pipeline import run_dir

    out = run_dir(cfg)
    with stage_logging(out, "features-map"):
        tiles = data_tiles(cfg.data) or [str(cfg.data.get("name", "tile"))]
        chunk = int(cfg.get("features_map", {}).get("chunk_size", 512))
        by_tile, names = [], None
        for tile in tiles:
            with open_source(cfg.data, tile if data_tiles(cfg.data) else None) as source:
                tile_names = band_descriptions(source)
                if names is not None and tile_names != names:
                    raise InputDataError(
                        f"tile {tile} has features {tile_names[:4]}… but tile {tiles[0]} has "
                        f"{names[:4]}…: tiles of one mosaic need the same dates and bands "
                        "(enable data.gapfilling with a temporal_resolution)"
                    )
                names = tile_names
                by_tile.append(write_tile_features(source, tile, out, chunk))
                log.info("tile %s: %s", tile, by_tile[-1])
        final = _merge_files(by_tile, out / "final" / "features_map.tif", names)
        log.info("features map: %s (%d bands)", final, len(names))
        return final
