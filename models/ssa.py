"""One-layer self-attention encoder for pixel time series.

Counterpart of iota2's ``SimpleSelfAttentionClassifier`` deep-learning network: the
smallest attention model, a single self-attention layer over the acquisition dates
(scaled dot-product multi-head attention, Vaswani et al. 2017, "Attention is all you
need", NeurIPS), with the sinusoidal encoding of the day offset used by the L-TAE
(:func:`models.ltae.positional_encoding`, Garnot & Landrieu 2020) in place of the
sequence index. The layer layout and defaults below are i2dl's (they were not copied
from iota2's source). The classifier is this encoder followed by
``ClassifierHead(d_model, K, hidden=[64], batch_norm=False, dropout=0.2)``
(:class:`models.head.ClassifierHead`).

Unlike :class:`models.MLP` (configs ``mlp`` and ``ann``) and :class:`models.TempCNN`,
this network reads the raw (not gap-filled) series: invalid dates are excluded from the
attention and from the pooling, and it accepts any number of dates ``T`` and irregular
acquisition days.

Dimension names: ``B`` batch (pixels), ``T`` dates, ``C`` input channels, ``K`` classes,
``D`` model width (``d_model``), ``H`` heads (``n_head``).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from i2dl.errors import ConfigError
from models.layers import (
    check_dropout,
    check_forward_inputs,
    check_period,
    check_positive_int,
    zero_invalid,
)
from models.ltae import positional_encoding

log = logging.getLogger(__name__)

__all__ = ["SimpleSelfAttention"]


class SimpleSelfAttention(nn.Module):
    """Single self-attention layer over dates and masked mean pooling.

    Pipeline per pixel:

    1. ``Linear(C, D)`` of each date plus the sinusoidal encoding of its day offset
       (:func:`models.ltae.positional_encoding` with one head and period ``period``);
    2. one ``nn.MultiheadAttention(D, H)`` layer, every date attending to every valid
       date (``key_padding_mask = ~mask``); residual connection and ``LayerNorm(D)``
       (post-norm, as in Vaswani et al. 2017);
    3. mean over the valid dates only, ``(B, T, D) -> (B, D)``: the output, of width
       ``out_dim = d_model``.

    i2dl's classifier adds the head ``Linear(D, 64) -> ReLU -> Dropout(0.2) ->
    Linear(64, K)``, i.e. ``ClassifierHead(out_dim, K, hidden=[64], batch_norm=False,
    dropout=0.2)``.

    Masking: invalid dates are masked as keys (no date attends to them) and left out of
    the pooling, and their values and days are zeroed first, so whatever they hold (NaN
    included) has no effect on the output. A pixel without any valid date gets a zero
    pooled vector (its key mask row is cleared so that the attention softmax stays
    finite), hence finite logits that depend on the head's biases only; treat such
    pixels as nodata.

    Parameter count of the default config (``d_model=64, n_head=4``): ``(C*64 + 64)``
    projection + ``4*64*64 + 4*64`` attention (in- and out-projections) + ``2*64``
    LayerNorm, i.e. 16,896 for ``C=1`` and 17,024 for ``C=3``; with the default head
    ``(64*64 + 64) + (64*K + K)``, 21,381 for ``T=68, C=1, K=5`` and 22,029 for
    ``T=149, C=3, K=13`` (Formosat-2). It does not depend on ``T``.

    Attributes:
        out_dim: width ``D`` of the output features, ``d_model``.
    """

    def __init__(
        self,
        in_channels: int,
        n_dates: int | None = None,
        d_model: int = 64,
        n_head: int = 4,
        attention_dropout: float = 0.0,
        period: float = 1000.0,
    ) -> None:
        """Build the encoder.

        Args:
            in_channels: input channels ``C`` per date (bands and/or indices).
            n_dates: number of dates ``T`` of the training series; only validated and
                recorded, since the network accepts any ``T``.
            d_model: model width ``D``, the output width; a multiple of ``n_head``.
            n_head: number of attention heads ``H``.
            attention_dropout: dropout probability on the attention weights, in ``[0, 1)``
                (``nn.MultiheadAttention``'s ``dropout``, training mode only; 0.1 in
                ``configs/model/ssa.yaml``, as the Transformer of Vaswani et al. 2017 and
                the L-TAE reference implementation).
            period: period of the sinusoidal positional encoding, in days (1000, as in
                the L-TAE paper; also ``period`` in :class:`models.LTAE`).

        Raises:
            i2dl.errors.ConfigError: (a ``ValueError``) on a non-positive or non-int size,
                ``d_model % n_head != 0``, ``attention_dropout`` outside ``[0, 1)`` or
                ``period <= 0``.
        """
        super().__init__()
        owner = type(self).__name__
        check_positive_int(owner, "in_channels", in_channels)
        if n_dates is not None:
            check_positive_int(owner, "n_dates", n_dates)
        check_positive_int(owner, "d_model", d_model)
        check_positive_int(owner, "n_head", n_head)
        if d_model % n_head != 0:
            raise ConfigError(
                f"{owner}: d_model={d_model} must be divisible by n_head={n_head}; choose "
                f"d_model as a multiple of n_head (e.g. {n_head * max(1, d_model // n_head)})"
            )
        p_att = check_dropout(owner, attention_dropout, "attention_dropout")
        period_f = check_period(owner, period)

        self.in_channels = in_channels
        self.n_dates = n_dates
        self.d_model = d_model
        self.n_head = n_head
        self.period = period_f
        self.out_dim: int = d_model

        self.inproj = nn.Linear(in_channels, d_model)
        self.attention = nn.MultiheadAttention(d_model, n_head, dropout=p_att, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        log.debug(
            "%s: C=%d d_model=%d n_head=%d, %d parameters",
            owner,
            in_channels,
            d_model,
            n_head,
            sum(q.numel() for q in self.parameters()),
        )

    def forward(self, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
        """Encode a batch of pixel time series.

        Args:
            x: ``(B, T, C)`` float32, normalised features (unitless); values at invalid
                dates are ignored.
            days: ``(B, T)`` int64 or float, days since the reference date (any spacing);
                days of invalid dates are ignored.
            mask: ``(B, T)`` bool, True = valid observation.

        Returns:
            ``(B, D)`` float32 features, ``D = out_dim = d_model``; zeros for a pixel
            without any valid date.

        Raises:
            ValueError: if ``x`` is not ``(B, T, in_channels)`` floating point, or
                ``days``/``mask`` is not ``(B, T)``, or ``mask`` is not bool.
        """
        check_forward_inputs(type(self).__name__, x, days, mask, self.in_channels)
        x = zero_invalid(x.float(), mask)
        days = torch.where(mask, days, torch.zeros((), dtype=days.dtype, device=days.device))

        z = self.inproj(x) + positional_encoding(days, self.d_model, 1, self.period)  # (B,T,D)
        any_valid = mask.any(dim=1, keepdim=True)  # (B, 1)
        # A row of key_padding_mask that is all True makes the softmax NaN: clear it for
        # all-invalid pixels (their pooled vector is zeroed below anyway).
        key_padding_mask = ~mask & any_valid  # (B, T), True = ignore this key
        att, _ = self.attention(z, z, z, key_padding_mask=key_padding_mask, need_weights=False)
        z = self.norm(z + att)  # (B, T, D)

        weights = mask.to(z.dtype).unsqueeze(-1)  # (B, T, 1)
        count = weights.sum(dim=1).clamp(min=1.0)  # (B, 1)
        return (z * weights).sum(dim=1) / count  # (B, D); zeros without valid dates
