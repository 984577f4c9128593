"""GeoTIFF outputs: the one creation profile, block windows, and a windowed mosaic.

Every raster i2dl writes (maps, confidence, probabilities, fusion, colour-indexed maps,
feature maps, mosaics) uses :func:`geotiff_profile`: 256 x 256 tiles, DEFLATE compression
with the predictor suited to the pixel type (2, horizontal differencing, for integers; 3,
floating point, for floats) and ``BIGTIFF=IF_SAFER`` so maps over 4 GiB are valid. Rasters
are read and written by square block windows (:func:`block_windows`), and tiles are
merged by :func:`mosaic` without holding the mosaic in memory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio import windows
from rasterio.enums import Resampling
from rasterio.errors import WindowError
from rasterio.windows import Window

from i2dl.errors import ConfigError, InputDataError
from i2dl.io.files import atomic_path

log = logging.getLogger(__name__)

#: Side of the GeoTIFF tiles, pixels.
TILE = 256
#: Memory budget of one output block of :func:`mosaic`, bytes.
MOSAIC_BLOCK_BYTES = 64 * 2**20

#: ``nodata`` default of :func:`mosaic`: take the first input's nodata value.
FIRST_NODATA: Any = object()


def geotiff_profile(
    width: int,
    height: int,
    count: int,
    dtype: str | np.dtype,
    crs: Any,
    transform: Affine,
    nodata: float | None = None,
    *,
    predictor: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """The rasterio creation profile of every i2dl GeoTIFF.

    Args:
        width: raster width, pixels.
        height: raster height, pixels.
        count: number of bands.
        dtype: pixel type (``"uint8"``, ``"uint16"``, ``"float32"``...).
        crs: coordinate reference system (rasterio ``CRS``, WKT or ``"EPSG:..."``; None
            for none).
        transform: affine pixel -> CRS transform of the upper-left corner.
        nodata: nodata value (NaN allowed for floats), None for none.
        predictor: add the DEFLATE predictor suited to ``dtype`` (3 for floats, 2 for
            integers); False for none (colour-indexed maps).
        **options: further creation options, added last (e.g. ``photometric="palette"``).

    Returns:
        ``driver="GTiff"``, the grid, ``count``, ``dtype``, ``nodata``, ``tiled=True``,
        256 x 256 blocks, ``compress="deflate"``, the predictor, ``BIGTIFF="IF_SAFER"``
        and ``options``.
    """
    dtype = np.dtype(dtype)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": int(width),
        "height": int(height),
        "count": int(count),
        "dtype": dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    if predictor:
        profile["predictor"] = 3 if dtype.kind == "f" else 2
    profile.update(options)
    return profile


def block_windows(width: int, height: int, size: int, param: str = "chunk_size") -> list[Window]:
    """Cut a grid into square block windows of at most ``size`` pixels a side.

    Args:
        width: grid width, pixels.
        height: grid height, pixels.
        size: window side in pixels (> 0); a multiple of 256 aligns the windows on the
            tiles of :func:`geotiff_profile`.
        param: name of the setting that gave ``size``, for the error message (e.g.
            ``"infer.chunk_size"``).

    Returns:
        Windows in row-major order covering the grid exactly once; the last column and
        row of windows are cut at the grid edge.

    Raises:
        ConfigError: ``size`` < 1.
    """
    if size < 1:
        raise ConfigError(f"{param} must be >= 1 pixel, got {size}; give a window side in pixels")
    return [
        Window(col, row, min(size, width - col), min(size, height - row))
        for row in range(0, height, size)
        for col in range(0, width, size)
    ]


def _intersect_bounds(
    a: Sequence[float], b: Sequence[float]
) -> tuple[float, float, float, float]:
    """Intersection of two north-up ``(west, south, east, north)`` boxes (as gdal_merge.py).

    Raises:
        ValueError: the boxes do not overlap (touching edges do not overlap).
    """
    west, east = max(a[0], b[0]), min(a[2], b[2])
    south, north = max(a[1], b[1]), min(a[3], b[3])
    if west >= east or south >= north:
        raise ValueError("no overlap")
    return west, south, east, north


def _win_align(window: Window) -> Window:
    """Round a destination window's offsets and lengths as ``rasterio.merge`` does."""
    return Window(
        math.floor(window.col_off + 0.1),
        math.floor(window.row_off + 0.1),
        math.floor(window.width + 0.5),
        math.floor(window.height + 0.5),
    )


def _is_nodata(region: np.ndarray, nodata: float) -> np.ndarray:
    """Where a destination block still holds ``nodata`` (NaN-aware, as ``rasterio.merge``)."""
    if math.isnan(nodata):
        return np.isnan(region)
    if not np.issubdtype(region.dtype, np.integer):
        return np.isclose(region, nodata)
    return region == nodata


def _block_side(count: int, dtype: np.dtype, budget: int) -> int:
    """Largest multiple of :data:`TILE` (256 to 4096) whose block of ``count`` bands fits."""
    side = int(math.sqrt(budget / max(1, count * dtype.itemsize))) // TILE * TILE
    return min(max(side, TILE), 16 * TILE)


def _check_mosaic_inputs(paths: Sequence[Path], sources: Sequence[Any]) -> None:
    """Inputs of one mosaic need one CRS and band count, north-up grids.

    Raises:
        ConfigError: inputs in different CRS.
        InputDataError: a different band count, or a rotated or flipped grid.
    """
    first = sources[0]
    crs = {str(s.crs) for s in sources}
    if len(crs) > 1:
        raise ConfigError(
            f"tiles {[str(p) for p in paths]} are in different CRS {sorted(crs)}: cannot "
            "mosaic; reproject them to one CRS (for i2dl's maps: set data.proj, e.g. "
            "EPSG:2154, and data.spatial_resolution, so every tile is mapped on one grid)"
        )
    for path, src in zip(paths, sources, strict=True):
        if src.count != first.count:
            raise InputDataError(
                f"{path} has {src.count} bands but {paths[0]} has {first.count}: tiles of one "
                "mosaic need the same bands"
            )
        t = src.transform
        if not t.is_rectilinear or t.a < 0 or t.e > 0:
            raise InputDataError(
                f"{path} has a rotated or flipped grid (transform {tuple(t)[:6]}): only "
                "north-up rasters can be mosaicked; warp it with gdalwarp first"
            )


def mosaic(
    paths: Sequence[str | Path],
    out_path: str | Path,
    descriptions: Sequence[str] | None = None,
    nodata: float | None = FIRST_NODATA,
    block_bytes: int = MOSAIC_BLOCK_BYTES,
) -> Path:
    """Merge GeoTIFFs (same CRS, bands and dtype) into one mosaic, block by block.

    Same result as ``rasterio.merge.merge(sources, nodata=nodata)`` (method ``first``)
    written to a file, without holding the mosaic in memory: the extent is the union of
    the inputs, the pixel size the first input's; for each output block (a multiple of the
    256-pixel tiles, at most ``block_bytes``), the overlapping part of each input is read
    with a window read (nearest neighbour when grids are not aligned) and, where the block
    still holds nodata, the input's valid pixels are copied, so where inputs overlap the
    first valid pixel in ``paths`` order wins. Pixels no input covers are nodata. The
    output has the first input's dtype and band count, :func:`geotiff_profile` and the
    band descriptions ``descriptions`` (default: the first input's); it is written under
    a temporary name, then renamed. One input is open at a time (the last one read, kept
    for the next blocks), so memory does not grow with the number of inputs.

    Args:
        paths: the input rasters, in priority order.
        out_path: the mosaic (e.g. ``final/Classif_Seed_0.tif``); its folder is created.
        descriptions: one description per band; None keeps the first input's.
        nodata: output nodata value, also the fill value (NaN allowed for floats); by
            default the first input's; None writes no nodata tag and fills with 0 (as
            ``rasterio.merge``). An input's own nodata pixels (its mask) are never copied.
        block_bytes: memory budget of one output block, bytes.

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: no input, or inputs in different CRS.
        InputDataError: inputs with different band counts, a rotated or flipped input,
            a nodata value the dtype cannot hold, or ``descriptions`` of the wrong length.
    """
    if not paths:
        raise ConfigError("nothing to mosaic: no tile raster was written")
    files = [Path(p) for p in paths]
    out_path = Path(out_path)
    sources = [_input_info(p) for p in files]
    _check_mosaic_inputs(files, sources)
    first = sources[0]
    count, dtype = first.count, np.dtype(first.dtypes[0])
    if nodata is FIRST_NODATA:
        nodata = first.nodata
    fill = 0 if nodata is None else nodata
    if dtype.kind in "iub" and (
        not math.isfinite(fill) or not np.iinfo(dtype).min <= fill <= np.iinfo(dtype).max
    ):
        raise InputDataError(
            f"nodata {nodata} cannot be stored in the {dtype.name} pixels of {paths[0]}; "
            "give a nodata value in the type's range"
        )
    names = list(descriptions) if descriptions is not None else list(first.descriptions)
    if len(names) != count:
        raise InputDataError(
            f"{len(names)} band descriptions given for a mosaic of {count} bands "
            f"({paths[0]}); give one per band"
        )
    boxes = np.array([tuple(s.bounds) for s in sources], dtype=np.float64)
    west, south = boxes[:, 0].min(), boxes[:, 1].min()
    east, north = boxes[:, 2].max(), boxes[:, 3].max()
    res_x, res_y = first.res
    width = int(round((east - west) / res_x))
    height = int(round((north - south) / res_y))
    transform = Affine.translation(west, north) @ Affine.scale(res_x, -res_y)
    profile = geotiff_profile(width, height, count, dtype, first.crs, transform, nodata)
    side = _block_side(count, dtype, block_bytes)
    with atomic_path(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst, \
            _OneOpen() as inputs:
        for win in block_windows(width, height, side):
            dst.write(_mosaic_block(sources, inputs, win, transform, count, dtype, fill),
                      window=win)
        if any(names):
            dst.descriptions = tuple(names)
    log.debug("mosaic of %d rasters: %s (%d x %d px)", len(paths), out_path, width, height)
    return out_path


def _input_info(path: Path) -> SimpleNamespace:
    """What :func:`mosaic` needs of an input, read once; the file is closed again."""
    with rasterio.open(path) as src:
        return SimpleNamespace(
            path=path, crs=src.crs, count=src.count, dtypes=src.dtypes, nodata=src.nodata,
            descriptions=src.descriptions, bounds=tuple(src.bounds), res=src.res,
            transform=src.transform,
        )


class _OneOpen:
    """At most one input of :func:`mosaic` open: the last one read stays open.

    GDAL keeps one decoded block per open pixel-interleaved dataset outside its block
    cache (a 256^2 tile of 700 float32 bands is 183 MB), so a mosaic holding all its tiles
    open grew with the number of tiles (issue 23); keeping the last one open lets the next
    output blocks of the same tile reuse its handle and decoded block.
    """

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._path: Path | None = None
        self._src: Any = None

    def __enter__(self) -> _OneOpen:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def get(self, path: Path) -> Any:
        """The open dataset of ``path``, closing the one opened before if it differs."""
        if path != self._path:
            self._stack.close()
            self._path, self._src = None, None
            self._src = self._stack.enter_context(rasterio.open(path))
            self._path = path
        return self._src


def _mosaic_block(
    sources: Sequence[SimpleNamespace],
    inputs: _OneOpen,
    win: Window,
    transform: Affine,
    count: int,
    dtype: np.dtype,
    fill: float,
) -> np.ndarray:
    """One output block of :func:`mosaic`: (count, h, w) of ``dtype``, first valid wins.

    Each input that overlaps the block is read through ``inputs`` (one open at a time).
    """
    dest = np.full((count, int(win.height), int(win.width)), fill, dtype=dtype)
    block_bounds = windows.bounds(win, transform)
    block_transform = windows.transform(win, transform)
    for info in sources:
        try:
            inter = _intersect_bounds(info.bounds, block_bounds)
            src_win = windows.from_bounds(*inter, transform=info.transform)
            dst_win = _win_align(windows.from_bounds(*inter, transform=block_transform))
        except (ValueError, WindowError):
            continue
        rows, cols = dst_win.toslices()
        region = dest[:, rows, cols]
        if region.size == 0:
            continue
        data = inputs.get(info.path).read(
            out_shape=(count, int(dst_win.height), int(dst_win.width)),
            masked=True,
            window=src_win,
            resampling=Resampling.nearest,
        )
        take = _is_nodata(region, fill) & ~np.ma.getmaskarray(data)
        np.copyto(region, data.data, where=take, casting="unsafe")
    return dest


def grid_profile(grid: Any) -> dict[str, Any]:
    """A GeoTIFF creation profile of a grid (no band count, dtype or creation options).

    Args:
        grid: any object with ``crs``, ``transform``, ``width`` and ``height``.
    """
    return {
        "driver": "GTiff",
        "crs": grid.crs,
        "transform": grid.transform,
        "width": grid.width,
        "height": grid.height,
    }


#: overview resampling of :func:`to_cog`: a class map keeps classes, continuous maps average
COG_RESAMPLING = {"categorical": "MODE", "continuous": "AVERAGE"}


def to_cog(path: str | Path, kind: str = "continuous") -> Path:
    """Rewrite a GeoTIFF as a Cloud-Optimized GeoTIFF (GDAL's COG driver), in place.

    Tiles of :data:`TILE` pixels, DEFLATE with the pixel type's predictor, overviews down
    to one tile, resampled by ``mode`` for class maps (a class is never averaged into
    another) or ``average`` for continuous values; band descriptions, scales, nodata and a
    colour table are carried over. Written beside the file then renamed over it
    (:func:`i2dl.io.files.atomic_path`), so a reader never sees half a file.

    Args:
        path: an existing GeoTIFF.
        kind: ``categorical`` (class codes) or ``continuous``.

    Returns:
        ``path``, now a COG (``tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"``).

    Raises:
        ConfigError: unknown ``kind``.
    """
    if kind not in COG_RESAMPLING:
        raise ConfigError(f"to_cog: kind={kind!r}, use one of {sorted(COG_RESAMPLING)}")
    path = Path(path)
    with rasterio.open(path) as src:
        dtype = np.dtype(src.dtypes[0])
    predictor = "YES" if dtype.kind in "iuf" else "NO"
    with atomic_path(path) as tmp:
        rasterio.shutil.copy(
            path, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR=predictor,
            BLOCKSIZE=TILE, OVERVIEW_RESAMPLING=COG_RESAMPLING[kind], BIGTIFF="IF_SAFER",
            NUM_THREADS="ALL_CPUS",
        )
    return path
