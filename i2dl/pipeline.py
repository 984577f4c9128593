"""The stages as functions of the composed config, and the main job ``train``.

Each ``run_<stage>(cfg)`` works in the run folder ``cfg.paths.output_dir`` (output tree in
DESIGN.md), logs to ``<run>/logs/<stage>.log`` and returns what it produced. ``run_train``
chains prepare -> fit -> evaluate -> infer and writes ``<run>/summary.json``.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from i2dl.cli import stage_logging
from i2dl.errors import ConfigError, StoreError
from i2dl.inference import InferenceResult, classify_raster, resolve_device
from i2dl.io.raster import open_time_series
from i2dl.prepare import prepare, store_path
from i2dl.preview import write_learning_curves, write_map_preview
from i2dl.report import write_atomic, write_report
from i2dl.store import StoreInfo, read_info

log = logging.getLogger(__name__)

#: Written in the run folder by fit: what is needed to rebuild the network.
MODEL_SPEC = "model.yaml"


def run_dir(cfg: DictConfig) -> Path:
    """The run folder (``paths.output_dir``), created."""
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode())


# ---------------------------------------------------------------- prepare


def run_prepare(cfg: DictConfig) -> Path:
    """Stage ``prepare``: build or reuse the sample store. Returns its path."""
    with stage_logging(run_dir(cfg), "prepare"):
        return prepare(cfg)


# ---------------------------------------------------------------- fit


def _existing_store(cfg: DictConfig) -> Path:
    path = store_path(cfg)
    if not path.exists():
        raise StoreError(
            f"no up-to-date sample store for this config at {path}; run "
            "`python -m i2dl prepare` with the same overrides first, or `python -m i2dl train`"
        )
    return path


def build_network(net_cfg: Any, in_channels: int, n_classes: int) -> torch.nn.Module:
    """Instantiate the network of ``model.net`` for C input channels and K classes."""
    return instantiate(net_cfg, in_channels=in_channels, n_classes=n_classes)


def build_module(cfg: DictConfig, info: StoreInfo, class_weights: np.ndarray | None) -> Any:
    """The LightningModule of ``cfg.model`` for the store described by ``info``."""
    from models import SITSClassifier

    mcfg = cfg.model
    net = build_network(mcfg.net, info.n_channels, info.n_classes)
    optimizer = instantiate(mcfg.optimizer) if mcfg.get("optimizer") else None
    scheduler = instantiate(mcfg.scheduler) if mcfg.get("scheduler") else None
    return SITSClassifier(
        net=net,
        n_classes=info.n_classes,
        optimizer=optimizer,
        scheduler=scheduler,
        model_selection_criterion=mcfg.model_selection_criterion,
        class_weights=class_weights,
    )


def _callbacks(cfg: DictConfig) -> list[Any]:
    from models import criterion_monitor

    monitor, mode = criterion_monitor(cfg.model.model_selection_criterion)
    callbacks = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is None or "_target_" not in cb_cfg:
            continue
        extra = {"monitor": monitor, "mode": mode} if name in ("model_checkpoint", "early_stopping") else {}
        callbacks.append(instantiate(cb_cfg, **extra))
    return callbacks


def run_fit(cfg: DictConfig, store: Path | None = None) -> Path:
    """Stage ``fit``: train ``cfg.model`` on the learn split, select on val.

    Args:
        cfg: composed config.
        store: the sample store; None looks up the store of ``cfg`` (must exist).

    Returns:
        Path of the best checkpoint (``<run>/checkpoints/best.ckpt``).

    Raises:
        StoreError: no store for this config.
        ConfigError: bad class_weights value; the store has no learn or val pixel.
    """
    out = run_dir(cfg)
    with stage_logging(out, "fit"):
        if cfg.seed is not None:
            L.seed_everything(int(cfg.seed), workers=True)
        store = Path(store) if store is not None else _existing_store(cfg)
        datamodule = instantiate(cfg.datamodule, store_path=str(store))
        info = datamodule.info
        counts = info.attrs["counts"]
        if counts["n_learn"] == 0 or counts["n_val"] == 0:
            raise ConfigError(
                f"store {store} has {counts['n_learn']} learn and {counts['n_val']} val pixels; "
                "both are needed to train and select a model"
            )
        cw = cfg.model.get("class_weights")
        if cw not in (None, "balanced"):
            raise ConfigError(f"model.class_weights must be null or balanced, got {cw!r}")
        weights = datamodule.class_weights() if cw == "balanced" else None
        module = build_module(cfg, info, weights)
        n_params = sum(p.numel() for p in module.parameters())
        log.info(
            "model %s: %d parameters; %d dates x %d channels -> %d classes %s",
            cfg.model.get("name", "?"),
            n_params,
            info.n_dates,
            info.n_channels,
            info.n_classes,
            info.class_codes,
        )
        spec = {
            "name": cfg.model.get("name"),
            "net": OmegaConf.to_container(cfg.model.net, resolve=True),
            "in_channels": info.n_channels,
            "n_classes": info.n_classes,
            "n_parameters": n_params,
            "store": str(store),
        }
        _atomic_write_text(out / MODEL_SPEC, OmegaConf.to_yaml(OmegaConf.create(spec)))
        loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg]
        trainer = instantiate(cfg.trainer, callbacks=_callbacks(cfg), logger=loggers or False)
        trainer.fit(module, datamodule=datamodule)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            raise ConfigError("training produced no checkpoint; check callbacks.model_checkpoint")
        curves = write_learning_curves(out / "tb", out / "report" / "learning_curves.png")
        if curves is not None:
            log.info("learning curves: %s", curves)
        log.info(
            "best checkpoint %s (%s = %.4f)",
            best,
            trainer.checkpoint_callback.monitor,
            float(trainer.checkpoint_callback.best_model_score),
        )
        return Path(best)


# ---------------------------------------------------------------- loading a trained model


def resolve_checkpoint(out: Path, which: str) -> Path:
    """``best``/``last`` -> ``<run>/checkpoints/<which>.ckpt``; anything else is a path.

    Raises:
        StoreError: the checkpoint does not exist.
    """
    path = out / "checkpoints" / f"{which}.ckpt" if which in ("best", "last") else Path(which)
    if not path.is_file():
        raise StoreError(
            f"checkpoint {path} not found; run `python -m i2dl fit` first, or point "
            "hydra.run.dir at the run folder that holds checkpoints/"
        )
    return path


def load_trained(out: Path, which: str) -> tuple[Any, StoreInfo]:
    """Rebuild the network from ``<run>/model.yaml`` and load a checkpoint.

    Returns:
        The LightningModule in eval mode (CPU) and the attributes of its sample store.
    """
    from models import SITSClassifier

    ckpt = resolve_checkpoint(out, which)
    spec_path = out / MODEL_SPEC
    if not spec_path.is_file():
        raise StoreError(f"{spec_path} not found (written by fit): cannot rebuild the network")
    spec = OmegaConf.load(spec_path)
    info = read_info(spec.store)
    net = build_network(spec.net, int(spec.in_channels), int(spec.n_classes))
    module = SITSClassifier.load_from_checkpoint(ckpt, net=net, map_location="cpu")
    module.eval()
    return module, info


# ---------------------------------------------------------------- evaluate


def predict_split(module: Any, store: Path, split: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Predict every sample of one split of a store.

    Returns:
        ``y_true`` (N,) int64 class codes and ``y_pred`` (N,) int64 predicted codes.
    """
    from datamodules.pixel_series import StoreBlockDataset

    dataset = StoreBlockDataset(store, split, batch_size=batch_size, shuffle=False)
    codes = np.asarray(dataset.info.class_codes, dtype=np.int64)
    y_true, y_pred = [], []
    module.eval()
    with torch.no_grad():
        for batch in dataset:
            logits = module(batch["x"], batch["days"], batch["mask"])
            y_pred.append(codes[logits.argmax(dim=1).numpy()])
            y_true.append(batch["code"].numpy())
    if not y_true:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(y_true), np.concatenate(y_pred)


def run_evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Stage ``evaluate``: the chosen checkpoint on the val split -> ``<run>/report/``.

    Returns:
        The metrics (see :func:`i2dl.report.compute_metrics`).
    """
    out = run_dir(cfg)
    with stage_logging(out, "evaluate"):
        module, info = load_trained(out, cfg.evaluate.ckpt)
        y_true, y_pred = predict_split(module, info.path, split=1)
        if len(y_true) == 0:
            raise StoreError(f"store {info.path} has no val pixel to evaluate")
        metrics = write_report(
            out / "report",
            y_true,
            y_pred,
            info.class_codes,
            info.class_names,
            title=f"{cfg.get('experiment_name', '')} val",
        )
        return metrics


# ---------------------------------------------------------------- infer


def run_infer(cfg: DictConfig) -> InferenceResult:
    """Stage ``infer``: classify ``cfg.data.raster`` chunk by chunk -> ``<run>/maps/``."""
    out = run_dir(cfg)
    with stage_logging(out, "infer"):
        icfg = cfg.infer
        module, info = load_trained(out, icfg.ckpt)
        device = resolve_device(str(icfg.device))
        module.to(device)
        series = open_time_series(
            cfg.data.raster,
            dates_file=cfg.data.get("dates_file"),
            band_names=cfg.data.get("band_names"),
            masks=OmegaConf.to_container(cfg.data.masks, resolve=True) if cfg.data.get("masks") else (),
        )

        def predict(x: torch.Tensor, days: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return torch.softmax(module(x, days, mask).float(), dim=1)

        with series:
            result = classify_raster(
                series,
                info,
                predict,
                out / "maps",
                device,
                chunk_size=int(icfg.chunk_size),
                batch_size=int(icfg.batch_size),
                amp=bool(icfg.amp),
                write_proba=bool(icfg.write_proba),
            )
        preview = write_map_preview(
            result.classif, out / "maps" / "classif_preview.png", info.class_codes, info.class_names
        )
        log.info("map preview: %s", preview)
        return result


# ---------------------------------------------------------------- train (main job)


def _versions() -> dict[str, str]:
    names = ["i2dl", "torch", "lightning", "torchmetrics", "zarr", "rasterio", "geopandas", "numpy", "hydra-core"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """The main job: prepare -> fit -> evaluate -> infer, then ``<run>/summary.json``.

    Returns:
        The summary (also written to ``summary.json``).
    """
    out = run_dir(cfg)
    timings: dict[str, float] = {}
    with stage_logging(out, "train"):
        t0 = time.perf_counter()
        store = run_prepare(cfg)
        timings["prepare"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        best = run_fit(cfg, store=store)
        timings["fit"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = run_evaluate(cfg)
        timings["evaluate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        maps = run_infer(cfg)
        timings["infer"] = time.perf_counter() - t0
        info = read_info(store)
        counts = info.attrs["counts"]
        summary = {
            "experiment": cfg.get("experiment_name"),
            "seed": cfg.seed,
            "oa": metrics["oa"],
            "kappa": metrics["kappa"],
            "f1_macro": metrics["f1_macro"],
            "n_learn": counts["n_learn"],
            "n_val": counts["n_val"],
            "n_classes": info.n_classes,
            "classes": [{"code": c, "name": n} for c, n in zip(info.class_codes, info.class_names, strict=True)],
            "store": str(store),
            "best_checkpoint": str(best),
            "report": str(out / "report" / "metrics.json"),
            "classif_map": str(maps.classif),
            "confidence_map": str(maps.confidence),
            "proba_map": str(maps.proba) if maps.proba else None,
            "infer_device": maps.device,
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "versions": _versions(),
        }
        _atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
        log.info(
            "done: OA %.4f, kappa %.4f, macro F1 %.4f on %d val pixels; summary %s",
            summary["oa"],
            summary["kappa"],
            summary["f1_macro"],
            summary["n_val"],
            out / "summary.json",
        )
        return summary
