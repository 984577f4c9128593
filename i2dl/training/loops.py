"""Fitting a classifier on the learn split of a sample store.

Two loops for the two kinds of classifier that :func:`i2dl.training.build.build_classifier` makes:

* :func:`fit_network`: a :class:`models.SITSClassifier` with a Lightning ``Trainer``
  (callbacks and loggers of the config; checkpoint selection and early stopping on
  ``model.model_selection_criterion``);
* :func:`fit_estimator`: a :class:`models.SklearnClassifier` on the learn series held in
  memory (optionally ``model.max_samples`` of them, drawn per class), as iota2 does for
  its conventional classifiers.

Models know tensors, not files: the store is read here and in :mod:`datamodules`.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from datamodules.pixel_series import StoreBlockDataset
from i2dl.errors import ConfigError, StoreError
from i2dl.io.files import atomic_path
from i2dl.io.layout import (
    CHECKPOINT_DIR,
    LEARNING_CURVES,
    SELECTION_CURVE,
    SKLEARN_MODEL,
    TB_DIR,
    read_json_object,
)
from i2dl.maps.preview import write_learning_curves
from i2dl.samples.selection import largest_remainder
from i2dl.samples.store import LEARN, SELECTION, open_store, read_array, read_info
from models import SITSClassifier, SklearnClassifier, criterion_monitor

log = logging.getLogger(__name__)

#: Samples per block when the learn split is read for a scikit-learn fit.
FIT_BATCH_SIZE = 65536
#: checkpoint of the refit on learn + selection (:func:`refit_network`)
REFIT_CHECKPOINT = "refit.ckpt"


def precision(cfg: DictConfig) -> str:
    """``trainer.precision``, or when null: bf16 mixed precision on CUDA, else 32-bit."""
    value = cfg.trainer.get("precision")
    if value is not None:
        return str(value)
    accel = str(cfg.trainer.get("accelerator", "auto"))
    on_cuda = torch.cuda.is_available() and accel in ("auto", "gpu", "cuda")
    return "bf16-mixed" if on_cuda else "32-true"


def callbacks(cfg: DictConfig, model_dir: Path | None = None) -> list[Any]:
    """The callbacks of ``cfg.callbacks``; monitor/mode from the selection criterion.

    ``early_stopping`` is used only with ``enable_early_stop=true``; ``swa`` never here
    (the refit's, :func:`swa_callbacks`). ``model_dir`` (one model per eco-region)
    redirects the checkpoints to ``<model_dir>/checkpoints``.
    """
    monitor, mode = criterion_monitor(cfg.model.model_selection_criterion)
    out = []
    swa_callbacks(cfg)  # warns, before any epoch, when swa is asked without a refit
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is None or "_target_" not in cb_cfg or name == SWA:
            continue
        if name == "early_stopping" and not cfg.get("enable_early_stop", False):
            continue
        extra: dict[str, Any] = {}
        if name in ("model_checkpoint", "early_stopping"):
            extra = {"monitor": monitor, "mode": mode}
        if name == "model_checkpoint" and model_dir is not None:
            extra["dirpath"] = str(model_dir / CHECKPOINT_DIR)
        out.append(instantiate(cb_cfg, **extra))
    return out


#: entry of ``callbacks`` for stochastic weight averaging of the refit
SWA = "swa"


def swa_callbacks(cfg: DictConfig, epochs: int | None = None) -> list[Any]:
    """``[StochasticWeightAveraging]`` when ``callbacks.swa.enabled``, else ``[]``.

    Stochastic weight averaging (Izmailov et al. 2018, UAI) averages the weights of the
    last epochs of a fit run for a fixed number of epochs; in i2dl that is the refit on
    learn + selection (``refit=true``), since the selection fit's model is the checkpoint
    of its best epoch, which an average of later epochs would replace unseen.

    With ``refit=false`` (e.g. ``trainer=ddp``, which has no refit) the averaging is not
    applied, with a warning. Nor is it, with a warning, for a refit of ``epochs`` too
    few for :func:`swa_window` to leave out the untrained initial weights (e.g. 1 or 2
    epochs with ``swa_epoch_start: 0.75``).

    Args:
        cfg: composed config (``callbacks.swa``, ``refit``).
        epochs: the refit's epoch count; None = not checked against it.

    Raises:
        ConfigError: ``enabled`` is not a bool.
    """
    swa = (cfg.get("callbacks") or {}).get(SWA)
    if not swa or "_target_" not in swa:
        return []
    enabled = swa.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"callbacks.swa.enabled must be true or false, got {enabled!r}")
    if not enabled:
        return []
    if not cfg.get("refit", False):
        log.warning("callbacks.swa.enabled=true averages the weights of the refit on learn "
                    "+ selection, and refit=false: no weight averaging (set refit=true to "
                    "have it, or callbacks.swa.enabled=false to silence this)")
        return []
    settings = {k: v for k, v in swa.items() if k != "enabled"}
    start = settings.get("swa_epoch_start", 0.8)  # Lightning's default
    if epochs is not None and swa_window(start, epochs) is None:
        log.warning("a refit of %d epoch(s) is too short for stochastic weight averaging "
                    "from swa_epoch_start=%s: the average would hold the untrained initial "
                    "weights; this refit trains without it", epochs, start)
        return []
    return [instantiate(settings)]


def swa_window(swa_epoch_start: float | int, epochs: int) -> tuple[int, int] | None:
    """The 0-based epochs at whose start Lightning's SWA averages the weights, or None.

    Lightning's :class:`~lightning.pytorch.callbacks.StochasticWeightAveraging` (2.x) adds
    the weights to its average at the **start** of epochs ``max(s - 1, 0)`` to
    ``epochs - 1``, with ``s = int(swa_epoch_start * epochs)`` for a float and ``s =
    swa_epoch_start`` for an int, then copies the average into the network. The start of
    epoch 0 holds the untrained initial weights, and an empty window copies the initial
    weights too (the average is a copy of the network made before training): with 0.75,
    a refit of 1 or 2 epochs ends as (half) the untrained network. On Slovenia a 1-epoch
    refit scored val OA 0.245 with the averaging and 0.831 without (docs/results.md).

    Args:
        swa_epoch_start: float in ``(0, 1]`` (share of the epochs) or int >= 1 (epoch).
        epochs: the fit's epoch count, >= 1.

    Returns:
        ``(first, last)`` 0-based epochs, ``1 <= first <= last``, or None when the window
        would be empty or include epoch 0.
    """
    if isinstance(swa_epoch_start, float):
        start = int(swa_epoch_start * epochs)
    else:
        start = int(swa_epoch_start)
    first, last = max(start - 1, 0), epochs - 1
    if first < 1 or first > last:
        return None
    return first, last


def checkpoint_unreadable(path: Path) -> str | None:
    """Why a Lightning checkpoint cannot be resumed from, or None when it loads.

    Loaded as every checkpoint is, ``torch.load(weights_only=True)``: a truncated file (a
    full disk, a copy cut short) or one holding pickled objects (refused: unpickling runs
    code) is named here instead of failing inside Lightning on every rerun.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and torch errors of several types
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__}: {first[:200]}"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return "not a Lightning checkpoint (no state_dict)"
    return None


class RandomState(Callback):
    """Saves the global RNG states (torch, NumPy, Python) in every checkpoint, restores them.

    Lightning restores the epoch, the optimiser, the scheduler and the callbacks from
    ``last.ckpt``, not the global random generators, which draw the shuffling of each
    epoch (:class:`datamodules.pixel_series.StoreBlockDataset`) and dropout. With their
    state at the checkpoint restored, a resumed CPU fit continues exactly as the
    uninterrupted one would have. States are stored as tensors and lists (plain data,
    loadable with ``torch.load(weights_only=True)``).
    """

    def state_dict(self) -> dict[str, Any]:
        """The RNG states now (called when a checkpoint is saved)."""
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "numpy": [str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                      int(has_gauss), float(gauss)],
            "python": [int(version), list(internal), gauss_next],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the RNG states of a checkpoint (called when a fit resumes)."""
        torch.set_rng_state(state_dict["torch"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))


class SelectionCurve(Callback):
    """Records the monitored selection score after every validation epoch.

    Its history is saved in the checkpoints (``last.ckpt``) and restored on resume, so a
    resumed fit keeps the epochs of the killed one. Sanity-check passes are skipped.

    Args:
        monitor: the logged metric (``selection/fscore``, ``selection/loss``, ...).
    """

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.epochs: list[int] = []
        self.values: list[float] = []

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """Append (epoch, score) once per epoch; NaN when the metric was not logged."""
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        epoch = int(trainer.current_epoch)
        if self.epochs and self.epochs[-1] == epoch:  # several validations in one epoch
            self.epochs.pop()
            self.values.pop()
        self.epochs.append(epoch)
        self.values.append(float(value) if value is not None else math.nan)

    def state_dict(self) -> dict[str, Any]:
        """The history so far (plain lists, saved in the checkpoint)."""
        return {"epochs": list(self.epochs), "values": list(self.values)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history of a resumed fit."""
        self.epochs = [int(e) for e in state_dict.get("epochs", [])]
        self.values = [float(v) for v in state_dict.get("values", [])]


def refit_epoch_count(
    values: Sequence[float | None], epochs: Sequence[int], mode: str, window: int
) -> int:
    """The refit's epoch count: best epoch of the selection curve averaged over ``window``.

    Each epoch's score is replaced by the mean of the scores of the ``window`` epochs
    centred on it (fewer at the two ends of the curve; NaN scores left out), and the
    first epoch with the best mean is chosen. On a selection split of a few dozen pixels
    one epoch's score moves by several points from one epoch to the next, so the best
    single epoch is often an early spike; the refit is a fresh network trained on learn +
    selection, which can only reproduce the curve's trend, not that epoch's draw. With
    ``window`` 1 it is the checkpoint callback's choice (the first best epoch).

    Args:
        values: ``(E,)`` selection scores, one per validated epoch, in epoch order; NaN or
            None where the score was not logged (``null`` in ``selection_curve.json``).
        epochs: ``(E,)`` the 0-based epoch of each score.
        mode: ``"max"`` (fscore, oa, kappa) or ``"min"`` (loss).
        window: odd number of epochs averaged, >= 1.

    Returns:
        The number of epochs to train, ``chosen epoch + 1`` (>= 1).

    Raises:
        ConfigError: ``window`` is not an odd integer >= 1, ``mode`` is neither max nor
            min, ``values`` and ``epochs`` differ in length, or no score is finite.
    """
    if window < 1 or window % 2 != 1:
        raise ConfigError(f"refit_window={window}: expected an odd integer >= 1, e.g. 5")
    if mode not in ("max", "min") or len(values) != len(epochs):
        raise ConfigError(f"selection curve: mode {mode!r} with {len(values)} scores for "
                          f"{len(epochs)} epochs (expected max or min, equal lengths)")
    score = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(score)
    if not finite.any():
        raise ConfigError("the selection curve has no finite score: cannot choose the "
                          "refit's epoch count (set refit=false, or check the selection split)")
    half = window // 2
    kernel = np.ones(window)
    sums = np.convolve(np.where(finite, score, 0.0), kernel, mode="full")[half:half + len(score)]
    counts = np.convolve(finite.astype(np.float64), kernel, mode="full")[half:half + len(score)]
    worst = -np.inf if mode == "max" else np.inf
    mean = np.where(counts > 0, sums / np.maximum(counts, 1.0), worst)  # (E,)
    pick = int(np.argmax(mean) if mode == "max" else np.argmin(mean))
    return int(epochs[pick]) + 1


def read_selection_curve(checkpoint_dir: Path) -> dict[str, Any] | None:
    """``checkpoint_dir/selection_curve.json`` written by :func:`fit_network`, or None."""
    return read_json_object(checkpoint_dir / SELECTION_CURVE)


def fit_network(
    cfg: DictConfig, module: SITSClassifier, datamodule: Any, model_dir: Path,
    region: int | None, resume_from: Path | None = None, own_folder: bool = False,
) -> Path:
    """Train a deep classifier with Lightning; the best epoch is kept by the checkpoint callback.

    Args:
        cfg: composed config (``trainer``, ``callbacks``, ``logger``).
        module: the classifier to train.
        datamodule: the store's :class:`datamodules.PixelSeriesDataModule`.
        model_dir: the model folder (the run, or an eco-region's folder, whose ``tb/`` and
            ``checkpoints/`` are then used).
        region: eco-region code, or None.
        resume_from: ``last.ckpt`` of an unfinished fit of the same config: Lightning's
            ``ckpt_path`` restores epoch, optimiser, scheduler, callbacks (best score,
            early stopping) and, with :class:`RandomState`, the RNGs. TensorBoard events
            logged after that checkpoint by the killed fit are purged (``purge_step``).
        own_folder: write checkpoints and TensorBoard events in ``model_dir`` (always
            true for a region; true for the members of an ensemble) instead of the
            run's configured folders.

    Returns:
        Path of the best checkpoint.

    Raises:
        ConfigError: no checkpoint was written (no ``callbacks.model_checkpoint``).
        StoreError: ``resume_from`` cannot be read (truncated, or refused pickled objects).
    """
    own_dir = model_dir if (region is not None or own_folder) else None
    extra: dict[str, Any] = {"save_dir": str(model_dir / TB_DIR)} if own_dir else {}
    purge: dict[str, Any] = {}
    if resume_from is not None:
        problem = checkpoint_unreadable(resume_from)
        if problem:
            raise StoreError(
                f"cannot resume the fit from {resume_from}: {problem}. Rerun with "
                "resume=never to fit from scratch (or delete that file)"
            )
        ckpt = torch.load(resume_from, map_location="cpu", weights_only=True)
        purge["purge_step"] = int(ckpt.get("global_step", 0))
        log.info("resuming the unfinished fit from %s (epoch %d done, step %d)", resume_from,
                 int(ckpt.get("epoch", 0)) + 1, purge["purge_step"])
    loggers = [
        instantiate(lg, **extra, **(purge if "TensorBoard" in str(lg.get("_target_")) else {}))
        for lg in (cfg.get("logger") or {}).values()
        if lg
    ]
    monitor, mode = criterion_monitor(cfg.model.model_selection_criterion)
    curve = SelectionCurve(monitor)
    trainer = instantiate(
        cfg.trainer,
        callbacks=[*callbacks(cfg, own_dir), RandomState(), curve],
        logger=loggers or False,
        precision=precision(cfg),
    )
    trainer.fit(module, datamodule=datamodule,
                ckpt_path=str(resume_from) if resume_from is not None else None)
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt else ""
    if trainer.global_rank != 0:  # DDP: rank 0 writes the curves and reports the best
        return Path(best)
    if not best:
        raise ConfigError("training produced no checkpoint; check callbacks.model_checkpoint")
    with atomic_path(Path(best).parent / SELECTION_CURVE) as tmp:
        values = [v if math.isfinite(v) else None for v in curve.values]  # null, not NaN
        tmp.write_text(json.dumps({"monitor": monitor, "mode": mode, "epochs": curve.epochs,
                                   "values": values}, allow_nan=False))
    curves = write_learning_curves(model_dir / TB_DIR, model_dir / LEARNING_CURVES)
    if curves is not None:
        log.info("learning curves: %s", curves)
    log.info("best checkpoint %s (%s = %.4f)", best, ckpt.monitor, float(ckpt.best_model_score))
    return Path(best)


def refit_network(
    cfg: DictConfig, module: SITSClassifier, datamodule: Any, model_dir: Path, epochs: int,
) -> Path:
    """Train ``module`` for exactly ``epochs`` epochs, no validation, and save its weights.

    The refit on all the labels (:mod:`i2dl.training.deep`): ``datamodule`` already reads
    learn + selection (:meth:`~datamodules.PixelSeriesDataModule.use_all_labels`); no
    checkpoint selection, early stopping or learning-rate monitor (nothing is held
    apart). The learn curves go to ``<model_dir>/tb/refit/`` when a logger is configured.

    Args:
        cfg: composed config (``trainer``, ``logger``).
        module: a fresh network of the model config.
        datamodule: the store's datamodule, training on learn + selection.
        model_dir: the model folder; the weights go to ``<model_dir>/checkpoints/refit.ckpt``.
        epochs: number of epochs (the selection-chosen epoch count), >= 1.

    Returns:
        Path of the refit checkpoint (written under a temporary name, then renamed).
    """
    logger: Any = False
    if cfg.get("logger"):  # the run's tb/ is <model_dir>/tb (paths.output_dir = the run)
        logger = TensorBoardLogger(save_dir=str(model_dir / TB_DIR), name="refit", version="",
                                   default_hp_metric=False)
    swa = swa_callbacks(cfg, int(epochs))
    trainer = instantiate(
        cfg.trainer, max_epochs=int(epochs), min_epochs=None, callbacks=[*swa, RandomState()],
        logger=logger, precision=precision(cfg), enable_checkpointing=False,
        limit_val_batches=0, num_sanity_val_steps=0,
    )
    log.info("refit on learn + selection for %d epochs (the epoch count chosen on selection)%s",
             epochs, ", stochastic weight averaging" if swa else "")
    trainer.fit(module, datamodule=datamodule)
    path = model_dir / CHECKPOINT_DIR / REFIT_CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    if trainer.global_rank == 0:
        with atomic_path(path) as tmp:
            trainer.save_checkpoint(tmp, weights_only=True)
    return path


def subsample_indices(y: np.ndarray, max_samples: int | None, seed: int = 0) -> np.ndarray:
    """Rows to keep for fitting: all, or ``max_samples`` drawn per class.

    Per-class counts are proportional to the class sizes (largest remainders,
    :func:`i2dl.samples.selection.largest_remainder`), with at least one sample of every
    class present (a class is never dropped; if ``max_samples`` is smaller than the number
    of classes present, one per class is kept and a warning logged). Rows are drawn
    without replacement by ``numpy.random.default_rng(seed)``.

    Args:
        y: (N,) int class indices.
        max_samples: cap on the number of rows; None keeps all.
        seed: RNG seed.

    Returns:
        Sorted (n,) int64 row positions into ``y``.

    Raises:
        ConfigError: ``max_samples`` < 1.
    """
    y = np.asarray(y)
    n = len(y)
    if max_samples is None or max_samples >= n:
        return np.arange(n, dtype=np.int64)
    if int(max_samples) < 1:
        raise ConfigError(
            f"model.max_samples must be null (all samples) or >= 1, got {max_samples}"
        )
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    if max_samples < len(classes):
        log.warning(
            "model.max_samples=%d is below the %d classes present: keeping 1 sample per class",
            max_samples,
            len(classes),
        )
    alloc = largest_remainder(counts, int(max_samples), minimum=1)
    rng = np.random.default_rng(seed)
    keep = [
        rng.choice(np.flatnonzero(inverse == k), size=int(a), replace=False)
        for k, a in enumerate(alloc)
    ]
    return np.sort(np.concatenate(keep)).astype(np.int64)


def fit_estimator(
    classifier: SklearnClassifier, store: Path, model_dir: Path, region: int | None, seed: int
) -> Path:
    """Fit a scikit-learn classifier on the learn + selection splits of a store and save it.

    A scikit-learn model selects no checkpoint, so the selection polygons are training
    data for it, as iota2's learn polygons (``sampling.ratio``); the val polygons are never
    read. The rows are chosen first from the store's labels (all of them, or
    ``classifier.max_samples`` by :func:`subsample_indices`), then streamed with
    :class:`datamodules.pixel_series.StoreBlockDataset`; only the chosen rows are held
    in memory.

    Args:
        classifier: the unfitted classifier.
        store: the sample store.
        model_dir: where ``checkpoints/model.joblib`` goes.
        region: fit on this eco-region's learn samples only; None = all.
        seed: RNG seed of the subsampling.

    Returns:
        Path of the saved model.

    Raises:
        StoreError: no learn sample (in the region), or the store changed while read.
    """
    info = read_info(store)
    group = open_store(store)
    split = read_array(group, "split")
    codes = read_array(group, "code")
    # no model selection here: the selection polygons are training data too
    learn = (split == LEARN) | (split == SELECTION)
    if region is not None:
        learn &= read_array(group, "region") == region
    learn_rows = np.flatnonzero(learn)
    if len(learn_rows) == 0:
        raise StoreError(f"store {store} has no learn sample to fit {classifier.name or 'model'}")
    y_learn = np.searchsorted(np.asarray(info.class_codes), codes[learn_rows]).astype(np.int64)
    chosen = learn_rows[subsample_indices(y_learn, classifier.max_samples, seed)]
    if len(chosen) < len(learn_rows):
        log.info(
            "model.max_samples=%s: fitting on %d of %d learn samples (seed %d)",
            classifier.max_samples, len(chosen), len(learn_rows), seed,
        )
    keep = np.zeros(len(split), dtype=bool)
    keep[chosen] = True
    parts: dict[str, list[torch.Tensor]] = {"x": [], "days": [], "mask": [], "y": []}
    for part in (LEARN, SELECTION):
        dataset = StoreBlockDataset(store, part, batch_size=FIT_BATCH_SIZE, shuffle=False)
        for batch in dataset:
            sel = torch.from_numpy(keep[batch["index"].numpy()])
            if sel.any():
                for key in parts:
                    parts[key].append(batch[key][sel])
    n = sum(len(p) for p in parts["y"])
    if n != len(chosen):  # the store changed under us
        raise StoreError(f"store {store}: read {n} learn samples, expected {len(chosen)}")
    x, days, mask, y = (torch.cat(parts[k]) for k in ("x", "days", "mask", "y"))
    classifier.meta.update(store=str(store), class_codes=list(info.class_codes))
    classifier.fit(x, days, mask, y)
    return classifier.save(model_dir / CHECKPOINT_DIR / SKLEARN_MODEL)
