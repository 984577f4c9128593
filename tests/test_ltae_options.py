"""LTAE options of issue 20: temporal convolution before attention, the reference's norm."""

from __future__ import annotations

import pytest
import torch

from i2dl.errors import ConfigError
from models import LTAE
from tests.conftest import masked_series


def _series() -> tuple[torch.Tensor, ...]:
    return masked_series(b=5, t=9, c=2, step_days=7, seed=1)


def test_temporal_conv_sees_the_neighbouring_dates() -> None:
    torch.manual_seed(0)
    enc = LTAE(2, d_model=16, n_head=4, d_k=4, mlp=[16, 8], temporal_conv=[8, 8]).eval()
    x, days, mask = _series()
    out = enc(x, days, mask)
    assert out.shape == (5, 8)
    # invalid dates are replaced by interpolation: what they hold changes nothing
    x2 = x.clone()
    x2[~mask] = 1e6
    assert torch.allclose(enc(x2, days, mask), out, atol=1e-5)
    # a valid date's value reaches the vectors of its neighbours (kernel 5 x 2 layers):
    # changing date 4 changes what the attention reads at date 2, which the plain LTAE's
    # date 2 vector never depends on
    full = torch.ones_like(mask)
    x3 = x.clone()
    x3[:, 4] += 3.0
    with torch.no_grad():
        conv = enc.temporal_conv
        assert conv is not None
        a = conv(x.transpose(1, 2)).transpose(1, 2)[:, 2]
        b = conv(x3.transpose(1, 2)).transpose(1, 2)[:, 2]
    assert not torch.allclose(a, b)
    assert not torch.allclose(enc(x3, days, full), enc(x, days, full))


def test_temporal_conv_kernel_must_be_odd() -> None:
    with pytest.raises(ConfigError, match="conv_kernel=4 must be odd"):
        LTAE(2, d_model=16, n_head=4, mlp=[16, 8], temporal_conv=[8], conv_kernel=4)


def test_reference_norm_learns_one_affine_per_date_and_needs_n_dates() -> None:
    torch.manual_seed(0)
    enc = LTAE(2, d_model=16, n_head=4, d_k=4, mlp=[16, 8], projection_norm="reference",
               n_dates=9)
    assert enc.series_scale is not None and enc.series_scale.shape == (9, 16)
    x, days, mask = _series()
    enc.eval()
    before = enc(x, days, mask)
    # a learnt shift at one date changes the output of the pixels valid at that date only
    with torch.no_grad():
        enc.series_shift[3] += 1.0  # type: ignore[index]
    after = enc(x, days, mask)
    moved = (after - before).abs().amax(1) > 1e-6
    assert torch.equal(moved, mask[:, 3])
    with pytest.raises(ValueError, match="built for T=9 dates, got series of 8"):
        enc(x[:, :8], days[:, :8], mask[:, :8])
    with pytest.raises(ConfigError, match="needs n_dates"):
        LTAE(2, d_model=16, n_head=4, mlp=[16, 8], projection_norm="reference")
