"""The sample store of a run: time-series raster + reference polygons -> Zarr sample store.

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

from i2dl.builders.obia import obia_settings
from i2dl.errors import ConfigError, InputDataError, StoreError
from i2dl.features.feature_maps import TaskRunner
from i2dl.features.source import data_tiles, uses_sensors
from i2dl.io.files import remove_orphans, target_lock, temporary_name
from i2dl.io.nomenclature import read_class_names
from i2dl.samples.augmentation import augment_arrays
from i2dl.samples.class_statistics import (
    check_split_classes,
    class_statistics,
    write_class_statistics,
)
from i2dl.samples.reading import (
    SampleSpool,
    samples_from_raster,
    samples_from_segments,
    samples_from_table,
)
from i2dl.samples.selection import select_samples, selection_from_config
from i2dl.samples.split import fusion_holdout, split_polygons
from i2dl.samples.store import (
    FUSION,
    LEARN,
    SPLIT_NAMES,
    STORE_VERSION,
    RowsView,
    verify_store,
    write_store,
)

log = logging.getLogger(__name__)



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


def prepare(cfg: DictConfig, run_tasks: TaskRunner | None = None) -> Path:
    """Build (or reuse) the sample store for ``cfg``.

    The samples come from a time-series raster + reference polygons (``data.raster``,
    ``data.reference``) or, when ``data.table`` is set, from a pixel table (see
    :func:`i2dl.io.table.read_pixel_table`). Either way the polygons are split per class
    into learn/val and the store is written atomically.

    Args:
        cfg: the composed config; uses ``data``, ``sampling`` and ``store``.
        run_tasks: runs the extraction from rasters as Dask tasks, one per row of blocks
            of a tile (``dask.engine=dask``, :class:`i2dl.maps.cluster.TaskRunner`); None =
            in this process. The store is the same either way.

    Returns:
        Path of the complete store.

    Raises:
        InputFileNotFoundError, InputDataError: unusable raster, dates, masks, polygons or
            table (see :func:`i2dl.io.raster.open_time_series`,
            :func:`i2dl.io.vector.read_reference`, :func:`i2dl.io.table.read_pixel_table`);
            a window that cannot be read (damaged file: file and window named); no valid
            observation under the polygons (all-NaN or all-nodata raster: files named).
            The learn split holds fewer than two classes, or a class of the reference has
            no learn sample (its polygons hold no pixel centre, ...) and
            ``sampling.allow_missing_classes`` is not true (see
            :func:`i2dl.samples.class_statistics.check_split_classes`).
        ConfigError: bad sampling parameters, ``sampling.random_seed`` null (the CLI
            draws ``seed=null``), or no pixel centre in a polygon.
        StoreError: the existing store is damaged and ``store.rebuild_damaged`` is false
            (the message names the store and ``store.rebuild=true``).

    Warns:
        MissingSamplesWarning: reference polygons that gave no sample (ids per class),
            a class missing from learn under ``sampling.allow_missing_classes=true``, a
            val split with fewer than two classes.
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
        return _prepare_locked(cfg, path, run_tasks)


def _prepare_locked(cfg: DictConfig, path: Path, run_tasks: TaskRunner | None) -> Path:
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
        return _build_store(cfg, path, fingerprint, spool, run_tasks)
    finally:
        spool.remove()


def _build_store(cfg: DictConfig, path: Path, fingerprint: str, spool: SampleSpool,
                 run_tasks: TaskRunner | None = None) -> Path:
    """Extract, split, select and write the samples of ``cfg`` to the store ``path``."""
    data, sampling = cfg.data, cfg.sampling
    obia = obia_settings(cfg)
    if obia is not None:
        arrays, attrs, label_names = samples_from_segments(cfg, obia, path)
    elif data.get("table"):
        arrays, attrs, label_names = samples_from_table(data)
    else:
        arrays, attrs, label_names = samples_from_raster(data, sampling, spool, run_tasks)

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

    nomenclature = read_class_names(data.nomenclature) if data.get("nomenclature") else {}
    # the classes of the reference (labelled polygons on the grid, or table rows)
    reference_codes = set(label_names) or {int(c) for c in np.unique(arrays["code"])}
    check_split_classes(
        arrays["code"], arrays["split"], reference_codes,
        {c: nomenclature.get(c, label_names.get(c, str(c))) for c in reference_codes},
        str(data.get("table") or data.reference),
        allow_missing=bool(sampling.get("allow_missing_classes", False)),
        expect_val=bool(sampling.get("split_ground_truth", True)),
    )
    codes = sorted(int(c) for c in np.unique(arrays["code"]))
    names = [nomenclature.get(c, label_names.get(c, str(c))) for c in codes]
    learn = arrays["split"] == LEARN
    x_learn = RowsView(x_all, rows[learn]) if on_disk else x_all[rows[learn]]
    norm = learn_statistics(x_learn, arrays["mask"][learn], normalization_method(cfg))
    arrays["X"] = RowsView(x_all, rows) if on_disk else x_all[rows]  # type: ignore[assignment]
    # iota2 sample augmentation: new learn rows last, the statistics above without them
    arrays, added = augment_arrays(arrays, sampling.get("augmentation"), int(cfg.seed), LEARN)
    if added:
        attrs["augmentation"] = {"strategy": str(sampling.augmentation.strategy),
                                 "added": {str(c): int(n) for c, n in added.items()}}
        n_new = sum(added.values())
        stats = _with_augmented(stats, arrays["code"][-n_new:], arrays["region"][-n_new:])
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


def _with_augmented(stats: Any, codes: np.ndarray, regions: np.ndarray) -> Any:
    """iota2's class statistics with an ``augmented_pixels`` column (learn rows only).

    ``codes`` and ``regions`` are those of the added samples.
    """
    pairs, counts = np.unique(np.stack([codes, regions]), axis=1, return_counts=True)
    added = {(int(c), int(r)): int(n) for (c, r), n in zip(pairs.T, counts, strict=True)}
    stats = stats.copy()
    stats["augmented_pixels"] = [
        added.get((int(c), int(r)), 0) if split == "learn" else 0
        for c, r, split in zip(stats["class"], stats["region"], stats["split"], strict=True)]
    return stats


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
        codes = arrays["code"][sel][first]
        # fused multi-runs: polygons held apart from every run (the same in each run)
        held = fusion_holdout(ids, codes, float(sampling.get("fusion_holdout_ratio") or 0.0),
                              int(sampling.get("fusion_holdout_seed") or 0))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            split_of = split_polygons(
                ids[~held], codes[~held], ratio=sampling.ratio,
                seed=int(sampling.random_seed),
                selection_ratio=sampling.get("selection_ratio", 0.0) or 0.0,
                folds=sampling.get("folds"), fold=int(sampling.get("fold", 0) or 0),
                split_ground_truth=bool(sampling.get("split_ground_truth", True)),
            )
        for w in caught:
            log.warning("region %d: %s", int(region), w.message)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        split_of.update({int(i): FUSION for i in ids[held]})
        lookup = np.array([split_of[int(i)] for i in ids], dtype=np.int8)
        split[sel] = lookup[np.searchsorted(ids, pid)]
    return split


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

