"""Eval-mode kernels of the L-TAE (:class:`models.ltae.LTAE`): the same network, faster.

Used by :meth:`models.ltae.LTAE.forward` when the module is in eval mode (map inference,
validation); training mode never runs them. They compute what the training-mode code
computes, up to float32 rounding (tests/test_ltae_fast.py and
tests/test_infer_speed_paths.py compare):

- :func:`temporal_conv_eval`: the ``Conv1d + BatchNorm1d + ReLU`` blocks of
  ``temporal_conv`` with each BatchNorm folded into its convolution (running statistics,
  as in eval mode), run as a 2-D convolution on the channels-last ``(B, T, C)`` series, so
  that no ``(B, C, T)`` transposed copy is made (oneDNN's NWC layout);
- :func:`attend_eval`: the attention pooling of :meth:`models.ltae.LTAE._attend` (its
  ``fast`` branch: ``projection_norm="date"``) with one matrix product for the scores and
  the variances of all dates, instead of one small product per pixel and a concatenated
  ``(B, T, C + 2)`` copy.

Dimension names: ``B`` pixels, ``T`` dates, ``C`` channels of a date, ``H`` heads, ``D``
model width, ``F`` convolution filters.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from i2dl.features.gapfill import linear_gapfill
from models.layers import gapfilled, zero_invalid

# the encoder is typed Any: models.ltae imports this module, and importing it back (even
# for type checking only) is an import cycle (tests/test_architecture.py)
LTAE = Any


def _folded(conv: nn.Conv1d, bn: nn.Module | None) -> tuple[Tensor, Tensor]:
    """``(F, C, k)`` weight and ``(F,)`` bias of ``conv`` followed by ``bn`` in eval mode."""
    weight = conv.weight
    bias = conv.bias if conv.bias is not None else weight.new_zeros(weight.shape[0])
    if isinstance(bn, nn.BatchNorm1d):
        assert bn.running_var is not None and bn.running_mean is not None  # eval statistics
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        weight, bias = weight * scale[:, None, None], bias * scale + shift
    return weight, bias


def can_fold(convs: nn.Sequential) -> bool:
    """Whether :func:`temporal_conv_eval` can run ``convs``.

    True for ``Conv1d [BatchNorm1d] [ReLU]`` blocks with stride 1, odd kernels, ``same``
    zero padding and BatchNorm layers that keep running statistics.
    """
    for m in convs:
        if isinstance(m, nn.Conv1d):
            k = m.kernel_size[0]
            if m.stride != (1,) or m.dilation != (1,) or m.groups != 1 or k % 2 == 0 \
                    or m.padding_mode != "zeros" or m.padding not in ("same", (k // 2,)):
                return False
        elif isinstance(m, nn.BatchNorm1d):
            if not m.track_running_stats or m.running_var is None:
                return False
        elif not isinstance(m, nn.ReLU):
            return False
    return True


def temporal_conv_eval(convs: nn.Sequential, z: Tensor) -> Tensor:
    """The eval-mode ``temporal_conv`` blocks on a channels-last series.

    Args:
        convs: the LTAE's ``temporal_conv`` (:func:`can_fold` true), in eval mode.
        z: ``(B, T, C)`` float, the gap-filled series.

    Returns:
        ``(B, T, F)`` float, contiguous: what ``convs(z.transpose(1, 2)).transpose(1, 2)``
        gives in eval mode, up to float32 rounding.
    """
    layers = list(convs)
    y = z.transpose(1, 2).unsqueeze(2)  # (B, C, 1, T) view, NHWC memory
    for i, m in enumerate(layers):
        if isinstance(m, nn.Conv1d):
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            weight, bias = _folded(m, nxt)
            k = weight.shape[-1]
            y = F.conv2d(y.contiguous(memory_format=torch.channels_last),
                         weight.unsqueeze(2).contiguous(memory_format=torch.channels_last),
                         bias, padding=(0, k // 2))
        elif isinstance(m, nn.ReLU):
            y = torch.relu_(y) if not y.requires_grad else torch.relu(y)
    return y.squeeze(2).transpose(1, 2).contiguous()  # (B, T, F), no copy when NHWC


def attend_eval(enc: LTAE, x: Tensor, table: Tensor, mask: Tensor, uniform: bool) -> Tensor:
    """:meth:`models.ltae.LTAE._attend` (``projection_norm="date"``) with fewer passes.

    Scores, per head ``h`` and date ``t``: ``pe_{h,t} + rs_t (A_h . x_t + a1_h) + a2_h``
    with ``rs_t = 1 / sqrt(x_t' G x_t + 2 g . x_t + g0 + eps)`` (the LayerNorm's inverse
    spread; see ``_attend``); ``G x + 2 g`` and ``A x + a1`` come from one product. The
    pooled values are ``sum_t a_{h,t} rs_t x_t`` (one batched product), the sums of
    ``a rs`` and of ``a``, mapped by each head's weights.

    Args:
        enc: the LTAE (fast branch: LayerNorm(D) after a linear ``inconv`` with bias).
        x: ``(B, T, C)`` float32, zero at invalid dates.
        table: ``(T, D/H)`` float32 date table shared by all pixels.
        mask: ``(B, T)`` bool, True = valid.
        uniform: every row of ``mask`` is all True or all False (gap-filled attention):
            no date of a pixel with data is masked.

    Returns:
        ``(B, D)`` float32; sets ``enc.attention_weights`` ``(B, H, T)``.
    """
    B, T, C = x.shape
    H, D = enc.n_head, enc.d_model
    d_h = D // H
    norm = enc.in_out_norm
    assert isinstance(norm, nn.LayerNorm)  # fast branch only
    root = math.sqrt(enc.d_k)
    wq = torch.einsum("hj,hjd->hd", enc.query, enc.key.weight.view(H, enc.d_k, D)) / root
    qb = (enc.query * enc.key.bias.view(H, enc.d_k)).sum(-1) / root
    g = norm.weight if norm.weight is not None else x.new_ones(D)
    beta = norm.bias if norm.bias is not None else x.new_zeros(D)
    wc = enc.inconv.weight - enc.inconv.weight.mean(0, keepdim=True)  # (D, C)
    bc = enc.inconv.bias - enc.inconv.bias.mean()  # (D,)
    wcb = torch.cat([wc, bc[:, None]], 1)
    gram = wcb.T @ wcb / D  # (C+1, C+1)
    wqg = wq * g
    a_x, a1, a2 = wqg @ wc, wqg @ bc, wq @ beta + qb  # (H, C), (H,), (H,)
    pe = table @ wq.view(H, H, d_h).sum(1).T  # (T, H)
    # y = [G x + 2 g, A x + a1] for every date: (B, T, C + H)
    y = torch.addmm(torch.cat([2.0 * gram[C, :C], a1]), x.reshape(B * T, C),
                    torch.cat([gram[:C, :C], a_x.T], 1)).view(B, T, C + H)
    var = (y[..., :C] * x).sum(-1).add_(gram[C, C])  # (B, T)
    rs = torch.rsqrt(var.clamp_min_(0.0).add_(norm.eps))  # (B, T)
    scores = (y[..., C:] * rs.unsqueeze(-1)).add_(a2 + pe)  # (B, T, H)
    any_valid = mask.any(dim=1)  # (B,)
    if not uniform:
        scores.masked_fill_((~mask & any_valid[:, None]).unsqueeze(-1), float("-inf"))
    attn = torch.softmax(scores, dim=1).mul_(any_valid.view(B, 1, 1).to(scores.dtype))
    attn = attn.transpose(1, 2)  # (B, H, T) view
    enc.attention_weights = attn.detach()
    ar = attn * rs.unsqueeze(1)  # (B, H, T)
    xa = torch.bmm(ar, x)  # (B, H, C): sums of a rs x
    w_v = (g[:, None] * wc).view(H, d_h, C)  # (H, d_h, C)
    pooled = torch.einsum("bhc,hdc->bhd", xa, w_v)
    pooled += ar.sum(-1, keepdim=True) * (g * bc).view(H, d_h)
    pooled += attn.sum(-1, keepdim=True) * beta.view(H, d_h)
    pooled += attn @ table  # (B, H, d_h)
    return pooled.reshape(B, D)


def _gapfilled(x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
    """``gapfilled``; on one shared date grid without its zeroing pass (never read there)."""
    if x.shape[0] > 0 and (days.shape[0] == 1 or days.stride(0) == 0):
        return linear_gapfill(x.float(), days, mask)
    return gapfilled(x, days, mask)


def supports(enc: LTAE) -> bool:
    """Whether :func:`forward_eval` can run ``enc``.

    True for the ``fast`` branch of ``_attend`` (``projection_norm="date"``, a linear
    ``inconv`` with bias) with no or foldable (:func:`can_fold`) convolutions.
    """
    norm = enc.in_out_norm
    return (type(norm) is nn.LayerNorm and tuple(norm.normalized_shape) == (enc.d_model,)
            and type(enc.inconv) is nn.Linear and enc.inconv.bias is not None
            and (enc.temporal_conv is None or can_fold(enc.temporal_conv)))


def forward_eval(enc: LTAE, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
    """:meth:`models.ltae.LTAE.forward` in eval mode (``supports(enc)``), checked inputs.

    The same steps as the training-mode forward, with :func:`temporal_conv_eval` and
    :func:`attend_eval`; with ``attend_gapfilled`` the series is gap-filled once (the
    second gap-filling of the training-mode forward, before the convolutions, is then an
    identity: every date of a pixel with data is valid).

    Args:
        enc: the LTAE, in eval mode.
        x: ``(B, T, C)`` float, normalised values; ignored at invalid dates.
        days: ``(B, T)`` int64 or float, days since the reference date.
        mask: ``(B, T)`` bool, True = valid observation.

    Returns:
        ``(B, out_dim)`` float32 features.
    """
    uniform = enc.attend_gapfilled
    if uniform:  # every date of a pixel with any valid date
        x = _gapfilled(x, days, mask)
        mask = mask.any(dim=1, keepdim=True).expand_as(mask)
    else:
        x = zero_invalid(x, mask)
    z = enc.in_norm(x.float())  # (B, T, C)
    all_valid = bool(mask.all())
    if enc.temporal_conv is not None:
        if not uniform:
            z = _gapfilled(z, days, mask)
        elif not all_valid:
            z = zero_invalid(z, mask)
        z = temporal_conv_eval(enc.temporal_conv, z)
        if not all_valid:
            z = zero_invalid(z, mask)
    if enc.input_mlp is not None:  # per-date MLP on the valid dates only
        enc_z = enc.input_mlp(z[mask])  # (N_valid, C')
        z = z.new_zeros(*mask.shape, enc_z.shape[-1]).index_put((mask,), enc_z)
    table = enc.date_table(days, mask)
    with torch.autocast(x.device.type, enabled=False):
        out = attend_eval(enc, z.float(), table, mask, uniform or all_valid)
    return enc.out_norm(enc.dropout(enc.mlp(out)))
