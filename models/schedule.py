"""Learning-rate schedules stepped once per optimiser step.

:func:`warmup_cosine` is linear warm-up (Goyal et al. 2017, "Accurate, large minibatch
SGD: training ImageNet in 1 hour", arXiv:1706.02677) followed by cosine decay
(Loshchilov & Hutter 2017, "SGDR: stochastic gradient descent with warm restarts", ICLR,
without restarts), the schedule of most transformer training recipes. It takes the
total number of optimiser steps, which only the trainer knows:
:meth:`models.SITSClassifier.configure_optimizers` passes
``total_steps=trainer.estimated_stepping_batches`` to any scheduler factory that has a
``total_steps`` parameter (this one, or ``torch.optim.lr_scheduler.OneCycleLR``) and
steps it every optimiser step.
"""

from __future__ import annotations

import logging
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from i2dl.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["warmup_cosine", "warmup_cosine_factor"]


def warmup_cosine_factor(
    step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float
) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    ``(step + 1) / warmup_steps`` during the warm-up (``step < warmup_steps``), so the
    first step already has a non-zero rate and the last warm-up step the full rate; then
    ``r + (1 - r) * (1 + cos(pi * q)) / 2`` with ``r = min_lr_ratio`` and
    ``q = min(1, (step - warmup_steps) / max(1, total_steps - warmup_steps))``, from 1
    down to ``r`` at ``step = total_steps``.

    Args:
        step: number of optimiser steps taken so far.
        total_steps: planned number of optimiser steps.
        warmup_steps: steps of linear warm-up, ``0 <= warmup_steps <= total_steps``.
        min_lr_ratio: final rate as a fraction of the base rate.

    Returns:
        The multiplier, in ``[min_lr_ratio, 1]``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.05,
    min_lr_ratio: float = 0.01,
) -> LambdaLR:
    """Linear warm-up then cosine decay of every parameter group's learning rate.

    Used as a Hydra partial (``model.scheduler``, ``_partial_: true``); the trainer's
    ``total_steps`` is added by :class:`models.SITSClassifier`. With early stopping the
    run may end before the decay does; the schedule still follows ``trainer.max_epochs``.

    Args:
        optimizer: the optimiser whose groups' base ``lr`` is scaled.
        total_steps: planned number of optimiser steps (``trainer.estimated_stepping_batches``).
        warmup_fraction: fraction of ``total_steps`` spent in linear warm-up, in
            ``[0, 1)``; the warm-up lasts ``round(warmup_fraction * total_steps)`` steps.
        min_lr_ratio: final learning rate as a fraction of the base rate, in ``[0, 1]``.

    Returns:
        A ``LambdaLR`` applying :func:`warmup_cosine_factor`, to be stepped after every
        optimiser step.

    Raises:
        i2dl.errors.ConfigError: (a ``ValueError``) if ``total_steps`` is not a positive
            int, or ``warmup_fraction`` or ``min_lr_ratio`` is out of range.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError(
            f"warmup_cosine: total_steps must be a positive int, got {total_steps!r}; set "
            "trainer.max_epochs or trainer.max_steps"
        )
    if not 0.0 <= float(warmup_fraction) < 1.0:
        raise ConfigError(
            f"warmup_cosine: warmup_fraction must be in [0, 1), got {warmup_fraction!r}"
        )
    if not 0.0 <= float(min_lr_ratio) <= 1.0:
        raise ConfigError(f"warmup_cosine: min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
    warmup_steps = round(float(warmup_fraction) * total_steps)
    ratio = float(min_lr_ratio)
    log.debug("warmup_cosine: %d steps, %d of warm-up, final ratio %s",
              total_steps, warmup_steps, ratio)
    return LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, total_steps, warmup_steps, ratio)
    )
