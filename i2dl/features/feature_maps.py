"""Feature maps (iota2's features map builder, ``i2_features_map``), stage ``features-map``.

Writes the feature time series of the ``data`` config — sensor bands, indices, gap-filled
dates, user and external features, exactly what ``prepare`` and ``infer`` read — to
GeoTIFF, chunk by chunk, per tile, then mosaics the tiles (iota2's output tree):

```
<run>/customF/<tile>_chunk_<i>.tif    one file per chunk (block window, or row strip)
<run>/by_tiles/<tile>.tif             the chunks of a tile merged
<run>/final/features_map.tif          the tiles merged into one mosaic
<run>/features/<tile>/tmp/MaskCommunSL.tif                       iota2's common mask
<run>/features/<tile>/tmp/<sensor>_<tile>_input_dates.txt        acquisition dates
<run>/features/<tile>/tmp/<sensor>_<tile>_interpolation_dates.txt   output date grid
```

Chunks: square block windows of ``features_map.chunk_size`` pixels, or, with iota2's
``number_of_chunks`` (``chunk_size_mode: split_number``), that many row strips of (nearly)
equal height. Values: float32 with NaN for invalid observations, or iota2's int16
(``features_map.dtype: int16``): ``round(value * features_map.scale)`` clipped to
[-32767, 32767] with nodata -10000 (a valid value that would round to -10000 is written
-9999), the band scale set to ``1 / scale`` so that GDAL/rasterio readers can undo it.
MaskCommunSL is 1 where the pixel has at least one valid date of every sensor (the
pixels the features are defined on), 0 elsewhere, uint8.

This module writes one tile (chunks, then their mosaic); the stage
(:mod:`i2dl.stages.features_map`) runs it for every tile and mosaics the tiles. With
``dask.engine=dask`` each chunk is a task of the run's Dask cluster (iota2's
``write_features_<tile>_chunk_<i>`` tasks, each logged to
``<run>/logs/features-map/write_features_<tile>_chunk_<i>.log``): a worker opens the tile
once per thread (:func:`worker_source`), writes the chunk file and returns the chunk's
common mask; this process writes MaskCommunSL and merges the chunks, so the files are
those of the serial run.

Bands are date-major (band ``t * C + c`` over the ``C`` dated channels) and their
descriptions name the feature and the date (``NDVI_20170203``); invalid observations are
NaN (the nodata value). Features without a date (user rasters, external features such as
the built-in ``seasonal_variation``: the source's ``static_names``) follow once each,
named without a date, NaN where the pixel has no valid date (``T * C + S`` bands).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window
from rich.progress import Progress

from i2dl.errors import ConfigError
from i2dl.features.source import open_source
from i2dl.io.files import atomic_path, write_text_atomic
from i2dl.io.geotiff import block_windows, geotiff_profile

log = logging.getLogger(__name__)

#: Runs named tasks ``(name, log stem, fn, args)`` and yields ``fn(*args)`` in their order:
#: :class:`i2dl.maps.cluster.TaskRunner` (a Dask cluster), injected by the stages.
TaskRunner = Callable[[Sequence[tuple[str, str, Callable[..., Any], tuple[Any, ...]]]],
                      Iterator[Any]]

_SOURCES_LOCK = threading.Lock()
#: per worker process: thread id -> (key of data and tile, the open source)
_SOURCES: dict[int, tuple[str, Any]] = {}


def worker_source(data: Mapping[str, Any], tile: str | None) -> Any:
    """This thread's open time series of ``data`` and ``tile``, opened once per thread.

    What a Dask task reads from (:func:`i2dl.features.source.open_source` arguments, plain
    containers): each worker thread keeps one source open, so the tasks of a tile do not
    reopen its files; a task of another tile closes the thread's previous source. The
    workers' sources are closed by :func:`close_worker_sources` at the end of a stage.

    Raises:
        ConfigError, InputFileNotFoundError, InputDataError: see ``open_source``.
    """
    key = json.dumps([data, tile], sort_keys=True, default=str)
    thread = threading.get_ident()
    with _SOURCES_LOCK:
        held = _SOURCES.get(thread)
    if held is not None and held[0] == key:
        return held[1]
    if held is not None:
        held[1].close()
    source = open_source(data, tile)
    with _SOURCES_LOCK:
        _SOURCES[thread] = (key, source)
    return source


def close_worker_sources() -> None:
    """Close every source :func:`worker_source` holds in this process (run on each worker)."""
    with _SOURCES_LOCK:
        held = list(_SOURCES.values())
        _SOURCES.clear()
    for _, source in held:
        source.close()


def static_names(source: Any) -> list[str]:
    """The source's date-independent channels (the last ones of ``band_names``), or []."""
    return list(getattr(source, "static_names", None) or [])


def band_descriptions(source: Any) -> list[str]:
    """The band names of a feature map: dated bands, then each static channel once.

    ``<channel>_<YYYYMMDD>`` for every dated band, date-major (``<channel>_t<i>`` without
    dates), then each date-independent channel by its name.
    """
    stamps = [d.strftime("%Y%m%d") for d in source.dates] or [
        f"t{i}" for i in range(source.n_dates)
    ]
    static = static_names(source)
    dated = list(source.band_names)[: len(source.band_names) - len(static)]
    return [f"{c}_{s}" for s in stamps for c in dated] + static


def feature_bands(x: np.ndarray, valid: np.ndarray, n_static: int) -> np.ndarray:
    """A window's bands: the dated channels date-major, then each static channel once.

    Args:
        x: ``(h, w, T, C)`` float, the source's ``read`` (static channels last, their value
            repeated on every valid date).
        valid: ``(h, w, T)`` bool.
        n_static: number ``S`` of static channels among the ``C``.

    Returns:
        ``(T * (C - S) + S, h, w)`` float32, NaN at invalid observations; a static channel
        takes its value at the pixel's first valid date, NaN without any.
    """
    h, w, _, c = x.shape
    dated = np.where(valid[..., None], x[..., : c - n_static], np.nan).astype(np.float32)
    bands = dated.reshape(h, w, -1).transpose(2, 0, 1)  # date-major (T*(C-S), h, w)
    if not n_static:
        return bands
    first = valid.argmax(axis=-1)[..., None, None]  # (h, w, 1, 1)
    static = np.take_along_axis(x[..., c - n_static :], first, axis=2)[:, :, 0]  # (h, w, S)
    observed = np.asarray(valid.any(axis=-1))[..., None]  # (h, w, 1)
    static = np.where(observed, static, np.nan).astype(np.float32)
    return np.concatenate([bands, static.transpose(2, 0, 1)])


def _write_chunk(path: Path, bands: np.ndarray, crs: Any, transform: Any, names: list[str],
                 dtype: str = "float32", scale: float = 1.0) -> Path:
    """Write one chunk's bands, (T*C, h, w) float32 with NaN = invalid, atomically.

    With ``dtype="int16"``: scaled by ``scale``, nodata -10000 (:func:`to_int16`).
    """
    count, height, width = bands.shape
    nodata = np.nan if dtype == "float32" else INT16_NODATA
    profile = geotiff_profile(width, height, count, dtype, crs, transform, nodata=nodata)
    data = bands if dtype == "float32" else to_int16(bands, scale)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = tuple(names)
        if dtype == "int16":
            dst.scales = (1.0 / scale,) * count
    return path


#: iota2's int16 nodata value
INT16_NODATA = -10000


def chunk_windows(width: int, height: int, chunk_size: int,
                  number_of_chunks: int | None = None) -> list[Window]:
    """The chunks of a tile: square blocks, or ``number_of_chunks`` row strips.

    Raises:
        ConfigError: ``chunk_size`` < 1, or ``number_of_chunks`` < 1 or more than the rows.
    """
    if number_of_chunks is None:
        return block_windows(width, height, chunk_size, "features_map.chunk_size")
    n = int(number_of_chunks)
    if n < 1 or n > height:
        raise ConfigError(f"features_map.number_of_chunks={number_of_chunks}: give 1 to the "
                          f"tile's {height} rows")
    edges = np.linspace(0, height, n + 1).round().astype(int)
    return [Window(0, int(a), width, int(b - a)) for a, b in zip(edges[:-1], edges[1:],
                                                                 strict=True)]


def to_int16(bands: np.ndarray, scale: float) -> np.ndarray:
    """float32 bands (NaN = invalid) -> iota2's int16 (see module doc)."""
    ok = np.isfinite(bands)
    scaled = np.clip(np.round(np.where(ok, bands, 0.0) * scale), -32767, 32767)
    scaled[ok & (scaled == INT16_NODATA)] = INT16_NODATA + 1
    return np.where(ok, scaled, INT16_NODATA).astype(np.int16)


def window_span(win: Window) -> str:
    """``rows r0-r1, cols c0-c1`` of a window (end excluded), for task names.

    Args:
        win: a rasterio window (pixel offsets and sizes).

    Returns:
        the text, e.g. ``rows 0-512, cols 512-1024`` (shared by features-map's chunk tasks
        and infer's window tasks, :mod:`i2dl.maps.cluster`).
    """
    r0, c0 = int(win.row_off), int(win.col_off)
    return f"rows {r0}-{r0 + int(win.height)}, cols {c0}-{c0 + int(win.width)}"


def _sensor_dates(source: Any) -> dict[str, list]:
    """Acquisition dates per sensor of a feature stack, or ``{"stack": dates}``."""
    sensors = getattr(source, "sensors", None)
    if isinstance(sensors, dict):
        return {name: list(s.dates) for name, s in sensors.items()}
    return {"stack": list(source.dates)}


def _feature_chunk(source: Any, tile: str, out: Path, i: int, win: Window, names: list[str],
                   dtype: str, scale: float) -> tuple[Path, np.ndarray]:
    """Write chunk ``i`` of a tile: ``<out>/customF/<tile>_chunk_<i>.tif``.

    Returns:
        The chunk's path, and its common mask (h, w) uint8: 1 = a valid date.
    """
    x, valid = source.read(win)  # (h, w, T, C)
    bands = feature_bands(x, valid, len(static_names(source)))
    transform = rasterio.windows.transform(win, source.transform)
    path = _write_chunk(out / "customF" / f"{tile}_chunk_{i}.tif", bands, source.crs,
                        transform, names, dtype, scale)
    return path, valid.any(axis=-1).astype(np.uint8)


def feature_chunk_task(data: Mapping[str, Any], tile_key: str | None, tile: str, out: str,
                       i: int, win: Window, names: list[str], dtype: str,
                       scale: float) -> tuple[Path, np.ndarray]:
    """The Dask task of one chunk: :func:`_feature_chunk` on the worker's open source."""
    return _feature_chunk(worker_source(data, tile_key), tile, Path(out), i, win, names, dtype,
                          scale)


#: side (pixels) of the blocks in which :func:`merge_chunks` copies a chunk
MERGE_BLOCK = 256


def merge_chunks(paths: Sequence[Path], windows: Sequence[Window], target: Path,
                 names: list[str], dtype: str, nodata: float, crs: Any, transform: Any,
                 width: int, height: int) -> Path:
    """The chunk files of a tile copied into one tile raster, one chunk open at a time.

    Gives what :func:`i2dl.io.geotiff.mosaic` gives for chunks that tile the grid (they
    do not overlap), in memory that does not grow with the tile (GDAL keeps a decoded
    block per open pixel-interleaved dataset outside its block cache, 256^2 x 700 float32
    bands = 183 MB; issue 23), and faster: each chunk is copied by ``MERGE_BLOCK``^2
    blocks to its known window, with no nodata compositing (46 s against ``mosaic``'s 63 s
    for 4 x 4 chunks when ``mosaic`` held every input open, docs/benchmarks.md).

    Args:
        paths: the chunk rasters, one per window, on the tile's grid.
        windows: each chunk's window on the tile.
        target: the tile raster (written atomically).
        names: the band descriptions.
        dtype: ``float32`` or ``int16``.
        nodata: the nodata value (NaN or -10000).
        crs: the tile's CRS.
        transform: the tile's affine transform.
        width: the tile's width, pixels.
        height: the tile's height, pixels.

    Returns:
        ``target``.
    """
    profile = geotiff_profile(width, height, len(names), dtype, crs, transform, nodata)
    with atomic_path(target) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for path, win in zip(paths, windows, strict=True):
            r0, c0 = int(win.row_off), int(win.col_off)
            with rasterio.open(path) as src:
                for part in block_windows(src.width, src.height, MERGE_BLOCK):
                    dst.write(src.read(window=part), window=Window(
                        c0 + int(part.col_off), r0 + int(part.row_off), int(part.width),
                        int(part.height)))
        dst.descriptions = tuple(names)
    return target


def write_tile_features(source: Any, tile: str, out: Path, chunk_size: int,
                        number_of_chunks: int | None = None, dtype: str = "float32",
                        scale: float = 1.0, run_tasks: TaskRunner | None = None,
                        opens: tuple[Mapping[str, Any], str | None] | None = None) -> Path:
    """Write one tile's features chunk by chunk, then merge the chunks.

    Args:
        source: the tile's :class:`~i2dl.io.sensors.base.TimeSeriesSource`.
        tile: tile name used in the file names.
        out: the run folder.
        chunk_size: chunk (block window) side in pixels.
        number_of_chunks: iota2's ``number_of_chunks``: that many row strips instead.
        dtype: ``float32`` (NaN = invalid) or ``int16`` (iota2's; see module doc).
        scale: int16 scale factor (value * scale is written).
        run_tasks: runs the chunks as Dask tasks (``dask.engine=dask``); None = in turn,
            in this process.
        opens: with ``run_tasks``, how a worker opens the tile: the ``data`` config as
            plain containers and the tile (:func:`worker_source`).

    Returns:
        ``<out>/by_tiles/<tile>.tif``.

    Raises:
        ConfigError: ``chunk_size`` < 1, bad ``number_of_chunks``, ``dtype`` or ``scale``;
            ``run_tasks`` without ``opens``.
        I2dlError: with ``run_tasks``, a chunk failed its last attempt (tile and chunk
            named, see :func:`i2dl.maps.cluster.task_failure`).
    """
    if dtype not in ("float32", "int16"):
        raise ConfigError(f"features_map.dtype={dtype!r}: use float32 or int16")
    if dtype == "int16" and not float(scale) > 0:
        raise ConfigError(f"features_map.scale must be > 0, got {scale}")
    names = band_descriptions(source)
    windows = chunk_windows(source.width, source.height, chunk_size, number_of_chunks)
    tmp_dir = out / "features" / tile / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    for sensor, dates in _sensor_dates(source).items():
        write_text_atomic(tmp_dir / f"{sensor}_{tile}_input_dates.txt",
                          "".join(f"{d:%Y%m%d}\n" for d in dates))
        write_text_atomic(tmp_dir / f"{sensor}_{tile}_interpolation_dates.txt",
                          "".join(f"{d:%Y%m%d}\n" for d in source.dates))
    mask_profile = geotiff_profile(source.width, source.height, 1, "uint8", source.crs,
                                   source.transform, None)
    if run_tasks is None:
        done: Any = (_feature_chunk(source, tile, out, i, win, names, dtype, float(scale))
                     for i, win in enumerate(windows))
    elif opens is None:
        raise ConfigError("write_tile_features: run_tasks needs opens=(data, tile)")
    else:
        done = run_tasks([(f"tile {tile}, chunk {i} (window {window_span(win)})",
                           f"write_features_{tile}_chunk_{i}", feature_chunk_task,
                           (opens[0], opens[1], tile, str(out), i, win, names, dtype,
                            float(scale)))
                          for i, win in enumerate(windows)])
    chunks = []
    with Progress() as bar, atomic_path(tmp_dir / "MaskCommunSL.tif") as mask_tmp, \
            rasterio.open(mask_tmp, "w", **mask_profile) as mask_dst:
        task = bar.add_task(f"features {tile}", total=len(windows))
        for win, (path, common) in zip(windows, done, strict=True):
            mask_dst.write(common[None], window=win)
            chunks.append(path)
            bar.advance(task)
    nodata = np.nan if dtype == "float32" else INT16_NODATA
    merged = merge_chunks(chunks, windows, out / "by_tiles" / f"{tile}.tif", names, dtype,
                          nodata, source.crs, source.transform, source.width, source.height)
    if dtype == "int16":
        with rasterio.open(merged, "r+") as dst:
            dst.scales = (1.0 / float(scale),) * dst.count
    return merged

