"""Fitting a deep model: checkpoint selection, the refit on all labels, deep ensembles.

One network (the default) is trained on the learn split; the selection split chooses its
epoch (``callbacks.model_checkpoint``) and stops it early (:func:`fit_network`). Two
options, both off by default and both chosen by cross-validation (docs/results.md):

* ``refit=true`` — "use all the labels": once the selection split has chosen the epoch
  count ``E`` (the best epoch, counted from 1), a fresh network (same seed) is trained on
  learn + selection for exactly ``E`` epochs with no validation, and that network is the
  model (``checkpoints/refit.ckpt``). With ``refit_window=w`` (odd), ``E`` is the best
  epoch of the selection curve averaged over ``w`` epochs centred on each
  (:func:`~i2dl.training.loops.refit_epoch_count`). This is what the forest does (it fits learn +
  selection) and what the usual "train on all data for the chosen number of epochs"
  recipe does (e.g. Goodfellow, Bengio & Courville 2016, "Deep Learning", Sec. 7.8,
  second strategy). Evaluate still reads only val. The selection scores of a refitted
  model are not held-apart (the selection pixels were learnt): the hyper-parameter
  ``objective`` reads the selection-chosen network's scores, kept in ``fit_state.json``.
* ``ensemble_size=N`` — a deep ensemble (Lakshminarayanan et al. 2017): N networks of the
  same config, member ``i`` seeded ``seed + 10000 * i`` (:func:`models.member_seed`),
  each with its own checkpoint selection (and refit), in ``members/member_<i>/``; their
  averaged class probabilities are the model (``checkpoints/ensemble.ckpt``,
  :class:`models.DeepEnsemble`), evaluated and mapped like any model.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from i2dl.errors import ConfigError
from i2dl.io.files import atomic_path
from i2dl.io.layout import CHECKPOINT_DIR, MEMBERS_DIR, file_sha256
from i2dl.samples.store import LEARN
from i2dl.training.loops import (
    fit_network,
    read_selection_curve,
    refit_epoch_count,
    refit_network,
)
from models import DeepEnsemble, SITSClassifier, member_seed

log = logging.getLogger(__name__)

#: checkpoint of a deep ensemble (all members' weights)
ENSEMBLE_CHECKPOINT = "ensemble.ckpt"


def ensemble_size(cfg: DictConfig) -> int:
    """``cfg.ensemble_size`` checked: an int >= 1 (1 = a single network).

    Raises:
        ConfigError: not an int >= 1.
    """
    value = cfg.get("ensemble_size", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"ensemble_size={value!r}: expected an int >= 1 (1 = one network); "
            "e.g. ensemble_size=5"
        )
    return value


def refit_enabled(cfg: DictConfig) -> bool:
    """``cfg.refit`` checked: a bool.

    Raises:
        ConfigError: not a bool.
    """
    value = cfg.get("refit", False)
    if not isinstance(value, bool):
        raise ConfigError(f"refit={value!r}: expected true or false; e.g. refit=true")
    return value


def refit_window(cfg: DictConfig) -> int:
    """``cfg.refit_window`` checked: an odd int >= 1 (1, or null, = the best single epoch).

    Raises:
        ConfigError: not an odd int >= 1.
    """
    value = cfg.get("refit_window", 1)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ConfigError(f"refit_window={value!r}: expected an odd integer >= 1, e.g. 5")
    return value


def fit_deep(
    cfg: DictConfig,
    build: Callable[[], SITSClassifier],
    datamodule: Any,
    model_dir: Path,
    region: int | None,
    resume_from: Path | None,
    state: dict[str, Any],
    save_state: Callable[[dict[str, Any]], object],
) -> Path:
    """Train the deep model of ``cfg`` into ``model_dir``: one network or an ensemble.

    Args:
        cfg: composed config (``trainer``, ``callbacks``, ``seed``, ``refit``,
            ``ensemble_size``).
        build: makes a fresh, untrained network of the model config (called after
            seeding, once per network).
        datamodule: the store's :class:`datamodules.PixelSeriesDataModule`.
        model_dir: the model folder (the run, or an eco-region's folder).
        region: eco-region code, or None.
        resume_from: ``last.ckpt`` of an unfinished single-network fit of the same config
            (ensembles restart the member that was interrupted, the finished ones kept).
        state: the model folder's fit state (``fit_state.json``), updated in place with
            what is done (``selected``, ``selected_epoch``, ``refit_epochs``,
            ``members_done``).
        save_state: writes ``state`` (called after each finished part).

    Returns:
        The checkpoint of the model: ``best.ckpt``, ``refit.ckpt`` or ``ensemble.ckpt``.

    Raises:
        ConfigError: bad ``refit`` or ``ensemble_size``; no checkpoint written.
    """
    n = ensemble_size(cfg)
    refit = refit_enabled(cfg)
    seed = int(cfg.seed) if cfg.get("seed") is not None else 0
    if n == 1:
        return _fit_one_network(cfg, build, datamodule, model_dir, region, resume_from,
                                refit, seed, state, save_state, own_folder=region is not None)
    done = int(state.get("members_done", 0))
    paths = []
    for i in range(n):
        member_dir = model_dir / MEMBERS_DIR / f"member_{i}"
        if i < done and _member_intact(member_dir, state, i):
            paths.append(member_dir / CHECKPOINT_DIR / str(state["members"][i]))
            log.info("ensemble member %d of %d: reused (%s)", i + 1, n, paths[-1])
            continue
        shutil.rmtree(member_dir, ignore_errors=True)
        log.info("ensemble member %d of %d (seed %d) -> %s", i + 1, n, member_seed(seed, i),
                 member_dir)
        member_state: dict[str, Any] = {}
        L.seed_everything(member_seed(seed, i), workers=True)
        path = _fit_one_network(cfg, build, datamodule, member_dir, region, None, refit,
                                member_seed(seed, i), member_state, lambda s: None,
                                own_folder=True)
        paths.append(path)
        state.setdefault("members", [])[i:] = [path.name]
        state.setdefault("member_sha256", [])[i:] = [file_sha256(path)]
        state["members_done"] = i + 1
        save_state(state)
    ensemble = DeepEnsemble([build() for _ in range(n)])
    for member, path in zip(ensemble.members, paths, strict=True):
        assert isinstance(member, SITSClassifier)
        member.load_weights(path)
    out = model_dir / CHECKPOINT_DIR / ENSEMBLE_CHECKPOINT
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        ensemble.save(tmp)
    log.info("deep ensemble of %d networks: %s", n, out)
    return out


def _member_intact(member_dir: Path, state: dict[str, Any], i: int) -> bool:
    """True when member ``i``'s checkpoint is the one its fit wrote (hash in ``state``).

    A member finished by a killed run is reused only if its file is unchanged; a
    replaced or missing one is trained again (with a warning when replaced).
    """
    path = member_dir / CHECKPOINT_DIR / str(state["members"][i])
    if not path.is_file():
        return False
    hashes = state.get("member_sha256") or []
    if i >= len(hashes) or hashes[i] != file_sha256(path):
        log.warning("ensemble member %d: %s is not the checkpoint its fit wrote (sha256 "
                    "differs from fit_state.json): training it again", i + 1, path)
        return False
    return True


def _refit_epochs(cfg: DictConfig, checkpoint_dir: Path, selected_epoch: int) -> int:
    """The refit's epoch count: ``refit_window`` over the selection curve, or best epoch + 1.

    The curve is ``checkpoint_dir/selection_curve.json`` of :func:`fit_network`
    (:func:`~i2dl.training.loops.refit_epoch_count`); without it (a fit of an older
    i2dl) or with ``refit_window`` 1, the checkpoint's epoch + 1.
    """
    window = refit_window(cfg)
    curve = read_selection_curve(checkpoint_dir) if window > 1 else None
    if curve is None:
        return selected_epoch + 1
    epochs = refit_epoch_count(curve["values"], curve["epochs"], curve["mode"], window)
    log.info("refit epoch count %d: best mean %s over %d epochs (best single epoch: %d)",
             epochs, curve["monitor"], window, selected_epoch + 1)
    return epochs


def _fit_one_network(
    cfg: DictConfig,
    build: Callable[[], SITSClassifier],
    datamodule: Any,
    model_dir: Path,
    region: int | None,
    resume_from: Path | None,
    refit: bool,
    seed: int,
    state: dict[str, Any],
    save_state: Callable[[dict[str, Any]], object],
    own_folder: bool,
) -> Path:
    """Checkpoint selection on the selection split, then the optional refit on all labels.

    The network is built here, after the caller seeded the generators. With ``refit``,
    the selection-chosen epoch is recorded in ``state`` before the refit, so a run killed
    during the refit redoes only the refit.
    """
    if refit and state.get("selected_epoch") is not None:
        best = model_dir / CHECKPOINT_DIR / str(state["selected"])
        log.info("checkpoint selection already done (%s, epoch %d): refit only", best,
                 int(state["selected_epoch"]))
    else:
        best = fit_network(cfg, build(), datamodule, model_dir, region, resume_from,
                           own_folder=own_folder)
        if not refit:
            return best
        ckpt = torch.load(best, map_location="cpu", weights_only=True)
        state["selected"] = best.name
        state["selected_epoch"] = int(ckpt.get("epoch", 0))
        state["refit_epochs"] = _refit_epochs(cfg, best.parent, state["selected_epoch"])
        save_state(state)
    epochs = int(state.get("refit_epochs", int(state["selected_epoch"]) + 1))
    L.seed_everything(seed, workers=True)
    datamodule.use_all_labels()
    try:
        return refit_network(cfg, build(), datamodule, model_dir, epochs)
    finally:
        datamodule.train_splits = LEARN
