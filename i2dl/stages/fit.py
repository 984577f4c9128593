"""Stage ``fit``: build the classifier of ``cfg.model`` and train it on the learn split."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from i2dl.build import DataDims, build_classifier, save_model_spec
from i2dl.errors import ConfigError, StoreError
from i2dl.layout import model_dirs, run_dir, stage_logging
from i2dl.prepare import store_path
from i2dl.store import LEARN, SELECTION, VAL, StoreInfo, read_info, verify_store
from i2dl.training import fit_estimator, fit_network
from models import SITSClassifier, SklearnClassifier

log = logging.getLogger(__name__)


def existing_store(cfg: DictConfig) -> Path:
    """The up-to-date sample store of ``cfg``, verified intact (:func:`verify_store`).

    Raises:
        StoreError: ``prepare`` has not built it, or it is damaged (the message names the
            store and ``store.rebuild=true``).
    """
    path = store_path(cfg)
    if not path.exists():
        raise StoreError(
            f"no up-to-date sample store for this config at {path}; run "
            "`python -m i2dl prepare` with the same overrides first, or `python -m i2dl train`"
        )
    try:
        verify_store(path)
    except StoreError as exc:
        raise StoreError(
            f"{exc}. Rebuild it: `python -m i2dl prepare` with the same overrides and "
            "store.rebuild=true"
        ) from None
    return path


def run(cfg: DictConfig, store: Path | None = None) -> Path | dict[str, str]:
    """Train ``cfg.model`` on the learn split; select the checkpoint on the selection split.

    The val split (the report's) is never read here. Deep models fit on learn and choose
    their checkpoint, stop early and schedule the learning rate on selection;
    scikit-learn models, which select nothing, fit on learn + selection.

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
        ConfigError: bad ``model.class_weights``; the store (or a region) has no learn or
            val pixel.
    """
    out = run_dir(cfg)
    with stage_logging(out, "fit"):
        store = Path(store) if store is not None else existing_store(cfg)
        info = read_info(store)
        best = {}
        for region, model_dir in model_dirs(out, info.attrs.get("regions")).items():
            if cfg.seed is not None:
                L.seed_everything(int(cfg.seed), workers=True)
            if region is not None:
                log.info("region %d: training in %s", region, model_dir)
            best[region] = fit_one(cfg, store, info, model_dir, region)
        if list(best) == [None]:
            return best[None]
        return {f"region_{r}": str(p) for r, p in best.items()}


def fit_one(
    cfg: DictConfig, store: Path, info: StoreInfo, model_dir: Path, region: int | None
) -> Path:
    """Build and train one model (all samples, or one region's) into ``model_dir``.

    Returns:
        Path of the best checkpoint or the saved scikit-learn model.

    Raises:
        ConfigError: no learn or val pixel, bad ``model.class_weights``.
    """
    datamodule = instantiate(cfg.datamodule, store_path=str(store), region=region)
    n_learn = datamodule.dataset(LEARN).n_samples
    n_selection = datamodule.dataset(SELECTION).n_samples
    n_val = datamodule.dataset(VAL).n_samples
    where = f"region {region} of store {store}" if region is not None else f"store {store}"
    if n_learn == 0 or n_val == 0:
        raise ConfigError(
            f"{where} has {n_learn} learn and {n_val} val pixels; both are needed to train "
            "and evaluate a model"
        )
    model_dir.mkdir(parents=True, exist_ok=True)
    cw = cfg.model.get("class_weights")
    if cw not in (None, "balanced"):
        raise ConfigError(f"model.class_weights must be null or balanced, got {cw!r}")
    weights = datamodule.class_weights().tolist() if cw == "balanced" else None
    dims = DataDims.of(info)
    classifier = build_classifier(cfg.model, dims, class_weights=weights)
    if isinstance(classifier, SITSClassifier) and n_selection == 0:
        raise ConfigError(
            f"{where} has no selection pixel to choose the checkpoint on; set "
            "sampling.selection_ratio in (0, 1) (default 0.2) and give each class at least "
            "two learn polygons"
        )
    n_params = (
        sum(p.numel() for p in classifier.parameters())
        if isinstance(classifier, SITSClassifier)
        else None
    )
    log.info(
        "model %s: %s parameters; %d dates x %d channels -> %d classes %s; %d learn / "
        "%d selection / %d val",
        cfg.model.get("name", "?"), n_params if n_params is not None else "scikit-learn",
        info.n_dates, info.n_channels, info.n_classes, info.class_codes, n_learn,
        n_selection, n_val,
    )
    save_model_spec(model_dir, cfg.model, dims, store, region, n_params)
    if isinstance(classifier, SITSClassifier):
        return fit_network(cfg, classifier, datamodule, model_dir, region)
    if isinstance(classifier, SklearnClassifier):
        seed = int(cfg.seed) if cfg.seed is not None else 0
        return fit_estimator(classifier, store, model_dir, region, seed)
    raise ConfigError(f"no fitting loop for {type(classifier).__name__} (model._target_)")
