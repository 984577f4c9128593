"""Stage ``evaluate``: the chosen checkpoint on the val split -> ``<run>/report/``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.image import imread
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from datamodules.pixel_series import StoreBlockDataset
from i2dl.errors import ConfigError, StoreError
from i2dl.evaluation.metrics import confusion_matrix, scores
from i2dl.evaluation.run_report import CONFUSION_CSV, CONFUSION_PNG, write_report
from i2dl.io.files import write_text_atomic
from i2dl.io.layout import (
    CHECKPOINT_DIR,
    METRICS_JSON,
    REPORT_DIR,
    TB_DIR,
    checkpoint_path,
    read_fit_state,
    run_dir,
    stage_logging,
    trained_model_dirs,
)
from i2dl.io.table import read_pixel_table
from i2dl.samples.store import SELECTION, VAL, StoreInfo, verify_store
from i2dl.training.build import load_classifier
from i2dl.training.trained import load_models
from models import Classifier, DeepEnsemble, SITSClassifier

log = logging.getLogger(__name__)

#: Samples per forward pass when a split or a table is predicted.
PREDICT_BATCH_SIZE = 4096


def predict_split(
    model: Classifier, store: Path, split: int, batch_size: int = PREDICT_BATCH_SIZE,
    region: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predict every sample of one split (and region) of a store.

    Returns:
        ``y_true`` (N,) int64 class codes and ``y_pred`` (N,) int64 predicted codes.
    """
    dataset = StoreBlockDataset(store, split, batch_size=batch_size, shuffle=False, region=region)
    codes = np.asarray(dataset.info.class_codes, dtype=np.int64)
    y_true, y_pred = [], []
    for batch in dataset:
        proba = model.predict_proba(batch["x"], batch["days"], batch["mask"])
        y_pred.append(codes[proba.argmax(dim=1).cpu().numpy()])
        y_true.append(batch["code"].numpy())
    if not y_true:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(y_true), np.concatenate(y_pred)


def unseen_classes(codes: np.ndarray, info: StoreInfo) -> list[int]:
    """The class codes of ``codes`` that the store (the training data) does not have."""
    return sorted(int(c) for c in set(np.unique(codes).tolist()) - set(info.class_codes))


def predict_table(
    model: Classifier, info: StoreInfo, path: str, label_offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Predict an external pixel table with the store's dates, channels and statistics.

    Returns:
        ``y_true`` (N,) int64 class codes of the table and ``y_pred`` (N,) int64 codes.
    """
    table = read_pixel_table(path, info.n_dates, info.n_channels, label_offset)
    unknown = unseen_classes(table.codes, info)
    if unknown:
        n = int(np.isin(table.codes, unknown).sum())
        log.warning("test table %s: classes %s (%d rows) unseen in training are scored as "
                    "errors", path, unknown, n)
    codes = np.asarray(info.class_codes, dtype=np.int64)
    days = torch.from_numpy(info.days)
    preds = []
    for b0 in range(0, len(table.codes), PREDICT_BATCH_SIZE):
        sl = slice(b0, b0 + PREDICT_BATCH_SIZE)
        x = torch.from_numpy(info.normalise(table.x[sl], table.valid[sl]))
        mask = torch.from_numpy(table.valid[sl])
        proba = model.predict_proba(x, days.expand(len(x), -1), mask)
        preds.append(codes[proba.argmax(dim=1).cpu().numpy()])
    y_pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    return table.codes, y_pred


#: what evaluate returns without val polygons (``sampling.split_ground_truth=false``)
NO_VALIDATION = ("sampling.split_ground_truth=false: every reference polygon is in learn, "
                 "so there is no val pixel and no accuracy report (iota2 "
                 "split_ground_truth: false); the maps are written as usual")


def no_validation(report: Path) -> dict[str, Any]:
    """Metrics of a run without val polygons: all None, and why (also logged)."""
    log.warning("%s", NO_VALIDATION)
    for stale in (report / METRICS_JSON, report / CONFUSION_CSV, report / CONFUSION_PNG):
        stale.unlink(missing_ok=True)  # a former run's report would be read as this one's
    return {"n_samples": 0, "oa": None, "kappa": None, "precision_macro": None,
            "recall_macro": None, "f1_macro": None, "confusion_matrix": [], "classes": [],
            "no_validation": NO_VALIDATION}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Score the chosen checkpoint (``evaluate.ckpt``) on the val split -> ``<run>/report/``.

    With eco-regions, each region's val pixels are predicted by that region's model:
    ``report/`` holds the overall metrics and ``report/region_<r>/`` those of each region
    (also under ``"regions"`` in the returned dict). With ``test_table=PATH`` (a pixel table
    like ``data.table``), the model is also scored on that external test set ->
    ``<run>/report/test/``; its classes unseen in training are scored as errors (own rows
    of the confusion matrix, never predicted; listed under ``"unseen_classes"``). The val
    confusion matrix image and the hyper-parameters with
    the final metrics go to TensorBoard (Images and HParams tabs).

    Returns:
        The val metrics (see :func:`i2dl.evaluation.run_report.compute_metrics`), with
        ``"test"`` and ``"regions"`` entries when relevant, and for deep models ``"selection"``: the
        scores on the selection split that chose the checkpoint (:func:`selection_scores`;
        optimistic, for hyper-parameter search only).

    Raises:
        StoreError: no trained model or no val pixel; the store is damaged
            (:func:`i2dl.samples.store.verify_store`).
        ConfigError: a test table with eco-regions (table rows have no location).
    """
    out = run_dir(cfg)
    with stage_logging(out, "evaluate"):
        models, info = load_models(out, cfg.evaluate.ckpt)
        try:  # a damaged store would be scored silently (missing chunks read as zeros)
            verify_store(info.path)
        except StoreError as exc:
            raise StoreError(
                f"{exc}. Rebuild it: `python -m i2dl prepare` with the run's overrides and "
                "store.rebuild=true, then evaluate again"
            ) from None
        name = cfg.get("experiment_name", "")
        report = out / REPORT_DIR
        per_region, y_true, y_pred = {}, [], []
        for region, model in models.items():
            t, p = predict_split(model, info.path, VAL, region=region)
            y_true.append(t)
            y_pred.append(p)
            if region is not None and len(t):
                per_region[f"region_{region}"] = write_report(
                    report / f"region_{region}", t, p, info.class_codes, info.class_names,
                    title=f"{name} val, region {region}",
                )
        all_true, all_pred = np.concatenate(y_true), np.concatenate(y_pred)
        if len(all_true) == 0 and not cfg.sampling.get("split_ground_truth", True):
            return no_validation(report)
        if len(all_true) == 0:
            raise StoreError(f"store {info.path} has no val pixel to evaluate")
        metrics = write_report(
            report, all_true, all_pred, info.class_codes, info.class_names, title=f"{name} val"
        )
        if per_region:
            metrics["regions"] = {
                r: {k: m[k] for k in ("oa", "kappa", "f1_macro", "n_samples")}
                for r, m in per_region.items()
            }
            for r, m in metrics["regions"].items():
                log.info("%s: OA %.4f on %d val pixels", r, m["oa"], m["n_samples"])
        # a refitted network has learnt the selection pixels: its selection scores are
        # those of the network that the selection split chose (fit_state "selected")
        chosen = selected_models(out) if cfg.get("refit", False) else models
        selection = selection_scores(chosen, info) if chosen else None
        if selection is not None:
            metrics["selection"] = selection
        members = member_scores(models, info)
        if members:
            metrics["members"] = members
            write_text_atomic(report / METRICS_JSON,
                              json.dumps(metrics, indent=2, allow_nan=False) + "\n")
            log.info("deep ensemble of %d: val OA %.4f; members %s", len(members),
                     metrics["oa"], ", ".join(f"{m['oa']:.4f}" for m in members))
        if cfg.get("test_table"):
            if None not in models:
                raise ConfigError("test_table cannot be scored with eco-regions: its rows have "
                                  "no location to choose a region's model")
            t_true, t_pred = predict_table(
                models[None], info, cfg.test_table, int(cfg.data.get("label_offset", 0))
            )
            # classes unseen in training get rows of their own: never predicted, their
            # pixels count as errors in OA, kappa and the macro scores
            unseen = unseen_classes(t_true, info)
            metrics["test"] = write_report(
                report / "test", t_true, t_pred, [*info.class_codes, *unseen],
                [*info.class_names, *(f"{c} (unseen in training)" for c in unseen)],
                title=f"{name} test ({Path(cfg.test_table).name})",
            )
            metrics["test"]["unseen_classes"] = unseen
            log.info("test table %s: OA %.4f", cfg.test_table, metrics["test"]["oa"])
        if None in models:
            log_to_tensorboard(cfg, out, metrics)
        return metrics


def selected_models(out: Path) -> dict[int | None, Classifier]:
    """The networks that the selection split chose, before their refit on all labels.

    Returns:
        ``{region: model}`` from each model folder's ``fit_state.json`` ``selected``
        checkpoint; empty when a model folder has none (no refit, or an ensemble, whose
        members each chose their own epoch: no single selection score exists).
    """
    chosen: dict[int | None, Classifier] = {}
    for region, model_dir in trained_model_dirs(out).items():
        state = read_fit_state(model_dir) or {}
        if not state.get("selected"):
            return {}
        chosen[region], _ = load_classifier(
            model_dir, str(model_dir / CHECKPOINT_DIR / str(state["selected"])))
    return chosen


def member_scores(models: dict[int | None, Classifier], info: StoreInfo) -> list[dict[str, Any]]:
    """Val OA, kappa and macro F1 of each member of a deep ensemble (none for other models).

    The ensemble's own scores are the report's; these say what averaging gained over its
    members (issue 20). Same val pixels, same metric definitions
    (:func:`i2dl.evaluation.metrics.scores`).
    """
    model = models.get(None)
    if not isinstance(model, DeepEnsemble):
        return []
    codes = np.asarray(info.class_codes, dtype=np.int64)
    out = []
    for member in model.members:
        assert isinstance(member, SITSClassifier)  # DeepEnsemble checks its members
        t, p = predict_split(member, info.path, VAL)
        cm = confusion_matrix(np.searchsorted(codes, t), np.searchsorted(codes, p), len(codes))
        s = scores(cm)
        out.append({"oa": s.oa, "kappa": s.kappa, "f1_macro": s.f1_macro,
                    "n_samples": s.n_samples})
    return out


def selection_scores(
    models: dict[int | None, Classifier], info: StoreInfo
) -> dict[str, Any] | None:
    """OA, kappa and macro F1 of deep models on the selection split that chose them.

    These numbers chose the checkpoint (and stopped training), so they are optimistic and
    are **never** reported as the model's accuracy; they are what a hyper-parameter
    search may maximise (``objective``, :func:`i2dl.training.runs.objective_value`)
    without touching the val polygons.

    Returns:
        ``{"oa", "kappa", "f1_macro", "n_samples"}``, or None for scikit-learn models
        (which fit on the selection split: no held-apart score exists) or a store without
        selection pixels.
    """
    if not all(isinstance(m, SITSClassifier) for m in models.values()):
        return None
    parts = [predict_split(m, info.path, SELECTION, region=r) for r, m in models.items()]
    y_true = np.concatenate([t for t, _ in parts])
    if len(y_true) == 0:
        return None
    y_pred = np.concatenate([p for _, p in parts])
    codes = np.asarray(info.class_codes, dtype=np.int64)
    cm = confusion_matrix(np.searchsorted(codes, y_true), np.searchsorted(codes, y_pred),
                          len(codes))
    s = scores(cm)
    return {"oa": s.oa, "kappa": s.kappa, "f1_macro": s.f1_macro, "n_samples": s.n_samples}


#: sub-folder of ``tb/`` (a TensorBoard run of its own) with evaluate's image and HParams
TB_EVALUATE = "evaluate"


def log_to_tensorboard(cfg: DictConfig, out: Path, metrics: dict[str, Any]) -> None:
    """Confusion matrix image at the best epoch, and hyper-parameters with final metrics.

    Written to ``tb/evaluate/`` (TensorBoard run ``evaluate``), whose event files are
    replaced by each evaluate run, so a re-run does not add a second HParams entry.
    """
    if not (out / TB_DIR).is_dir():
        return
    tb = out / TB_DIR / TB_EVALUATE
    tb.mkdir(exist_ok=True)
    for old in tb.glob("events.out.tfevents.*"):
        old.unlink()
    step = 0
    ckpt = checkpoint_path(out, str(cfg.evaluate.ckpt))
    if ckpt.suffix == ".ckpt":
        step = int(torch.load(ckpt, map_location="cpu", weights_only=True).get("global_step", 0))
    image = imread(out / REPORT_DIR / CONFUSION_PNG)[..., :3]
    flat = flatten_params(
        {
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            "datamodule": {"batch_size": cfg.datamodule.get("batch_size")},
            "trainer": {"max_epochs": cfg.trainer.get("max_epochs")},
            "seed": cfg.seed,
            "data": cfg.data.get("name"),
        }
    )
    with SummaryWriter(log_dir=str(tb)) as writer:
        writer.add_image("val/confusion_matrix", image, global_step=step, dataformats="HWC")
        writer.add_hparams(
            flat,
            {f"hparam/{k}": float(metrics[k] or 0.0) for k in ("oa", "kappa", "f1_macro")},
            run_name=".",
        )


def flatten_params(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> ``{"a.b.c": scalar}`` for TensorBoard's HParams (None -> "null")."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = "null" if value is None else value
        else:
            flat[name] = str(value)
    return flat
