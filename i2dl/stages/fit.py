"""Stage ``fit``: build the classifier of ``cfg.model`` and train it on the learn split."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from i2dl.errors import ConfigError, StoreError
from i2dl.io.layout import (
    CHECKPOINT_DIR,
    DERIVED_OUTPUTS,
    FIT_STATE,
    LEARNING_CURVES,
    MEMBERS_DIR,
    MODEL_SPEC,
    REGIONS_DIR,
    TB_DIR,
    checkpoint_hashes,
    checkpoint_path,
    checkpoint_problem,
    model_dirs,
    read_fit_state,
    run_dir,
    stage_logging,
    write_fit_state,
)
from i2dl.samples.extract import store_path
from i2dl.samples.store import (
    LEARN,
    SELECTION,
    VAL,
    StoreInfo,
    read_info,
    store_digest,
    verify_store,
)
from i2dl.training import ddp
from i2dl.training.build import DataDims, build_classifier, save_model_spec
from i2dl.training.deep import ensemble_size, fit_deep, refit_enabled, refit_window
from i2dl.training.loops import checkpoint_unreadable, fit_estimator, fit_network
from models import SITSClassifier, SklearnClassifier

log = logging.getLogger(__name__)

#: ``resume`` values: ``auto`` resumes an unfinished fit of the same config and reuses a
#: finished one; ``never`` always fits anew from scratch.
RESUME_MODES = ("auto", "never")
#: Trainer settings that change what is shown, not what is learnt (not fingerprinted).
COSMETIC_TRAINER_KEYS = (
    "enable_progress_bar", "enable_model_summary", "log_every_n_steps", "default_root_dir",
)  # fmt: skip
#: What a resumed deep fit keeps of the killed one's state: the selection-chosen epoch of a
#: refit, the finished members of an ensemble (:func:`i2dl.training.deep.fit_deep`).
RESUMABLE_KEYS = ("selected", "selected_epoch", "refit_epochs", "members", "members_done",
                  "member_sha256")
#: Version of the fit fingerprint's recipe: bump when its content changes meaning.
FIT_STATE_VERSION = 1


@dataclass(frozen=True)
class FitPlan:
    """What ``fit`` does in one model folder.

    Attributes:
        action: ``reuse`` (a finished fit of the same config), ``resume`` (an unfinished
            fit of the same config, from ``last.ckpt``) or ``fresh`` (from scratch, the
            folder's previous checkpoints and TensorBoard events removed).
        fingerprint: hash of everything the trained model depends on.
        reason: why, for the log.
    """

    action: str
    fingerprint: str
    reason: str


def fit_fingerprint(cfg: DictConfig, store: Path, region: int | None) -> str:
    """Hash of everything a trained model depends on.

    The store's own fingerprint (data, sampling, source files), and the ``model``,
    ``trainer`` (less :data:`COSMETIC_TRAINER_KEYS`), ``datamodule`` and ``callbacks``
    configs, ``enable_early_stop``, ``seed``, the region and, when set, ``refit``
    (with ``refit_window`` above 1) and ``ensemble_size``. Loggers, ``cpu_threads``,
    ``evaluate`` and ``infer`` settings are left out: they do not change the model.

    Returns:
        16 hexadecimal characters.
    """
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer, dict)  # a config node resolves to a dict
    for key in COSMETIC_TRAINER_KEYS:
        trainer.pop(key, None)
    callbacks = OmegaConf.to_container(cfg.get("callbacks") or {}, resolve=True)
    assert isinstance(callbacks, dict)
    for cb in callbacks.values():
        if isinstance(cb, dict):
            cb.pop("dirpath", None)
    try:
        store_key = str(read_info(store).attrs.get("fingerprint") or store.name)
    except StoreError:
        store_key = store.name
    payload = {
        "version": FIT_STATE_VERSION,
        "store": store_key,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "trainer": trainer,
        "datamodule": OmegaConf.to_container(cfg.datamodule, resolve=True),
        "callbacks": callbacks,
        "enable_early_stop": bool(cfg.get("enable_early_stop", False)),
        "seed": cfg.get("seed"),
        "region": region,
    }
    # the options of issue 20 enter the fingerprint only when set (older fits stay reusable)
    if cfg.get("refit", False):
        payload["refit"] = True
        if refit_window(cfg) > 1:
            payload["refit_window"] = refit_window(cfg)
    if ensemble_size(cfg) > 1:
        payload["ensemble_size"] = ensemble_size(cfg)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_fit(cfg: DictConfig, store: Path, model_dir: Path, region: int | None) -> FitPlan:
    """Decide whether a model folder's fit is reused, resumed or started anew.

    With ``resume=auto`` (default): a finished fit (``fit_state.json`` says
    ``done``) of the same fingerprint is reused as it is; an unfinished one (killed) of
    the same fingerprint resumes from its ``last.ckpt``; anything else — no state, another
    config, a state without ``last.ckpt`` — starts from scratch. ``resume=never`` always
    starts from scratch.

    Raises:
        ConfigError: ``resume`` is not one of :data:`RESUME_MODES`.
    """
    mode = str(cfg.get("resume", "auto"))
    if mode not in RESUME_MODES:
        raise ConfigError(f"resume must be one of {', '.join(RESUME_MODES)}, got {mode!r}")
    fingerprint = fit_fingerprint(cfg, store, region)
    state = read_fit_state(model_dir)
    if mode == "never":
        return FitPlan("fresh", fingerprint, "resume=never")
    if state is None:
        return FitPlan("fresh", fingerprint, "no previous fit")
    if state.get("fingerprint") != fingerprint:
        return FitPlan("fresh", fingerprint, "the previous fit had another config")
    if state.get("status") == "done":
        try:
            best = checkpoint_path(model_dir, "best")
        except StoreError:
            return FitPlan("fresh", fingerprint, "the finished fit's checkpoint is missing")
        problem = checkpoint_problem(model_dir, best, state) or _codes_problem(state, store)
        if problem:
            log.warning("fit in %s: not reusing %s: %s; fitting again from scratch",
                        model_dir, best, problem)
            return FitPlan("fresh", fingerprint, f"{best} is not bound to this fit")
        return FitPlan("reuse", fingerprint, "finished with the same config")
    if state.get("members_done") or state.get("selected_epoch") is not None:
        return FitPlan("resume", fingerprint, "unfinished ensemble or refit of the same config")
    last = model_dir / CHECKPOINT_DIR / "last.ckpt"
    if last.is_file():
        problem = checkpoint_unreadable(last)
        if problem:
            log.warning("fit in %s: cannot resume from %s (%s); fitting again from scratch "
                        "(resume=never always does)", model_dir, last, problem)
            return FitPlan("fresh", fingerprint, f"{last} cannot be resumed from")
        return FitPlan("resume", fingerprint, "unfinished fit of the same config")
    return FitPlan("fresh", fingerprint, "the unfinished fit left no last.ckpt")


def _codes_problem(state: dict[str, Any], store: Path) -> str | None:
    """Why a finished fit's class codes or store are not this store's, or None."""
    info = read_info(store)
    codes = state.get("class_codes")
    if codes is not None and [int(c) for c in codes] != list(info.class_codes):
        return (f"it was fitted for the class codes {codes}, the store {store} has "
                f"{info.class_codes}")
    digest = state.get("store_digest")
    if digest is not None and digest != store_digest(store):
        return f"it was fitted on another store ({state.get('store')}, digest {digest})"
    return None


def clean_model_dir(model_dir: Path) -> None:
    """Remove what a previous fit left in a model folder: checkpoints, events, curves."""
    for name in (CHECKPOINT_DIR, TB_DIR, MEMBERS_DIR):
        shutil.rmtree(model_dir / name, ignore_errors=True)
    (model_dir / LEARNING_CURVES).unlink(missing_ok=True)
    (model_dir / MODEL_SPEC).unlink(missing_ok=True)
    (model_dir / FIT_STATE).unlink(missing_ok=True)


def clean_run(out: Path, keep: list[Path]) -> None:
    """Remove a run's outputs derived from an earlier model, and model folders not in ``keep``.

    Called when some model of the run is fitted anew, so that no report, map or summary
    of the previous model survives beside the new one (``report/``, ``maps/``,
    ``final/``, ``summary.json``), and no model folder of a previous config (eco-regions
    then, none now, or the reverse) is picked up by evaluate or infer.
    """
    for name in DERIVED_OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if out not in keep:
        clean_model_dir(out)
    regions = out / REGIONS_DIR
    if regions.is_dir():
        for folder in regions.iterdir():
            if folder not in keep:
                shutil.rmtree(folder, ignore_errors=True)


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

    Re-running in a run folder (see :func:`plan_fit`, option ``resume``): a finished fit
    of the same config is reused, an unfinished one (killed) resumes from its
    ``last.ckpt``, anything else starts from scratch. Unless every model is reused, the
    run's outputs derived from the previous model (``report/``, ``maps/``, ``final/``,
    ``summary.json``) are removed first, and a fit from scratch also removes the old
    checkpoints and TensorBoard events: old and new are never mixed.

    Args:
        cfg: composed config.
        store: the sample store; None looks up the store of ``cfg`` (must exist).

    Returns:
        Path of the best checkpoint (``<run>/checkpoints/best.ckpt``, or ``model.joblib``),
        or with regions ``{"region_<r>": path}``.

    Raises:
        StoreError: no store for this config.
        ConfigError: bad ``model.class_weights`` or ``resume``; the store (or a region) has
            no learn or val pixel.
    """
    out = run_dir(cfg)
    if ddp.is_worker():
        return follow_rank_zero(cfg, store)
    with stage_logging(out, "fit"):
        store = Path(store) if store is not None else existing_store(cfg)
        info = read_info(store)
        dirs = model_dirs(out, info.attrs.get("regions"))
        plans = {r: plan_fit(cfg, store, d, r) for r, d in dirs.items()}
        if any(p.action != "reuse" for p in plans.values()):
            clean_run(out, list(dirs.values()))
        best = {}
        for region, model_dir in dirs.items():
            plan = plans[region]
            where = f"region {region} ({model_dir})" if region is not None else str(model_dir)
            log.info("fit %s: %s (%s)", where, plan.action, plan.reason)
            if plan.action == "reuse":
                best[region] = checkpoint_path(model_dir, "best")
                continue
            if plan.action == "fresh":
                clean_model_dir(model_dir)
            if cfg.seed is not None:
                L.seed_everything(int(cfg.seed), workers=True)
            best[region] = fit_one(cfg, store, info, model_dir, region, plan)
        if list(best) == [None]:
            return best[None]
        return {f"region_{r}": str(p) for r, p in best.items()}


def follow_rank_zero(cfg: DictConfig, store: Path | None = None) -> dict[str, str] | Path:
    """A DDP process of rank > 0: train with rank 0, as rank 0 planned (:mod:`i2dl.training.ddp`).

    Writes nothing in the run folder but its own log (``logs/fit_rank<r>.log``).

    Returns:
        What :func:`run` returns (rank 0's checkpoint paths).

    Raises:
        ConfigError: rank 0's plan does not come (see :func:`i2dl.training.ddp.wait_for_rank_zero`).
    """
    out = run_dir(cfg)
    with stage_logging(out, f"fit_rank{ddp.process_rank()}"):
        store = Path(store) if store is not None else existing_store(cfg)
        info = read_info(store)
        dirs = model_dirs(out, info.attrs.get("regions"))
        best = {}
        for region, model_dir in dirs.items():
            state = ddp.wait_for_rank_zero(model_dir)
            log.info("DDP rank %d follows rank 0's fit of %s (launch %s)", ddp.process_rank(),
                     model_dir, state.get("launch"))
            if cfg.seed is not None:
                L.seed_everything(int(cfg.seed), workers=True)
            plan = FitPlan("resume" if state.get("resume_from") else "fresh",
                           str(state.get("fingerprint")), "rank 0's plan")
            best[region] = fit_one(cfg, store, info, model_dir, region, plan, state)
        if list(best) == [None]:
            return best[None]
        return {f"region_{r}": str(p) for r, p in best.items()}


def check_splits(
    cfg: DictConfig, classifier: Any, datamodule: Any, info: StoreInfo, store: Path,
    region: int | None,
) -> int | None:
    """Check that the splits a fit needs have pixels; log the model and the split sizes.

    Returns:
        The network's parameter count, or None for a scikit-learn model.

    Raises:
        ConfigError: no learn pixel, no val pixel (unless
            ``sampling.split_ground_truth=false``), or a deep model without selection pixels.
    """
    n_learn = datamodule.dataset(LEARN).n_samples
    n_selection = datamodule.dataset(SELECTION).n_samples
    n_val = datamodule.dataset(VAL).n_samples
    where = f"region {region} of store {store}" if region is not None else f"store {store}"
    needs_val = bool(cfg.sampling.get("split_ground_truth", True))
    if n_learn == 0 or (n_val == 0 and needs_val):
        raise ConfigError(
            f"{where} has {n_learn} learn and {n_val} val pixels; both are needed to train "
            "and evaluate a model (sampling.split_ground_truth=false trains without val)"
        )
    deep = isinstance(classifier, SITSClassifier)
    if deep and n_selection == 0:
        raise ConfigError(
            f"{where} has no selection pixel to choose the checkpoint on; set "
            "sampling.selection_ratio in (0, 1) (default 0.2) and give each class at least "
            "two learn polygons"
        )
    n_params = sum(p.numel() for p in classifier.parameters()) if deep else None
    log.info(
        "model %s: %s parameters; %d dates x %d channels -> %d classes %s; %d learn / "
        "%d selection / %d val",
        cfg.model.get("name", "?"), n_params if n_params is not None else "scikit-learn",
        info.n_dates, info.n_channels, info.n_classes, info.class_codes, n_learn,
        n_selection, n_val,
    )
    return n_params


def fit_one(
    cfg: DictConfig, store: Path, info: StoreInfo, model_dir: Path, region: int | None,
    plan: FitPlan, follow: dict[str, Any] | None = None,
) -> Path:
    """Build and train one model (all samples, or one region's) into ``model_dir``.

    ``<model_dir>/fit_state.json`` says ``running`` (with the fit fingerprint) from before
    the first epoch until the best checkpoint is chosen, then ``done``: a fit killed in
    between is resumed by the next run of the same config (``plan.action == "resume"``).
    It also names the launch and the checkpoint resumed from, which the other DDP
    processes follow (``follow``: rank 0's state; then nothing is written).

    Returns:
        Path of the best checkpoint or the saved scikit-learn model.

    Raises:
        ConfigError: no learn or val pixel, bad ``model.class_weights``.
    """
    datamodule = instantiate(cfg.datamodule, store_path=str(store), region=region)
    model_dir.mkdir(parents=True, exist_ok=True)
    cw = cfg.model.get("class_weights")
    if cw not in (None, "balanced"):
        raise ConfigError(f"model.class_weights must be null or balanced, got {cw!r}")
    weights = datamodule.class_weights().tolist() if cw == "balanced" else None
    dims = DataDims.of(info)
    classifier = build_classifier(cfg.model, dims, class_weights=weights)
    n_params = check_splits(cfg, classifier, datamodule, info, store, region)
    n_members = ensemble_size(cfg) if isinstance(classifier, SITSClassifier) else 1
    if (refit_enabled(cfg) or n_members > 1) and "ddp" in str(cfg.trainer.get("strategy")):
        raise ConfigError(
            "refit=true and ensemble_size > 1 train several networks one after the other, "
            "which the DDP processes of trainer=ddp do not follow yet: use refit=false "
            "ensemble_size=1 with trainer=ddp, or train on one device"
        )
    if follow is not None:
        if not isinstance(classifier, SITSClassifier):
            raise ConfigError(
                f"trainer=ddp trains deep models; {cfg.model.get('name')} is fitted by "
                "scikit-learn in one process: drop trainer=ddp"
            )
        resume = follow.get("resume_from")
        return fit_network(cfg, classifier, datamodule, model_dir, region,
                           Path(resume) if resume else None)
    digest = store_digest(store)
    save_model_spec(model_dir, cfg.model, dims, store, region, n_params, n_members, digest)
    state: dict[str, Any] = {
        "fingerprint": plan.fingerprint,
        "status": "running",
        "store": str(store),
        # what binds the model to its data: evaluate and infer check them (load_classifier)
        "store_fingerprint": info.attrs.get("fingerprint"),
        "store_digest": digest,
        "class_codes": list(info.class_codes),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "launch": ddp.new_launch(),
    }
    resume_from = None
    if plan.action == "resume":
        previous = read_fit_state(model_dir) or {}
        state["started"] = previous.get("started", state["started"])
        state["resumed"] = int(previous.get("resumed", 0)) + 1
        state.update({k: previous[k] for k in RESUMABLE_KEYS if k in previous})
        resume_from = model_dir / CHECKPOINT_DIR / "last.ckpt"
    state["resume_from"] = str(resume_from) if resume_from is not None else None
    write_fit_state(model_dir, state)
    if isinstance(classifier, SITSClassifier):

        def build() -> SITSClassifier:
            net = build_classifier(cfg.model, dims, class_weights=weights)
            assert isinstance(net, SITSClassifier)  # the same config built one above
            return net

        best = fit_deep(cfg, build, datamodule, model_dir, region, resume_from, state,
                        lambda s: write_fit_state(model_dir, s))
    elif isinstance(classifier, SklearnClassifier):
        seed = int(cfg.seed) if cfg.seed is not None else 0
        best = fit_estimator(classifier, store, model_dir, region, seed)
    else:
        raise ConfigError(f"no fitting loop for {type(classifier).__name__} (model._target_)")
    state.update(
        status="done",
        best=best.name,
        # sha256 of every checkpoint: a file replaced later is never reused nor loaded
        checkpoints=checkpoint_hashes(model_dir),
        finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    write_fit_state(model_dir, state)
    return best
