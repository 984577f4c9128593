"""Stage ``features-map`` (iota2's features map builder, ``i2_features_map``).

Writes the feature time series of the ``data`` config — exactly what ``prepare`` and
``infer`` read — chunk by chunk, per tile, then mosaics the tiles (iota2's output tree),
see :mod:`i2dl.features.feature_maps`. With ``dask.engine=dask`` every chunk of a tile is
a task of the run's Dask cluster (:mod:`i2dl.maps.cluster`), logged to
``<run>/logs/features-map/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import rasterio
from omegaconf import DictConfig, OmegaConf

from i2dl.errors import InputDataError
from i2dl.features.feature_maps import band_descriptions, write_tile_features
from i2dl.features.source import data_tiles, open_source
from i2dl.io.geotiff import mosaic
from i2dl.io.layout import FINAL_DIR, LOGS_DIR, run_dir, stage_logging
from i2dl.maps.cluster import dask_settings, task_runner

log = logging.getLogger(__name__)

#: The mosaic of every tile's features.
FEATURES_MAP = "features_map.tif"


def run(cfg: DictConfig) -> Path:
    """Features of every tile (``features_map.chunk_size`` windows), then their mosaic.

    Returns:
        ``<run>/final/features_map.tif``.

    Raises:
        InputDataError: tiles with different features (bands or dates) cannot be mosaicked.
        ConfigError: bad ``features_map`` or ``dask`` settings.
        I2dlError: with ``dask.engine=dask``, a chunk failed its last attempt (named).
    """
    out = run_dir(cfg)
    with stage_logging(out, "features-map"), \
            task_runner(dask_settings(cfg), out / LOGS_DIR / "features-map") as run_tasks:
        tiles = data_tiles(cfg.data) or [str(cfg.data.get("name", "tile"))]
        fm = cfg.get("features_map") or {}
        chunk = int(fm.get("chunk_size", 512))
        n_chunks = fm.get("number_of_chunks")
        dtype, scale = str(fm.get("dtype", "float32")), float(fm.get("scale", 1000))
        data = OmegaConf.to_container(cfg.data, resolve=True)
        by_tile: list[Path] = []
        names: list[str] = []
        for i, tile in enumerate(tiles):
            key = tile if data_tiles(cfg.data) else None
            with open_source(cfg.data, key) as source:
                tile_names = band_descriptions(source)
                if i and tile_names != names:
                    raise InputDataError(
                        f"tile {tile} has features {tile_names[:4]}… but tile {tiles[0]} has "
                        f"{names[:4]}…: tiles of one mosaic need the same dates and bands "
                        "(enable data.gapfilling with a temporal_resolution)"
                    )
                names = tile_names
                by_tile.append(write_tile_features(
                    source, tile, out, chunk, None if n_chunks is None else int(n_chunks),
                    dtype, scale, run_tasks, (data, key)))  # type: ignore[arg-type]
                log.info("tile %s: %s", tile, by_tile[-1])
        final = mosaic(by_tile, out / FINAL_DIR / FEATURES_MAP, descriptions=names)
        if dtype == "int16":
            with rasterio.open(final, "r+") as dst:
                dst.scales = (1.0 / scale,) * dst.count
        log.info("features map: %s (%d bands)", final, len(names))
        return final
