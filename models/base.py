"""Lightning module shared by every i2dl classifier network.

:class:`SITSClassifier` owns the loss, optimiser, scheduler, metrics and logging; the
network it wraps only maps ``(x, days, mask)`` to logits. This mirrors the split of
iota2's deep-learning workflow (CNES iota2 documentation, "Deep learning in iota2"),
where the training loop, class weighting and model selection are independent of the
architecture.

Dimension names: ``B`` batch (pixels), ``T`` dates, ``C`` channels, ``K`` classes.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.nn import Parameter
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torchmetrics.classification import MulticlassConfusionMatrix

from i2dl.errors import ConfigError, StoreError
from i2dl.evaluation.metrics import scores
from models.augment import SeriesAugmentation
from models.classifier import CRITERIA, Classifier, criterion_monitor

log = logging.getLogger(__name__)

__all__ = ["CRITERIA", "Classifier", "SITSClassifier", "criterion_monitor"]

_REQUIRED_KEYS = ("x", "days", "mask")


def _check_label_smoothing(value: object) -> float:
    """``value`` as a float in ``[0, 1)``, or ConfigError naming ``label_smoothing``."""
    try:
        eps = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        eps = float("nan")
    if isinstance(value, bool) or not 0.0 <= eps < 1.0:
        raise ConfigError(
            f"SITSClassifier: label_smoothing must be a number in [0, 1), got {value!r}; "
            "0 disables it, 0.1 is the usual value"
        )
    return eps


def _takes_total_steps(factory: Callable[..., Any]) -> bool:
    """Whether a scheduler factory has a ``total_steps`` parameter left to fill."""
    if isinstance(factory, functools.partial) and "total_steps" in factory.keywords:
        return False
    try:
        return "total_steps" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins or callables without a signature
        return False


def _default_optimizer(params: Iterable[Parameter] | Iterable[dict[str, Any]]) -> Optimizer:
    """Adam with learning rate 1e-3 (Kingma & Ba 2015), the default optimiser."""
    return torch.optim.Adam(params, lr=1e-3)


class SITSClassifier(pl.LightningModule):
    """Train / validate / predict an encoder + classification head on pixel time series.

    The network is ``head(encoder(x, days, mask))``: every encoder of :mod:`models`
    (:class:`~models.LTAE`, :class:`~models.TempCNN`, ...) maps a batch of series to
    ``(B, D)`` features (``encoder.out_dim`` = D), the shared
    :class:`~models.ClassifierHead` maps them to ``(B, K)`` logits. Built from the model
    config by ``hydra.utils.instantiate`` (:func:`i2dl.training.build.build_classifier`).

    Batches are dicts of tensors::

        {"x": (B, T, C) float32, "days": (B, T) int64, "mask": (B, T) bool,
         "y": (B,) int64 class index in [0, K)}

    (``"y"`` may be absent from predict batches). The loss is cross-entropy with optional
    class weights. The metrics, logged once per epoch as ``learn/<name>`` (training
    batches) and ``selection/<name>`` (the selection subset that the validation loop
    reads: checkpoint selection, early stopping, LR schedules) with ``learn/loss`` and
    ``selection/loss``, are overall accuracy (``oa``),
    Cohen's kappa (``kappa``) and macro F1 (``fscore``), computed by
    :func:`i2dl.evaluation.metrics.scores` from the epoch's confusion matrix (accumulated by
    torchmetrics, hence synchronised across devices): the very definitions of the
    validation report, so the score a checkpoint is selected on is the score reported.

    Training recipe (each part a constructor argument, hence a ``model.*`` config key):
    the optimiser and scheduler factories (per-step schedules such as
    :func:`models.schedule.warmup_cosine` get the trainer's number of steps), label
    smoothing of the training loss only, augmentation of training batches only
    (:mod:`models.augment`), and optionally no weight decay on biases and norm layers.

    Checkpoints hold only plain hyper-parameters (``n_classes``,
    ``model_selection_criterion``, ``class_weights``) besides the weights; reload by
    building the same module and calling :meth:`load_weights`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module | Callable[..., nn.Module],
        n_classes: int,
        optimizer: Callable[[Any], Optimizer] | None = None,
        scheduler: Callable[..., LRScheduler | ReduceLROnPlateau] | None = None,
        model_selection_criterion: str = "fscore",
        class_weights: Sequence[float] | Tensor | None = None,
        name: str = "",
        label_smoothing: float = 0.0,
        augmentation: SeriesAugmentation | Mapping[str, Any] | None = None,
        decay_bias_and_norm: bool = True,
        static_channels: Sequence[int] | None = None,
    ) -> None:
        """Wrap an encoder and a classification head.

        Args:
            encoder: module with ``forward(x (B,T,C) float32, days (B,T), mask (B,T) bool)``
                returning ``(B, D)`` float32 features and an ``out_dim`` attribute (D).
            head: the head module, or a factory ``head(in_features=D, n_classes=K)``
                (Hydra ``_partial_: true`` on :class:`~models.ClassifierHead`) called here,
                after the encoder is built.
            n_classes: number of classes ``K``.
            optimizer: partial optimiser constructor taking the parameters or parameter
                groups (e.g. Hydra ``_partial_: true`` on ``torch.optim.AdamW``); default
                Adam, lr 1e-3.
            scheduler: optional partial scheduler constructor taking the optimiser. One
                with a ``total_steps`` parameter (:func:`models.schedule.warmup_cosine`,
                ``torch.optim.lr_scheduler.OneCycleLR``) also gets
                ``total_steps=trainer.estimated_stepping_batches`` and is stepped after
                every optimiser step; any other is stepped once per epoch. A
                ``ReduceLROnPlateau`` monitors the metric of ``model_selection_criterion``
                (set its ``mode`` to match, see :func:`criterion_monitor`).
            model_selection_criterion: ``"fscore"``, ``"oa"``, ``"kappa"`` or ``"loss"``.
            class_weights: optional ``(K,)`` non-negative weights of the cross-entropy,
                in class-index order.
            name: model name (``ltae``, ``tempcnn``, ...), for logs.
            label_smoothing: label smoothing of the cross-entropy of the training
                (``learn``) batches, in ``[0, 1)`` (Szegedy et al. 2016, "Rethinking the
                Inception architecture", CVPR); ``selection/loss`` stays the plain
                (weighted) cross-entropy, comparable across settings. 0 = off.
            augmentation: :class:`models.augment.SeriesAugmentation`, or a mapping of
                its arguments (``date_dropout``, ``jitter``, ``time_shift``), applied to
                training batches only (:meth:`training_step`); None = off.
            decay_bias_and_norm: if False, parameters with fewer than 2 dimensions
                (biases, LayerNorm / BatchNorm scales and shifts) are put in a parameter
                group with ``weight_decay=0`` (the "no bias decay" of Goyal et al. 2017,
                and of BERT, Devlin et al. 2019); True passes all parameters alike.
            static_channels: indices (in the C input channels) of date-independent
                channels (user / external features, the same value at every date). They
                are taken out of the series the encoder reads (built for C - S channels)
                and their per-pixel value (the mean over the valid dates) is appended
                once to the encoder's features, so the head reads D + S features. None
                or empty: every channel goes through the encoder.

        Raises:
            i2dl.errors.ConfigError: (a ``ValueError``) if ``n_classes`` is not a positive
                int, the encoder has no ``out_dim``, the criterion is unknown,
                ``class_weights`` has the wrong length, negative or non-finite values,
                ``label_smoothing`` is outside ``[0, 1)`` or ``augmentation`` is invalid.
        """
        super().__init__()
        out_dim = self.configure_checks(n_classes, model_selection_criterion, encoder)
        weights_list = self.configure_losses(n_classes, class_weights)
        # Primitives only, so that checkpoints load with torch.load(weights_only=True).
        # Lightning also compares the __init__ arguments (frame locals) with these values:
        # rebind the weights to the list, an array or tensor would make that ambiguous.
        class_weights = weights_list
        self.static_channels = sorted({int(c) for c in static_channels or []})
        self.save_hyperparameters(
            {
                "n_classes": n_classes,
                "model_selection_criterion": model_selection_criterion,
                "class_weights": weights_list,
                "static_channels": self.static_channels,
            }
        )
        self.configure_models(encoder, head, out_dim, n_classes, name, model_selection_criterion)
        self.configure_recipe(optimizer, scheduler, decay_bias_and_norm, label_smoothing,
                              augmentation)
        self.configure_metrics(n_classes)

    def configure_checks(self, n_classes: int, criterion: str, encoder: nn.Module) -> int:
        """Check the class count, the selection criterion and the encoder's width.

        Returns:
            The encoder's ``out_dim``.

        Raises:
            i2dl.errors.ConfigError: a bad ``n_classes``, criterion or encoder.
        """
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ConfigError(
                f"SITSClassifier: n_classes must be a positive int, got {n_classes!r}"
            )
        self.monitor_key, self.monitor_mode = criterion_monitor(criterion)
        out_dim = getattr(encoder, "out_dim", None)
        if not isinstance(out_dim, int) or out_dim < 1:
            raise ConfigError(
                f"SITSClassifier: the encoder {type(encoder).__name__} has no positive int "
                f"`out_dim` (got {out_dim!r}); encoders must expose the width of their output"
            )
        return out_dim

    def configure_losses(
        self, n_classes: int, class_weights: Sequence[float] | Tensor | None
    ) -> list[float] | None:
        """Register the cross-entropy's class weights (a buffer, or None).

        Returns:
            The weights as a list of floats, or None.

        Raises:
            i2dl.errors.ConfigError: wrong length, negative or non-finite weights.
        """
        if class_weights is None:
            self.register_buffer("class_weights", None)
            return None
        w = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
        if w.numel() != n_classes:
            raise ConfigError(
                f"SITSClassifier: class_weights has {w.numel()} values but n_classes="
                f"{n_classes}; give one weight per class index"
            )
        if not torch.isfinite(w).all() or (w < 0).any():
            raise ConfigError(
                f"SITSClassifier: class_weights must be finite and >= 0, got {w.tolist()}"
            )
        self.register_buffer("class_weights", w)
        return [float(v) for v in w]

    def configure_models(
        self, encoder: nn.Module, head: nn.Module | Callable[..., nn.Module], out_dim: int,
        n_classes: int, name: str, criterion: str,
    ) -> None:
        """Attach the encoder and build the head (a factory gets the features' width)."""
        self.encoder = encoder
        self.head = head if isinstance(head, nn.Module) else head(
            in_features=out_dim + len(self.static_channels), n_classes=n_classes
        )
        self.n_classes = n_classes
        self.name = name
        self.model_selection_criterion = criterion

    def configure_recipe(
        self,
        optimizer: Callable[[Any], Optimizer] | None,
        scheduler: Callable[..., LRScheduler | ReduceLROnPlateau] | None,
        decay_bias_and_norm: bool,
        label_smoothing: float,
        augmentation: SeriesAugmentation | Mapping[str, Any] | None,
    ) -> None:
        """Keep the optimiser and scheduler factories, label smoothing and augmentation.

        Raises:
            i2dl.errors.ConfigError: ``label_smoothing`` outside ``[0, 1)`` or a bad
                ``augmentation``.
        """
        self.optimizer_factory = optimizer if optimizer is not None else _default_optimizer
        self.scheduler_factory = scheduler
        self.decay_bias_and_norm = bool(decay_bias_and_norm)
        self.label_smoothing = _check_label_smoothing(label_smoothing)
        if isinstance(augmentation, Mapping):
            augmentation = SeriesAugmentation(**augmentation)
        if augmentation is not None and not isinstance(augmentation, SeriesAugmentation):
            raise ConfigError(
                f"SITSClassifier: augmentation must be a models.augment.SeriesAugmentation, "
                f"a mapping of its arguments or null, got {type(augmentation).__name__}"
            )
        # no parameters or buffers: checkpoints are the same with or without it
        self.augmentation = augmentation

    def configure_metrics(self, n_classes: int) -> None:
        """One confusion matrix per split (learn, selection), from which every score comes."""
        # torchmetrics needs >= 2 classes: a 1-class model counts in a padded matrix.
        self.learn_confusion = MulticlassConfusionMatrix(max(n_classes, 2), validate_args=False)
        self.selection_confusion = MulticlassConfusionMatrix(max(n_classes, 2), validate_args=False)

    def forward(self, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
        """Logits of the head on the encoder's features.

        Args:
            x: ``(B, T, C)`` float32 input features.
            days: ``(B, T)`` int64 or float, days since the reference date.
            mask: ``(B, T)`` bool, True = valid observation.

        Returns:
            ``(B, K)`` float32 logits.

        Raises:
            ValueError: propagated from the encoder on badly shaped input.
        """
        if not self.static_channels:
            return self.head(self.encoder(x, days, mask))
        dated = torch.ones(x.shape[-1], dtype=torch.bool, device=x.device)
        dated[self.static_channels] = False
        m = mask.to(x.dtype).unsqueeze(-1)
        static = (x[..., self.static_channels] * m).sum(1) / m.sum(1).clamp(min=1)
        return self.head(torch.cat([self.encoder(x[..., dated], days, mask), static], dim=-1))

    def _unpack(self, batch: Mapping[str, Tensor], need_y: bool) -> tuple[Tensor, ...]:
        """Return ``(x, days, mask[, y])`` from a batch dict, checking the keys."""
        if not isinstance(batch, Mapping):
            raise ValueError(
                f"SITSClassifier: a batch must be a dict with keys x, days, mask[, y], got "
                f"{type(batch).__name__}"
            )
        keys = (*_REQUIRED_KEYS, "y") if need_y else _REQUIRED_KEYS
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(
                f"SITSClassifier: batch lacks key(s) {missing}; got keys {sorted(batch)}"
            )
        return tuple(batch[k] for k in keys)

    def _shared_step(self, batch: Mapping[str, Tensor], split: str) -> Tensor:
        """Loss of one labelled batch; accumulates the confusion matrix of ``split``."""
        x, days, mask, y = self._unpack(batch, need_y=True)
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"SITSClassifier: `y` must have shape (B,) = ({x.shape[0]},), got "
                f"{tuple(y.shape)}"
            )
        logits = self(x, days, mask)
        y = y.long()
        weight = self.class_weights if isinstance(self.class_weights, Tensor) else None
        smoothing = self.label_smoothing if split == "learn" else 0.0
        loss = F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=smoothing)
        self._confusion(split).update(logits.detach().argmax(dim=1), y)
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, batch_size=x.shape[0],
                 prog_bar=split == "selection")
        return loss

    def epoch_scores(self, split: str) -> dict[str, float]:
        """OA, kappa and macro F1 of the batches of ``split`` seen since the last reset.

        Args:
            split: ``"learn"`` or ``"selection"``.

        Returns:
            ``{"oa", "kappa", "fscore"}`` floats (:func:`i2dl.evaluation.metrics.scores`; an
            undefined value, e.g. kappa when one class is both reference and prediction,
            is logged as 0.0).
        """
        cm = self._confusion(split).compute()[: self.n_classes, : self.n_classes]
        sc = scores(cm.detach().cpu().numpy())
        return {
            "oa": float(sc.oa or 0.0),
            "kappa": float(sc.kappa or 0.0),
            "fscore": float(sc.f1_macro or 0.0),
        }

    def _confusion(self, split: str) -> MulticlassConfusionMatrix:
        return self.learn_confusion if split == "learn" else self.selection_confusion

    def _log_epoch(self, split: str) -> None:
        confusion = self._confusion(split)
        if confusion.update_count > 0:
            for key, value in self.epoch_scores(split).items():
                self.log(f"{split}/{key}", value, on_step=False, on_epoch=True)
        confusion.reset()

    def on_train_epoch_end(self) -> None:
        """Log ``train/oa``, ``train/kappa``, ``train/fscore`` of the epoch."""
        self._log_epoch("learn")

    def on_validation_epoch_end(self) -> None:
        """Log ``val/oa``, ``val/kappa``, ``val/fscore`` of the epoch (checkpoint selection)."""
        self._log_epoch("selection")

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy of a training batch; logs ``train/loss``.

        Args:
            batch: dict ``x (B,T,C) float32, days (B,T) int64, mask (B,T) bool,
                y (B,) int64``.
            batch_idx: index of the batch in the epoch.

        Returns:
            Scalar float32 loss.

        Raises:
            ValueError: if a key is missing or ``y`` is not ``(B,)``.
        """
        return self._shared_step(self._augmented(batch), "learn")

    def _augmented(self, batch: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """The batch with ``x``, ``days``, ``mask`` augmented (training batches only)."""
        if self.augmentation is None or not self.augmentation.active:
            return batch
        x, days, mask = self._unpack(batch, need_y=False)
        x, days, mask = self.augmentation(x, days, mask)
        return {**batch, "x": x, "days": days, "mask": mask}

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy of a validation batch; logs ``val/loss``.

        Args:
            batch: dict as in :meth:`training_step`.
            batch_idx: index of the batch.

        Returns:
            Scalar float32 loss.

        Raises:
            ValueError: if a key is missing or ``y`` is not ``(B,)``.
        """
        return self._shared_step(batch, "selection")

    def load_weights(self, path: str | Path) -> None:
        """Load the weights of a Lightning checkpoint written by fit into this module.

        Args:
            path: ``.ckpt`` file (``<run>/checkpoints/best.ckpt``).

        Raises:
            StoreError: no such file, an unreadable or truncated file, a file holding
                pickled objects (refused: only tensors and plain values are loaded), or
                weights that do not fit this network (the model config differs from the
                one that was trained).
        """
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"checkpoint {path} not found; run `python -m i2dl fit` first")
        try:  # weights only: a checkpoint is data, unpickling arbitrary objects runs code
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise StoreError(
                f"checkpoint {path} holds objects other than tensors and plain values, which "
                f"torch.load(weights_only=True) refuses ({str(exc).splitlines()[0]}); load "
                "only checkpoints written by i2dl fit"
            ) from None
        except (RuntimeError, EOFError, OSError) as exc:
            raise StoreError(
                f"checkpoint {path} cannot be read ({exc}); it may be truncated: train "
                "again with `python -m i2dl fit`"
            ) from None
        try:
            state = dict(ckpt["state_dict"])
            # the loss weights of training (a buffer) are restored whatever this module has
            self.class_weights = state.pop("class_weights", None)
            missing, unexpected = self.load_state_dict(state, strict=False)
            missing = [k for k in missing if k != "class_weights"]
            if missing or unexpected:
                raise RuntimeError(f"missing keys {missing}, unexpected keys {unexpected}")
        except (KeyError, RuntimeError) as exc:
            raise StoreError(
                f"checkpoint {path} does not match the network of model.yaml ({exc}); "
                "train again with `python -m i2dl fit`"
            ) from None
        self.eval()

    def predict_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """Class probabilities of a batch (``"y"`` not needed).

        Args:
            batch: dict with ``x (B,T,C) float32, days (B,T), mask (B,T) bool``.
            batch_idx: index of the batch.

        Returns:
            ``(B, K)`` float32 probabilities (softmax of the logits, rows sum to 1),
            column ``k`` = class index ``k``.

        Raises:
            ValueError: if a key is missing.
        """
        x, days, mask = self._unpack(batch, need_y=False)
        return torch.softmax(self(x, days, mask).float(), dim=-1)

    def predict_proba(self, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
        """Class probabilities in eval mode, without gradients.

        The module's training flag is restored afterwards.

        Args:
            x: ``(B, T, C)`` float32 input features.
            days: ``(B, T)`` int64 or float, days since the reference date.
            mask: ``(B, T)`` bool, True = valid observation.

        Returns:
            ``(B, K)`` float32 probabilities, rows sum to 1.

        Raises:
            ValueError: propagated from the network on badly shaped input.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return torch.softmax(self(x, days, mask).float(), dim=-1)
        finally:
            self.train(was_training)

    def parameter_groups(self) -> Iterable[Parameter] | list[dict[str, Any]]:
        """What the optimiser factory receives.

        Returns:
            ``self.parameters()`` when ``decay_bias_and_norm`` is True; otherwise the
            groups ``[{"params": >= 2-D parameters}, {"params": 0-D and 1-D parameters,
            "weight_decay": 0.0}]`` (empty groups left out).
        """
        if self.decay_bias_and_norm:
            return self.parameters()
        params = [q for q in self.parameters() if q.requires_grad]
        decay = [q for q in params if q.ndim >= 2]
        no_decay = [q for q in params if q.ndim < 2]
        groups: list[dict[str, Any]] = []
        if decay:
            groups.append({"params": decay})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    def configure_optimizers(self) -> Any:
        """Build the optimiser and, if given, the scheduler.

        A scheduler factory with a ``total_steps`` parameter (not already bound) is
        called with ``total_steps=trainer.estimated_stepping_batches`` and stepped per
        optimiser step (``interval="step"``); any other is stepped per epoch.

        Returns:
            The optimiser alone, or Lightning's dict ``{"optimizer": ..., "lr_scheduler":
            {"scheduler": ..., "interval": "epoch" | "step"[, "monitor": key]}}``;
            ``monitor`` is set for ``ReduceLROnPlateau`` to the key of
            ``model_selection_criterion``.

        Raises:
            TypeError: propagated if the factories do not accept the documented argument.
            i2dl.errors.ConfigError: (a ``ValueError``) if a per-step schedule is asked
                for but the trainer has no finite number of steps (``max_epochs=-1`` and
                ``max_steps=-1``).
        """
        optimizer = self.optimizer_factory(self.parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        interval = "epoch"
        if _takes_total_steps(self.scheduler_factory):
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total) or total < 1:
                raise ConfigError(
                    f"model.scheduler needs the number of training steps, but the trainer "
                    f"plans {total}; set trainer.max_epochs or trainer.max_steps"
                )
            scheduler = self.scheduler_factory(optimizer, total_steps=int(total))
            interval = "step"
        else:
            scheduler = self.scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": interval, "frequency": 1}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = self.monitor_key
            if scheduler.mode != self.monitor_mode:
                log.warning(
                    "ReduceLROnPlateau has mode=%r but %s should be %r (criterion %r); "
                    "set the scheduler's mode to %r",
                    scheduler.mode, self.monitor_key, self.monitor_mode,
                    self.model_selection_criterion, self.monitor_mode,
                )
        return {"optimizer": optimizer, "lr_scheduler": config}
