"""Stage ``prepare``: time-series raster + reference polygons -> Zarr sample store.

Steps (iota2's vector sampling, pixel-based): read and check the polygons, rasterise them
on the raster grid (pixel centres), split the polygons per class into learn/val
(:mod:`i2dl.sampling.split`), extract every labelled pixel's series and validity mask
block by block, drop pixels with no valid date, compute learn-split per-channel statistics,
and write the store atomically. A store whose fingerprint (config + source file sizes and
modification times) matches is reused instead of rebuilt.
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
from rich.progress import track

from i2dl.errors import ConfigError
from i2dl.io.nomenclature import read_nomenclature
from i2dl.io.raster import block_windows, days_since, open_time_series
from i2dl.io.vector import rasterize_polygons, read_reference
from i2dl.sampling.split import LEARN, VAL, split_polygons
from i2dl.store import STORE_VERSION, read_info, write_store

log = logging.getLogger(__name__)

#: Pixels read at a time (window side) while extracting samples.
EXTRACT_BLOCK = 1024


def _source_files(cfg: DictConfig) -> list[Path]:
    """Every input file the store depends on (shapefile side-cars included)."""
    data = cfg.data
    paths = [Path(data.raster), Path(data.reference)]
    if data.get("dates_file"):
        paths.append(Path(data.dates_file))
    if data.get("nomenclature"):
        paths.append(Path(data.nomenclature))
    for m in data.get("masks") or []:
        paths.append(Path(m if isinstance(m, str) else m["path"]))
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
    payload = {
        "version": STORE_VERSION,
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "sampling": OmegaConf.to_container(cfg.sampling, resolve=True),
        "chunk_size": int(cfg.store.chunk_size),
        "sources": [_file_stamp(p) for p in _source_files(cfg)],
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def store_path(cfg: DictConfig) -> Path:
    """Where the store for this config lives: ``<store.dir>/<data.name>_seed<s>_<hash>.zarr``."""
    seed = cfg.sampling.random_seed
    name = f"{cfg.data.name}_seed{seed}_{store_fingerprint(cfg)}.zarr"
    return Path(cfg.store.dir) / name


def prepare(cfg: DictConfig) -> Path:
    """Build (or reuse) the sample store for ``cfg``.

    Args:
        cfg: the composed config; uses ``data``, ``sampling`` and ``store``.

    Returns:
        Path of the complete store.

    Raises:
        InputFileNotFoundError, InputDataError: unusable raster, dates, masks or polygons
            (see :func:`i2dl.io.raster.open_time_series`, :func:`i2dl.io.vector.read_reference`).
        ConfigError: bad sampling parameters, or no labelled pixel with a valid date.
    """
    path = store_path(cfg)
    if path.exists() and not cfg.store.get("rebuild", False):
        info = read_info(path)
        if info.attrs.get("fingerprint") == store_fingerprint(cfg):
            log.info("reusing up-to-date sample store %s", path)
            return path
    data, sampling = cfg.data, cfg.sampling
    series = open_time_series(
        data.raster,
        dates_file=data.get("dates_file"),
        band_names=data.get("band_names"),
        masks=OmegaConf.to_container(data.masks, resolve=True) if data.get("masks") else (),
    )
    with series:
        left, top = series.transform.c, series.transform.f
        right = left + series.transform.a * series.width
        bottom = top + series.transform.e * series.height
        bounds = (min(left, right), min(bottom, top), max(left, right), max(bottom, top))
        ref = read_reference(
            data.reference,
            data.data_field,
            series.crs,
            bounds,
            explode_multipolygons=bool(sampling.get("explode_multipolygons", False)),
        )
        poly_index = rasterize_polygons(
            ref.polygons, series.transform, series.width, series.height
        )
        arrays = _extract(series, poly_index)
        if arrays is None or len(arrays["X"]) == 0:
            raise ConfigError(
                f"no pixel of {data.reference} has a valid acquisition date in {data.raster}: "
                "the polygons may be smaller than a pixel, or every date masked"
            )
        rows_poly = arrays.pop("_poly_row")
        arrays["polygon_id"] = ref.polygons["polygon_id"].to_numpy()[rows_poly]
        arrays["y"] = ref.polygons["code"].to_numpy()[rows_poly]

        present = np.unique(rows_poly)
        # exploded MultiPolygon parts share their feature's id (and code): split by feature
        split_ids, first = np.unique(
            ref.polygons["polygon_id"].to_numpy()[present], return_index=True
        )
        split_codes = ref.polygons["code"].to_numpy()[present][first]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            split_of = split_polygons(
                split_ids,
                split_codes,
                ratio=float(sampling.ratio),
                seed=int(sampling.random_seed),
            )
        for w in caught:
            log.warning("%s", w.message)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        lookup = np.vectorize(split_of.__getitem__, otypes=[np.int8])
        arrays["split"] = lookup(arrays["polygon_id"])
        n = len(arrays["y"])
        arrays["region"] = np.zeros(n, dtype=np.int32)
        arrays["tile"] = np.zeros(n, dtype=np.int32)

        codes = sorted(int(c) for c in np.unique(arrays["y"]))
        nomenclature = read_nomenclature(data.nomenclature) if data.get("nomenclature") else {}
        names = [nomenclature.get(c, ref.class_names.get(c, str(c))) for c in codes]
        learn = arrays["split"] == LEARN
        mean, std = _learn_statistics(arrays["X"][learn], arrays["mask"][learn])
        attrs = {
            "fingerprint": store_fingerprint(cfg),
            "dates": [d.isoformat() for d in series.dates],
            "reference_date": series.dates[0].isoformat(),
            "days": days_since(series.dates, series.dates[0]).tolist(),
            "band_names": series.band_names,
            "classes": [{"code": c, "name": nm} for c, nm in zip(codes, names, strict=True)],
            "string_labels": ref.string_labels,
            "crs": series.crs.to_wkt() if series.crs else "",
            "transform": list(series.transform)[:6],
            "width": series.width,
            "height": series.height,
            "norm": {"mean": mean.tolist(), "std": std.tolist()},
            "sources": [_file_stamp(p) for p in _source_files(cfg)],
            "data_field": data.data_field,
            "sampling": OmegaConf.to_container(sampling, resolve=True),
            "counts": _counts(arrays["y"], arrays["split"], arrays["polygon_id"]),
        }
    write_store(path, arrays, attrs, chunk_size=int(cfg.store.chunk_size))
    _log_counts(attrs["counts"], names, codes)
    return path


def _extract(series: Any, poly_index: np.ndarray) -> dict[str, np.ndarray] | None:
    """Read the series of every pixel covered by a polygon, block by block."""
    parts: list[dict[str, np.ndarray]] = []
    n_no_valid = 0
    windows = block_windows(series.width, series.height, EXTRACT_BLOCK)
    for win in track(windows, description="extracting samples", disable=len(windows) < 4):
        r0, c0 = int(win.row_off), int(win.col_off)
        sub = poly_index[r0 : r0 + int(win.height), c0 : c0 + int(win.width)]
        rr, cc = np.nonzero(sub >= 0)
        if len(rr) == 0:
            continue
        x, valid = series.read(win)
        x, valid = x[rr, cc], valid[rr, cc]
        keep = valid.any(axis=1)
        n_no_valid += int((~keep).sum())
        parts.append(
            {
                "X": x[keep],
                "mask": valid[keep],
                "row": (rr[keep] + r0).astype(np.int32),
                "col": (cc[keep] + c0).astype(np.int32),
                "_poly_row": sub[rr, cc][keep],
            }
        )
    if n_no_valid:
        log.info("%d labelled pixel(s) with no valid acquisition date dropped", n_no_valid)
    if not parts:
        return None
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _learn_statistics(x: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std over valid observations: x (N, T, C), valid (N, T) -> (C,), (C,)."""
    obs = x[valid]  # (M, C)
    if len(obs) == 0:
        raise ConfigError("the learn split has no valid observation: cannot normalise")
    mean = obs.mean(axis=0, dtype=np.float64)
    std = obs.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def _counts(y: np.ndarray, split: np.ndarray, polygon_id: np.ndarray) -> dict[str, Any]:
    per_class = {}
    for code in np.unique(y):
        sel = y == code
        per_class[str(int(code))] = {
            "learn_pixels": int((sel & (split == LEARN)).sum()),
            "val_pixels": int((sel & (split == VAL)).sum()),
            "learn_polygons": int(len(np.unique(polygon_id[sel & (split == LEARN)]))),
            "val_polygons": int(len(np.unique(polygon_id[sel & (split == VAL)]))),
        }
    return {
        "n_learn": int((split == LEARN).sum()),
        "n_val": int((split == VAL).sum()),
        "per_class": per_class,
    }


def _log_counts(counts: dict[str, Any], names: list[str], codes: list[int]) -> None:
    log.info("samples: %d learn, %d val pixels", counts["n_learn"], counts["n_val"])
    for code, name in zip(codes, names, strict=True):
        c = counts["per_class"][str(code)]
        log.info(
            "  class %d %-20s learn %5d px / %3d polygons, val %5d px / %3d polygons",
            code,
            name,
            c["learn_pixels"],
            c["learn_polygons"],
            c["val_pixels"],
            c["val_polygons"],
        )

