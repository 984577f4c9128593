"""Zonal statistics of a classification map per polygon (iota2 ``compute_zonal_stats``).

For every polygon of a vector file: the number of map pixels whose centre it covers
(nodata excluded), the rate of each class among them, the majority class, the mean
confidence when a confidence map is given, and the mean, standard deviation, minimum and
maximum of every band of other rasters on the same grid. The map is read window by
window; in each window only the polygons that reach it are burnt
(:func:`i2dl.io.vector.burn_window`) and their pixels accumulated by polygon, so a tile
with tens of thousands of parcels never needs a whole-grid array. Polygons follow the
pixel-centre rule of the rest of i2dl (where polygons overlap, the last one gets the
pixel).

Command::

    python -m i2dl zonal-stats map=maps/classif.tif zones=parcels.gpkg out=zonal.gpkg \
        [confidence=maps/confidence.tif] [rasters=a.tif,b.tif] [chunk_size=1024]

``out`` ending in ``.csv`` writes a table without geometry, anything else a GeoPackage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rich.progress import track

from i2dl.errors import InputDataError, InputFileNotFoundError
from i2dl.io.files import atomic_path
from i2dl.io.geotiff import block_windows
from i2dl.io.vector import burn_window

log = logging.getLogger(__name__)


def _open(path: str | Path, what: str) -> rasterio.DatasetReader:
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputFileNotFoundError(f"cannot open the {what} {path}: {exc}") from None


def _read_zones(zones: str | Path | gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The zone polygons, read from a vector file unless already a GeoDataFrame.

    Raises:
        InputFileNotFoundError: the file cannot be read.
        InputDataError: no polygon.
    """
    if isinstance(zones, gpd.GeoDataFrame):
        gdf = zones
    else:
        try:
            gdf = gpd.read_file(zones)
        except Exception as exc:  # noqa: BLE001 (pyogrio raises several kinds)
            raise InputFileNotFoundError(f"cannot read the zones {zones}: {exc}") from None
    if len(gdf) == 0:
        raise InputDataError(f"{zones}: no polygon to summarise")
    return gdf


def _check_same_grid(h: Any, path: Path, what: str, grid: tuple, map_path: str | Path) -> None:
    """Refuse a raster that is not on the map's grid.

    Raises:
        InputDataError: another size or transform than the map.
    """
    if (h.width, h.height, h.transform) != grid[:3]:
        raise InputDataError(
            f"{what} {path} is {h.width}x{h.height} with transform {h.transform}, "
            f"but the map {map_path} is {grid[0]}x{grid[1]} with {grid[2]}: resample "
            "it onto the map's grid first"
        )


def _columns(
    n_pix: np.ndarray, class_counts: dict[int, np.ndarray],
    moments: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]],
    names: list[str], k_bands: list[int], with_confidence: bool,
) -> dict[str, np.ndarray]:
    """The statistics columns from the per-polygon counts, sums, squares, minima, maxima."""
    n = len(n_pix)
    sums, sq, mins, maxs = moments
    cols: dict[str, np.ndarray] = {"n_pixels": n_pix}
    codes = sorted(class_counts)
    table = np.stack([class_counts[c] for c in codes], axis=1) if codes else np.zeros((n, 0))
    has = n_pix > 0
    cols["majority"] = np.where(has, np.asarray(codes)[table.argmax(axis=1)] if codes else 0, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        for j, code in enumerate(codes):
            cols[f"rate_{code}"] = np.where(has, table[:, j] / np.maximum(n_pix, 1), np.nan)
        for i, name in enumerate(names):
            mean = np.where(has[:, None], sums[i] / np.maximum(n_pix, 1)[:, None], np.nan)
            var = np.where(has[:, None], sq[i] / np.maximum(n_pix, 1)[:, None] - mean**2, np.nan)
            if with_confidence and i == 0:
                cols["confidence_mean"] = mean[:, 0]
                continue
            for b in range(k_bands[i]):
                prefix = f"{name}_b{b + 1}"
                cols[f"{prefix}_mean"] = mean[:, b]
                cols[f"{prefix}_std"] = np.sqrt(np.maximum(var[:, b], 0))
                cols[f"{prefix}_min"] = np.where(has, mins[i][:, b], np.nan)
                cols[f"{prefix}_max"] = np.where(has, maxs[i][:, b], np.nan)
    return cols


def zonal_stats(
    map_path: str | Path,
    zones: str | Path | gpd.GeoDataFrame,
    confidence: str | Path | None = None,
    rasters: Sequence[str | Path] = (),
    chunk_size: int = 1024,
    progress: bool = True,
) -> gpd.GeoDataFrame:
    """Per-polygon statistics of a classification map (see the module's docstring).

    Args:
        map_path: classification map (integer class codes, nodata 0 or its nodata tag).
        zones: vector file (or GeoDataFrame) of polygons; reprojected to the map's CRS.
        confidence: optional confidence map on the same grid.
        rasters: other rasters on the same grid, all bands summarised.
        chunk_size: window side, pixels.
        progress: show a progress bar.

    Returns:
        The polygons with their attributes and ``n_pixels``, ``majority`` (0 when no
        pixel), ``rate_<code>`` per class seen, ``confidence_mean``, and
        ``<raster stem>_b<band>_{mean,std,min,max}``; NaN where a polygon has no pixel.

    Raises:
        InputFileNotFoundError: a file cannot be opened.
        InputDataError: a raster is not on the map's grid, or no polygon.
    """
    gdf = _read_zones(zones)
    extra = [(Path(p), "raster") for p in rasters]
    if confidence is not None:
        extra.insert(0, (Path(confidence), "confidence map"))
    handles = []
    try:
        src = _open(map_path, "classification map")
        handles.append(src)
        grid = (src.width, src.height, src.transform, src.crs)
        nodata = 0 if src.nodata is None else src.nodata
        if gdf.crs is not None and src.crs is not None and gdf.crs != src.crs:
            gdf = gdf.to_crs(src.crs)
        others = []
        for path, what in extra:
            h = _open(path, what)
            handles.append(h)
            _check_same_grid(h, path, what, grid, map_path)
            others.append(h)
        n = len(gdf)
        ids = np.arange(n)
        n_pix = np.zeros(n, dtype=np.int64)
        class_counts: dict[int, np.ndarray] = {}
        k_bands = [h.count for h in others]
        sums = [np.zeros((n, k)) for k in k_bands]
        sq = [np.zeros((n, k)) for k in k_bands]
        mins = [np.full((n, k), np.inf) for k in k_bands]
        maxs = [np.full((n, k), -np.inf) for k in k_bands]
        windows = block_windows(grid[0], grid[1], chunk_size, "chunk_size")
        for win in track(windows, description="zonal statistics",
                         disable=not progress or len(windows) < 4):
            zone = burn_window(gdf, ids, grid[2], win)
            inside = zone >= 0
            if not inside.any():
                continue
            classes = src.read(1, window=win)
            ok = inside & (classes != nodata)
            z = zone[ok]
            c = classes[ok].astype(np.int64)
            np.add.at(n_pix, z, 1)
            for code in np.unique(c):
                counts = class_counts.setdefault(int(code), np.zeros(n, dtype=np.int64))
                np.add.at(counts, z[c == code], 1)
            for i, h in enumerate(others):
                v = h.read(window=win).astype(np.float64)[:, ok].T  # (m, bands)
                np.add.at(sums[i], z, v)
                np.add.at(sq[i], z, v * v)
                np.minimum.at(mins[i], z, v)
                np.maximum.at(maxs[i], z, v)
    finally:
        for h in handles:
            h.close()
    names = ["confidence"] if confidence is not None else []
    names += [Path(p).stem for p in rasters]
    cols = _columns(n_pix, class_counts, (sums, sq, mins, maxs), names, k_bands,
                    confidence is not None)
    extra = pd.DataFrame(cols, index=gdf.index)
    return gpd.GeoDataFrame(pd.concat([gdf.drop(columns=list(cols), errors="ignore"), extra],
                                      axis=1), geometry=gdf.geometry.name, crs=gdf.crs)


def write_zonal_stats(table: gpd.GeoDataFrame, out: str | Path) -> Path:
    """Write the table: ``.csv`` without geometry, otherwise a GeoPackage (atomically)."""
    out = Path(out)
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".csv":
            pd.DataFrame(table.drop(columns=table.geometry.name)).to_csv(tmp, index=False)
        else:
            table.to_file(tmp, driver="GPKG", layer=out.stem)
    return out
