"""Augmentation of pixel time series, applied to training batches only.

:class:`SeriesAugmentation` is called by :meth:`models.SITSClassifier.training_step` on
the batch tensors, after the batch is on the training device (so it runs on the GPU),
and never in the validation (selection), predict or :meth:`predict_proba` paths. It
draws from torch's global RNG (CPU or CUDA), which Lightning's ``seed_everything``
seeds, so a seeded run is reproducible.

Four transformations, each off at 0:

* **date dropout** (:func:`drop_dates`): each valid date of a pixel is marked invalid
  (``mask = False``) with probability ``p``, keeping at least one valid date per pixel.
  It mimics extra clouds; every network reads the mask (the attention networks mask
  the dropped dates out, TempCNN, MLP and ANN gap-fill them), so it works for all.
  A form of the observation dropout of masked sequence modelling (BERT's token
  masking, Devlin et al. 2019), without a reconstruction target.
* **time masking** (:func:`mask_block`): one contiguous run of dates of each pixel, of
  a length drawn uniformly up to a fraction ``f`` of the series, is marked invalid (at
  least one valid date kept): SpecAugment's time masking (Park et al. 2019, Interspeech).
  Where date dropout removes scattered dates that the gap-filling restores from their
  neighbours, a masked block removes a whole period (up to a season with ``f = 0.25``),
  so the network must also recognise a class from the rest of the year, much as each
  tree of a random forest sees a random subset of the dates (Breiman 2001).
* **jitter** (:func:`jitter`): Gaussian noise of standard deviation ``s`` added to ``x``
  at valid dates, in the normalised units of the store statistics (``s = 0.03`` is the
  jittering of Um et al. 2017, "Data augmentation of wearable sensor data", ICMI, and of
  the survey of Iwana & Uchida 2021, PLOS ONE 16(7):e0254841).
* **time shift** (:func:`shift_days`): all days of a pixel are moved by one integer
  number of days drawn uniformly in ``[-d, d]``, a small phenological / calendar shift
  (the temporal-shift augmentation studied by Nyborg et al. 2022, "TimeMatch", ISPRS J.
  Photogramm. 186:301-313). It changes the positional encoding of the attention
  networks (LTAE, SimpleSelfAttention); the gap-filling of TempCNN, MLP and ANN depends
  on day differences only, so they are unaffected.

Dimension names: ``B`` batch (pixels), ``T`` dates, ``C`` channels.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from i2dl.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["SeriesAugmentation", "drop_dates", "jitter", "mask_block", "shift_days"]


def drop_dates(mask: Tensor, p: float) -> Tensor:
    """Mark each valid date invalid with probability ``p``, keeping one valid date per pixel.

    A pixel that would lose all its valid dates gets one of them back, chosen uniformly
    at random; a pixel without any valid date stays without. No host synchronisation.

    Args:
        mask: ``(B, T)`` bool, True = valid observation.
        p: probability of dropping each valid date, in ``[0, 1)``.

    Returns:
        ``(B, T)`` bool mask, a subset of ``mask`` with at least one True per row where
        ``mask`` had one.
    """
    if p <= 0.0:
        return mask
    return _keep_one(mask, mask & (torch.rand(mask.shape, device=mask.device) >= p))


def _keep_one(mask: Tensor, kept: Tensor) -> Tensor:
    """``kept`` with one random valid date of ``mask`` restored where a pixel lost them all."""
    lost = mask.any(dim=1) & ~kept.any(dim=1)  # (B,), pixels left without a valid date
    # a uniformly random valid date of each pixel: argmax of uniform scores on valid dates
    score = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
    pick = torch.zeros_like(mask).scatter_(1, score.argmax(dim=1, keepdim=True), True)
    return kept | (pick & lost.unsqueeze(1))


def mask_block(mask: Tensor, fraction: float) -> Tensor:
    """Mark one contiguous run of dates of each pixel invalid (SpecAugment time masking).

    Per pixel, a length ``L`` is drawn uniformly in ``{0, ..., floor(fraction * T)}`` and
    a start uniformly in ``{0, ..., T - L}``; dates ``start .. start + L - 1`` become
    invalid. A pixel that would lose all its valid dates gets one of them back, as in
    :func:`drop_dates`. Source: Park et al. 2019, "SpecAugment", Interspeech (time
    masking, there of spectrogram frames). No host synchronisation.

    Args:
        mask: ``(B, T)`` bool, True = valid observation.
        fraction: largest masked share of the ``T`` dates, in ``[0, 1)``.

    Returns:
        ``(B, T)`` bool mask, a subset of ``mask`` with at least one True per row where
        ``mask`` had one.
    """
    if fraction <= 0.0:
        return mask
    n_pix, n_dates = mask.shape
    longest = math.floor(fraction * n_dates)
    length = torch.randint(0, longest + 1, (n_pix, 1), device=mask.device)  # (B, 1)
    start = (torch.rand((n_pix, 1), device=mask.device) * (n_dates - length + 1)).long()
    start = torch.minimum(start, n_dates - length)  # rand < 1, but guard the rounding
    t = torch.arange(n_dates, device=mask.device).unsqueeze(0)  # (1, T)
    block = (t >= start) & (t < start + length)
    return _keep_one(mask, mask & ~block)


def jitter(x: Tensor, mask: Tensor, std: float) -> Tensor:
    """Add Gaussian noise to ``x`` at valid dates.

    Args:
        x: ``(B, T, C)`` float, series normalised by the store statistics.
        mask: ``(B, T)`` bool, True = valid; invalid dates are left as they are (0 from
            the datamodule).
        std: standard deviation of the noise, in normalised units, ``>= 0``.

    Returns:
        ``(B, T, C)`` tensor of ``x``'s dtype.
    """
    if std <= 0.0:
        return x
    noise = torch.randn(x.shape, device=x.device, dtype=x.dtype) * std
    return torch.where(mask.unsqueeze(-1), x + noise, x)


def shift_days(days: Tensor, max_shift: int) -> Tensor:
    """Move all days of each pixel by one integer drawn uniformly in ``[-max_shift, max_shift]``.

    Args:
        days: ``(B, T)`` int64 or float, days since the reference date.
        max_shift: largest shift, in days, ``>= 0``.

    Returns:
        ``(B, T)`` tensor of ``days``' dtype; ``result[b] - days[b]`` is one integer
        constant per pixel ``b``.
    """
    if max_shift <= 0:
        return days
    shift = torch.randint(-max_shift, max_shift + 1, (days.shape[0], 1), device=days.device)
    return days + shift.to(days.dtype)


class SeriesAugmentation(nn.Module):
    """Random date dropout, jitter and time shift of a training batch (module docstring).

    Active only in training mode (``module.train()``); in eval mode the inputs are
    returned unchanged. It has no parameters or buffers, so checkpoints are the same with
    or without it. Built by Hydra from ``model.augmentation`` (``_target_:
    models.augment.SeriesAugmentation``) or from a plain mapping of the same keys by
    :class:`models.SITSClassifier`.

    Attributes:
        date_dropout: probability of dropping each valid date.
        jitter: standard deviation of the noise on ``x``, normalised units.
        time_shift: largest shift of the days, in days.
        time_mask: largest share of the dates masked as one block per pixel.
    """

    def __init__(
        self,
        date_dropout: float = 0.0,
        jitter: float = 0.0,
        time_shift: int = 0,
        time_mask: float = 0.0,
    ) -> None:
        """Check and store the strengths; all 0 = no augmentation.

        Args:
            date_dropout: probability of dropping each valid date, in ``[0, 1)``.
            jitter: standard deviation of the Gaussian noise added to ``x`` at valid
                dates, normalised units, finite and ``>= 0``.
            time_shift: largest random shift of a pixel's days, in days, an int ``>= 0``.
            time_mask: largest share of the dates masked as one block per pixel
                (:func:`mask_block`), in ``[0, 1)``.

        Raises:
            i2dl.errors.ConfigError: (a ``ValueError``) if a value is out of range or of
                the wrong type.
        """
        super().__init__()
        try:
            p = float(date_dropout)
            s = float(jitter)
        except (TypeError, ValueError):
            raise ConfigError(
                f"SeriesAugmentation: date_dropout and jitter must be numbers, got "
                f"date_dropout={date_dropout!r}, jitter={jitter!r}"
            ) from None
        if isinstance(date_dropout, bool) or not 0.0 <= p < 1.0:
            raise ConfigError(
                f"SeriesAugmentation: date_dropout must be in [0, 1), got {date_dropout!r}; "
                "0 disables it"
            )
        if isinstance(jitter, bool) or not (math.isfinite(s) and s >= 0.0):
            raise ConfigError(
                f"SeriesAugmentation: jitter (noise std, normalised units) must be a finite "
                f"number >= 0, got {jitter!r}; 0 disables it"
            )
        if isinstance(time_shift, bool) or not isinstance(time_shift, int) or time_shift < 0:
            raise ConfigError(
                f"SeriesAugmentation: time_shift (days) must be an int >= 0, got "
                f"{time_shift!r}; 0 disables it"
            )
        try:
            f = float(time_mask)
        except (TypeError, ValueError):
            f = -1.0
        if isinstance(time_mask, bool) or not 0.0 <= f < 1.0:
            raise ConfigError(
                f"SeriesAugmentation: time_mask (largest masked share of the dates) must be "
                f"in [0, 1), got {time_mask!r}; 0 disables it"
            )
        self.date_dropout = p
        self.jitter = s
        self.time_shift = time_shift
        self.time_mask = f

    @property
    def active(self) -> bool:
        """Whether any transformation is on."""
        return (self.date_dropout > 0 or self.jitter > 0 or self.time_shift > 0
                or self.time_mask > 0)

    def forward(self, x: Tensor, days: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Augment a batch in training mode; return it unchanged in eval mode.

        Args:
            x: ``(B, T, C)`` float32, series normalised by the store statistics.
            days: ``(B, T)`` int64 or float, days since the reference date.
            mask: ``(B, T)`` bool, True = valid observation.

        Returns:
            ``(x, days, mask)`` of the same shapes and dtypes: dates dropped first, then a
            block of dates masked, ``x`` jittered at the remaining valid dates, and the
            days shifted.

        Raises:
            ValueError: if ``mask`` is not a ``(B, T)`` bool tensor matching ``x`` and
                ``days``.
        """
        if not self.training or not self.active:
            return x, days, mask
        if (
            mask.dtype != torch.bool
            or x.ndim != 3
            or tuple(mask.shape) != tuple(x.shape[:2])
            or tuple(days.shape) != tuple(x.shape[:2])
        ):
            raise ValueError(
                f"SeriesAugmentation: expected x (B, T, C), days and mask (B, T) with a bool "
                f"mask; got x {tuple(x.shape)}, days {tuple(days.shape)}, mask "
                f"{tuple(mask.shape)} {mask.dtype}"
            )
        mask = drop_dates(mask, self.date_dropout)
        mask = mask_block(mask, self.time_mask)
        x = jitter(x, mask, self.jitter)
        days = shift_days(days, self.time_shift)
        return x, days, mask

    def extra_repr(self) -> str:
        """The strengths, for ``print(model)``."""
        return (
            f"date_dropout={self.date_dropout}, jitter={self.jitter}, "
            f"time_shift={self.time_shift}, time_mask={self.time_mask}"
        )
