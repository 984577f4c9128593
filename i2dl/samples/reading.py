"""Reading the labelled samples: pixels under the polygons, segments, or table rows.

The pixels of a raster under the reference polygons, the segments of a segmentation, or
the rows of a pixel table.

What :func:`i2dl.samples.extract.prepare` stores: each reader returns the small
per-sample arrays (mask, row, col, polygon, region, ...) and the grid's attributes, and
appends the (N, T, C) series to a :class:`SampleSpool` file.
"""

from __future__ import annotations

import logging
import warnings
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.windows
from omegaconf import DictConfig, OmegaConf
from rasterio.windows import Window
from rich.progress import track
from shapely.geometry import box

from i2dl.builders.obia import STATS, segment_samples, segmentation_for
from i2dl.errors import ConfigError, InputDataError
from i2dl.features.feature_maps import TaskRunner, worker_source
from i2dl.features.source import data_tiles, open_source, stack_feature_options
from i2dl.io.geotiff import block_windows
from i2dl.io.nomenclature import read_class_names
from i2dl.io.raster import days_since, read_dates_file, read_series_window
from i2dl.io.table import PixelTable, read_pixel_table
from i2dl.io.vector import burn_window, read_reference
from i2dl.samples.class_statistics import MissingSamplesWarning, warn_polygons_without_samples
from i2dl.samples.regions import read_regions

log = logging.getLogger(__name__)

#: Window side (pixels) of the blocks in which polygons are burnt and samples read; only
#: the bounding box of the labelled pixels of a block is read (see _extract).
EXTRACT_BLOCK = 256


def _grid_attrs(dates: list, days: np.ndarray, band_names: list[str],
                static: list[str] | None = None) -> dict[str, Any]:
    return {
        "dates": [d.isoformat() for d in dates],
        "reference_date": dates[0].isoformat() if dates else None,
        "days": days.tolist(),
        "band_names": list(band_names),
        # date-independent channels (user/external features): each is one feature
        "static_channels": list(static or []),
    }


def _bounds(src: Any) -> tuple[float, float, float, float]:
    left, top = src.transform.c, src.transform.f
    right = left + src.transform.a * src.width
    bottom = top + src.transform.e * src.height
    return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))


class SampleSpool:
    """The (N, T, C) float32 series of the samples, appended to a file as they are read.

    ``prepare`` holds only the small per-sample arrays (mask, row, col, polygon) in
    memory; the series go to this file (beside the store, named as a temporary of it so
    that a killed run's spool is removed by the next one) and are read back as a
    :class:`numpy.memmap`, then written to the store by slices.

    Args:
        path: the file to create (must not exist).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh: Any = None
        self.n = 0

    def append(self, x: np.ndarray) -> None:
        """Append (n, T, C) samples."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "xb")  # noqa: SIM115 (closed by array/remove)
        self._fh.write(np.ascontiguousarray(x, dtype=np.float32).tobytes())
        self.n += len(x)

    def array(self, n_dates: int, n_channels: int) -> np.ndarray:
        """Every appended sample: (N, T, C) float32, a read-only memmap (N > 0)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.n == 0:
            return np.zeros((0, n_dates, n_channels), dtype=np.float32)
        return np.memmap(self.path, dtype=np.float32, mode="r",
                         shape=(self.n, n_dates, n_channels))

    def remove(self) -> None:
        """Close and delete the file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)


def samples_from_raster(
    data: DictConfig, sampling: DictConfig, spool: SampleSpool,
    run_tasks: TaskRunner | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[int, str]]:
    """Rasterise the reference polygons and extract the labelled pixels' series.

    With several tiles (``data.list_tile``), every tile is read (same dates and channels
    required) and the samples of all tiles go to one store with their ``tile`` index.
    Tiles of different CRS need ``data.proj`` (iota2 ``chain.proj``): each is then read on
    the output grid (:func:`i2dl.features.source.output_grid`), the polygons reprojected
    to it, and the samples' ``row``/``col`` are pixels of that grid.
    With ``sampling.region_file``, every sample gets the region its pixel falls in and
    samples outside every region are dropped. With ``run_tasks`` (``dask.engine=dask``)
    each row of extraction blocks of a tile is a Dask task (:func:`_extract`).

    Returns:
        ``(arrays, attrs, class_names)``: the per-sample arrays (``X`` the spooled series),
        the grid's attributes, and code -> name of the classes of the polygons on the grid.

    Warns:
        MissingSamplesWarning: polygons that gave no sample (no pixel centre inside, no
            valid observation, outside every region), listed per class
            (:func:`i2dl.samples.class_statistics.warn_polygons_without_samples`).
    """
    tiles = data_tiles(data)
    each_tile: list[str | None] = [*tiles] or [None]
    sources = []
    try:
        for tile in each_tile:
            sources.append(open_source(data, tile))
        first = sources[0]
        for tile, src in zip(tiles, sources, strict=False):
            if (src.dates, src.band_names) != (first.dates, first.band_names):
                raise InputDataError(
                    f"tile {tile} has {src.n_dates} dates x {src.band_names} but tile "
                    f"{tiles[0]} has {first.n_dates} x {first.band_names}: all tiles of one "
                    "store need the same dates and channels (enable data.gapfilling with a "
                    "temporal_resolution to put sensors on a common date grid)"
                )
            if src.crs != first.crs:
                raise InputDataError(
                    f"tile {tile} is in {src.crs} but tile {tiles[0]} in {first.crs}: tiles of "
                    "one run are mapped on one grid. Set data.proj (iota2's chain.proj, e.g. "
                    "data.proj=EPSG:2154) and data.spatial_resolution (e.g. 10) to reproject "
                    "every tile onto it"
                )
        boxes = np.array([_bounds(s) for s in sources])
        union = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
        nomenclature = read_class_names(data.nomenclature) if data.get("nomenclature") else None
        ref = read_reference(
            data.reference,
            data.data_field,
            first.crs,
            union,
            explode_multipolygons=bool(sampling.get("explode_multipolygons", False)),
            make_valid=bool(sampling.get("make_valid", False)),
            nomenclature=nomenclature,
        )
        regions = None
        if sampling.get("region_file"):
            regions = read_regions(sampling.region_file, sampling.region_field, first.crs)
        parts, n_labelled = [], 0
        codes = np.arange(len(ref.polygons))
        plain: Any = OmegaConf.to_container(data, resolve=True)  # what a Dask worker opens
        for t, src in enumerate(sources):
            part, n_tile = _extract(src, ref.polygons, codes, regions, tiles[t] if tiles else "-",
                                    spool, run_tasks, (plain, each_tile[t]))
            n_labelled += n_tile
            if part is None:
                continue
            part["tile"] = np.full(len(part["mask"]), t, dtype=np.int32)
            parts.append(part)
        if not parts and n_labelled:
            files = ", ".join(str(s.path) for s in sources)
            raise InputDataError(
                f"none of the {n_labelled} pixels under the polygons of {data.reference} has "
                f"a valid observation in {files}: every value there is NaN, the nodata value "
                "or masked by data.masks (an all-NaN or all-nodata raster?). Check the raster "
                "(gdalinfo -stats) and data.masks"
            )
        if not parts:
            raise ConfigError(
                f"no pixel centre of {first.path} falls in a polygon of {data.reference}: "
                "the polygons may be smaller than a pixel or outside every region"
            )
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        arrays["X"] = spool.array(first.n_dates, first.n_channels)
        rows_poly = arrays.pop("_poly_row")
        arrays["polygon_id"] = ref.polygons["polygon_id"].to_numpy()[rows_poly]
        arrays["code"] = ref.polygons["code"].to_numpy()[rows_poly]
        warn_polygons_without_samples(
            ref.polygons["polygon_id"].to_numpy(), ref.polygons["code"].to_numpy(),
            arrays["polygon_id"], {**ref.class_names, **(nomenclature or {})},
            f"{data.reference} on {', '.join(str(s.path) for s in sources)}",
        )
        attrs = _grid_attrs(first.dates, days_since(first.dates, first.dates[0]), first.band_names,
                            list(getattr(first, "static_names", [])))
        attrs.update(
            {
                "string_labels": ref.string_labels,
                "crs": first.crs.to_wkt() if first.crs else "",
                "transform": list(first.transform)[:6],
                "width": first.width,
                "height": first.height,
                "tiles": [
                    {"name": tiles[i] if tiles else None, "transform": list(s.transform)[:6],
                     "width": s.width, "height": s.height}
                    for i, s in enumerate(sources)
                ],
                "regions": (
                    sorted(int(r) for r in np.unique(arrays["region"]))
                    if regions is not None else []
                ),
            }
        )
    finally:
        for src in sources:
            src.close()
    return arrays, attrs, ref.class_names


def segments_path_of(store: Path) -> Path:
    """Where an OBIA store keeps its computed or rasterised segmentation: beside it."""
    return store.with_name(store.name.removesuffix(".zarr") + ".segments.tif")


def samples_from_segments(
    cfg: DictConfig, obia: dict[str, Any], store: Path
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[int, str]]:
    """The labelled segments of the tile as samples (iota2 ``i2_obia``, :mod:`i2dl.builders.obia`).

    Raises:
        ConfigError: a pixel table, several tiles or eco-regions (not supported with OBIA).
    """
    data, sampling = cfg.data, cfg.sampling
    if data.get("table"):
        raise ConfigError("obia.enabled classifies segments of a raster: data.table has none")
    if len(data_tiles(data)) > 1:
        raise ConfigError("obia.enabled runs on one tile: set data.tile, not several list_tile")
    if sampling.get("region_file"):
        raise ConfigError("obia.enabled does not support eco-regions (sampling.region_file) yet")
    stats = list(obia.get("stats_used") or STATS)
    with open_source(data) as src:
        ref = read_reference(
            data.reference, data.data_field, src.crs, _bounds(src),
            explode_multipolygons=bool(sampling.get("explode_multipolygons", False)),
            make_valid=bool(sampling.get("make_valid", False)),
            nomenclature=(
                read_class_names(data.nomenclature) if data.get("nomenclature") else None
            ),
        )
        segments = segmentation_for(src, obia, segments_path_of(store))
        arrays, names = segment_samples(src, segments, ref.polygons, stats,
                                        float(obia.get("min_fraction", 0.5)))
        log.info("OBIA: %d labelled segments of %s (%s)", len(arrays["code"]), segments,
                 ", ".join(stats))
        attrs = _grid_attrs(src.dates, days_since(src.dates, src.dates[0]) if src.dates
                            else np.arange(src.n_dates), names)
        attrs.update({
            "string_labels": ref.string_labels,
            "crs": src.crs.to_wkt() if src.crs else "",
            "transform": list(src.transform)[:6],
            "width": src.width,
            "height": src.height,
            "tiles": [{"name": data_tiles(data)[0] if data_tiles(data) else None,
                       "transform": list(src.transform)[:6], "width": src.width,
                       "height": src.height}],
            "regions": [],
            "obia": {"segments": str(segments), "stats_used": stats},
        })
    return arrays, attrs, ref.class_names


def samples_from_table(
    data: DictConfig,
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[int, str]]:
    """Read a pixel table; dates from ``data.dates_file`` or a count ``data.n_dates``.

    Rows of class code 0 (no data) are dropped with a warning; polygon ids beyond int64 are
    renumbered losslessly, with a warning (see :func:`_read_table`).

    Returns:
        ``(arrays, attrs, class_names)``: the per-sample arrays, the attributes
        (``polygon_ids``: the original ids by stored id, when they were renumbered), and
        code -> str(code) for every class of the table.

    Raises:
        ConfigError: feature options (indices, gap-filling, user or external features) are
            set: they work on rasters, not on a table's rows, and are never ignored.
    """
    options = stack_feature_options(data)
    if options:
        raise ConfigError(
            f"data.{', data.'.join(options)} compute features from rasters, but "
            f"{data.table} is a pixel table: remove them (compute the features before "
            "writing the table), or use a raster"
        )
    band_names = list(data.get("band_names") or ["band1"])
    if data.get("dates_file"):
        dates = read_dates_file(data.dates_file)
        days = days_since(dates, dates[0])
    elif data.get("n_dates"):
        dates = []
        days = np.arange(int(data.n_dates), dtype=np.int64) * int(data.get("date_step_days", 1))
        log.info(
            "%s: no acquisition dates given, day offsets are the date index x %d day(s)",
            data.table,
            int(data.get("date_step_days", 1)),
        )
    else:
        raise ConfigError(
            "a pixel table (data.table) needs data.dates_file (one date a line) or "
            "data.n_dates (the number of dates per row)"
        )
    table, original_ids = _read_table(
        Path(str(data.table)), len(days), len(band_names), int(data.get("label_offset", 0))
    )
    keep = table.valid.any(axis=1)
    if (~keep).any():
        log.info("%d table row(s) with no valid date dropped", int((~keep).sum()))
    n = int(keep.sum())
    if n == 0:
        raise ConfigError(f"{data.table} holds no sample with a valid date")
    arrays = {
        "X": table.x[keep],
        "mask": table.valid[keep],
        "code": table.codes[keep],
        "polygon_id": table.polygon_id[keep],
        "row": np.full(n, -1, dtype=np.int32),
        "col": np.full(n, -1, dtype=np.int32),
    }
    attrs = _grid_attrs(dates, days, band_names)
    attrs.update({"string_labels": False, "crs": "", "transform": [1, 0, 0, 0, 1, 0],
                  "width": 0, "height": 0})
    if original_ids is not None:
        attrs["polygon_ids"] = original_ids
    # every class of the table, rows without a valid date included
    return arrays, attrs, {int(c): str(int(c)) for c in np.unique(table.codes)}


def _read_table(
    path: Path, n_dates: int, n_channels: int, label_offset: int
) -> tuple[PixelTable, list[str] | None]:
    """:func:`i2dl.io.table.read_pixel_table`, with polygon ids and no-data rows checked.

    Rows of class code 0 (no data) are dropped by the reader: a warning says how many and
    why. Polygon ids beyond int64 (cast to -2**63 or wrapped by numpy) are read again
    exactly and replaced by their rank among the sorted distinct ids, losslessly.

    Returns:
        The table, and the original polygon ids by rank (decimal strings) when the ids
        were replaced, else None.

    Raises:
        InputFileNotFoundError, InputDataError: see :func:`read_pixel_table`.

    Warns:
        MissingSamplesWarning: rows of class code 0 dropped; polygon ids renumbered.
    """
    with warnings.catch_warnings():  # ids beyond int64: numpy's cast warning; read below
        warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
        table = read_pixel_table(path, n_dates, n_channels, label_offset)
    lines, labels, ids = _key_cells(path)
    dropped = len(labels) - len(table.codes)
    if dropped:
        msg = (
            f"{path}: {dropped} of {len(labels)} rows have class code 0 (label "
            f"{-label_offset} + data.label_offset={label_offset}), which means no data: "
            "they are ignored. If that label is a class (labels counted from 0, as in the "
            f"TempCNN tables), set data.label_offset={label_offset + 1} so that every class "
            "code is >= 1 and the codes match the nomenclature"
        )
        log.warning("%s", msg)
        warnings.warn(msg, MissingSamplesWarning, stacklevel=3)
    if not (table.polygon_id < 0).any():  # ids beyond int64 come out negative
        return table, None
    exact = [_int_cell(t, path, ln, 2) for t, ln in zip(ids, lines, strict=True)]
    low, high = _INT64
    beyond = [(v, ln) for v, ln in zip(exact, lines, strict=True) if not low <= v <= high]
    if not beyond:
        return table, None
    keep = [_int_cell(t, path, ln, 1) + label_offset != 0
            for t, ln in zip(labels, lines, strict=True)]
    kept = [v for v, k in zip(exact, keep, strict=True) if k]
    if len(kept) != len(table.codes):  # a guard: the two readings disagree
        raise InputDataError(
            f"{path}, column 2: polygon id {beyond[0][0]} (line {beyond[0][1]}) is beyond "
            "int64; renumber the polygon ids to integers below 2**63"
        )
    distinct = sorted(set(kept))
    rank = {v: i for i, v in enumerate(distinct)}
    msg = (
        f"{path}, column 2 (polygon id): {len({v for v, _ in beyond})} id(s) beyond int64, "
        f"e.g. {beyond[0][0]} on line {beyond[0][1]}; i2dl stores polygon ids as int64, so "
        f"every id is replaced by its rank 0..{len(distinct) - 1} among the sorted distinct "
        "ids (pixels keep their polygon grouping; the store's polygon_ids attribute lists "
        "the original ids by rank)"
    )
    log.warning("%s", msg)
    warnings.warn(msg, MissingSamplesWarning, stacklevel=3)
    table = PixelTable(x=table.x, valid=table.valid, codes=table.codes,
                       polygon_id=np.array([rank[v] for v in kept], dtype=np.int64))
    return table, [str(v) for v in distinct]


#: Range of int64, the dtype of stored polygon ids.
_INT64 = (-(2**63), 2**63 - 1)


def _key_cells(path: Path) -> tuple[list[int], list[str], list[str]]:
    """Line numbers, class cells and polygon-id cells of a pixel table's non-blank rows.

    The rows are those of :func:`i2dl.io.table.read_pixel_table` (blank lines skipped), so
    that they align with its samples before its no-data rows are dropped.
    """
    lines, labels, ids = [], [], []
    for i, ln in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if ln.strip():
            cells = ln.split(",", 2)
            lines.append(i)
            labels.append(cells[0])
            ids.append(cells[1] if len(cells) > 1 else "")
    return lines, labels, ids


def _int_cell(text: str, path: Path, line: int, column: int) -> int:
    """An integer cell, exactly (no float rounding), e.g. ``18446744073709551617`` or ``5.0``.

    Raises:
        InputDataError: not an integer (file, line and column named).
    """
    cell = text.strip().strip("\"'").strip()
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        value = Decimal(cell)
        if value == value.to_integral_value():
            return int(value)
    except (InvalidOperation, ValueError):
        pass
    raise InputDataError(
        f"{path}, line {line}, column {column}: {cell!r} is not an integer; column 1 is the "
        "class, column 2 the polygon id"
    )


def _extract_block(
    series: Any, polygons: Any, rows: np.ndarray, regions: Any | None, win: Window,
) -> tuple[np.ndarray, dict[str, np.ndarray] | None, tuple[int, int, int]]:
    """The labelled pixels of one block: ``(x, arrays, (labelled, outside, no valid))``.

    Only the polygons (and eco-regions) that reach the block are burnt
    (:func:`i2dl.io.vector.burn_window`), and only the bounding box of its labelled pixels
    is read. ``x`` (n, T, C) are the kept series, ``arrays`` their ``mask``, ``row``,
    ``col``, ``_poly_row`` and ``region`` (None without a labelled pixel).
    """
    sub = burn_window(polygons, rows, series.transform, win)
    rr, cc = np.nonzero(sub >= 0)
    n_outside = 0
    if len(rr) and regions is not None:
        reg = burn_window(regions, regions["region"].to_numpy(), series.transform, win)
        inside = reg[rr, cc] >= 0
        n_outside = int((~inside).sum())
        rr, cc = rr[inside], cc[inside]
    if len(rr) == 0:
        return np.zeros(0, np.float32), None, (0, n_outside, 0)
    r_lo, c_lo = int(rr.min()), int(cc.min())
    r0, c0 = int(win.row_off) + r_lo, int(win.col_off) + c_lo
    crop = Window(c0, r0, int(cc.max()) - c_lo + 1, int(rr.max()) - r_lo + 1)
    x, valid = read_series_window(series, crop)
    x, valid = x[rr - r_lo, cc - c_lo], valid[rr - r_lo, cc - c_lo]
    keep = valid.any(axis=1)
    part = {
        "mask": valid[keep],
        "row": (rr[keep] + int(win.row_off)).astype(np.int32),
        "col": (cc[keep] + int(win.col_off)).astype(np.int32),
        "_poly_row": sub[rr, cc][keep],
        "region": (reg[rr, cc][keep].astype(np.int32) if regions is not None
                   else np.zeros(int(keep.sum()), dtype=np.int32)),
    }
    return x[keep], part, (len(rr), n_outside, int((~keep).sum()))


def extract_strip_task(
    data: dict[str, Any], tile: str | None, polygons: Any, rows: np.ndarray,
    regions: Any | None, windows: list[Window],
) -> list[tuple[np.ndarray, dict[str, np.ndarray] | None, tuple[int, int, int]]]:
    """The Dask task of a strip of blocks: :func:`_extract_block` of each, in order.

    ``polygons``, ``rows``, ``regions``: those reaching the strip, in order (same burns).
    """
    series = worker_source(data, tile)
    return [_extract_block(series, polygons, rows, regions, w) for w in windows]


def _near(frame: Any, bounds: tuple[float, ...], values: np.ndarray | None = None) -> Any:
    """The rows of ``frame`` whose bounding box meets ``bounds``, in order (and their values)."""
    idx = np.sort(frame.sindex.query(box(*bounds)))
    part = frame.iloc[idx].reset_index(drop=True)
    return part if values is None else (part, np.asarray(values)[idx])


def _strip_tasks(
    series: Any, polygons: Any, rows: np.ndarray, regions: Any | None, tile: str,
    opens: tuple[dict[str, Any], str | None], windows: list[Window],
) -> list[tuple[str, str, Any, tuple[Any, ...]]]:
    """One task per row of blocks: ``(name, log stem, fn, args)`` for a task runner."""
    strips: dict[int, list[Window]] = {}
    for w in windows:
        strips.setdefault(int(w.row_off), []).append(w)
    geometry = polygons[[polygons.geometry.name]]
    tasks = []
    for r0, strip in strips.items():
        whole = Window(0, r0, series.width, int(strip[0].height))
        bounds = rasterio.windows.bounds(whole, series.transform)
        near, values = _near(geometry, bounds, rows)
        reg = None if regions is None else _near(regions[["region", regions.geometry.name]],
                                                 bounds)
        r1 = r0 + int(whole.height)
        where = f"tile {tile}" if tile != "-" else f"raster {Path(str(series.path)).name}"
        tasks.append((f"{where}, sample extraction of rows {r0}-{r1}",
                      f"extract_samples_{tile if tile != '-' else 'raster'}_rows_{r0}-{r1}",
                      extract_strip_task,
                      (opens[0], opens[1], near, values, reg, strip)))
    return tasks


def _extract(
    series: Any,
    polygons: Any,
    rows: np.ndarray,
    regions: Any | None,
    tile: str,
    spool: SampleSpool,
    run_tasks: TaskRunner | None = None,
    opens: tuple[dict[str, Any], str | None] | None = None,
) -> tuple[dict[str, np.ndarray] | None, int]:
    """Read the series of every pixel whose centre a polygon covers, block by block.

    The grid is cut into ``EXTRACT_BLOCK`` windows (:func:`_extract_block`). Time and
    memory follow the labelled pixels, not the grid: no whole-grid array is made, and
    blocks without a polygon cost a spatial-index query. With ``run_tasks`` every row of
    blocks is a Dask task (:func:`extract_strip_task`); the blocks' samples are spooled in
    the same order, so the store is that of the serial run.

    Args:
        series: the opened time series.
        polygons: reference polygons in the series' CRS.
        rows: (P,) value burnt for each polygon (its row in ``polygons``).
        regions: eco-regions (``region`` column) or None.
        tile: the tile's name, for messages.
        spool: receives the series ``X`` of the samples, in sample order.
        run_tasks: runs the strips as Dask tasks; None = in turn, in this process.
        opens: with ``run_tasks``, ``(data, tile)`` that a worker opens.

    Returns:
        ``(arrays, n_labelled)``: ``mask``, ``row``, ``col``, ``_poly_row`` and
        ``region`` of the labelled pixels with a valid date (None if there is none), and
        the number of labelled pixels (inside a region when there are regions).
    """
    windows = block_windows(series.width, series.height, EXTRACT_BLOCK)
    if run_tasks is None or opens is None:
        blocks: Any = ([_extract_block(series, polygons, rows, regions, w)]
                       for w in track(windows, description="extracting samples",
                                      disable=len(windows) < 4))
    else:
        blocks = run_tasks(_strip_tasks(series, polygons, rows, regions, tile, opens,
                                        windows))
    parts: list[dict[str, np.ndarray]] = []
    counts = np.zeros(3, dtype=np.int64)  # labelled, outside every region, no valid date
    for results in blocks:
        for x, part, n in results:
            counts += n
            if part is not None:
                spool.append(x)
                parts.append(part)
    n_labelled, n_outside, n_no_valid = (int(v) for v in counts)
    if n_outside:
        log.info("tile %s: %d labelled pixel(s) in no region dropped", tile, n_outside)
    if n_no_valid:
        log.info("%d labelled pixel(s) with no valid acquisition date dropped", n_no_valid)
    if not any(len(p["mask"]) for p in parts):
        return None, n_labelled
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, n_labelled
