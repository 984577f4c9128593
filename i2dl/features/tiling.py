"""The features tiler (iota2 ``i2_features_to_grid``): user rasters cut onto a tile grid.

Precomputed features must share the footprint and resolution of the tiles they are used
with (``data.user_features``). The tiler takes a reference grid and writes, for every tile
of ``list_tile``, every raster of ``features_path`` reprojected and resampled onto it:
``<output_path>/<tile>/<feature>.tif`` (tiled, DEFLATE, nodata kept), with a log per tile
and feature in ``<output_path>/logs/FeaturesTiler/tile_<tile>_<feature>.log``.

The grid (exactly one of):

- ``grid`` + ``tile_field``: a vector file with one Polygon per tile (names unique);
  each tile is the polygon's bounding box in ``proj``, snapped outwards to
  ``spatial_resolution``;
- ``rasters_grid_path``: a folder with one raster per tile (``<tile>.tif``) whose grid
  (CRS, transform, size) is reused as is.

Reading is windowed: each output block of 1024² pixels is read through a GDAL warped VRT
(:class:`rasterio.vrt.WarpedVRT`) of the source, so a continental source is never read
whole. Resampling per feature (``resampling: {name: method}``, default ``bilinear``;
``nearest`` for categorical data).

Extra outputs, as iota2's: ``srtm_path`` (a folder of SRTM ``.hgt`` tiles) gives
``elevation.tif`` (bilinear; the first tile covering a pixel wins), ``slope.tif`` and
``aspect.tif`` per tile (Horn 1981 gradients on the tile grid, degrees; aspect clockwise
from north, the direction the slope faces, -1 where the ground is flat; pixels on the
tile's edge use the nearest row/column outside, i.e. edge replication); ``worldclim_path``
(a folder of WorldClim GeoTIFFs) gives one ``worldclim.tif`` stack per tile, one band
per file in file-name order with the file stem as band description. ``s2_path`` (a folder
of Sentinel-2 products, Sen2Cor ``.SAFE`` or THEIA) gives ``SOLAR_ZENITH``,
``SOLAR_AZIMUTH``, ``EVEN_ZENITH``, ``ODD_ZENITH``, ``EVEN_AZIMUTH``, ``ODD_AZIMUTH``
per tile, one band per date (:mod:`i2dl.io.sensors.s2angles`). Sentinel-1 angles (``s1_dir``) are
not implemented: asking for them is an error, not a silent no-op.

Command: ``python -m i2dl tiler [config=tiler.yaml] key=value ...`` with the keys of
``configs/tiler.yaml`` (iota2's names) and the run's ``dask.*`` keys
(``configs/dask/default.yaml``): ``dask.engine=dask`` runs every tile x feature as a task
of a Dask cluster, retried ``dask.retries`` times, then reported by name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import scipy.ndimage
from affine import Affine
from omegaconf import DictConfig, OmegaConf
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from rich.progress import Progress

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.features.feature_maps import TaskRunner
from i2dl.io.files import atomic_path
from i2dl.io.geotiff import block_windows, geotiff_profile
from i2dl.io.sensors.s2angles import write_s2_angles

log = logging.getLogger(__name__)

#: output block side (pixels) read through the warped VRT at a time
BLOCK = 1024
#: raster extensions looked for in the feature, WorldClim and grid folders
RASTER_EXT = (".tif", ".tiff", ".vrt", ".img", ".jp2")
DEFAULTS = Path(__file__).resolve().parents[2] / "configs" / "tiler.yaml"


@dataclass(frozen=True)
class Tile:
    """One tile of the grid: name, CRS, affine transform and size in pixels."""

    name: str
    crs: Any
    transform: Affine
    width: int
    height: int


def grid_from_vector(
    path: str | Path, tile_field: str, resolution: float, proj: str,
    list_tile: Sequence[str] | None = None,
) -> list[Tile]:
    """Tiles from a vector grid (iota2 ``grid`` + ``tile_field``).

    Args:
        path: vector file, one Polygon per tile.
        tile_field: the field holding the tile names.
        resolution: output pixel size in ``proj`` units (iota2 ``spatial_resolution``).
        proj: output CRS (iota2 ``proj``, e.g. ``EPSG:32633``).
        list_tile: tiles to keep, None = all.

    Raises:
        InputFileNotFoundError: the file cannot be read.
        InputDataError: missing field, a geometry that is not a Polygon, duplicated names,
            or a tile of ``list_tile`` not in the grid.
        ConfigError: ``resolution`` <= 0.
    """
    if not resolution or resolution <= 0:
        raise ConfigError(f"spatial_resolution must be > 0, got {resolution}")
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 (pyogrio raises several kinds)
        raise InputFileNotFoundError(f"cannot read the grid {path}: {exc}") from None
    if tile_field not in gdf.columns:
        raise InputDataError(f"grid {path} has no field {tile_field!r} (tile_field); fields: "
                             f"{[c for c in gdf.columns if c != gdf.geometry.name]}")
    bad = gdf[gdf.geometry.geom_type != "Polygon"]
    if len(bad):
        raise InputDataError(
            f"grid {path}: features {bad.index.tolist()[:10]} are "
            f"{sorted(set(bad.geometry.geom_type))}, but each tile must be one Polygon "
            "(no MultiPolygon, point or line)")
    names = gdf[tile_field].astype(str)
    dup = sorted(names[names.duplicated()].unique())
    if dup:
        raise InputDataError(f"grid {path}: tile names {dup} appear more than once in "
                             f"{tile_field}; each tile needs a unique name")
    gdf = gdf.assign(_name=names).to_crs(proj)
    tiles = []
    for name, geom in zip(gdf["_name"], gdf.geometry, strict=True):
        x0, y0, x1, y1 = geom.bounds
        x0 = math.floor(x0 / resolution) * resolution
        y1 = math.ceil(y1 / resolution) * resolution
        width = math.ceil((x1 - x0) / resolution - 1e-9)
        height = math.ceil((y1 - y0) / resolution - 1e-9)
        tiles.append(Tile(name, rasterio.crs.CRS.from_user_input(proj),
                          Affine(resolution, 0, x0, 0, -resolution, y1), width, height))
    return _select(tiles, list_tile, str(path))


def grid_from_rasters(folder: str | Path, list_tile: Sequence[str] | None = None) -> list[Tile]:
    """Tiles from a folder of rasters (iota2 ``rasters_grid_path``), grids reused.

    One raster per tile, named ``<tile>.<ext>``.

    Raises:
        InputFileNotFoundError: the folder is missing or holds no raster.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in RASTER_EXT) \
        if folder.is_dir() else []
    if not files:
        raise InputFileNotFoundError(f"rasters_grid_path {folder}: no raster there")
    tiles = []
    for f in files:
        with rasterio.open(f) as src:
            tiles.append(Tile(f.stem, src.crs, src.transform, src.width, src.height))
    return _select(tiles, list_tile, str(folder))


def _select(tiles: list[Tile], list_tile: Sequence[str] | None, where: str) -> list[Tile]:
    if not list_tile:
        return tiles
    by_name = {t.name: t for t in tiles}
    missing = [t for t in list_tile if t not in by_name]
    if missing:
        raise InputDataError(f"list_tile names {missing} are not tiles of {where}; its tiles: "
                             f"{sorted(by_name)[:20]}")
    return [by_name[t] for t in list_tile]


def _resampling(name: str) -> Resampling:
    try:
        return Resampling[name]
    except KeyError:
        raise ConfigError(f"unknown resampling {name!r}; use one of "
                          f"{[r.name for r in Resampling][:12]}") from None


def warp_block(vrts: Sequence[Any], window: Window, nodata: float) -> np.ndarray:
    """One block of the tile from warped VRTs on its grid (first valid VRT wins).

    Args:
        vrts: :class:`rasterio.vrt.WarpedVRT` of the sources on the tile's grid.
        window: the block, in tile pixels.
        nodata: the value where no source has data.

    Returns:
        (bands, h, w) float64.
    """
    out = None
    for vrt in vrts:
        filled = vrt.read(window=window, masked=True).astype(np.float64).filled(np.nan)
        out = filled if out is None else np.where(np.isnan(out), filled, out)
    assert out is not None
    return np.where(np.isnan(out), nodata, out)


def _open_warped(stack: ExitStack, paths: Sequence[Path], tile: Tile,
                 resampling: Resampling) -> tuple[list[Any], list[Any]]:
    """Open each raster and its warped VRT on the tile's grid, once, closed by ``stack``.

    Raises:
        InputFileNotFoundError: a raster cannot be opened.
    """
    sources, vrts = [], []
    for p in paths:
        try:
            src = stack.enter_context(rasterio.open(p))
        except rasterio.errors.RasterioIOError as exc:
            raise InputFileNotFoundError(f"cannot open {p}: {exc}") from None
        sources.append(src)
        vrts.append(stack.enter_context(WarpedVRT(
            src, crs=tile.crs, transform=tile.transform, width=tile.width, height=tile.height,
            resampling=resampling, nodata=src.nodata, src_nodata=src.nodata)))
    return sources, vrts


def write_warped(
    paths: Sequence[Path], tile: Tile, out_path: Path, resampling: Resampling,
    descriptions: Sequence[str] | None = None,
) -> Path:
    """Warp rasters onto a tile, block by block, into ``out_path`` (atomically).

    ``paths`` are mosaicked (first valid wins) into one output, unless ``descriptions``
    is given: then each path is one band with that description.

    Raises:
        InputFileNotFoundError: a raster cannot be opened.
    """
    with ExitStack() as stack:
        sources, vrts = _open_warped(stack, paths, tile, resampling)
        first = sources[0]
        nodata = first.nodata if first.nodata is not None else -9999.0
        dtype = np.dtype(first.dtypes[0])
        if dtype.kind in "iu" and not np.iinfo(dtype).min <= nodata <= np.iinfo(dtype).max:
            dtype = np.dtype("float32")
        count = len(sources) if descriptions is not None else first.count
        profile = geotiff_profile(tile.width, tile.height, count, dtype.name, tile.crs,
                                  tile.transform, nodata)
        with atomic_path(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for win in block_windows(tile.width, tile.height, BLOCK, "tiler block"):
                if descriptions is None:
                    block = warp_block(vrts, win, nodata)
                else:
                    block = np.concatenate([warp_block([v], win, nodata) for v in vrts])
                dst.write(block.astype(dtype), window=win)
            if descriptions is not None:
                dst.descriptions = tuple(descriptions)
    return out_path


def slope_aspect(elevation: np.ndarray, xres: float, yres: float,
                 nodata: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Slope and aspect in degrees by Horn's (1981) 3x3 gradients.

    Args:
        elevation: (H, W) heights, same unit as the pixel sizes (metres).
        xres: pixel width.
        yres: pixel height (positive); rows run southwards.
        nodata: heights to ignore (the result is -1 there).

    Returns:
        ``slope`` (H, W) float32 in [0, 90), ``aspect`` (H, W) float32 in [0, 360),
        clockwise from north, the direction the slope faces (downhill); -1 where flat
        or nodata. Edge pixels use edge replication.
    """
    z = np.asarray(elevation, dtype=np.float64)
    bad = np.zeros(z.shape, bool) if nodata is None else (z == nodata)
    zp = np.pad(z, 1, mode="edge")
    a, b, c = zp[:-2, :-2], zp[:-2, 1:-1], zp[:-2, 2:]
    d, f = zp[1:-1, :-2], zp[1:-1, 2:]
    g, h, i = zp[2:, :-2], zp[2:, 1:-1], zp[2:, 2:]
    dz_east = ((c + 2 * f + i) - (a + 2 * d + g)) / (8 * xres)
    dz_south = ((g + 2 * h + i) - (a + 2 * b + c)) / (8 * yres)
    dz_north = -dz_south
    slope = np.degrees(np.arctan(np.hypot(dz_east, dz_north)))
    aspect = np.degrees(np.arctan2(-dz_east, -dz_north)) % 360.0
    flat = np.hypot(dz_east, dz_north) < 1e-12
    # a pixel whose 3x3 neighbourhood holds nodata has no gradient
    bad_n = scipy.ndimage.maximum_filter(bad, size=3, mode="nearest")
    slope[bad_n] = -1
    aspect[flat | bad_n] = -1
    return slope.astype(np.float32), aspect.astype(np.float32)


def write_srtm(hgt: Sequence[Path], tile: Tile, out_dir: Path) -> dict[str, Path]:
    """``elevation.tif``, ``slope.tif``, ``aspect.tif`` of a tile from SRTM ``.hgt`` files."""
    paths = {"elevation": out_dir / "elevation.tif", "slope": out_dir / "slope.tif",
             "aspect": out_dir / "aspect.tif"}
    write_warped(hgt, tile, paths["elevation"], Resampling.bilinear)
    xres, yres = abs(tile.transform.a), abs(tile.transform.e)
    profile = geotiff_profile(tile.width, tile.height, 1, "float32", tile.crs, tile.transform,
                              -1.0)
    with rasterio.open(paths["elevation"]) as src, \
            atomic_path(paths["slope"]) as tmp_s, atomic_path(paths["aspect"]) as tmp_a, \
            rasterio.open(tmp_s, "w", **profile) as ds, rasterio.open(tmp_a, "w", **profile) as da:
        for win in block_windows(tile.width, tile.height, BLOCK, "tiler block"):
            r0, c0 = max(0, int(win.row_off) - 1), max(0, int(win.col_off) - 1)
            r1 = min(tile.height, int(win.row_off + win.height) + 1)
            c1 = min(tile.width, int(win.col_off + win.width) + 1)
            z = src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
            slope, aspect = slope_aspect(z, xres, yres, src.nodata)
            ri, ci = int(win.row_off) - r0, int(win.col_off) - c0
            crop = (slice(ri, ri + int(win.height)), slice(ci, ci + int(win.width)))
            ds.write(slope[crop][None], window=win)
            da.write(aspect[crop][None], window=win)
    return paths


def _files(folder: str | Path, what: str, suffixes: tuple[str, ...]) -> list[Path]:
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in suffixes) \
        if folder.is_dir() else []
    if not files:
        raise InputFileNotFoundError(f"{what} {folder}: no {'/'.join(suffixes)} file there")
    return files


def _grid(c: DictConfig) -> list[Tile]:
    """The tiles of the config's grid (vector or rasters).

    Raises:
        ConfigError: a vector grid's keys missing.
    """
    tiles_wanted = list(c.get("list_tile") or []) or None
    if c.get("grid"):
        missing = [k for k in ("tile_field", "spatial_resolution", "proj") if not c.get(k)]
        if missing:
            raise ConfigError(f"a vector grid needs {missing} too")
        return grid_from_vector(c.grid, c.tile_field, float(c.spatial_resolution), c.proj,
                                tiles_wanted)
    return grid_from_rasters(c.rasters_grid_path, tiles_wanted)


def _jobs(c: DictConfig) -> list[tuple[str, str, Any, Resampling]]:
    """What to write on every tile: ``(kind, name, input, resampling)``.

    Raises:
        ConfigError: nothing to tile, or an unknown resampling.
        InputFileNotFoundError: an input folder without its files.
    """
    per_feature = dict(c.get("resampling") or {})
    default = _resampling(str(per_feature.pop("default", "bilinear")))
    jobs: list[tuple[str, str, Any, Resampling]] = []
    if c.get("features_path"):
        jobs += [("feature", p.stem, p, _resampling(str(per_feature.get(p.stem, default.name))))
                 for p in _files(c.features_path, "features_path", RASTER_EXT)]
    if c.get("srtm_path"):
        jobs.append(("srtm", "srtm", _files(c.srtm_path, "srtm_path", (".hgt",)), default))
    if c.get("worldclim_path"):
        jobs.append(("worldclim", "worldclim",
                     _files(c.worldclim_path, "worldclim_path", RASTER_EXT), default))
    if c.get("s2_path"):
        jobs.append(("s2_angles", "s2_angles", c.s2_path, default))
    if not jobs:
        raise ConfigError("nothing to tile: set features_path, srtm_path, worldclim_path or "
                          "s2_path")
    return jobs


def tile_feature(kind: str, name: str, item: Any, method: Resampling, tile: Tile,
                 out: str) -> dict[str, Path]:
    """Write one feature of one tile (one task): ``{feature name: path}``.

    Raises:
        InputFileNotFoundError, InputDataError: unreadable or inconsistent inputs.
    """
    folder = Path(out) / tile.name
    if kind == "feature":
        done = {name: write_warped([item], tile, folder / f"{name}.tif", method)}
    elif kind == "srtm":
        done = write_srtm(item, tile, folder)
    elif kind == "s2_angles":
        done = write_s2_angles(item, tile, folder)
    else:
        done = {"worldclim": write_warped(item, tile, folder / "worldclim.tif", method,
                                          descriptions=[p.stem for p in item])}
    log.info("tile %s: %s written (%dx%d px, %s)", tile.name, name, tile.width, tile.height,
             tile.crs)
    return done


def _logged(path: Path, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with this module's log records copied to ``path`` (the serial run)."""
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    log.addHandler(handler)
    try:
        return fn(*args)
    finally:
        log.removeHandler(handler)
        handler.close()


def run_tiler(cfg: Mapping[str, Any] | DictConfig,
              run_tasks: TaskRunner | None = None) -> dict[str, dict[str, Path]]:
    """Tile the features of ``cfg`` (keys of ``configs/tiler.yaml``).

    Every tile x feature is one task (iota2's), logged to
    ``<output_path>/logs/FeaturesTiler/tile_<tile>_<feature>.log``.

    Args:
        cfg: the tiler's keys.
        run_tasks: runs the tasks on a Dask cluster (``dask.engine=dask``, built by the
            stage from the ``dask`` keys); None = in turn, in this process. The rasters
            written are the same.

    Returns:
        tile -> feature name -> written path.

    Raises:
        ConfigError: both or neither grid kinds, missing keys, angles asked for.
        InputFileNotFoundError, InputDataError: unreadable or inconsistent inputs.
        I2dlError: with ``run_tasks``, a task failed its last attempt (tile and feature
            named, see :func:`i2dl.maps.cluster.task_failure`).
    """
    c = OmegaConf.create(dict(cfg)) if not isinstance(cfg, DictConfig) else cfg
    if bool(c.get("grid")) == bool(c.get("rasters_grid_path")):
        raise ConfigError("give exactly one grid: grid (+ tile_field, spatial_resolution, "
                          "proj) or rasters_grid_path; iota2 forbids using both")
    if c.get("s1_dir"):
        raise ConfigError("s1_dir: Sentinel-1 angles are not implemented by i2dl's tiler; "
                          "remove the key")
    if not c.get("output_path"):
        raise ConfigError("output_path is required (where <tile>/<feature>.tif go)")
    tiles = _grid(c)
    jobs = _jobs(c)
    out = Path(c.output_path)
    logs = out / "logs" / "FeaturesTiler"
    logs.mkdir(parents=True, exist_ok=True)
    pairs = [(tile, job) for tile in tiles for job in jobs]
    if run_tasks is None:
        results: Any = (_logged(logs / f"tile_{tile.name}_{job[1]}.log", tile_feature, *job,
                                tile, str(out)) for tile, job in pairs)
    else:
        results = run_tasks([(f"tile {tile.name}, feature {job[1]}",
                              f"tile_{tile.name}_{job[1]}", tile_feature, (*job, tile, str(out)))
                             for tile, job in pairs])
    written: dict[str, dict[str, Path]] = {t.name: {} for t in tiles}
    with Progress() as bar:
        task = bar.add_task("tiling", total=len(pairs))
        for (tile, _), done in zip(pairs, results, strict=True):
            written[tile.name].update(done)
            bar.advance(task)
    return written
