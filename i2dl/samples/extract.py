"""Stage ``prepare``: time-series raster + reference polygons -> Zarr sample store.

Steps (iota2's vector sampling, pixel-based): read and check the polygons, rasterise them
on the raster grid (pixel centres), split the polygons per class into learn/val
(:mod:`i2dl.samples.split`), extract every labelled pixel's series and validity mask
block by block, drop pixels with no valid date, compute learn-split per-channel statistics,
and write the store atomically. A store whose fingerprint (config + source file sizes and
modification times) matches is reused instead of rebuilt, once verified intact
(:func:`i2dl.samples.store.verify_store`); a damaged one is rebuilt with a warning, or refused when
``store.rebuild_damaged=false``. The build holds the store's
lock (:func:`i2dl.io.files.target_lock`): a second process preparing the same store waits,
then reuses it; temporaries left by a killed build are removed first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rasterio.windows import Window
from rich.progress import track

from i2dl.errors import ConfigError, InputDataError, StoreError
from i2dl.features.source import data_tiles, open_source, stack_feature_options, uses_sensors
from i2dl.io.files import remove_orphans, target_lock, temporary_name
from i2dl.io.geotiff import block_windows
from i2dl.io.nomenclature import read_class_names
from i2dl.io.raster import days_since, read_dates_file, read_series_window
from i2dl.io.table import read_pixel_table
from i2dl.io.vector import burn_window, read_reference
from i2dl.obia import STATS, obia_settings, segment_samples, segmentation_for
from i2dl.samples.regions import read_regions
from i2dl.samples.selection import (
    class_statistics,
    select_samples,
    selection_from_config,
    write_class_statistics,
)
from i2dl.samples.split import split_polygons
from i2dl.samples.store import (
    LEARN,
    SPLIT_NAMES,
    STORE_VERSION,
    RowsView,
    verify_store,
    write_store,
)

log = logging.getLogger(__name__)

#: Window side (pixels) of the blocks in which polygons are burnt and samples read; only
#: the bounding box of the labelled pixels of a block is read (see _extract).
EXTRACT_BLOCK = 256


def _source_files(cfg: DictConfig) -> list[Path]:
    """Every input file the store depends on (shapefile side-cars included)."""
    data = cfg.data
    if uses_sensors(data):
        roots = {Path(str(o["root"])) for o in data.sensors.values() if o and o.get("root")}
        roots |= {Path(str(data.user_features.root))} if data.get("user_features") else set()
        files = sorted(p for r in roots if r.is_dir() for p in r.rglob("*") if p.is_file())
        extra = [Path(data[k]) for k in ("reference", "nomenclature") if data.get(k)]
        ext = data.get("external_features")
        if ext and Path(str(ext.module)).is_file():
            extra.append(Path(str(ext.module)))
        return files + extra
    table = bool(data.get("table"))
    keys = ("table",) if table else ("raster", "reference")
    tiles: list[str | None] = [*data_tiles(data)] or [None]
    paths = [
        Path(str(data[k]).format(tile=t) if t else data[k])
        for k in (*keys, "dates_file", "nomenclature") if data.get(k) for t in tiles
    ]
    for key in ("region_file", "byclass_csv"):
        if cfg.sampling.get(key):
            paths.append(Path(str(cfg.sampling[key])))
    if not table:
        for m in data.get("masks") or []:
            path = m if isinstance(m, str) else m["path"]
            paths += [Path(str(path).format(tile=t) if t else path) for t in tiles]
        ref = Path(data.reference)
        if ref.suffix.lower() == ".shp" and ref.parent.is_dir():
            paths += [p for p in ref.parent.glob(ref.stem + ".*") if p != ref]
    return paths


def _file_stamp(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
    except OSError:
        return {"path": str(path), "exists": False}
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def store_fingerprint(cfg: DictConfig) -> str:
    """Hash of everything a store depends on: data and sampling config, source stamps.

    Returns:
        12 hexadecimal characters.
    """
    payload: dict[str, Any] = {
        "version": STORE_VERSION,
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "sampling": OmegaConf.to_container(cfg.sampling, resolve=True),
        "samples_per_chunk": int(cfg.store.samples_per_chunk),
        "normalization": normalization_method(cfg),
        "sources": [_file_stamp(p) for p in _source_files(cfg)],
    }
    obia = obia_settings(cfg)
    if obia is not None:  # only then: the fingerprints of pixel stores are unchanged
        payload["obia"] = obia
        seg = obia.get("segmentation_path")
        if seg and Path(seg).exists():
            payload["obia_segmentation"] = _file_stamp(Path(seg))
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def store_path(cfg: DictConfig) -> Path:
    """Where the store for this config lives: ``<store.dir>/<data.name>_seed<s>_<hash>.zarr``."""
    seed = cfg.sampling.random_seed
    name = f"{cfg.data.name}_seed{seed}_{store_fingerprint(cfg)}.zarr"
    return Path(cfg.store.dir) / name


def prepare(cfg: DictConfig) -> Path:
    """Build (or reuse) the sample store for ``cfg``.

    The samples come from a time-series raster + reference polygons (``data.raster``,
    ``data.reference``) or, when ``data.table`` is set, from a pixel table (see
    :func:`i2dl.io.table.read_pixel_table`). Either way the polygons are split per class
    into learn/val and the store is written atomically.

    Args:
        cfg: the composed config; uses ``data``, ``sampling`` and ``store``.

    Returns:
        Path of the complete store.

    Raises:
        InputFileNotFoundError, InputDataError: unusable raster, dates, masks, polygons or
            table (see :func:`i2dl.io.raster.open_time_series`,
            :func:`i2dl.io.vector.read_reference`, :func:`i2dl.io.table.read_pixel_table`);
            a window that cannot be read (damaged file: file and window named); no valid
            observation under the polygons (all-NaN or all-nodata raster: files named).
        ConfigError: bad sampling parameters, ``sampling.random_seed`` null (the CLI
            draws ``seed=null``), or no pixel centre in a polygon.
        StoreError: the existing store is damaged and ``store.rebuild_damaged`` is false
            (the message names the store and ``store.rebuild=true``).
    """
    if cfg.sampling.get("random_seed") is None:
        raise ConfigError(
            "sampling.random_seed is null (it follows seed): give seed=<integer>, or run "
            "through the CLI (`python -m i2dl prepare seed=null` draws a seed and records it)"
        )
    path = store_path(cfg)
    # one process builds a store, a concurrent one waits and reuses it; orphaned
    # temporaries of a killed build are removed under the lock
    with target_lock(path):
        return _prepare_locked(cfg, path)


def _prepare_locked(cfg: DictConfig, path: Path) -> Path:
    """:func:`prepare` under the store's lock."""
    fingerprint = store_fingerprint(cfg)
    if path.exists() and not cfg.store.get("rebuild", False):
        try:
            reusable = verify_store(path).attrs.get("fingerprint") == fingerprint
        except StoreError as exc:  # damaged, another layout version, or not a store
            if not cfg.store.get("rebuild_damaged", True):
                raise StoreError(
                    f"{exc}. Rebuild it with store.rebuild=true (or delete {path})"
                ) from None
            log.warning("%s; rebuilding it (store.rebuild_damaged=true)", exc)
            reusable = False
        if reusable:
            log.info("reusing up-to-date sample store %s (verified)", path)
            return path
    spool_target = path.with_name(path.name + ".spool")
    remove_orphans(spool_target)  # spools of killed runs
    spool = SampleSpool(temporary_name(spool_target))
    try:
        return _build_store(cfg, path, fingerprint, spool)
    finally:
        spool.remove()


def _build_store(cfg: DictConfig, path: Path, fingerprint: str, spool: SampleSpool) -> Path:
    """Extract, split, select and write the samples of ``cfg`` to the store ``path``."""
    data, sampling = cfg.data, cfg.sampling
    obia = obia_settings(cfg)
    if obia is not None:
        arrays, attrs, label_names = _samples_from_segments(cfg, obia, path)
    elif data.get("table"):
        arrays, attrs, label_names = _samples_from_table(data)
    else:
        arrays, attrs, label_names = _samples_from_raster(data, sampling, spool)

    pairs = np.unique(np.stack([arrays["polygon_id"], arrays["code"]]), axis=1)
    if pairs.shape[1] != len(np.unique(arrays["polygon_id"])):
        ids, counts = np.unique(pairs[0], return_counts=True)
        raise InputDataError(
            f"polygon ids {ids[counts > 1].tolist()[:20]} carry several classes in "
            f"{data.get('table') or data.reference}; a polygon must have one label. Give each "
            "polygon its own id"
        )
    arrays.setdefault("region", np.zeros(len(arrays["code"]), dtype=np.int32))
    arrays["split"] = _split(arrays, sampling)
    arrays.setdefault("tile", np.zeros(len(arrays["code"]), dtype=np.int32))
    x_all = arrays.pop("X")
    arrays, stats, keep = _select(arrays, sampling, label_names)
    rows = np.flatnonzero(keep)
    on_disk = isinstance(x_all, np.memmap)

    codes = sorted(int(c) for c in np.unique(arrays["code"]))
    nomenclature = read_class_names(data.nomenclature) if data.get("nomenclature") else {}
    names = [nomenclature.get(c, label_names.get(c, str(c))) for c in codes]
    learn = arrays["split"] == LEARN
    x_learn = RowsView(x_all, rows[learn]) if on_disk else x_all[rows[learn]]
    norm = learn_statistics(x_learn, arrays["mask"][learn], normalization_method(cfg))
    arrays["X"] = RowsView(x_all, rows) if on_disk else x_all[rows]  # type: ignore[assignment]
    attrs.update(
        {
            "fingerprint": fingerprint,
            "classes": [{"code": c, "name": nm} for c, nm in zip(codes, names, strict=True)],
            "norm": norm,
            "sources": [_file_stamp(p) for p in _source_files(cfg)],
            "data_field": data.get("data_field"),
            "sampling": OmegaConf.to_container(sampling, resolve=True),
            "counts": _counts(arrays["code"], arrays["split"], arrays["polygon_id"]),
        }
    )
    write_store(path, arrays, attrs, samples_per_chunk=int(cfg.store.samples_per_chunk))
    write_class_statistics(class_statistics_path(path), stats)
    _log_counts(attrs["counts"], names, codes)
    return path


def class_statistics_path(store: Path) -> Path:
    """iota2's ``class_statistics.csv`` of a store, written beside it."""
    return store.with_name(store.name.removesuffix(".zarr") + ".class_statistics.csv")


def _select(
    arrays: dict[str, np.ndarray], sampling: DictConfig, label_names: dict[int, str]
) -> tuple[dict[str, np.ndarray], Any, np.ndarray]:
    """Sample selection on the learn pixels, per region (val pixels are all kept).

    Returns:
        The arrays reduced to the selected learn pixels + all val pixels, the class
        statistics table (iota2 ``class_statistics.csv``), and the (N,) bool mask of the
        kept samples.
    """
    sel = selection_from_config(sampling, class_names=label_names)
    learn = arrays["split"] == LEARN
    keep = np.ones(len(arrays["code"]), dtype=bool)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keep[learn] = select_samples(arrays["code"][learn], groups=arrays["region"][learn], **sel)
    for w in caught:
        log.warning("%s", w.message)
    stats = class_statistics(
        arrays["code"], arrays["polygon_id"], arrays["split"], arrays["region"], keep,
        run=int(sampling.random_seed),
    )
    if not keep.all():
        log.info("sample selection (%s, %s): %d of %d learn pixels kept", sel["strategy"],
                 sel["sampler"], int(keep[learn].sum()), int(learn.sum()))
        arrays = {k: v[keep] for k, v in arrays.items()}
    return arrays, stats, keep


def _split(arrays: dict[str, np.ndarray], sampling: DictConfig) -> np.ndarray:
    """Learn/selection/val split of the polygons, class by class, separately in each region.

    ``sampling.ratio`` (iota2), ``selection_ratio``, ``folds``/``fold`` and ``random_seed``:
    see :func:`i2dl.samples.split.split_polygons`.

    One split unit per (region, polygon id): exploded MultiPolygon parts share their
    feature's id and so their side; a polygon cut by a region boundary is split per region.
    """
    split = np.full(len(arrays["code"]), LEARN, dtype=np.int8)
    for region in np.unique(arrays["region"]):
        sel = np.flatnonzero(arrays["region"] == region)
        pid = arrays["polygon_id"][sel]
        ids, first = np.unique(pid, return_index=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            split_of = split_polygons(
                ids, arrays["code"][sel][first], ratio=sampling.ratio,
                seed=int(sampling.random_seed),
                selection_ratio=sampling.get("selection_ratio", 0.0) or 0.0,
                folds=sampling.get("folds"), fold=int(sampling.get("fold", 0) or 0),
            )
        for w in caught:
            log.warning("region %d: %s", int(region), w.message)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        lookup = np.array([split_of[int(i)] for i in ids], dtype=np.int8)
        split[sel] = lookup[np.searchsorted(ids, pid)]
    return split


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


def _samples_from_raster(
    data: DictConfig, sampling: DictConfig, spool: SampleSpool
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[int, str]]:
    """Rasterise the reference polygons and extract the labelled pixels' series.

    With several tiles (``data.list_tile``), every tile is read (same dates and channels
    required) and the samples of all tiles go to one store with their ``tile`` index.
    With ``sampling.region_file``, every sample gets the region its pixel falls in and
    samples outside every region are dropped.
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
                    "one run must share a CRS"
                )
        boxes = np.array([_bounds(s) for s in sources])
        union = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
        ref = read_reference(
            data.reference,
            data.data_field,
            first.crs,
            union,
            explode_multipolygons=bool(sampling.get("explode_multipolygons", False)),
            make_valid=bool(sampling.get("make_valid", False)),
            nomenclature=(
                read_class_names(data.nomenclature) if data.get("nomenclature") else None
            ),
        )
        regions = None
        if sampling.get("region_file"):
            regions = read_regions(sampling.region_file, sampling.region_field, first.crs)
        parts, n_labelled = [], 0
        codes = np.arange(len(ref.polygons))
        for t, src in enumerate(sources):
            part, n_tile = _extract(src, ref.polygons, codes, regions, tiles[t] if tiles else "-",
                                    spool)
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


def _samples_from_segments(
    cfg: DictConfig, obia: dict[str, Any], store: Path
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[int, str]]:
    """The labelled segments of the tile as samples (iota2 ``i2_obia``, :mod:`i2dl.obia`).

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


def _samples_from_table(
    data: DictConfig,
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[int, str]]:
    """Read a pixel table; dates from ``data.dates_file`` or a count ``data.n_dates``.

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
    table = read_pixel_table(
        data.table, len(days), len(band_names), int(data.get("label_offset", 0))
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
    return arrays, attrs, {}


def _extract(
    series: Any,
    polygons: Any,
    rows: np.ndarray,
    regions: Any | None,
    tile: str,
    spool: SampleSpool,
) -> tuple[dict[str, np.ndarray] | None, int]:
    """Read the series of every pixel whose centre a polygon covers, block by block.

    The grid is cut into ``EXTRACT_BLOCK`` windows; in each, only the polygons (and
    eco-regions) that reach it are burnt (:func:`i2dl.io.vector.burn_window`), and only
    the bounding box of its labelled pixels is read. Time and memory follow the labelled
    pixels, not the grid: no whole-grid array is made, and blocks without a polygon cost
    a spatial-index query.

    Args:
        series: the opened time series.
        polygons: reference polygons in the series' CRS.
        rows: (P,) value burnt for each polygon (its row in ``polygons``).
        regions: eco-regions (``region`` column) or None.
        tile: the tile's name, for messages.
        spool: receives the series ``X`` of the samples, in sample order.

    Returns:
        ``(arrays, n_labelled)``: ``mask``, ``row``, ``col``, ``_poly_row`` and
        ``region`` of the labelled pixels with a valid date (None if there is none), and
        the number of labelled pixels (inside a region when there are regions).
    """
    parts: list[dict[str, np.ndarray]] = []
    n_no_valid = n_outside = n_labelled = 0
    windows = block_windows(series.width, series.height, EXTRACT_BLOCK)
    for win in track(windows, description="extracting samples", disable=len(windows) < 4):
        sub = burn_window(polygons, rows, series.transform, win)
        rr, cc = np.nonzero(sub >= 0)
        if len(rr) == 0:
            continue
        if regions is not None:
            reg = burn_window(regions, regions["region"].to_numpy(), series.transform, win)
            inside = reg[rr, cc] >= 0
            n_outside += int((~inside).sum())
            rr, cc = rr[inside], cc[inside]
            if len(rr) == 0:
                continue
        n_labelled += len(rr)
        r_lo, c_lo = int(rr.min()), int(cc.min())
        r0, c0 = int(win.row_off) + r_lo, int(win.col_off) + c_lo
        crop = Window(c0, r0, int(cc.max()) - c_lo + 1, int(rr.max()) - r_lo + 1)
        x, valid = read_series_window(series, crop)
        x, valid = x[rr - r_lo, cc - c_lo], valid[rr - r_lo, cc - c_lo]
        keep = valid.any(axis=1)
        n_no_valid += int((~keep).sum())
        spool.append(x[keep])
        parts.append(
            {
                "mask": valid[keep],
                "row": (rr[keep] + int(win.row_off)).astype(np.int32),
                "col": (cc[keep] + int(win.col_off)).astype(np.int32),
                "_poly_row": sub[rr, cc][keep],
                "region": (reg[rr, cc][keep].astype(np.int32) if regions is not None
                           else np.zeros(int(keep.sum()), dtype=np.int32)),
            }
        )
    if n_outside:
        log.info("tile %s: %d labelled pixel(s) in no region dropped", tile, n_outside)
    if n_no_valid:
        log.info("%d labelled pixel(s) with no valid acquisition date dropped", n_no_valid)
    if not any(len(p["mask"]) for p in parts):
        return None, n_labelled
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, n_labelled


#: ``store.normalization`` choices: name -> what ``(x - offset) / scale`` uses per channel.
NORMALIZATIONS = {
    "standard": "offset = mean, scale = standard deviation (z-score)",
    "quantile": "offset = 2 % quantile, scale = 98 % minus 2 % quantile (sits)",
}


def normalization_method(cfg: DictConfig) -> str:
    """``store.normalization`` (default ``standard``), checked.

    Raises:
        ConfigError: not one of :data:`NORMALIZATIONS`.
    """
    method = str(cfg.store.get("normalization", "standard"))
    if method not in NORMALIZATIONS:
        raise ConfigError(
            f"store.normalization={method!r} is not one of {sorted(NORMALIZATIONS)}: "
            "standard = (x - mean) / std, quantile = (x - q2%) / (q98% - q2%)"
        )
    return method


#: learn samples read at a time by :func:`learn_statistics`
STAT_ROWS = 65536


def learn_statistics(
    x: np.ndarray | RowsView, valid: np.ndarray, method: str = "standard"
) -> dict[str, Any]:
    """Per-channel statistics over the valid observations of the learn split.

    Args:
        x: (N, T, C) float32 unscaled series of the learn pixels (an array, or a
            :class:`i2dl.samples.store.RowsView` read ``STAT_ROWS`` rows at a time: memory does not
            grow with N, except for ``quantile``, which sorts every observation).
        valid: (N, T) bool, True = valid observation.
        method: ``standard`` or ``quantile`` (:data:`NORMALIZATIONS`): which statistics
            become the ``offset`` and ``scale`` of :meth:`i2dl.samples.store.StoreInfo.normalise`.
            ``quantile`` is sits' normalisation of deep-learning inputs
            (``(x - q02) / (q98 - q02)``, values outside the 2-98 % range not clipped), which
            an outlier (a cloud missed by the mask, a saturated band) cannot stretch.

    Returns:
        ``{"method", "mean", "std", "offset", "scale"}`` (and ``"q02"``, ``"q98"`` with
        ``quantile``), each statistic a list of C floats (JSON, the store's ``norm``
        attribute). A constant channel gets scale 1.

    Raises:
        ConfigError: no valid observation in the learn split.
        InputDataError: a valid observation is not finite (the readers mark NaN and
            +-inf invalid, so this is a guard: never an inf mean or a NaN std).
    """
    n_channels = x.shape[-1]
    count, mean, m2 = 0, np.zeros(n_channels), np.zeros(n_channels)
    kept = []  # the observations, for the quantiles only
    for s0 in range(0, len(x), STAT_ROWS):
        obs = np.asarray(x[s0 : s0 + STAT_ROWS])[valid[s0 : s0 + STAT_ROWS]]  # (m, C)
        if not len(obs):
            continue
        if not np.isfinite(obs).all():
            raise InputDataError(
                "the learn split has non-finite values (NaN or +-inf) at valid observations; "
                "mark them invalid (nodata, masks) in the input data"
            )
        # Chan et al. (1979) pairwise merge of (count, mean, sum of squared deviations)
        mu = obs.mean(axis=0, dtype=np.float64)
        dev = ((obs - mu) ** 2).sum(axis=0, dtype=np.float64)
        total = count + len(obs)
        delta = mu - mean
        mean = mean + delta * len(obs) / total
        m2 = m2 + dev + delta**2 * count * len(obs) / total
        count = total
        if method == "quantile":
            kept.append(obs)
    if count == 0:
        raise ConfigError("the learn split has no valid observation: cannot normalise")
    std = np.sqrt(m2 / count)
    stats = {"mean": mean, "std": np.where(std > 0, std, 1.0)}
    if method == "quantile":  # a sort of every learn observation: only when used
        q02, q98 = np.quantile(np.concatenate(kept), [0.02, 0.98], axis=0).astype(np.float64)
        stats.update(q02=q02, q98=q98, offset=q02, scale=q98 - q02)
    else:
        stats.update(offset=mean, scale=std.copy())
    stats["scale"][~(stats["scale"] > 0)] = 1.0
    return {"method": method, **{k: v.astype(np.float32).tolist() for k, v in stats.items()}}


def _counts(codes: np.ndarray, split: np.ndarray, polygon_id: np.ndarray) -> dict[str, Any]:
    """Pixels and polygons per class and split: ``n_<split>`` and ``per_class``."""
    per_class = {}
    for code in np.unique(codes):
        sel = codes == code
        entry = {}
        for value, name in SPLIT_NAMES.items():
            part = sel & (split == value)
            entry[f"{name}_pixels"] = int(part.sum())
            entry[f"{name}_polygons"] = int(len(np.unique(polygon_id[part])))
        per_class[str(int(code))] = entry
    out: dict[str, Any] = {f"n_{name}": int((split == v).sum()) for v, name in SPLIT_NAMES.items()}
    out["per_class"] = per_class
    return out


def _log_counts(counts: dict[str, Any], names: list[str], codes: list[int]) -> None:
    log.info("samples: %d learn, %d selection, %d val pixels", counts["n_learn"],
             counts["n_selection"], counts["n_val"])
    for code, name in zip(codes, names, strict=True):
        c = counts["per_class"][str(code)]
        log.info(
            "  class %d %-20s learn %5d px / %3d polygons, selection %5d px / %3d polygons, "
            "val %5d px / %3d polygons",
            code, name, c["learn_pixels"], c["learn_polygons"], c["selection_pixels"],
            c["selection_polygons"], c["val_pixels"], c["val_polygons"],
        )

