"""The lean LTAE forward equals the direct one it replaced (float32 tolerance).

``_reference_forward`` and ``_reference_encoding`` are verbatim copies of the forward and
of ``positional_encoding`` before the lean path (per-pixel float64 encoding repeated to
``(B, T, D)``, keys of width ``H * d_k``, einsum over permuted values).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from models.ltae import LTAE, _shared_table, positional_encoding


def _reference_encoding(days: Tensor, d_model: int, n_head: int, period: float) -> Tensor:
    d_h = d_model // n_head
    i = torch.arange(d_h, device=days.device, dtype=torch.float64)
    denom = torch.pow(torch.tensor(period, dtype=torch.float64, device=days.device),
                      2.0 * torch.div(i, 2, rounding_mode="floor") / d_h)
    angle = days.to(torch.float64).unsqueeze(-1) / denom  # (B, T, d_h)
    table = torch.where(
        (torch.arange(d_h, device=days.device) % 2 == 0), torch.sin(angle), torch.cos(angle)
    )
    return table.to(torch.float32).repeat(1, 1, n_head)  # (B, T, D)


def _reference_forward(self: LTAE, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
    B, T, _ = x.shape
    valid = mask.unsqueeze(-1)  # (B, T, 1)
    x = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
    days = torch.where(mask, days, torch.zeros((), dtype=days.dtype, device=days.device))

    z = self.in_out_norm(self.inconv(self.in_norm(x.float())))  # (B, T, D)
    z = z + _reference_encoding(days, self.d_model, self.n_head, self.period)

    k = self.key(z).view(B, T, self.n_head, self.d_k)  # (B, T, H, d_k)
    scores = torch.einsum("hd,bthd->bht", self.query, k) / math.sqrt(self.d_k)
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))  # (B, H, T)
    any_valid = mask.any(dim=1).view(B, 1, 1)  # (B, 1, 1)
    scores = scores.masked_fill(~any_valid, 0.0)
    attn = torch.softmax(scores, dim=-1) * any_valid  # (B, H, T)
    self.attention_weights = attn.detach()
    attn = self.attention_dropout(attn)  # identity in eval mode or with p = 0

    v = z.view(B, T, self.n_head, self.d_model // self.n_head)  # (B, T, H, D/H)
    out = torch.einsum("bht,bthc->bhc", attn, v).reshape(B, self.d_model)  # (B, D)

    return self.out_norm(self.dropout(self.mlp(out)))  # (B, out_dim)


def _net(c: int = 10, seed: int = 0, **kwargs: object) -> LTAE:
    torch.manual_seed(seed)
    net = LTAE(c, **kwargs)  # type: ignore[arg-type]
    # trained-like affine parameters, so that the LayerNorm algebra is exercised
    with torch.no_grad():
        net.in_out_norm.weight.normal_(1.0, 0.3)
        net.in_out_norm.bias.normal_(0.0, 0.3)
        for m in net.mlp:
            if isinstance(m, nn.BatchNorm1d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


def _inputs(b: int, t: int, c: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, c, generator=g) * 1.5
    days = torch.cumsum(torch.randint(1, 30, (t,), generator=g), 0)  # up to ~900 days
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[0] = False  # no valid date
    mask[1] = True  # every date valid
    mask[2] = False
    mask[2, -1] = True  # one valid date
    x[~mask] = float("nan")  # ignored at invalid dates
    return x, days, mask


def _both(
    net: LTAE, x: Tensor, days: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    got = net(x, days, mask)
    got_att = net.attention_weights
    want = _reference_forward(net, x, days, mask)
    return got, want, got_att, net.attention_weights


@pytest.mark.parametrize("shared", ["expand", "equal_rows", "one_row"])
def test_eval_same_days_equals_reference(shared: str) -> None:
    """Every row with the same days (map inference, store batches): same outputs."""
    net = _net().eval()
    x, days, mask = _inputs(64, 24, 10, seed=1)
    if shared == "expand":
        d = days.expand(64, -1)
    elif shared == "equal_rows":
        d = days.repeat(64, 1)
    else:
        x, mask, d = x[1:2], mask[1:2], days[None]
    with torch.no_grad():
        got, want, got_att, want_att = _both(net, x, d, mask)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_att, want_att)


def test_eval_different_days_equals_reference() -> None:
    """Per-row days (int and float, NaN at invalid dates): same outputs."""
    net = _net(c=4, seed=3, d_model=64, n_head=4, d_k=4, mlp=(64, 32)).eval()
    x, _, mask = _inputs(50, 7, 4, seed=2)
    g = torch.Generator().manual_seed(5)
    days = torch.randint(0, 1200, (50, 7), generator=g)
    fdays = days.double() + 0.25
    fdays[~mask] = float("nan")
    with torch.no_grad():
        for d in (days, fdays):
            got, want, got_att, want_att = _both(net, x, d, mask)
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want)
            torch.testing.assert_close(got_att, want_att)


def test_without_masked_dates_equals_reference() -> None:
    """All dates valid, input LayerNorm on, another T and width."""
    net = _net(c=3, seed=4, d_model=32, n_head=2, d_k=8, mlp=(32, 16),
               input_layernorm=True).eval()
    x = torch.randn(40, 5, 3)
    mask = torch.ones(40, 5, dtype=torch.bool)
    days = torch.tensor([0, 10, 35, 40, 100]).expand(40, -1)
    with torch.no_grad():
        got, want, got_att, want_att = _both(net, x, days, mask)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_att, want_att)


def test_float_days_nan_at_invalid_dates_with_shared_rows() -> None:
    """A shared date grid with a NaN day at a date nobody sees leaks no NaN."""
    net = _net(c=2, d_model=32, n_head=4, d_k=4, mlp=(32, 8)).eval()
    x = torch.randn(6, 4, 2)
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[:, 2] = False
    days = torch.tensor([0.0, 5.0, float("nan"), 20.0]).expand(6, -1)
    with torch.no_grad():
        got, want, _, _ = _both(net, x, days, mask)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("shared", [True, False])
def test_train_mode_outputs_and_gradients_equal_reference(shared: bool) -> None:
    """Train mode (dropouts, batch statistics): same outputs and gradients."""
    torch.manual_seed(0)
    x, days, mask = _inputs(32, 9, 6, seed=7)
    x = torch.where(mask[..., None], x, 0.0)
    d = days.expand(32, -1) if shared else torch.randint(0, 500, (32, 9))
    results = []
    for fwd in (LTAE.forward, _reference_forward):
        net = _net(c=6, seed=11, d_model=64, n_head=8, d_k=4, mlp=(64, 32), dropout=0.2,
                   attention_dropout=0.1).train()
        xg = x.clone().requires_grad_(True)
        torch.manual_seed(123)  # same dropout masks for both
        out = fwd(net, xg, d, mask)
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        grads = {n: p.grad for n, p in net.named_parameters()}
        results.append((out.detach(), xg.grad, grads))
    (out_a, gx_a, g_a), (out_b, gx_b, g_b) = results
    torch.testing.assert_close(out_a, out_b)
    g_a["x"], g_b["x"] = gx_a, gx_b
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        a, b = g_a[name], g_b[name]
        assert a is not None and b is not None, name
        # float32 sums over B * T terms taken in another order: tolerance on the scale of
        # the gradient (key.bias and mlp.0.bias have zero gradients up to rounding: the
        # softmax ignores a per-head shift, BatchNorm a per-channel one)
        scale = max(1.0, float(b.abs().max()))
        # a gradient that is zero by symmetry is a sum of terms that cancel: its rounding
        # depends on the summation order (threads available under load), hence 1e-4
        atol = 1e-4 if name in ("key.bias", "mlp.0.bias") else 1e-5 * scale
        torch.testing.assert_close(a, b, rtol=1e-5, atol=atol, msg=name)


def test_other_normalisation_uses_the_direct_path() -> None:
    """A projection norm that is not a plain LayerNorm(D) is applied as it is."""

    class Norm(nn.LayerNorm):
        pass

    net = _net(c=5, d_model=32, n_head=4, d_k=4, mlp=(32, 8)).eval()
    norm = Norm(32)
    norm.load_state_dict(net.in_out_norm.state_dict())
    net.in_out_norm = norm
    x, days, mask = _inputs(20, 6, 5, seed=9)
    for d in (days.expand(20, -1), torch.randint(0, 300, (20, 6))):
        with torch.no_grad():
            got, want, got_att, want_att = _both(net, x, d, mask)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_att, want_att)


def test_positional_encoding_equals_per_pixel_float64() -> None:
    """The distinct-value table gives the former per-pixel values exactly."""
    days = torch.randint(0, 3000, (30, 12))
    for d in (days, days.double() / 3):
        want = _reference_encoding(d, 64, 4, 1000.0)
        assert torch.equal(positional_encoding(d, 64, 4, 1000.0), want)
        assert torch.equal(positional_encoding(d[0], 64, 4, 1000.0), want[0])
    with pytest.raises(ValueError, match="shape"):
        positional_encoding(torch.zeros(2, 3, 4), 64, 4)


def test_shared_table_is_cached_and_usable_for_training() -> None:
    """One table per date grid; one built under inference mode still trains."""
    _shared_table.cache_clear()
    net = _net(c=3, d_model=32, n_head=4, d_k=4, mlp=(32, 8))
    x, days, mask = _inputs(8, 5, 3, seed=3)
    x = torch.where(mask[..., None], x, 0.0)
    with torch.inference_mode():
        net.eval()(x, days.expand(8, -1), mask)
    net.train()(x, days.expand(8, -1), mask).sum().backward()
    info = _shared_table.cache_info()
    assert info.misses == 1 and info.hits == 1
    assert net.inconv.weight.grad is not None and torch.isfinite(net.inconv.weight.grad).all()
