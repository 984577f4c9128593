"""Autocontext (iota2 ``enable_autocontext``, ``autocontext_iterations``).

Iteration 1 is the pixel classification of the main job. Before each next iteration, the map of the
previous one is summarised over SLIC superpixels (:func:`i2dl.builders.obia.compute_segments` on the
series, computed once): every pixel gets, as K extra date-independent channels, the proportion of
each class among the mapped pixels of its superpixel; the model is retrained on the bands plus these
context channels, with the same polygons, split and seed, and maps again. The context comes from
predictions, never from labels, so val pixels stay honest.

Outputs (``<run>`` = the run folder)::

    <run>/superpixels.tif                 SLIC segments (0 = none)
    <run>/iteration_<i>/                  a complete run per iteration (report/, maps/, ...)
    <run>/context/iteration_<i>/ctx/context.tif   the K proportions fed to iteration i
    <run>/autocontext.json                OA, kappa, macro F1 of every iteration
    <run>/summary.json                    the last iteration's summary (+ "iterations")

The context rasters reach the model as ``data.user_features`` of a tile named ``ctx``
(iota2's ``userFeat``), so every model of the zoo uses them unchanged.

The learn pixels' context (``autocontext.learn_context``): the previous model predicted
those pixels after fitting them, which a random forest does almost perfectly, so a context
made from that map (``in_sample``, the plain method) is cleaner on learn pixels than on
any unseen pixel and the next model over-trusts it. ``out_of_fold`` (default for
scikit-learn models, ``auto``) replaces the learn pixels' predictions by out-of-fold ones
(:func:`out_of_fold_codes`, polygon-grouped folds: stacked generalisation); ``exclude``
(default for deep models, which are costly to refit per fold) leaves them out of the
counts. The context channels are static: forests see each once (:mod:`models.sklearn_backends`).

Measured on Slovenia (rf, val OA / kappa of iteration 2 on the same split as the pixel
run, which scores 0.809 / 0.587; nearly every pixel of this 101 x 100 px example is inside a
reference polygon):

==========================================  ===============  ================
learn pixels' context                       150 superpixels  1000 (default)
==========================================  ===============  ================
in-sample, repeated at every date (before)  0.675 / --       --
in-sample, static (``in_sample``)           0.758 / 0.522    0.805 / 0.598
left out of the counts (``exclude``)        0.773 / 0.549    0.798 / 0.573
out-of-fold, 5 folds (``out_of_fold``)      0.799 / 0.573    0.800 / 0.567
==========================================  ===============  ================

In-sample context is badly over-trusted with large superpixels and harmless with small
ones; out-of-fold context is about as good at both sizes, which is why it is the default.
Autocontext does **not** improve the pixel OA on this example (at best 0.805 against
0.809, kappa 0.598 against 0.587); compare the iterations in ``autocontext.json`` before
using the last one.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from omegaconf import DictConfig, OmegaConf, open_dict

from i2dl.builders.obia import compute_segments
from i2dl.errors import ConfigError
from i2dl.features.source import open_source
from i2dl.io.files import atomic_path, write_text_atomic
from i2dl.io.geotiff import block_windows, geotiff_profile
from i2dl.io.layout import run_dir
from i2dl.samples.store import VAL, open_store, read_array, read_info

log = logging.getLogger(__name__)

#: the tile name under which the context rasters are read as user features
CONTEXT_TILE = "ctx"


def class_proportions(
    segments_path: str | Path, classif_path: str | Path, codes: list[int], out_path: Path,
    chunk_size: int = 1024, exclude: tuple[np.ndarray, np.ndarray] | None = None,
    override: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Write, per pixel, the class proportions of its superpixel in a map (two passes).

    Args:
        segments_path: superpixels (uint ids, 0 = none).
        classif_path: the classification map on the same grid (0 = nodata).
        codes: the K class codes, increasing.
        out_path: (K bands) float32 GeoTIFF, band k = share of ``codes[k]`` among the
            counted mapped pixels of the pixel's superpixel; 0 outside superpixels.
        chunk_size: window side, pixels.
        exclude: ``(rows, cols)`` int arrays of pixels not counted (the learn pixels,
            whose predictions are in-sample); their own context still comes from the
            other pixels of their superpixel. None counts every mapped pixel.
        override: ``(rows, cols, codes)``: these pixels count as class ``codes`` instead of
            the map's value (the out-of-fold predictions of the learn pixels); applied
            before ``exclude``.

    Returns:
        ``out_path``.

    Raises:
        ConfigError: the two rasters are not on the same grid.
    """
    codes_arr = np.asarray(codes, dtype=np.int64)
    with rasterio.open(segments_path) as seg, rasterio.open(classif_path) as cls:
        if (seg.width, seg.height, seg.transform) != (cls.width, cls.height, cls.transform):
            raise ConfigError(f"{segments_path} and {classif_path} are not on the same grid")
        n_seg = 0
        windows = block_windows(seg.width, seg.height, chunk_size, "chunk_size")
        for win in windows:
            n_seg = max(n_seg, int(seg.read(1, window=win).max()))
        counts = np.zeros((n_seg + 1, len(codes_arr)))
        for win in windows:
            s = seg.read(1, window=win).astype(np.int64)
            c = cls.read(1, window=win).astype(np.int64)
            if override is not None:
                r, q = override[0] - int(win.row_off), override[1] - int(win.col_off)
                inside = (r >= 0) & (r < c.shape[0]) & (q >= 0) & (q < c.shape[1])
                c[r[inside], q[inside]] = override[2][inside]
            idx = np.searchsorted(codes_arr, c)
            ok = (s > 0) & (c != 0) & (idx < len(codes_arr))
            ok &= codes_arr[np.minimum(idx, len(codes_arr) - 1)] == c
            if exclude is not None:
                r, q = exclude[0] - int(win.row_off), exclude[1] - int(win.col_off)
                inside = (r >= 0) & (r < ok.shape[0]) & (q >= 0) & (q < ok.shape[1])
                ok[r[inside], q[inside]] = False
            np.add.at(counts, (s[ok], idx[ok]), 1)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        share[0] = 0
        profile = geotiff_profile(seg.width, seg.height, len(codes_arr), "float32", seg.crs,
                                  seg.transform, None)
        with atomic_path(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for win in windows:
                s = seg.read(1, window=win).astype(np.int64)
                dst.write(np.moveaxis(share[s], -1, 0).astype(np.float32), window=win)
            dst.descriptions = tuple(f"context_{c}" for c in codes_arr)
    return out_path


def fitted_pixels(store: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the store's learn and selection pixels (every non-val pixel).

    Their map predictions come from a model that saw them (learn) or was chosen on them
    (selection), so :func:`class_proportions` leaves them out of the counts.
    """
    group = open_store(store)
    split = read_array(group, "split")
    keep = split != VAL
    return (read_array(group, "row")[keep].astype(np.int64),
            read_array(group, "col")[keep].astype(np.int64))


def out_of_fold_codes(
    model_cfg: DictConfig, store: str | Path, n_folds: int = 5, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold predictions of the store's learn and selection pixels (stacking).

    The non-val pixels are split into ``n_folds`` folds grouped by polygon and stratified
    by class (scikit-learn ``StratifiedGroupKFold``); each fold is predicted by a model of
    ``model_cfg`` fitted on the other folds. So the learn pixels' context is made from
    predictions of models that never saw them, like the val pixels' context (Wolpert 1992,
    stacked generalisation; the remedy for the over-trusted in-sample context measured
    before). scikit-learn models only (``n_folds`` fits each).

    Args:
        model_cfg: the ``model`` config node of a :class:`models.SklearnClassifier`.
        store: the iteration's sample store.
        n_folds: folds; fewer when there are fewer polygons of a class.
        seed: fold shuffling seed.

    Returns:
        ``(rows, cols, codes)``: pixel positions and predicted class codes (int64).

    Raises:
        ConfigError: fewer than 2 polygons, or the model is not a scikit-learn model.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    from i2dl.training.build import DataDims, build_classifier
    from i2dl.training.loops import subsample_indices
    from models import SklearnClassifier

    info = read_info(store)
    group = open_store(store)
    split = read_array(group, "split")
    rows = np.flatnonzero(split != VAL)
    codes = read_array(group, "code")[rows]
    polygons = read_array(group, "polygon_id")[rows]
    y = np.searchsorted(np.asarray(info.class_codes), codes).astype(np.int64)
    x = read_array(group, "X")[rows]
    mask = read_array(group, "mask")[rows]
    x = info.normalise(x, mask)
    days = np.broadcast_to(info.days, mask.shape)
    # a class with fewer polygons than folds is simply absent from some folds' models
    k_folds = max(2, min(int(n_folds), len(np.unique(polygons))))
    if len(np.unique(polygons)) < 2:
        raise ConfigError("autocontext out-of-fold context needs at least 2 learn polygons")
    splitter = StratifiedGroupKFold(n_splits=k_folds, shuffle=True, random_state=seed)
    pred = np.empty(len(rows), np.int64)
    with warnings.catch_warnings():  # "least populated class has only n members": expected
        warnings.simplefilter("ignore", UserWarning)
        folds = list(splitter.split(x, y, polygons))
    for fit_idx, pred_idx in folds:
        model = build_classifier(model_cfg, DataDims.of(info))
        if not isinstance(model, SklearnClassifier):
            raise ConfigError("out-of-fold context is built for scikit-learn models")
        fit_idx = fit_idx[subsample_indices(y[fit_idx], model.max_samples, seed)]
        model.fit(x[fit_idx], days[fit_idx], mask[fit_idx], y[fit_idx])
        proba = np.asarray(model.predict_proba(x[pred_idx], days[pred_idx], mask[pred_idx]))
        pred[pred_idx] = proba.argmax(axis=1)
    log.info("autocontext: out-of-fold predictions of %d learn pixels (%d folds), "
             "accuracy %.3f", len(rows), k_folds, float((pred == y).mean()))
    return (read_array(group, "row")[rows].astype(np.int64),
            read_array(group, "col")[rows].astype(np.int64),
            np.asarray(info.class_codes, np.int64)[pred])


#: how the context of the learn pixels is made (``autocontext.learn_context``)
LEARN_CONTEXT = ("auto", "out_of_fold", "exclude", "in_sample")


def learn_context(cfg: DictConfig) -> str:
    """``autocontext.learn_context`` resolved.

    ``auto`` is ``out_of_fold`` for scikit-learn models (cheap to refit) and ``exclude``
    for deep models.

    Raises:
        ConfigError: an unknown value, or ``out_of_fold`` with a deep model.
    """
    kind = str((cfg.get("autocontext") or {}).get("learn_context", "auto"))
    if kind not in LEARN_CONTEXT:
        raise ConfigError(f"autocontext.learn_context={kind!r}: use one of {LEARN_CONTEXT}")
    sklearn_model = "SklearnClassifier" in str(cfg.model.get("_target_", ""))
    if kind == "auto":
        return "out_of_fold" if sklearn_model else "exclude"
    if kind == "out_of_fold" and not sklearn_model:
        raise ConfigError("autocontext.learn_context=out_of_fold refits the model per fold and "
                          "is built for scikit-learn models; use exclude for deep models")
    return kind


def run(cfg: DictConfig, train_one: Callable[[DictConfig], dict[str, Any]]) -> dict[str, Any]:
    """The main job with ``autocontext_iterations`` iterations (see the module docstring).

    Args:
        cfg: the composed config (``enable_autocontext``, ``autocontext_iterations``,
            ``autocontext.n_segments``, ``autocontext.compactness``).
        train_one: runs one iteration and returns its summary
            (:func:`i2dl.stages.train.train_one`).

    Returns:
        The last iteration's summary with ``"iterations"``: OA, kappa, macro F1 per
        iteration.

    Raises:
        ConfigError: fewer than 2 iterations, a pixel table (no map), or runs/kfold.
    """
    n_iter = int(cfg.get("autocontext_iterations", 2) or 2)
    if n_iter < 2:
        raise ConfigError(f"autocontext_iterations must be >= 2, got {n_iter}")
    if cfg.data.get("table"):
        raise ConfigError("autocontext needs a raster to map: data.table has none")
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    acfg = cfg.get("autocontext") or {}
    superpixels = out / "superpixels.tif"
    with open_source(cfg.data) as series:
        compute_segments(series, superpixels, int(acfg.get("n_segments", 1000)),
                         float(acfg.get("compactness", 0.1)))
    history = []
    summary: dict[str, Any] = {}
    context_root = None
    for i in range(1, n_iter + 1):
        cfg_i = copy.deepcopy(cfg)
        with open_dict(cfg_i):
            cfg_i.enable_autocontext = False
            cfg_i.paths.output_dir = str(out / f"iteration_{i}")
            if context_root is not None:
                cfg_i.data.tile = CONTEXT_TILE
                cfg_i.data.user_features = {"root": str(context_root),
                                            "patterns": ["context.tif"]}
        log.info("autocontext iteration %d/%d in %s", i, n_iter, cfg_i.paths.output_dir)
        summary = train_one(cfg_i)
        history.append({"iteration": i, **{k: summary[k] for k in ("oa", "kappa", "f1_macro")}})
        if i < n_iter:
            if not summary.get("classif_map"):
                raise ConfigError("autocontext: the iteration wrote no map")
            context_root = out / "context" / f"iteration_{i + 1}"
            codes = [c["code"] for c in summary["classes"]]
            kind = learn_context(cfg)
            extra: dict[str, Any] = {}
            if kind == "out_of_fold":
                extra["override"] = out_of_fold_codes(
                    cfg_i.model, summary["store"], int(acfg.get("folds", 5)),
                    int(cfg.seed) if cfg.get("seed") is not None else 0)
            elif kind == "exclude":
                extra["exclude"] = fitted_pixels(summary["store"])
            class_proportions(superpixels, summary["classif_map"], codes,
                              context_root / CONTEXT_TILE / "context.tif", **extra)
    for h in history:
        log.info("autocontext iteration %d: OA %s, kappa %s, macro F1 %s", h["iteration"],
                 *("n/a" if h[k] is None else f"{h[k]:.4f}" for k in ("oa", "kappa", "f1_macro")))
    write_text_atomic(out / "autocontext.json", json.dumps(history, indent=2))
    settings = dict(OmegaConf.to_container(cfg.get("autocontext") or {}))  # type: ignore[arg-type]
    settings["learn_context"] = learn_context(cfg)
    final = {**summary, "iterations": history, "autocontext": settings}
    write_text_atomic(out / "summary.json", json.dumps(final, indent=2, default=str))
    return final
