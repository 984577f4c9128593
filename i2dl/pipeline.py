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
from i2dl.inference import InferenceResult, classify_raster, mosaic, resolve_device
from i2dl.io.sources import data_tiles, open_source, uses_sensors
from i2dl.prepare import class_statistics_path, prepare, store_path
from i2dl.preview import write_learning_curves, write_map_preview
from i2dl.products import write_map_products
from i2dl.report import write_atomic, write_report
from i2dl.sampling.regions import rasterize_regions, read_regions
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
    """Stage ``prepare``: build or reuse the sample store; copy its class statistics.

    Returns:
        The store path; ``<run>/class_statistics.csv`` is iota2's per class, region, run
        and split report of polygons, available and selected pixels.
    """
    out = run_dir(cfg)
    with stage_logging(out, "prepare"):
        store = prepare(cfg)
        stats = class_statistics_path(store)
        if stats.is_file():
            write_atomic(out / "class_statistics.csv", stats.read_bytes())
        return store


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


def _callbacks(cfg: DictConfig, model_dir: Path | None = None) -> list[Any]:
    """Callbacks of ``cfg.callbacks``; monitor/mode from the selection criterion.

    ``model_dir`` (one model per eco-region) redirects the checkpoints there.
    """
    from models import criterion_monitor

    monitor, mode = criterion_monitor(cfg.model.model_selection_criterion)
    callbacks = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is None or "_target_" not in cb_cfg:
            continue
        if name == "early_stopping" and not cfg.get("enable_early_stop", False):
            continue
        extra: dict[str, Any] = {}
        if name in ("model_checkpoint", "early_stopping"):
            extra = {"monitor": monitor, "mode": mode}
        if name == "model_checkpoint" and model_dir is not None:
            extra["dirpath"] = str(model_dir / "checkpoints")
        callbacks.append(instantiate(cb_cfg, **extra))
    return callbacks


def model_dirs(out: Path, info: StoreInfo) -> dict[int | None, Path]:
    """Folder of each model of a run: the run itself, or ``regions/region_<r>`` per region.

    A model folder holds ``model.yaml``, ``checkpoints/`` and ``tb/``.
    """
    regions = info.attrs.get("regions") or []
    if not regions:
        return {None: out}
    return {int(r): out / "regions" / f"region_{int(r)}" for r in regions}


def run_fit(cfg: DictConfig, store: Path | None = None) -> Path | dict[str, str]:
    """Stage ``fit``: train ``cfg.model`` on the learn split, select on val.

    With eco-regions (``sampling.region_file``), one model per region is trained on that
    region's samples only, in ``<run>/regions/region_<r>/``.

    Args:
        cfg: composed config.
        store: the sample store; None looks up the store of ``cfg`` (must exist).

    Returns:
        Path of the best checkpoint (``<run>/checkpoints/best.ckpt``, or ``model.joblib``),
        or with regions ``{"region_<r>": path}``.

    Raises:
        StoreError: no store for this config.
        ConfigError: bad class_weights value; the store (or a region) has no learn or val
            pixel.
    """
    out = run_dir(cfg)
    with stage_logging(out, "fit"):
        store = Path(store) if store is not None else _existing_store(cfg)
        info = read_info(store)
        dirs = model_dirs(out, info)
        best = {}
        for region, model_dir in dirs.items():
            if cfg.seed is not None:
                L.seed_everything(int(cfg.seed), workers=True)
            if region is not None:
                log.info("region %d: training in %s", region, model_dir)
            best[region] = _fit_one(cfg, store, info, model_dir, region)
        if list(best) == [None]:
            return best[None]
        return {f"region_{r}": str(p) for r, p in best.items()}


def _fit_one(cfg: DictConfig, store: Path, info: StoreInfo, model_dir: Path,
             region: int | None) -> Path:
    """Train one model (all samples, or one region's) into ``model_dir``."""
    datamodule = instantiate(cfg.datamodule, store_path=str(store), region=region)
    n_learn = datamodule.dataset(0).n_samples
    n_val = datamodule.dataset(1).n_samples
    where = f"region {region} of store {store}" if region is not None else f"store {store}"
    if n_learn == 0 or n_val == 0:
        raise ConfigError(
            f"{where} has {n_learn} learn and {n_val} val pixels; both are needed to train "
            "and select a model"
        )
    model_dir.mkdir(parents=True, exist_ok=True)
    if cfg.model.get("backend") == "sklearn":
        return _fit_sklearn(cfg, store, info, model_dir, region)
    cw = cfg.model.get("class_weights")
    if cw not in (None, "balanced"):
        raise ConfigError(f"model.class_weights must be null or balanced, got {cw!r}")
    weights = datamodule.class_weights() if cw == "balanced" else None
    module = build_module(cfg, info, weights)
    n_params = sum(p.numel() for p in module.parameters())
    log.info(
        "model %s: %d parameters; %d dates x %d channels -> %d classes %s; %d learn / %d val",
        cfg.model.get("name", "?"),
        n_params,
        info.n_dates,
        info.n_channels,
        info.n_classes,
        info.class_codes,
        n_learn,
        n_val,
    )
    spec = {
        "name": cfg.model.get("name"),
        "net": OmegaConf.to_container(cfg.model.net, resolve=True),
        "in_channels": info.n_channels,
        "n_classes": info.n_classes,
        "n_dates": info.n_dates,
        "n_parameters": n_params,
        "store": str(store),
        "region": region,
    }
    _atomic_write_text(model_dir / MODEL_SPEC, OmegaConf.to_yaml(OmegaConf.create(spec)))
    loggers = [
        instantiate(lg, **({"save_dir": str(model_dir / "tb")} if region is not None else {}))
        for lg in (cfg.get("logger") or {}).values() if lg
    ]
    trainer = instantiate(
        cfg.trainer,
        callbacks=_callbacks(cfg, model_dir if region is not None else None),
        logger=loggers or False,
        precision=_precision(cfg),
    )
    trainer.fit(module, datamodule=datamodule)
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt else ""
    if not best:
        raise ConfigError("training produced no checkpoint; check callbacks.model_checkpoint")
    curves = write_learning_curves(model_dir / "tb", model_dir / "report" / "learning_curves.png")
    if curves is not None:
        log.info("learning curves: %s", curves)
    log.info("best checkpoint %s (%s = %.4f)", best, ckpt.monitor, float(ckpt.best_model_score))
    return Path(best)


def _precision(cfg: DictConfig) -> str:
    """``trainer.precision``, or when null: bf16 mixed precision on CUDA, else 32-bit."""
    precision = cfg.trainer.get("precision")
    if precision is not None:
        return str(precision)
    accel = str(cfg.trainer.get("accelerator", "auto"))
    on_cuda = torch.cuda.is_available() and accel in ("auto", "gpu", "cuda")
    return "bf16-mixed" if on_cuda else "32-true"


def _fit_sklearn(
    cfg: DictConfig, store: Path, info: StoreInfo, out: Path, region: int | None = None
) -> Path:
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
        region=region,
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
        "region": region,
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


def predict_split(
    module: Any, store: Path, split: int, batch_size: int = 4096, region: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Predict every sample of one split (and region) of a store.

    Returns:
        ``y_true`` (N,) int64 class codes and ``y_pred`` (N,) int64 predicted codes.
    """
    from datamodules.pixel_series import StoreBlockDataset

    dataset = StoreBlockDataset(store, split, batch_size=batch_size, shuffle=False, region=region)
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


def load_run_models(out: Path, which: str) -> tuple[dict[int | None, Any], StoreInfo]:
    """Every trained model of a run: ``{None: model}``, or ``{region: model}``.

    Raises:
        StoreError: fit has not run in ``out``.
    """
    region_dirs = sorted((out / "regions").glob("region_*")) if (out / "regions").is_dir() else []
    if not region_dirs:
        module, info = load_trained(out, which)
        return {None: module}, info
    models: dict[int | None, Any] = {}
    for d in region_dirs:
        module, info = load_trained(d, which)
        models[int(d.name.split("_")[-1])] = module
    return models, info


def run_evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Stage ``evaluate``: the chosen checkpoint on the val split -> ``<run>/report/``.

    With eco-regions, each region's val pixels are predicted by that region's model:
    ``report/`` holds the overall metrics and ``report/region_<r>/`` those of each region
    (also under ``"regions"`` in the returned dict). With ``test_table=PATH`` (a pixel table
    like ``data.table``), the model is also scored on that external test set ->
    ``<run>/report/test/``. The val confusion matrix image and the hyper-parameters with
    the final metrics go to TensorBoard (Images and HParams tabs).

    Returns:
        The val metrics (see :func:`i2dl.report.compute_metrics`), with ``"test"`` and
        ``"regions"`` entries when relevant.

    Raises:
        StoreError: no trained model or no val pixel.
        ConfigError: a test table with eco-regions (table rows have no location).
    """
    out = run_dir(cfg)
    with stage_logging(out, "evaluate"):
        models, info = load_run_models(out, cfg.evaluate.ckpt)
        name = cfg.get("experiment_name", "")
        per_region, y_true, y_pred = {}, [], []
        for region, module in models.items():
            t, p = predict_split(module, info.path, split=1, region=region)
            y_true.append(t)
            y_pred.append(p)
            if region is not None and len(t):
                per_region[f"region_{region}"] = write_report(
                    out / "report" / f"region_{region}", t, p, info.class_codes,
                    info.class_names, title=f"{name} val, region {region}",
                )
        y_true, y_pred = np.concatenate(y_true), np.concatenate(y_pred)
        if len(y_true) == 0:
            raise StoreError(f"store {info.path} has no val pixel to evaluate")
        metrics = write_report(
            out / "report", y_true, y_pred, info.class_codes, info.class_names, title=f"{name} val"
        )
        if per_region:
            metrics["regions"] = {
                r: {k: m[k] for k in ("oa", "kappa", "f1_macro", "n_samples")}
                for r, m in per_region.items()
            }
            for r, m in metrics["regions"].items():
                log.info("%s: OA %.4f on %d val pixels", r, m["oa"], m["n_samples"])
        if cfg.get("test_table"):
            if None not in models:
                raise ConfigError("test_table cannot be scored with eco-regions: its rows have "
                                  "no location to choose a region's model")
            t_true, t_pred = _predict_table(models[None], info, cfg.test_table, cfg.data)
            metrics["test"] = write_report(
                out / "report" / "test",
                t_true,
                t_pred,
                info.class_codes,
                info.class_names,
                title=f"{name} test ({Path(cfg.test_table).name})",
            )
            log.info("test table %s: OA %.4f", cfg.test_table, metrics["test"]["oa"])
        if None in models:
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


def _proba_fn(module: Any) -> Any:
    def predict(x: torch.Tensor, days: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(module(x, days, mask).float(), dim=1)

    return predict


def run_infer(cfg: DictConfig) -> InferenceResult | None:
    """Stage ``infer``: classify the data's raster(s) chunk by chunk -> ``<run>/maps/``.

    One tile: ``maps/classif.tif``, ``confidence.tif`` (+ ``proba.tif``). Several tiles
    (``data.list_tile``): ``maps/<tile>/…`` per tile and the mosaics
    ``final/Classif_Seed_<seed>.tif`` and ``final/Confidence_Seed_<seed>.tif`` (iota2's
    names). With eco-regions, each region's pixels are classified by its own model and
    pixels in no region are nodata.

    Returns:
        The written maps (the mosaic with several tiles), or None when the data has no
        raster to map (a pixel table).
    """
    out = run_dir(cfg)
    with stage_logging(out, "infer"):
        if not cfg.data.get("raster") and not uses_sensors(cfg.data):
            log.info("data %s has no raster (data.raster): no map to write", cfg.data.get("name"))
            return None
        icfg = cfg.infer
        models, info = load_run_models(out, icfg.ckpt)
        device = resolve_device(str(icfg.device))
        predicts = {r: _proba_fn(m.to(device)) for r, m in models.items()}
        predict = predicts[None] if None in predicts else predicts
        tiles = data_tiles(cfg.data)
        multi = len(tiles) > 1
        results = {}
        for tile in tiles or [None]:
            maps = out / "maps" / tile if multi else out / "maps"
            with open_source(cfg.data, tile) as series:
                region_index = None
                if None not in predicts:
                    regions = read_regions(
                        cfg.sampling.region_file, cfg.sampling.region_field, series.crs
                    )
                    region_index = rasterize_regions(
                        regions, series.transform, series.width, series.height
                    )
                results[tile] = classify_raster(
                    series,
                    info,
                    predict,
                    maps,
                    device,
                    chunk_size=int(icfg.chunk_size),
                    batch_size=int(icfg.batch_size),
                    amp=bool(icfg.amp),
                    write_proba=bool(icfg.write_proba),
                    region_index=region_index,
                )
            preview = write_map_preview(
                results[tile].classif, maps / "classif_preview.png", info.class_codes,
                info.class_names,
            )
            log.info("map preview: %s", preview)
            products = write_map_products(
                results[tile].classif, info.class_codes, info.class_names,
                colour_table=cfg.data.get("colour_table") or None,
            )
            log.info("map products: %s", ", ".join(str(p) for p in products.values()))
        if not multi:
            return next(iter(results.values()))
        seed = cfg.seed if cfg.seed is not None else 0
        final = out / "final"
        classif = mosaic([r.classif for r in results.values()], final / f"Classif_Seed_{seed}.tif")
        conf = mosaic([r.confidence for r in results.values()],
                      final / f"Confidence_Seed_{seed}.tif")
        log.info("mosaic of %d tiles: %s", len(tiles), classif)
        return InferenceResult(
            classif=classif,
            confidence=conf,
            proba=None,
            n_pixels=sum(r.n_pixels for r in results.values()),
            n_nodata=sum(r.n_nodata for r in results.values()),
            device=str(device),
        )


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
    ``<run>/seed_<i>/`` (one map per run), and the runs are aggregated into
    ``<run>/RESULTS.txt`` (mean ± std and 95 % interval of OA, kappa, F1; summed confusion
    matrix), see :mod:`i2dl.aggregate`. With ``fusion=true`` the run maps are also fused
    by majority vote into ``<run>/final/Classif_Fusion.tif`` with its agreement ratio
    (:mod:`i2dl.fusion`).

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
        maps = [json.loads((d / "summary.json").read_text()).get("classif_map") for d in run_dirs]
        if cfg.get("fusion", False) and all(maps):
            from i2dl.fusion import fuse_maps

            codes = [c["code"] for c in json.loads((run_dirs[0] / "summary.json").read_text())["classes"]]
            fused, agreement = fuse_maps([Path(m) for m in maps], codes, out / "final")
            agg["fusion"] = {"classif": str(fused), "agreement": str(agreement)}
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
            "best_checkpoint": best if isinstance(best, dict) else str(best),
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
