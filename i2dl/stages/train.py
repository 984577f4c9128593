"""Stage ``train``, the main job: prepare -> fit -> evaluate -> infer, then ``summary.json``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import rasterio
from omegaconf import DictConfig

from i2dl.builders import autocontext
from i2dl.errors import ConfigError, InputDataError
from i2dl.evaluation.html_report import write_run_html
from i2dl.evaluation.run_report import CONFUSION_CSV
from i2dl.io.files import atomic_path, explain_disk_full, run_folder_lock
from i2dl.io.layout import (
    METRICS_JSON,
    REPORT_DIR,
    SUMMARY_JSON,
    run_dir,
    stage_logging,
    versions,
    write_json,
)
from i2dl.io.run_info import TaskStatus, write_logs_zip
from i2dl.maps.quality import area_adjusted_accuracy, map_class_pixels
from i2dl.samples.store import read_info
from i2dl.stages import evaluate, fit, infer, prepare
from i2dl.training import ddp
from i2dl.training.runs import check_runs, repeat_runs, requested_runs, with_objective

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the main job once, ``runs`` times with consecutive seeds, or once per fold.

    With ``runs=N`` (iota2's ``arg_train.runs``), the job runs N times with seeds
    ``seed, seed+1, ...`` — each run re-splits the polygons with its own seed — into
    ``<run>/seed_<i>/`` (one map per run), and the runs are aggregated into
    ``<run>/RESULTS.txt`` (mean ± std and 95 % interval of OA, kappa, F1; summed confusion
    matrix), see :mod:`i2dl.evaluation.aggregate`. With ``fusion=true`` the run maps are also fused
    by majority vote into ``<run>/final/Classif_Fusion.tif`` with its agreement ratio
    (:mod:`i2dl.maps.fusion`). With ``kfold=K``, polygon-grouped, class-stratified k-fold
    cross-validation (sits' ``sits_kfold_validate``): fold ``i`` is the val part of
    ``<run>/fold_<i>/`` (``sampling.folds=K sampling.fold=i``), aggregated the same way.

    The loop over runs and folds is :func:`i2dl.training.runs.repeat_runs`.

    The run folder is held by this process for the whole job
    (:func:`i2dl.io.files.run_folder_lock`): a second ``train`` (or other stage) on the
    same folder stops at once instead of deleting this one's checkpoints. A full disk or
    a file size limit while writing is reported with the file and the free space.

    Returns:
        The summary (also written to ``summary.json``); for N runs, the aggregate.

    Raises:
        ConfigError: ``runs`` < 1, ``kfold`` < 2, or both ``runs`` > 1 and ``kfold``; the
            run folder is used by another i2dl process.
        i2dl.io.files.DiskFullError: no space left, quota or file size limit reached.
    """
    if ddp.is_worker():  # a DDP process of rank > 0: rank 0 holds the run folder
        return _run(cfg)
    out = run_dir(cfg)
    with run_folder_lock(out), explain_disk_full([out, Path(cfg.store.dir)]):
        return _run(cfg)


def _run(cfg: DictConfig) -> dict[str, Any]:
    """:func:`run` in its locked run folder."""
    runs, kfold = requested_runs(cfg)
    if cfg.get("enable_autocontext", False):
        if (cfg.get("obia") or {}).get("enabled", False):
            raise ConfigError("enable_autocontext and obia.enabled are separate builders: "
                              "choose one")
        if runs > 1 or kfold is not None:
            raise ConfigError("enable_autocontext runs one job: use seed sweeps (-m) instead "
                              "of runs/kfold")
        return autocontext.run(cfg, train_one)
    if ddp.is_worker():  # a DDP process of rank > 0: only prepare (reuse) and fit
        store = prepare.run(cfg)
        best = fit.run(cfg, store=store)
        return {"ddp_rank": ddp.process_rank(), "best": str(best)}
    check_runs(runs, kfold)
    if runs == 1 and kfold is None:
        return with_objective(cfg, train_one(cfg), [run_dir(cfg)])
    agg, run_dirs = repeat_runs(cfg, train_one, runs, kfold)
    return with_objective(cfg, agg, run_dirs)


def area_adjusted_report(out: Path, info: Any, classif: Path) -> dict[str, Any] | None:
    """Olofsson et al. (2014) area and accuracy estimates from the map and the val pixels.

    Writes ``report/area_adjusted.csv`` (:func:`i2dl.maps.quality.area_adjusted_accuracy`:
    strata = the map's classes, counts = the val confusion matrix transposed, areas in
    hectares from the map's pixel size when its CRS is projected in metres, else in
    pixels). The val pixels come from polygons, not from a stratified random sample of the
    map, so the figures are indicative (said in the file's note column).

    Returns:
        ``{"oa", "oa_se", "oa_ci95", "area_unit", "csv"}``, or ``{"skipped": reason}``
        when a mapped class has fewer than 2 val pixels.
    """
    cm = pd.read_csv(out / REPORT_DIR / CONFUSION_CSV, index_col=0).to_numpy()
    pixels = map_class_pixels(classif, info.class_codes)
    with rasterio.open(classif) as src:
        metres = bool(src.crs and src.crs.is_projected and src.crs.linear_units == "metre")
        px_area = abs(src.transform.a * src.transform.e) / 1e4 if metres else 1.0
    labels = [f"{c} {n}" for c, n in zip(info.class_codes, info.class_names, strict=True)]
    try:
        table, overall = area_adjusted_accuracy(cm.T, pixels, px_area, labels)
    except InputDataError as exc:
        log.warning("area-adjusted accuracy skipped: %s", exc)
        return {"skipped": str(exc)}
    unit = "ha" if metres else "pixels"
    table["area_unit"] = unit
    table["note"] = ("val pixels of polygons, not a stratified random sample of the map: "
                     "indicative (Olofsson et al. 2014 assume a probability sample)")
    path = out / REPORT_DIR / "area_adjusted.csv"
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    log.info("area-adjusted OA %.4f +- %.4f (95 %%), areas in %s: %s", overall["oa"],
             overall["oa_ci95"], unit, path)
    return {**{k: round(v, 6) for k, v in overall.items()}, "area_unit": unit, "csv": str(path)}


def _metric(value: Any) -> str:
    """A metric for the log: 4 decimals, or ``n/a`` when undefined (null)."""
    return "n/a" if value is None else f"{float(value):.4f}"


def _summary(cfg: DictConfig, out: Path, store: Path, best: Any, metrics: dict[str, Any],
             maps: Any, timings: dict[str, float]) -> dict[str, Any]:
    """The run's ``summary.json`` content (see :func:`train_one`)."""
    info = read_info(store)
    # the val pixels are the area estimate's samples: none without a validation split
    area = area_adjusted_report(out, info, maps.classif) if maps and metrics["n_samples"] \
        else None
    counts = info.attrs["counts"]
    classes = zip(info.class_codes, info.class_names, strict=True)
    summary: dict[str, Any] = {
        "experiment": cfg.get("experiment_name"),
        "seed": cfg.seed,
        "fold": cfg.sampling.get("fold") if cfg.sampling.get("folds") else None,
        "oa": metrics["oa"],
        "kappa": metrics["kappa"],
        "f1_macro": metrics["f1_macro"],
        "n_learn": counts["n_learn"],
        "n_selection": counts.get("n_selection", 0),
        "n_val": counts["n_val"],
        "n_classes": info.n_classes,
        "classes": [{"code": c, "name": n} for c, n in classes],
        "store": str(store),
        "best_checkpoint": best if isinstance(best, dict) else str(best),
        "report": str(out / REPORT_DIR / METRICS_JSON),
        "classif_map": str(maps.classif) if maps else None,
        "confidence_map": str(maps.confidence) if maps else None,
        "proba_map": str(maps.proba) if maps and maps.proba else None,
        "infer_device": maps.device if maps else None,
        "area_adjusted": area,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "versions": versions(),
    }
    if metrics.get("selection"):
        # chose the checkpoint: optimistic, for hyper-parameter search only
        summary["selection"] = metrics["selection"]
    if "test" in metrics:
        summary["test"] = {
            k: metrics["test"][k] for k in ("oa", "kappa", "f1_macro", "n_samples")
        }
    return summary


def train_one(cfg: DictConfig) -> dict[str, Any]:
    """One run of the main job in ``cfg.paths.output_dir``; writes ``summary.json``.

    Each stage is recorded in ``logs/tasks_status.{json,svg}`` and
    ``logs/run_informations.txt`` as it starts and ends (:class:`i2dl.io.run_info.TaskStatus`,
    iota2's task status); ``report/index.html`` is written at the end
    (:func:`i2dl.evaluation.html_report.write_run_html`) and ``logs/logs.zip`` whatever
    the outcome (the archive to attach when asking for help).

    Returns:
        The summary: OA, kappa, macro F1, sample counts, classes, paths, timings (s),
        package versions.
    """
    out = run_dir(cfg)
    status = TaskStatus(out, cfg)
    timings: dict[str, float] = {}

    def stage(name: str, call: Any) -> Any:
        t0 = time.perf_counter()
        with status.stage(name):
            result = call()
        timings[name] = time.perf_counter() - t0
        return result

    try:
        with stage_logging(out, "train"):
            store = stage("prepare", lambda: prepare.run(cfg))
            best = stage("fit", lambda: fit.run(cfg, store=store))
            metrics = stage("evaluate", lambda: evaluate.run(cfg))
            maps = stage("infer", lambda: infer.run(cfg))
            summary = _summary(cfg, out, store, best, metrics, maps, timings)
            write_json(out / SUMMARY_JSON, summary)
            try:  # a page of what the run wrote: its failure must not fail the run
                log.info("report: %s", write_run_html(out))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("report/index.html not written: %s: %s", type(exc).__name__, exc)
            log.info(
                "done: OA %s, kappa %s, macro F1 %s on %d val %s; summary %s",
                _metric(summary["oa"]), _metric(summary["kappa"]),
                _metric(summary["f1_macro"]), summary["n_val"],
                "segments" if (cfg.get("obia") or {}).get("enabled", False) else "pixels",
                out / SUMMARY_JSON,
            )
            return summary
    finally:
        write_logs_zip(out)
