"""The stages as functions of the composed config, and the main job ``train``.

Each ``run_<stage>(cfg)`` works in the run folder ``cfg.paths.output_dir`` (output tree in
DESIGN.md), logs to ``<run>/logs/<stage>.log`` and returns what it produced. ``run_train``
chains prepare -> fit -> evaluate -> infer and writes ``<run>/summary.json``.
"""

from __future__ import annotations

import copy
import inspect
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
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from i2dl.cli import stage_logging
from i2dl.errors import ConfigError, StoreError
from i2dl.inference import InferenceResult, classify_raster, resolve_device
from i2dl.io.sources import open_source, uses_sensors
from i2dl.prepare import prepare, store_path
from i2dl.preview import write_learning_curves, write_map_preview
from i2dl.report import write_atomic, write_report
from i2dl.store import StoreInfo, read_info

log = logging.getLogger(__name__)

#: Written in the run folder by fit: what is needed to rebuild the network.
MODEL_SPEC = "model.yaml"
#: A fitted scikit-learn backend, with its preprocessing, in ``<run>/checkpoints/``.
SKLEARN_MODEL = "model.joblib"
#: Keys of a scikit-learn model config that are not estimator parameters.
SKLEARN_META_KEYS = ("name", "backend", "max_samples", "model_selection_criterion", "class_weights")


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


def build_network(
    net_cfg: Any, in_channels: int, n_classes: int, n_dates: int
) -> torch.nn.Module:
    """Instantiate the network of ``model.net`` for C channels, K classes and T dates.

    ``n_dates`` is passed only to networks whose constructor takes it (MLP, ANN, TempCNN
    need T; attention networks do not).
    """
    kwargs: dict[str, int] = {"in_channels": in_channels, "n_classes": n_classes}
    target = get_class(net_cfg["_target_"])
    if "n_dates" in inspect.signature(target).parameters:
        kwargs["n_dates"] = n_dates
    return instantiate(net_cfg, **kwargs)


def build_module(cfg: DictConfig, info: StoreInfo, class_weights: np.ndarray | None) -> Any:
    """The LightningModule of ``cfg.model`` for the store described by ``info``."""
    from models import SITSClassifier

    mcfg = cfg.model
    net = build_network(mcfg.net, info.n_channels, info.n_classes, info.n_dates)
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
        if name == "early_stopping" and not cfg.get("enable_early_stop", False):
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
        if cfg.model.get("backend") == "sklearn":
            return _fit_sklearn(cfg, store, info, out)
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
            "n_dates": info.n_dates,
            "n_parameters": n_params,
            "store": str(store),
        }
        _atomic_write_text(out / MODEL_SPEC, OmegaConf.to_yaml(OmegaConf.create(spec)))
        loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg]
        trainer = instantiate(
            cfg.trainer,
            callbacks=_callbacks(cfg),
            logger=loggers or False,
            precision=_precision(cfg),
        )
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


def _precision(cfg: DictConfig) -> str:
    """``trainer.precision``, or when null: bf16 mixed precision on CUDA, else 32-bit."""
    precision = cfg.trainer.get("precision")
    if precision is not None:
        return str(precision)
    accel = str(cfg.trainer.get("accelerator", "auto"))
    on_cuda = torch.cuda.is_available() and accel in ("auto", "gpu", "cuda")
    return "bf16-mixed" if on_cuda else "32-true"


def _fit_sklearn(cfg: DictConfig, store: Path, info: StoreInfo, out: Path) -> Path:
    """Fit a scikit-learn backend (``model.backend: sklearn``) on the learn split."""
    from models.sklearn_backends import SklearnBackend

    params = OmegaConf.to_container(cfg.model, resolve=True)
    for key in SKLEARN_META_KEYS:
        params.pop(key, None)
    backend: SklearnBackend = instantiate(params, _convert_="all")
    backend.fit_store(
        store,
        max_samples=cfg.model.get("max_samples"),
        seed=int(cfg.seed) if cfg.seed is not None else 0,
    )
    path = out / "checkpoints" / SKLEARN_MODEL
    path.parent.mkdir(parents=True, exist_ok=True)
    backend.save(path)
    spec = {
        "name": cfg.model.get("name"),
        "backend": "sklearn",
        "in_channels": info.n_channels,
        "n_classes": info.n_classes,
        "n_dates": info.n_dates,
        "store": str(store),
    }
    _atomic_write_text(out / MODEL_SPEC, OmegaConf.to_yaml(OmegaConf.create(spec)))
    log.info("scikit-learn model %s saved to %s", cfg.model.get("name"), path)
    return path


# ---------------------------------------------------------------- loading a trained model


def resolve_checkpoint(out: Path, which: str) -> Path:
    """``best``/``last`` -> the run's checkpoint (``checkpoints/<which>.ckpt``, or the one
    ``model.joblib`` of a scikit-learn backend); anything else is a path.

    Raises:
        StoreError: the checkpoint does not exist.
    """
    if which in ("best", "last"):
        sk = out / "checkpoints" / SKLEARN_MODEL
        path = sk if sk.is_file() else out / "checkpoints" / f"{which}.ckpt"
    else:
        path = Path(which)
    if not path.is_file():
        raise StoreError(
            f"checkpoint {path} not found; run `python -m i2dl fit` first, or point "
            "hydra.run.dir at the run folder that holds checkpoints/"
        )
    return path


def load_trained(out: Path, which: str) -> tuple[Any, StoreInfo]:
    """Rebuild the model from ``<run>/model.yaml`` and load its checkpoint.

    Returns:
        The model in eval mode on the CPU — a LightningModule, or a scikit-learn backend
        with the same call signature ``model(x, days, mask) -> (B, K) scores`` — and the
        attributes of its sample store.

    Raises:
        StoreError: no checkpoint or no ``model.yaml`` (fit has not run in ``out``).
    """
    from models import SITSClassifier

    ckpt = resolve_checkpoint(out, which)
    spec_path = out / MODEL_SPEC
    if not spec_path.is_file():
        raise StoreError(f"{spec_path} not found (written by fit): cannot rebuild the network")
    spec = OmegaConf.load(spec_path)
    info = read_info(spec.store)
    if spec.get("backend") == "sklearn":
        from models.sklearn_backends import SklearnBackend

        return SklearnBackend.load(ckpt), info
    net = build_network(spec.net, int(spec.in_channels), int(spec.n_classes), int(spec.n_dates))
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

    With ``test_table=PATH`` (a pixel table like ``data.table``), the model is also scored
    on that external test set -> ``<run>/report/test/``. The val confusion matrix image
    and the hyper-parameters with the final metrics go to TensorBoard (Images and HParams
    tabs) when the run has a ``tb/`` folder.

    Returns:
        The val metrics (see :func:`i2dl.report.compute_metrics`), with the test metrics
        under ``"test"`` when a test table was given.
    """
    out = run_dir(cfg)
    with stage_logging(out, "evaluate"):
        module, info = load_trained(out, cfg.evaluate.ckpt)
        y_true, y_pred = predict_split(module, info.path, split=1)
        if len(y_true) == 0:
            raise StoreError(f"store {info.path} has no val pixel to evaluate")
        name = cfg.get("experiment_name", "")
        metrics = write_report(
            out / "report", y_true, y_pred, info.class_codes, info.class_names, title=f"{name} val"
        )
        if cfg.get("test_table"):
            t_true, t_pred = _predict_table(module, info, cfg.test_table, cfg.data)
            metrics["test"] = write_report(
                out / "report" / "test",
                t_true,
                t_pred,
                info.class_codes,
                info.class_names,
                title=f"{name} test ({Path(cfg.test_table).name})",
            )
            log.info("test table %s: OA %.4f", cfg.test_table, metrics["test"]["oa"])
        _log_to_tensorboard(cfg, out, metrics)
        return metrics


def _predict_table(
    module: Any, info: StoreInfo, path: str, data: DictConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Predict an external pixel table with the store's dates, channels and statistics."""
    from i2dl.io.table import read_pixel_table

    table = read_pixel_table(path, info.n_dates, info.n_channels, int(data.get("label_offset", 0)))
    unknown = sorted(set(np.unique(table.codes).tolist()) - set(info.class_codes))
    if unknown:
        log.warning("test table %s: classes %s unseen in training are scored as errors", path, unknown)
    codes = np.asarray(info.class_codes, dtype=np.int64)
    days = torch.from_numpy(info.days)
    preds = []
    with torch.no_grad():
        for b0 in range(0, len(table.codes), 4096):
            sl = slice(b0, b0 + 4096)
            x = torch.from_numpy(info.normalise(table.x[sl], table.valid[sl]))
            mask = torch.from_numpy(table.valid[sl])
            scores = module(x, days.expand(len(x), -1), mask)
            preds.append(codes[scores.argmax(dim=1).numpy()])
    y_pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    return table.codes, y_pred


def _log_to_tensorboard(cfg: DictConfig, out: Path, metrics: dict[str, Any]) -> None:
    """Confusion matrix image at the best epoch, and hyper-parameters with final metrics."""
    tb = out / "tb"
    if not tb.is_dir():
        return
    from matplotlib.image import imread
    from torch.utils.tensorboard import SummaryWriter

    step = 0
    ckpt = out / "checkpoints" / "best.ckpt"
    if ckpt.is_file():
        step = int(torch.load(ckpt, map_location="cpu", weights_only=False).get("global_step", 0))
    image = imread(out / "report" / "confusion_matrix.png")[..., :3]
    flat = _flatten_params(
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


def _flatten_params(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten_params(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = "null" if value is None else value
        else:
            flat[name] = str(value)
    return flat


# ---------------------------------------------------------------- infer


def run_infer(cfg: DictConfig) -> InferenceResult | None:
    """Stage ``infer``: classify ``cfg.data.raster`` chunk by chunk -> ``<run>/maps/``.

    Returns:
        The written maps, or None when the data has no raster to map (a pixel table).
    """
    out = run_dir(cfg)
    with stage_logging(out, "infer"):
        if not cfg.data.get("raster") and not uses_sensors(cfg.data):
            log.info("data %s has no raster (data.raster): no map to write", cfg.data.get("name"))
            return None
        icfg = cfg.infer
        module, info = load_trained(out, icfg.ckpt)
        device = resolve_device(str(icfg.device))
        module.to(device)
        series = open_source(cfg.data)

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

    With ``runs=N`` (iota2's ``arg_train.runs``), the job runs N times with seeds
    ``seed, seed+1, ...`` — each run re-splits the polygons with its own seed — into
    ``<run>/seed_<i>/``, and the runs are aggregated into ``<run>/RESULTS.txt`` (mean ± std
    and 95 % interval of OA, kappa, F1; summed confusion matrix), see
    :mod:`i2dl.aggregate`.

    Returns:
        The summary (also written to ``summary.json``); for N runs, the aggregate.

    Raises:
        ConfigError: ``runs`` < 1.
    """
    runs = int(cfg.get("runs", 1) or 1)
    if runs < 1:
        raise ConfigError(f"runs must be >= 1, got {runs}")
    if runs == 1:
        return _train_one(cfg)
    from i2dl.aggregate import aggregate, write_results

    out = run_dir(cfg)
    base = int(cfg.seed) if cfg.seed is not None else 0
    run_dirs = []
    for i in range(runs):
        cfg_i = copy.deepcopy(cfg)
        with open_dict(cfg_i):
            cfg_i.runs = 1
            cfg_i.seed = base + i
            cfg_i.paths.output_dir = str(out / f"seed_{i}")
        log.info("run %d/%d (seed %d) in %s", i + 1, runs, base + i, cfg_i.paths.output_dir)
        _train_one(cfg_i)
        run_dirs.append(Path(cfg_i.paths.output_dir))
    with stage_logging(out, "train"):
        agg = aggregate(run_dirs)
        files = write_results(out, agg)
        log.info("%d runs aggregated: %s", runs, files.get("RESULTS.txt", out))
    return agg


def _train_one(cfg: DictConfig) -> dict[str, Any]:
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
        classes = zip(info.class_codes, info.class_names, strict=True)
        summary = {
            "experiment": cfg.get("experiment_name"),
            "seed": cfg.seed,
            "oa": metrics["oa"],
            "kappa": metrics["kappa"],
            "f1_macro": metrics["f1_macro"],
            "n_learn": counts["n_learn"],
            "n_val": counts["n_val"],
            "n_classes": info.n_classes,
            "classes": [{"code": c, "name": n} for c, n in classes],
            "store": str(store),
            "best_checkpoint": str(best),
            "report": str(out / "report" / "metrics.json"),
            "classif_map": str(maps.classif) if maps else None,
            "confidence_map": str(maps.confidence) if maps else None,
            "proba_map": str(maps.proba) if maps and maps.proba else None,
            "infer_device": maps.device if maps else None,
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "versions": _versions(),
        }
        if "test" in metrics:
            summary["test"] = {k: metrics["test"][k] for k in ("oa", "kappa", "f1_macro", "n_samples")}
        _atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
        log.info(
            "done: OA %.4f, kappa %.4f, macro F1 %.4f on %d val pixels; summary %s",
            summary["oa"],
            summary["kappa"] or 0.0,
            summary["f1_macro"],
            summary["n_val"],
            out / "summary.json",
        )
        return summary
