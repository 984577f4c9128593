"""Lightning module shared by every i2dl classifier network.

:class:`SITSClassifier` owns the loss, optimiser, scheduler, metrics and logging; the
network it wraps only maps ``(x, days, mask)`` to logits. This mirrors the split of
iota2's deep-learning workflow (CNES iota2 documentation, "Deep learning in iota2"),
where the training loop, class weighting and model selection are independent of the
architecture.

Dimension names: ``B`` batch (pixels), ``T`` dates, ``C`` channels, ``K`` classes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.nn import Parameter
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCohenKappa,
    MulticlassF1Score,
)

from i2dl.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["SITSClassifier", "criterion_monitor", "CRITERIA"]

#: Model-selection criteria: name -> (logged metric key, optimisation mode).
CRITERIA: dict[str, tuple[str, str]] = {
    "fscore": ("val/fscore", "max"),
    "oa": ("val/oa", "max"),
    "kappa": ("val/kappa", "max"),
    "loss": ("val/loss", "min"),
}

_REQUIRED_KEYS = ("x", "days", "mask")


def criterion_monitor(criterion: str) -> tuple[str, str]:
    """Metric key and mode to monitor for a model-selection criterion.

    Used for ``ModelCheckpoint(monitor=..., mode=...)``, ``EarlyStopping`` and
    ``ReduceLROnPlateau``. The metrics are those of iota2's deep-learning model
    selection: overall accuracy, Cohen's kappa (Cohen 1960, "A coefficient of agreement
    for nominal scales"), macro F1-score, validation loss.

    Args:
        criterion: one of ``"fscore"``, ``"oa"``, ``"kappa"``, ``"loss"``.

    Returns:
        ``(key, mode)``, e.g. ``("val/fscore", "max")`` or ``("val/loss", "min")``.

    Raises:
        i2dl.errors.ConfigError: (a ``ValueError``) if ``criterion`` is not one of the
            allowed names.
    """
    try:
        return CRITERIA[criterion]
    except (KeyError, TypeError):
        raise ConfigError(
            f"model_selection_criterion={criterion!r} is not allowed; choose one of "
            f"{sorted(CRITERIA)}"
        ) from None


def _default_optimizer(params: Iterable[Parameter]) -> Optimizer:
    """Adam with learning rate 1e-3 (Kingma & Ba 2015), the default optimiser."""
    return torch.optim.Adam(params, lr=1e-3)


class SITSClassifier(pl.LightningModule):
    """Train / validate / predict any ``net(x, days, mask) -> logits`` classifier.

    Batches are dicts of tensors::

        {"x": (B, T, C) float32, "days": (B, T) int64, "mask": (B, T) bool,
         "y": (B,) int64 class index in [0, K)}

    (``"y"`` may be absent from predict batches). The loss is cross-entropy with optional
    class weights; the metrics are overall accuracy (``oa``, micro accuracy), Cohen's
    kappa (``kappa``) and macro F1-score (``fscore``), logged once per epoch as
    ``train/<name>`` and ``val/<name>`` together with ``train/loss`` and ``val/loss``.

    Checkpoints: only plain hyper-parameters (``n_classes``,
    ``model_selection_criterion``, ``class_weights`` as a list of floats) are saved; the
    network, optimiser and scheduler are not. Reload by rebuilding the network with the
    same arguments and passing it in::

        net = LTAE(**net_kwargs)
        model = SITSClassifier.load_from_checkpoint(path, net=net)

    This works with ``torch.load(weights_only=True)``, the default of recent PyTorch.
    Pass ``optimizer=``/``scheduler=`` as well to resume training with them (the default
    is Adam, lr 1e-3, and no scheduler).
    """

    def __init__(
        self,
        net: nn.Module,
        n_classes: int,
        optimizer: Callable[[Iterable[Parameter]], Optimizer] | None = None,
        scheduler: Callable[[Optimizer], LRScheduler] | None = None,
        model_selection_criterion: str = "fscore",
        class_weights: Sequence[float] | Tensor | None = None,
    ) -> None:
        """Wrap a network.

        Args:
            net: module with ``forward(x (B,T,C) float32, days (B,T), mask (B,T) bool)``
                returning ``(B, K)`` float32 logits.
            n_classes: number of classes ``K``.
            optimizer: partial optimiser constructor taking the parameters (e.g. Hydra
                ``_partial_: true`` on ``torch.optim.Adam``); default Adam, lr 1e-3.
            scheduler: optional partial scheduler constructor taking the optimiser; it is
                stepped once per epoch. A ``ReduceLROnPlateau`` monitors the metric of
                ``model_selection_criterion`` (set its ``mode`` to match, see
                :func:`criterion_monitor`).
            model_selection_criterion: ``"fscore"``, ``"oa"``, ``"kappa"`` or ``"loss"``.
            class_weights: optional ``(K,)`` non-negative weights of the cross-entropy,
                in class-index order.

        Raises:
            i2dl.errors.ConfigError: (a ``ValueError``) if ``n_classes`` is not a positive
                int, the criterion is unknown, or ``class_weights`` has the wrong length,
                negative or non-finite values.
        """
        super().__init__()
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ConfigError(
                f"SITSClassifier: n_classes must be a positive int, got {n_classes!r}"
            )
        self.monitor_key, self.monitor_mode = criterion_monitor(model_selection_criterion)

        weights_list: list[float] | None = None
        if class_weights is not None:
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
            weights_list = [float(v) for v in w]
            self.register_buffer("class_weights", w)
        else:
            self.register_buffer("class_weights", None)

        # Primitives only, so that checkpoints load with torch.load(weights_only=True).
        # Lightning also compares the __init__ arguments (frame locals) with these values:
        # rebind the weights to the list, an array or tensor would make that ambiguous.
        class_weights = weights_list
        self.save_hyperparameters(
            {
                "n_classes": n_classes,
                "model_selection_criterion": model_selection_criterion,
                "class_weights": weights_list,
            }
        )
        self.net = net
        self.n_classes = n_classes
        self.model_selection_criterion = model_selection_criterion
        self.optimizer_factory = optimizer if optimizer is not None else _default_optimizer
        self.scheduler_factory = scheduler

        metrics = MetricCollection(
            {
                "oa": MulticlassAccuracy(n_classes, average="micro"),
                "kappa": MulticlassCohenKappa(n_classes),
                "fscore": MulticlassF1Score(n_classes, average="macro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")

    def forward(self, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
        """Logits of the wrapped network.

        Args:
            x: ``(B, T, C)`` float32 input features.
            days: ``(B, T)`` int64 or float, days since the reference date.
            mask: ``(B, T)`` bool, True = valid observation.

        Returns:
            ``(B, K)`` float32 logits.

        Raises:
            ValueError: propagated from the network on badly shaped input.
        """
        return self.net(x, days, mask)

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
        """Loss of one labelled batch; updates and logs the metrics of ``split``."""
        x, days, mask, y = self._unpack(batch, need_y=True)
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"SITSClassifier: `y` must have shape (B,) = ({x.shape[0]},), got "
                f"{tuple(y.shape)}"
            )
        logits = self(x, days, mask)
        y = y.long()
        loss = F.cross_entropy(logits.float(), y, weight=self.class_weights)
        metrics = self.train_metrics if split == "train" else self.val_metrics
        metrics.update(logits.detach(), y)
        bs = x.shape[0]
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, batch_size=bs,
                 prog_bar=split == "val")
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy of a training batch; logs ``train/loss`` and ``train/*`` metrics.

        Args:
            batch: dict ``x (B,T,C) float32, days (B,T) int64, mask (B,T) bool,
                y (B,) int64``.
            batch_idx: index of the batch in the epoch.

        Returns:
            Scalar float32 loss.

        Raises:
            ValueError: if a key is missing or ``y`` is not ``(B,)``.
        """
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy of a validation batch; logs ``val/loss`` and ``val/*`` metrics.

        Args:
            batch: dict as in :meth:`training_step`.
            batch_idx: index of the batch.

        Returns:
            Scalar float32 loss.

        Raises:
            ValueError: if a key is missing or ``y`` is not ``(B,)``.
        """
        return self._shared_step(batch, "val")

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

    def configure_optimizers(self) -> Optimizer | dict[str, Any]:
        """Build the optimiser and, if given, the per-epoch scheduler.

        Returns:
            The optimiser alone, or Lightning's dict ``{"optimizer": ..., "lr_scheduler":
            {"scheduler": ..., "interval": "epoch"[, "monitor": key]}}``; ``monitor`` is
            set for ``ReduceLROnPlateau`` to the key of ``model_selection_criterion``.

        Raises:
            TypeError: propagated if the factories do not accept the documented argument.
        """
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch", "frequency": 1}
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
