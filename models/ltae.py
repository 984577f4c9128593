"""Lightweight Temporal Attention Encoder (L-TAE) for pixel time series.

Source: V. Sainte Fare Garnot and L. Landrieu, "Lightweight Temporal Self-Attention for
Classifying Satellite Images Time Series", Advanced Analytics and Learning on Temporal
Data (AALTD), 2020, arXiv:2007.00586.

The paper pairs the L-TAE with a pixel-set encoder; here it is applied to a single pixel
series: each date of the series is one vector of ``C`` channels (spectral bands and/or
indices), so the pixel-set encoder is replaced by a per-date linear projection (the
paper's 1x1 convolution "inconv"). :class:`LTAE` is the encoder, up to the paper's
MLP and output LayerNorm; the paper's decoder MLP is a :class:`models.head.ClassifierHead`
(``hidden=[64, 32]``, batch norm, no dropout).

Dimension names used in the docstrings: ``B`` batch (pixels), ``T`` dates, ``C`` input
channels, ``K`` classes, ``H`` heads (``n_head``), ``D`` model width (``d_model``).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from i2dl.errors import ConfigError
from models.layers import (
    check_dropout,
    check_forward_inputs,
    check_period,
    check_positive_int,
    check_widths,
    dense_block,
    gapfilled,
)
from models.ltae_infer import forward_eval as _forward_eval_fast
from models.ltae_infer import supports as _fast_eval_supported

log = logging.getLogger(__name__)

__all__ = ["LTAE", "positional_encoding"]


def _sinusoid_table(days: Tensor, d_h: int, period: float) -> Tensor:
    """``(N,)`` days -> ``(N, d_h)`` float32 sinusoids (see :func:`positional_encoding`).

    Angles are computed in float64 (days can reach thousands, where float32 ``sin`` loses
    digits); callers pass distinct values only, so this is never a per-pixel float64 pass.
    """
    i = torch.arange(d_h, device=days.device, dtype=torch.float64)
    # Denominators in float64: period**(...) spans many orders of magnitude.
    denom = torch.pow(torch.tensor(period, dtype=torch.float64, device=days.device),
                      2.0 * torch.div(i, 2, rounding_mode="floor") / d_h)
    angle = days.to(torch.float64).unsqueeze(-1) / denom  # (N, d_h)
    table = torch.where(
        (torch.arange(d_h, device=days.device) % 2 == 0), torch.sin(angle), torch.cos(angle)
    )
    return table.to(torch.float32)


@functools.lru_cache(maxsize=32)
def _shared_table(days: tuple[float, ...], d_h: int, period: float, device: torch.device) -> Tensor:
    """``(T, d_h)`` float32 table of one date grid, cached per (days, width, period, device).

    Built outside inference mode so that the cached tensor can also serve training.
    The returned tensor is shared: never modify it in place.
    """
    with torch.inference_mode(False), torch.no_grad():
        return _sinusoid_table(torch.tensor(days, dtype=torch.float64, device=device), d_h, period)


def positional_encoding(days: Tensor, d_model: int, n_head: int, period: float = 1000.0) -> Tensor:
    """Sinusoidal encoding of acquisition days, shared by all attention heads.

    For a per-head width ``d_h = d_model // n_head`` and a channel ``i`` in ``[0, d_h)``,
    ``angle = days / period ** (2 * (i // 2) / d_h)``; channel ``i`` holds ``sin(angle)``
    when ``i`` is even and ``cos(angle)`` when it is odd. The ``d_h``-wide table is
    repeated ``n_head`` times along the last dimension to width ``d_model``, so every head
    sees the same encoding of time (Garnot & Landrieu 2020, Sec. 3, after Vaswani et al.
    2017, "Attention is all you need", with the day offset in place of the sequence
    index). The angles are computed in float64 once per distinct day value, then cast.

    Args:
        days: ``(B, T)`` or ``(T,)`` int or float tensor, days since the reference date
            (any values, irregular spacing allowed).
        d_model: model width ``D``; must be a positive multiple of ``n_head``.
        n_head: number of heads ``H``.
        period: period of the sinusoids, in days (named ``T`` in the paper, 1000).

    Returns:
        ``(B, T, D)`` (or ``(T, D)`` for 1-D ``days``) float32 tensor on the device of
        ``days``, values in ``[-1, 1]``.

    Raises:
        ValueError: if ``days`` is not 1-D or 2-D, or ``d_model`` is not a positive
            multiple of ``n_head``, or ``period`` is not positive.
    """
    if days.ndim not in (1, 2):
        raise ValueError(
            f"positional_encoding: `days` must have shape (B, T) or (T,), got {tuple(days.shape)}"
        )
    if n_head <= 0 or d_model <= 0 or d_model % n_head != 0:
        raise ValueError(
            f"positional_encoding: d_model={d_model} must be a positive multiple of "
            f"n_head={n_head}"
        )
    if not period > 0:
        raise ValueError(f"positional_encoding: period must be > 0, got {period}")
    values, inverse = torch.unique(days, return_inverse=True)
    table = _sinusoid_table(values, d_model // n_head, period)[inverse]  # (..., T, d_h)
    return table.repeat(*([1] * (table.ndim - 1)), n_head)  # (..., T, D)


class LTAE(nn.Module):
    """L-TAE encoder for single-pixel satellite image time series.

    Pipeline per pixel (Garnot & Landrieu 2020, "Lightweight Temporal Self-Attention for
    Classifying Satellite Images Time Series", AALTD 2020, Fig. 1 and Sec. 3):

    1. optionally ``LayerNorm(C)`` of each date (``input_layernorm``, off by default,
       see below); optionally a per-date MLP ``input_mlp`` (Linear + BatchNorm1d + ReLU
       per width, on the valid dates only: the pixel encoder of sits' ``sits_lighttae``,
       see below), or before it a temporal convolution ``temporal_conv`` of the
       gap-filled series (see below); linear projection to ``D`` ("inconv"),
       ``LayerNorm(D)``;
    2. plus the sinusoidal encoding of the day offset (:func:`positional_encoding`);
    3. ``H`` heads, each with one learned master query ``q_h`` of size ``d_k``; keys are
       ``Linear(D, H * d_k)`` of the encoded dates; the attention of head ``h`` over dates
       is ``softmax_t(q_h . k_{h,t} / sqrt(d_k))`` with invalid dates excluded, followed
       in training mode by dropout of rate ``attention_dropout`` on these weights; the
       values of head ``h`` are its own group of ``D / H`` channels of the encoded dates
       (no value projection); the heads' weighted sums are concatenated to a ``(B, D)``
       vector;
    4. MLP ``mlp`` (Linear + BatchNorm1d + ReLU per layer), dropout, ``LayerNorm``:
       the output, ``(B, out_dim)`` with ``out_dim = mlp[-1]``.

    The paper's decoder (Linear + BatchNorm1d + ReLU per hidden width, then a final
    Linear to ``K`` logits) is ``ClassifierHead(out_dim, K, hidden=[64, 32],
    batch_norm=True, dropout=0.0)`` (:class:`models.head.ClassifierHead`). Building this
    encoder and then that head under the same torch seed gives the same initial weights
    as the former single-module LTAE with ``decoder=[64, 32]``.

    Masking: dates with ``mask == False`` get a score of ``-inf`` before the softmax, and
    their input values and days are zeroed beforehand, so whatever they hold (NaN
    included) has no effect on the output. A pixel whose dates are all invalid gets
    attention weights that are all zero, so its output is finite but depends only on the
    network's biases and the days' encoding; callers should treat such pixels as nodata.

    Input normalisation: the paper's code normalises each date's input vector with
    ``LayerNorm(C)``; there the input is a 128-wide pixel-set embedding. On raw pixel
    features this removes each date's mean and spread across channels (the brightness
    of a date), and with ``C == 1`` it removes the input entirely (the output would then
    depend on the dates only). The inputs are expected already normalised per channel
    by the data pipeline, so this layer is off by default; ``input_layernorm=True``
    restores the paper's layer.

    Per-date input MLP (``input_mlp``): in the paper the attention reads a 128-wide
    embedding of each date made by the pixel-set encoder (an MLP over the pixels of a
    parcel, Garnot et al. 2020, CVPR, "Satellite image time series classification with
    pixel-set encoders and temporal self-attention"). On a single pixel there is no set,
    but the per-date MLP is kept by sits' ``sits_lighttae`` (e-sensing/sits, widths
    32 -> 64 -> 128, BatchNorm and ReLU). Without it, one linear layer from ``C`` channels
    followed by the per-date ``LayerNorm(D)`` keeps little of each date: with ``C == 1``
    the LayerNorm of ``w x + b`` takes only a few distinct shapes (the sign and offset of
    ``x``), so the attention pools dates it can barely tell apart (docs/results.md,
    "Why the LTAE lost"). The MLP runs on the valid dates only, so its BatchNorm
    statistics never include the zeros of masked dates.

    Temporal convolution (``temporal_conv``): the attention pools a weighted average of
    per-date vectors, whose only notion of order is the date encoding; on a single pixel
    series the shape of the curve around a date (a rise, a peak, a harvest drop) is what
    tells crops apart, and TempCNN (Pelletier et al. 2019), which reads it with 1-D
    convolutions over time, beats the plain LTAE on every pixel table (docs/results.md).
    With ``temporal_conv=[F1, F2, ...]`` the series is gap-filled (linear interpolation of
    invalid dates, as TempCNN) and passed through ``Conv1d(kernel_size=conv_kernel,
    padding="same") + BatchNorm1d + ReLU`` per width, so that each date's vector also
    describes its neighbourhood in time (a convolutional embedding before attention, as
    in Foumani et al. 2024, "Improving position encoding of transformers for multivariate
    time series classification", DMKD, ConvTran). Invalid dates still get no attention.

    Attention dropout: the reference implementation (``ScaledDotProductAttention`` of
    github.com/VSainteuf/lightweight-temporal-attention-pytorch, ``attn_dropout=0.1``)
    applies ``nn.Dropout`` to the attention weights after the softmax; a dropped weight
    is zeroed and the others are scaled by ``1 / (1 - p)`` (so a row no longer sums to 1
    in training mode). The constructor default is 0 (the network i2dl had before this
    option); ``configs/model/ltae.yaml`` sets the reference's 0.1. Eval mode is exact.

    Attributes:
        out_dim: width ``D`` of the output features, ``mlp[-1]``.
        attention_weights: ``(B, H, T)`` float32 detached tensor, the attention of the
            last forward call before attention dropout (rows sum to 1, or 0 for an
            all-invalid pixel); ``None`` before the first call.

    Note:
        BatchNorm1d layers need more than one sample per batch in training mode
        (PyTorch raises ValueError on a training batch of size 1).
    """

    def __init__(
        self,
        in_channels: int,
        d_model: int = 256,
        n_head: int = 16,
        d_k: int = 8,
        mlp: Sequence[int] = (256, 128),
        dropout: float = 0.2,
        period: float = 1000.0,
        input_layernorm: bool = False,
        attention_dropout: float = 0.0,
        projection_norm: str | None = "date",
        input_mlp: Sequence[int] | None = None,
        temporal_conv: Sequence[int] | None = None,
        conv_kernel: int = 5,
        n_dates: int | None = None,
        attend_gapfilled: bool = False,
    ) -> None:
        """Build the encoder.

        Args:
            in_channels: number of input channels ``C`` per date.
            d_model: model width ``D`` after the input projection; multiple of ``n_head``.
            n_head: number of attention heads ``H``.
            d_k: width of the master queries and keys per head.
            mlp: widths of the MLP after attention; ``mlp[0]`` must equal ``d_model``,
                ``mlp[-1]`` is the output width ``out_dim``.
            dropout: dropout probability after the MLP, in ``[0, 1)``.
            period: period of the sinusoidal positional encoding, in days (named ``T``
                in the paper, 1000).
            input_layernorm: apply the paper's per-date ``LayerNorm(C)`` to ``x`` before
                the projection. Off by default: it discards each date's mean and scale
                across channels, and all of the input when ``C == 1``.
            attention_dropout: dropout probability on the attention weights, in
                ``[0, 1)``; 0.1 in the reference implementation, 0 by default here.
            projection_norm: normalisation of the projected series ``(B, T, D)``:
                ``"date"``, LayerNorm over D at each date; ``"series"``, over the valid
                ``(t, d)`` of a pixel with a learnt scale and shift per channel;
                ``"reference"``, the same with a scale and shift per date and channel
                (the reference's ``LayerNorm((d_model, T))``; needs ``n_dates``); None.
            input_mlp: widths of the per-date MLP applied to each valid date before the
                projection (Linear + BatchNorm1d + ReLU each, e.g. ``[32, 64, 128]`` as
                sits' ``sits_lighttae``); None or empty: no MLP (the projection reads the
                ``C`` channels directly).
            temporal_conv: widths of the 1-D convolutions over time applied to the
                gap-filled series first (Conv1d + BatchNorm1d + ReLU each); None or empty:
                none.
            conv_kernel: kernel size (dates) of those convolutions, odd, >= 1.
            n_dates: number of dates ``T`` of the store (set by the model builder); used
                only by ``projection_norm="reference"``, which then needs series of
                exactly ``T`` dates.
            attend_gapfilled: gap-fill the series first (linear interpolation of the
                invalid dates) and attend over every date of the grid, as iota2 gives its
                classifiers gap-filled series; False: attend over the valid dates only
                (the paper). A pixel without any valid date stays all-invalid.

        Raises:
            i2dl.errors.ConfigError: (a ``ValueError``) on a non-positive or non-int size
                or width, ``d_model % n_head != 0``, ``mlp[0] != d_model``, a dropout
                outside ``[0, 1)``, ``period`` not > 0, an unknown ``projection_norm``,
                or an even ``conv_kernel``.
        """
        super().__init__()
        mlp, p, p_att, period_f = _checked_args(
            in_channels, d_model, n_head, d_k, mlp, dropout, period, input_layernorm,
            attention_dropout, projection_norm, n_dates)
        self.in_channels, self.d_model, self.n_head, self.d_k = in_channels, d_model, n_head, d_k
        self.period, self.input_layernorm = period_f, bool(input_layernorm)
        self.out_dim: int = mlp[-1]
        self.in_norm: nn.Module = nn.LayerNorm(in_channels) if input_layernorm else nn.Identity()
        self.temporal_conv, self.input_mlp, c_date = _date_encoders(
            in_channels, temporal_conv, conv_kernel, input_mlp)
        self.inconv = nn.Linear(c_date, d_model)
        self.projection_norm = projection_norm
        self.in_out_norm: nn.Module = (
            nn.LayerNorm(d_model) if projection_norm == "date" else nn.Identity()
        )
        # affine of the "series" normalisation, per channel (D,) or for "reference" per date
        # and channel (T, D); ones/zeros: identity at init
        shape = {"series": (d_model,), "reference": (n_dates or 0, d_model)}.get(
            str(projection_norm))
        self.series_scale: nn.Parameter | None
        self.series_shift: nn.Parameter | None
        self.series_scale, self.series_shift = (
            (nn.Parameter(torch.ones(shape)), nn.Parameter(torch.zeros(shape))) if shape
            else (None, None))
        self.n_dates = n_dates
        self.attend_gapfilled = bool(attend_gapfilled)
        self.query = nn.Parameter(torch.empty(n_head, d_k))
        nn.init.normal_(self.query, mean=0.0, std=math.sqrt(2.0 / d_k))
        self.key = nn.Linear(d_model, n_head * d_k)
        nn.init.normal_(self.key.weight, mean=0.0, std=math.sqrt(2.0 / d_k))

        self.mlp = nn.Sequential(*(  # Linear, BatchNorm1d, ReLU per layer
            m for w_in, w_out in zip(mlp[:-1], mlp[1:], strict=True)
            for m in dense_block(w_in, w_out, batch_norm=True, dropout=0.0)))
        self.dropout = nn.Dropout(p)
        self.out_norm = nn.LayerNorm(mlp[-1])
        self.attention_dropout = nn.Dropout(p_att)  # on the (B, H, T) attention weights
        self.attention_weights: Tensor | None = None
        log.debug("LTAE: C=%d D=%d H=%d d_k=%d mlp=%s period=%s, %d parameters", in_channels,
                  d_model, n_head, d_k, mlp, period_f, sum(q.numel() for q in self.parameters()))

    def forward(self, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
        """Encode a batch of pixel time series.

        Args:
            x: ``(B, T, C)`` float32, normalised reflectances / spectral indices
                (unitless); values at invalid dates are ignored.
            days: ``(B, T)`` int64 or float, days since the reference date (finite at
                valid dates); an expanded ``(T,)`` grid (``days.expand(B, -1)``) is the
                cheapest form when all pixels share their dates.
            mask: ``(B, T)`` bool, True where the observation is valid.

        Returns:
            ``(B, D)`` float32 features, ``D = out_dim = mlp[-1]``. Also sets
            :attr:`attention_weights` to the ``(B, H, T)`` attention of this call.

        Note:
            Cost: the date encoding is computed once per date grid (cached) and the
            attention from the ``C`` input channels (:meth:`_attend`), so the work and
            memory per pixel are ``O(T * (C + H) + D)``, with no ``(B, T, D)`` tensor. Under
            autocast the attention stays float32; only the MLP follows the autocast dtype.
            In eval mode the same network runs :mod:`models.ltae_infer`'s kernels (map
            inference: BatchNorm folded, channels-last convolutions, fewer passes).

        Raises:
            ValueError: if ``x`` is not 3-D or its channel count differs from
                ``in_channels``, if ``days`` or ``mask`` is not of shape ``(B, T)``, if
                ``x`` is not floating point or ``mask`` is not bool.
        """
        check_forward_inputs("LTAE", x, days, mask, self.in_channels)
        if not self.training and _fast_eval_supported(self):  # same network, fewer passes
            return _forward_eval_fast(self, x, days, mask)
        if self.attend_gapfilled:  # every date of a pixel with any valid date
            x = gapfilled(x, days, mask)
            mask = mask.any(dim=1, keepdim=True).expand_as(mask)
        valid = mask.unsqueeze(-1)  # (B, T, 1)
        x = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
        z = self.in_norm(x.float())  # (B, T, C)
        if self.temporal_conv is not None:  # convolution of the gap-filled series
            z = self.temporal_conv(gapfilled(z, days, mask).transpose(1, 2)).transpose(1, 2)
            z = torch.where(valid, z, torch.zeros((), dtype=z.dtype, device=z.device))
        if self.input_mlp is not None:  # per-date MLP on the valid dates only
            enc = self.input_mlp(z[mask])  # (N_valid, C')
            z = z.new_zeros(*mask.shape, enc.shape[-1]).index_put((mask,), enc)  # (B, T, C')
        table = self.date_table(days, mask)  # (T, D/H) shared, or (B, T, D/H)
        with torch.autocast(x.device.type, enabled=False):  # small float32 terms, see _attend
            out = self._attend(z, table, mask)  # (B, D)
        return self.out_norm(self.dropout(self.mlp(out)))  # (B, out_dim)

    def date_table(self, days: Tensor, mask: Tensor) -> Tensor:
        """Encoding of the days, one head wide: ``(T, D/H)`` or ``(B, T, D/H)`` float32.

        The sinusoidal encoding of the acquisition day (Vaswani et al. 2017, used by
        Garnot & Landrieu 2020 on the day offsets), period :attr:`period` days; the same
        table serves every head. Also read by :func:`models.ltae_infer.forward_eval`.

        Args:
            days: ``(B, T)`` int or float, day offsets of the acquisition dates.
            mask: ``(B, T)`` bool, True where the observation is valid.

        When every row of ``days`` is the same (map inference, store batches), the table of
        that one date grid is computed once and cached (:func:`_shared_table`); the days of
        invalid dates then keep their value instead of 0, which changes nothing: those
        dates get zero attention (non-finite float days are replaced by 0 so that a NaN
        cannot leak through ``0 * NaN``). Otherwise each row's days, zeroed at invalid
        dates, are looked up in a table of their distinct values.
        """
        b = days.shape[0]
        d_h = self.d_model // self.n_head
        if b > 0 and (
            b == 1 or days.stride(0) == 0 or torch.equal(days, days[:1].expand_as(days))
        ):
            row = days[0]
            if row.is_floating_point():
                row = torch.where(torch.isfinite(row), row, torch.zeros((), dtype=row.dtype,
                                                                        device=row.device))
            return _shared_table(tuple(row.tolist()), d_h, self.period, days.device)
        days = torch.where(mask, days, torch.zeros((), dtype=days.dtype, device=days.device))
        values, inverse = torch.unique(days, return_inverse=True)
        return _sinusoid_table(values, d_h, self.period)[inverse]  # (B, T, d_h)

    def _attend(self, x: Tensor, table: Tensor, mask: Tensor) -> Tensor:
        """Attention pooling of steps 1-3, without any ``(B, T, D)`` tensor.

        ``LayerNorm(inconv(x))`` is ``z = rs * (Wc x + bc) * g + beta`` where ``Wc``, ``bc``
        are the projection's weight and bias centred over the ``D`` outputs and
        ``rs = 1 / sqrt(var + eps)`` with ``var = |Wc x + bc|^2 / D``, a quadratic form in
        ``x``. The scores ``q_h . k_{h,t}`` are a linear map of ``z`` with ``H`` outputs (the
        master query folded into the key weights), and the pooled values
        ``sum_t a_{h,t} z_{t,h}`` are linear in ``z``: both are computed from ``[rs x, rs,
        1]`` (``C + 2`` numbers per date) and the date table, so the work per date is
        ``O(C * (C + H))`` instead of ``O(D * H * d_k)`` and nothing of width ``D`` is made
        per date. The result equals the direct computation up to float32 rounding
        (tests/test_ltae_fast.py). When ``in_out_norm`` is not a plain ``LayerNorm(D)``
        (``projection_norm`` ``"series"`` or None), the projected dates are computed
        directly (same scores and pooling, with a ``(B, T, D)`` tensor).

        Args:
            x: ``(B, T, C)`` float32, zero at invalid dates, after ``in_norm``.
            table: ``(T, D/H)`` or ``(B, T, D/H)`` float32, from :meth:`date_table`.
            mask: ``(B, T)`` bool, True where the observation is valid.

        Returns:
            ``(B, D)`` float32, the heads' concatenated weighted sums; sets
            :attr:`attention_weights`.
        """
        B, T, C = x.shape
        H, D = self.n_head, self.d_model
        d_h = D // H
        norm = self.in_out_norm
        # master queries folded into the key projection, scaled: (H, D) and (H,)
        wq = torch.einsum("hj,hjd->hd", self.query, self.key.weight.view(H, self.d_k, D))
        wq = wq / math.sqrt(self.d_k)
        qb = (self.query * self.key.bias.view(H, self.d_k)).sum(-1) / math.sqrt(self.d_k)
        # the date table is the same for every head: its score weights, (H, d_h)
        scores_pe = (table @ wq.view(H, H, d_h).sum(1).T).transpose(-1, -2)  # ([B,] H, T)
        fast = (type(norm) is nn.LayerNorm and tuple(norm.normalized_shape) == (D,)
                and type(self.inconv) is nn.Linear and self.inconv.bias is not None)
        if fast:
            assert isinstance(norm, nn.LayerNorm)  # checked by `fast`
            ones = torch.ones(D, dtype=x.dtype, device=x.device)
            g = norm.weight if norm.weight is not None else ones
            beta = norm.bias if norm.bias is not None else torch.zeros_like(ones)
            wc = self.inconv.weight - self.inconv.weight.mean(0, keepdim=True)  # (D, C)
            bc = self.inconv.bias - self.inconv.bias.mean()  # (D,)
            wcb = torch.cat([wc, bc[:, None]], 1)  # (D, C+1)
            gram = wcb.T @ wcb / D  # (C+1, C+1): var = [x, 1] gram [x, 1]
            xg = torch.addmm(gram[C:, :C].mul(2.0), x.reshape(-1, C), gram[:C, :C])  # (BT, C)
            var = (xg.view(B, T, C) * x).sum(-1) + gram[C, C]  # (B, T)
            rs = torch.rsqrt(var.clamp_min(0.0) + norm.eps).unsqueeze(-1)  # (B, T, 1)
            xt = torch.cat([x * rs, rs, torch.ones_like(rs)], -1)  # (B, T, C+2)
            wqg = wq * g  # (H, D)
            w_s = torch.cat([wqg @ wc, (wqg @ bc)[:, None], (wq @ beta + qb)[:, None]], 1)
            scores = torch.baddbmm(scores_pe, w_s.expand(B, H, C + 2), xt.transpose(1, 2))
        else:
            z = norm(self.inconv(x))  # (B, T, D)
            if self.series_scale is not None:  # projection_norm="series" or "reference"
                z = self._series_norm(z, mask.unsqueeze(-1))
            scores = torch.baddbmm(scores_pe, (wq).expand(B, H, D), z.transpose(1, 2))
            scores = scores + qb.view(1, H, 1)  # (B, H, T)
        # An all-invalid pixel would give softmax(-inf, ..., -inf) = NaN: its scores stay
        # finite and its weights are zeroed (no NaN in the forward or backward pass).
        any_valid = mask.any(dim=1, keepdim=True)  # (B, 1)
        scores.masked_fill_((~mask & any_valid).unsqueeze(1), float("-inf"))  # fresh tensor
        attn = torch.softmax(scores, dim=-1) * any_valid.unsqueeze(-1)  # (B, H, T)
        self.attention_weights = attn.detach()
        attn = self.attention_dropout(attn)  # identity in eval mode or with p = 0
        pooled_pe = attn @ table  # (B, H, d_h)
        if not fast:
            pooled = torch.bmm(attn, z).view(B, H, H, d_h).diagonal(0, 1, 2)  # (B, d_h, H)
            return (pooled.transpose(1, 2) + pooled_pe).reshape(B, D)
        xa = torch.bmm(attn, xt)  # (B, H, C+2): sums of a * rs * x, a * rs, a
        g_h, b_h = (g * bc).view(H, 1, d_h), beta.view(H, 1, d_h)
        w_v = torch.cat([(g[:, None] * wc).view(H, d_h, C).transpose(1, 2), g_h, b_h], 1)
        pooled = torch.baddbmm(pooled_pe.transpose(0, 1), xa.transpose(0, 1), w_v)  # (H, B, d_h)
        return pooled.transpose(0, 1).reshape(B, D)

    def _series_norm(self, z: Tensor, valid: Tensor, eps: float = 1e-5) -> Tensor:
        """Normalise each pixel's ``(T, D)`` projection over its valid dates and channels.

        Args:
            z: ``(B, T, D)`` projected series.
            valid: ``(B, T, 1)`` bool.
            eps: added to the variance.

        Returns:
            ``(B, T, D)``: ``(z - mean) / sqrt(var + eps) * scale + shift``, mean and var
            over the valid ``(t, d)`` of each pixel (a pixel with no valid date: 0).
        """
        if self.series_scale is not None and self.series_scale.ndim == 2 \
                and self.series_scale.shape[0] != z.shape[1]:
            raise ValueError(
                f"LTAE: this network (projection_norm='reference') was built for "
                f"T={self.series_scale.shape[0]} dates, got series of {z.shape[1]}")
        w = valid.to(z.dtype)  # (B, T, 1)
        n = (w.sum(dim=(1, 2), keepdim=True) * z.shape[-1]).clamp(min=1.0)  # (B, 1, 1)
        mean = (z * w).sum(dim=(1, 2), keepdim=True) / n
        var = (((z - mean) * w) ** 2).sum(dim=(1, 2), keepdim=True) / n
        assert self.series_scale is not None and self.series_shift is not None
        out = (z - mean) * torch.rsqrt(var + eps) * self.series_scale + self.series_shift
        return out * w


def _checked_args(
    in_channels: int, d_model: int, n_head: int, d_k: int, mlp: Sequence[int], dropout: float,
    period: float, input_layernorm: bool, attention_dropout: float,
    projection_norm: str | None, n_dates: int | None,
) -> tuple[list[int], float, float, float]:
    """Check the LTAE's arguments (see :class:`LTAE`).

    Returns:
        ``(mlp widths, dropout, attention dropout, period)`` as checked values.

    Raises:
        i2dl.errors.ConfigError: as listed by :class:`LTAE`.
    """
    if projection_norm not in ("date", "series", "reference", None):
        raise ConfigError(
            f"LTAE: projection_norm={projection_norm!r} must be 'date', 'series', "
            "'reference' or null"
        )
    if n_dates is not None:
        check_positive_int("LTAE", "n_dates", n_dates)
    if projection_norm == "reference" and n_dates is None:
        raise ConfigError(
            "LTAE: projection_norm='reference' learns a scale and shift per date and needs "
            "n_dates (a positive int, set from the sample store), got None"
        )
    for name, value in (
        ("in_channels", in_channels),
        ("d_model", d_model),
        ("n_head", n_head),
        ("d_k", d_k),
    ):
        check_positive_int("LTAE", name, value)
    if d_model % n_head != 0:
        raise ConfigError(
            f"LTAE: d_model={d_model} must be divisible by n_head={n_head}; "
            f"choose d_model as a multiple of n_head "
            f"(e.g. {n_head * max(1, d_model // n_head)})"
        )
    widths = check_widths("LTAE", "mlp", mlp, allow_empty=False)
    if widths[0] != d_model:
        raise ConfigError(
            f"LTAE: mlp[0]={widths[0]} must equal d_model={d_model} (the width of the "
            f"attention output); set mlp=[{d_model}, ...]"
        )
    p = check_dropout("LTAE", dropout)
    p_att = check_dropout("LTAE", attention_dropout, "attention_dropout")
    if in_channels == 1 and input_layernorm:
        log.warning(
            "LTAE: input_layernorm=True with in_channels=1 makes the output independent "
            "of x (LayerNorm over one channel is constant); use input_layernorm=False"
        )
    return widths, p, p_att, check_period("LTAE", period)


def _date_encoders(
    in_channels: int, temporal_conv: Sequence[int] | None, conv_kernel: int,
    input_mlp: Sequence[int] | None,
) -> tuple[nn.Sequential | None, nn.Sequential | None, int]:
    """The optional temporal convolution and per-date MLP before the LTAE's projection.

    Returns:
        ``(convolutions or None, MLP or None, channels of one date after them)``.

    Raises:
        i2dl.errors.ConfigError: a non-positive width, or ``conv_kernel`` not a positive
            odd int.
    """
    convs = check_widths("LTAE", "temporal_conv", temporal_conv or [], allow_empty=True)
    check_positive_int("LTAE", "conv_kernel", conv_kernel)
    if conv_kernel % 2 == 0:
        raise ConfigError(f"LTAE: conv_kernel={conv_kernel} must be odd (e.g. 5)")
    conv: nn.Sequential | None = None
    if convs:
        layers: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, *convs[:-1]], convs, strict=True):
            layers += [nn.Conv1d(c_in, c_out, conv_kernel, padding="same"),
                       nn.BatchNorm1d(c_out), nn.ReLU()]
        conv = nn.Sequential(*layers)
    c_date = convs[-1] if convs else in_channels  # channels of one date from here
    widths = check_widths("LTAE", "input_mlp", input_mlp or [], allow_empty=True)
    mlp: nn.Sequential | None = None
    if widths:
        blocks: list[nn.Module] = []
        for w_in, w_out in zip([c_date, *widths[:-1]], widths, strict=True):
            blocks += dense_block(w_in, w_out, batch_norm=True, dropout=0.0)
        mlp = nn.Sequential(*blocks)
    return conv, mlp, widths[-1] if widths else c_date
