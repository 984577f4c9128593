"""Tests of the MLP, ANN, SimpleSelfAttention and TempCNN networks (CPU, fast)."""

from __future__ import annotations

import hydra
import pytest
import torch
from torch import nn

from i2dl.errors import ConfigError
from i2dl.pipeline import build_network
from models import ANN, LTAE, MLPClassifier, SimpleSelfAttention, TempCNN

NETS = {"mlp": MLPClassifier, "ann": ANN, "ssa": SimpleSelfAttention, "tempcnn": TempCNN}
#: Networks whose weights depend on T (gap-filled fixed-length input).
FIXED_T = ["mlp", "ann", "tempcnn"]


def _inputs(b: int, t: int, c: int, seed: int = 0, p_invalid: float = 0.25):
    """Random (x, days, mask) with sorted days and the first date always valid."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, c, generator=g)
    days = torch.sort(torch.randint(0, 365, (b, t), generator=g), dim=1).values
    mask = torch.rand(b, t, generator=g) > p_invalid
    mask[:, 0] = True
    return x, days, mask


def _build(name: str, c: int, k: int, t: int, **options) -> nn.Module:
    torch.manual_seed(0)
    return NETS[name](in_channels=c, n_classes=k, n_dates=t, **options)


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ------------------------------------------------------------------ forward shapes


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("t,c,k", [(7, 3, 4), (68, 1, 5), (1, 2, 3)])
def test_forward_shape_default_config(name, t, c, k):
    """Default config: (B, K) finite float32 logits for several T and C, train and eval."""
    net = _build(name, c, k, t)
    x, days, mask = _inputs(4, t, c)
    for mode in (True, False):
        net.train(mode)
        out = net(x, days, mask)
        assert out.shape == (4, k)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(NETS))
def test_backward_gives_finite_gradients(name):
    """Gradients are finite, even with an all-invalid sample in the batch."""
    net = _build(name, 3, 4, 9)
    x, days, mask = _inputs(6, 9, 3)
    mask[2] = False  # one all-invalid sample
    net(x, days, mask).sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_ssa_accepts_any_number_of_dates():
    """SimpleSelfAttention is not tied to the T it was built for."""
    net = _build("ssa", 2, 3, 10).eval()
    for t in (3, 10, 40):
        x, days, mask = _inputs(2, t, 2)
        assert net(x, days, mask).shape == (2, 3)


def test_ssa_works_without_n_dates():
    """SimpleSelfAttention can be built without n_dates."""
    net = SimpleSelfAttention(2, 3)
    x, days, mask = _inputs(2, 5, 2)
    assert net(x, days, mask).shape == (2, 3)


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize("name", [*NETS, "ltae"])
def test_instantiate_from_experiment_config(make_cfg, name):
    """Each experiment config composes and builds its network, directly and via the pipeline."""
    cfg = make_cfg(f"+experiment={name}")
    assert cfg.experiment_name == name
    assert cfg.model.name == name
    assert cfg.model._target_ == "models.SITSClassifier"
    t, c, k = 11, 3, 4
    if name == "ltae":
        net = hydra.utils.instantiate(cfg.model.net, in_channels=c, n_classes=k)
    else:
        net = hydra.utils.instantiate(cfg.model.net, in_channels=c, n_classes=k, n_dates=t)
        assert isinstance(net, NETS[name])
    # the pipeline's builder passes n_dates only where the constructor takes it
    net2 = build_network(cfg.model.net, in_channels=c, n_classes=k, n_dates=t)
    assert type(net2) is type(net)
    x, days, mask = _inputs(3, t, c)
    for n in (net, net2):
        out = n(x, days, mask)
        assert out.shape == (3, k) and torch.isfinite(out).all()
    opt = hydra.utils.instantiate(cfg.model.optimizer)(net.parameters())
    assert isinstance(opt, torch.optim.Adam)


def test_config_defaults_match_constructor_defaults(make_cfg):
    """The YAML defaults build the same architecture as the constructor defaults."""
    for name, cls in NETS.items():
        cfg = make_cfg(f"+experiment={name}")
        built = hydra.utils.instantiate(cfg.model.net, in_channels=2, n_classes=3, n_dates=9)
        default = cls(2, 3, 9)
        assert _n_params(built) == _n_params(default), name
    cfg = make_cfg("+experiment=tempcnn")
    assert cfg.model.optimizer.weight_decay == pytest.approx(1e-6)


# ------------------------------------------------------------------ masking


@pytest.mark.parametrize("name", list(NETS))
def test_values_at_masked_dates_do_not_matter(name):
    """Values at invalid dates (NaN included) leave the output unchanged; valid ones do not."""
    t, c = 10, 3
    net = _build(name, c, 4, t).eval()
    x, days, mask = _inputs(5, t, c, seed=2)
    mask[:, 3] = False
    mask[:, 7] = False
    mask[:, 9] = False  # trailing invalid date: extrapolated from the last valid one
    with torch.no_grad():
        ref = net(x, days, mask)
        x2 = x.clone()
        x2[:, 3] = 1e3 * torch.randn(5, c)
        x2[:, 7] = float("nan")
        x2[:, 9] = -7.0
        torch.testing.assert_close(net(x2, days, mask), ref, atol=1e-5, rtol=1e-5)
        # a valid date does matter (otherwise this test could not fail)
        x3 = x.clone()
        x3[:, 1] += 3.0
        assert not torch.allclose(net(x3, days, mask), ref, atol=1e-4)


def test_ssa_days_at_masked_dates_do_not_matter():
    """SSA ignores the days of invalid dates but not those of valid dates."""
    net = _build("ssa", 2, 3, 8).eval()
    x, days, mask = _inputs(4, 8, 2, seed=3)
    mask[:, 4] = False
    with torch.no_grad():
        ref = net(x, days, mask)
        days2 = days.clone()
        days2[:, 4] = 9999
        torch.testing.assert_close(net(x, days2, mask), ref)
        days3 = days.clone()
        days3[:, 0] -= 100
        assert not torch.allclose(net(x, days3, mask), ref, atol=1e-4)


@pytest.mark.parametrize("name", FIXED_T)
def test_gapfilled_networks_see_the_interpolated_value(name):
    """An invalid date gives the same output as a valid date holding the interpolation."""
    t, c = 6, 1
    net = _build(name, c, 3, t).eval()
    x = torch.tensor([[0.0, 1.0, 5.0, 3.0, 2.0, 1.0]]).unsqueeze(-1).repeat(2, 1, 1)
    days = torch.tensor([[0, 10, 20, 40, 50, 60]]).repeat(2, 1)
    mask = torch.ones(2, t, dtype=torch.bool)
    mask[:, 2] = False  # interpolated between day 10 (1.0) and day 40 (3.0): 1 + 2/3
    filled = x.clone()
    filled[:, 2] = 1.0 + 2.0 / 3.0
    with torch.no_grad():
        torch.testing.assert_close(
            net(x, days, mask), net(filled, days, torch.ones_like(mask)), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("name", list(NETS))
def test_all_invalid_sample_gives_finite_logits(name):
    """A pixel without any valid date gives finite logits and does not affect the others."""
    t, c = 8, 2
    net = _build(name, c, 3, t)
    x, days, mask = _inputs(4, t, c)
    mask[1] = False
    x[1] = float("nan")
    for mode in (True, False):
        net.train(mode)
        out = net(x, days, mask)
        assert torch.isfinite(out).all(), (name, mode)
    # and the other samples do not depend on it
    net.eval()
    with torch.no_grad():
        keep = torch.tensor([0, 2, 3])
        torch.testing.assert_close(
            net(x, days, mask)[keep], net(x[keep], days[keep], mask[keep]), atol=1e-5, rtol=1e-5
        )


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("name", FIXED_T)
def test_wrong_number_of_dates_names_both(name):
    """A T other than n_dates is refused with both values in the message."""
    net = _build(name, 2, 3, 8)
    x, days, mask = _inputs(2, 7, 2)
    with pytest.raises(ValueError, match=r"built for T=8.*T=7"):
        net(x, days, mask)


@pytest.mark.parametrize("name", list(NETS))
def test_bad_shapes_raise_value_error(name):
    """Badly shaped or typed inputs raise ValueError with a clear message."""
    net = _build(name, 2, 3, 8)
    x, days, mask = _inputs(2, 8, 2)
    with pytest.raises(ValueError, match=r"C=3 channels.*in_channels=2"):
        net(torch.randn(2, 8, 3), days, mask)
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        net(x[0], days, mask)
    with pytest.raises(ValueError, match="`days` shape"):
        net(x, days[:, :5], mask)
    with pytest.raises(ValueError, match="`mask` shape"):
        net(x, days, mask[:1])
    with pytest.raises(ValueError, match="bool"):
        net(x, days, mask.float())
    with pytest.raises(ValueError, match="float"):
        net(x.long(), days, mask)


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("mlp", {"hidden": [256, 0]}, r"hidden\[1\]"),
        ("mlp", {"hidden": 256}, "list of widths"),
        ("mlp", {"dropout": 1.0}, "dropout"),
        ("ann", {"batch_norm": "yes"}, "batch_norm"),
        ("ann", {"dropout": -0.1}, "dropout"),
        ("ssa", {"d_model": 30, "n_head": 4}, "divisible"),
        ("ssa", {"period": 0}, "period"),
        ("ssa", {"hidden": 0}, "hidden"),
        ("ssa", {"attention_dropout": 2}, "attention_dropout"),
        ("tempcnn", {"filters": []}, "filters"),
        ("tempcnn", {"kernel_size": 0}, "kernel_size"),
        ("tempcnn", {"dense": 2.5}, "dense"),
    ],
)
def test_bad_options_raise_config_error(name, options, match):
    """Invalid options raise ConfigError naming the option."""
    with pytest.raises(ConfigError, match=match):
        _build(name, 2, 3, 8, **options)


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("arg", ["in_channels", "n_classes", "n_dates"])
def test_bad_sizes_raise_config_error(name, arg):
    """Non-positive sizes raise ConfigError naming the argument."""
    sizes = {"in_channels": 2, "n_classes": 3, "n_dates": 8, arg: 0}
    with pytest.raises(ConfigError, match=arg):
        NETS[name](**sizes)
    assert issubclass(ConfigError, ValueError)


# ------------------------------------------------------------------ parameter counts


def _linear(i: int, o: int) -> int:
    return i * o + o


def _bn(n: int) -> int:
    return 2 * n


def _conv(i: int, o: int, k: int) -> int:
    return i * o * k + o


def _expected_mlp(t: int, c: int, k: int) -> int:
    return _linear(t * c, 256) + _bn(256) + _linear(256, 128) + _bn(128) + _linear(128, k)


def _expected_ann(t: int, c: int, k: int) -> int:
    return _linear(t * c, 128) + _linear(128, k)


def _expected_ssa(t: int, c: int, k: int) -> int:
    d = 64
    attention = _linear(d, 3 * d) + _linear(d, d)  # in-projection (q, k, v) + out-projection
    return _linear(c, d) + attention + 2 * d + _linear(d, 64) + _linear(64, k)


def _expected_tempcnn(t: int, c: int, k: int) -> int:
    convs = _conv(c, 64, 5) + 2 * _conv(64, 64, 5) + 3 * _bn(64)
    return convs + _linear(64 * t, 256) + _bn(256) + _linear(256, k)


EXPECTED = {
    "mlp": _expected_mlp,
    "ann": _expected_ann,
    "ssa": _expected_ssa,
    "tempcnn": _expected_tempcnn,
}


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("t,c,k", [(68, 1, 5), (149, 3, 13)])
def test_parameter_counts_match_formula_and_docstring(name, t, c, k):
    """Parameter counts equal the layer formula and appear in the class docstring."""
    expected = EXPECTED[name](t, c, k)
    assert _n_params(_build(name, c, k, t)) == expected
    # the class docstring states the count for both reference inputs
    assert f"{expected:,}" in (NETS[name].__doc__ or ""), (name, expected)


def test_documented_reference_counts():
    """The counts quoted in the module docstrings for T=68, C=1, K=5."""
    assert _expected_mlp(68, 1, 5) == 51_973
    assert _expected_ann(68, 1, 5) == 9_477
    assert _expected_ssa(68, 1, 5) == 21_381
    assert _expected_tempcnn(68, 1, 5) == 1_158_021


def test_mlp_and_ann_defaults_differ_as_documented():
    """MLP: two hidden layers, batch norm, dropout; ANN: one plain hidden layer."""
    mlp, ann = MLPClassifier(1, 5, 68), ANN(1, 5, 68)
    assert mlp.hidden == (256, 128) and mlp.batch_norm and mlp.dropout == 0.2
    assert ann.hidden == (128,) and not ann.batch_norm and ann.dropout == 0.0
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.Dropout)) for m in ann.modules())
    assert sum(isinstance(m, nn.BatchNorm1d) for m in mlp.modules()) == 2
    assert sum(isinstance(m, nn.Dropout) for m in mlp.modules()) == 2
    # the ANN has no batch norm, so a training batch of one pixel works
    x, days, mask = _inputs(1, 68, 1)
    assert ann.train()(x, days, mask).shape == (1, 5)


# ------------------------------------------------------------------ learning


def _toy_problem(n: int, t: int, c: int, k: int, seed: int):
    """Classes told apart by timing only: class j peaks at date ~ (j + 0.5) T / K; 20% clouds."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    tt = torch.arange(t, dtype=torch.float32)
    centre = (y.float() + 0.5) * t / k
    bump = torch.exp(-0.5 * ((tt[None, :] - centre[:, None]) / 1.0) ** 2)  # (N, T)
    x = torch.stack([bump] * c, dim=-1)
    x = x + 0.1 * torch.randn(n, t, c, generator=g)
    days = (tt * 10).long().expand(n, t).clone()
    mask = torch.rand(n, t, generator=g) > 0.2
    x = torch.where(mask[..., None], x, torch.zeros(()))
    return x, days, mask, y


@pytest.mark.parametrize("name", list(NETS))
def test_learns_tiny_separable_problem(name):
    """Each network learns a small timing-only problem with clouds in 100 Adam steps."""
    t, c, k = 8, 2, 3
    torch.manual_seed(0)
    x, days, mask, y = _toy_problem(96, t, c, k, seed=0)
    xv, daysv, maskv, yv = _toy_problem(96, t, c, k, seed=1)
    net = _build(name, c, k, t)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(100):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x, days, mask), y)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(xv, daysv, maskv).argmax(-1) == yv).float().mean().item()
    assert acc > 0.9, (name, acc, loss.item())


def test_ltae_still_exported():
    """LTAE is still exported next to the new networks."""
    assert LTAE(2, 3)(*_inputs(2, 5, 2)).shape == (2, 3)


# ------------------------------------------------------------------ end to end

#: Overrides that shrink each network for the end-to-end run.
SMALL = {
    "mlp": ["model.net.hidden=[16,8]"],
    "ann": ["model.net.hidden=[8]"],
    "ssa": ["model.net.d_model=16", "model.net.n_head=2", "model.net.hidden=8"],
    "tempcnn": ["model.net.filters=[8,8,8]", "model.net.dense=16"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NETS))
def test_train_experiment_on_tiny_data(make_cfg, tiny_dataset, name):
    """`train +experiment=<name>` runs prepare, fit, evaluate and infer on tiny data."""
    from i2dl.pipeline import run_train
    from tests.conftest import FAST

    cfg = make_cfg(f"+experiment={name}", *tiny_dataset["overrides"], *FAST, *SMALL[name])
    summary = run_train(cfg)
    assert summary["experiment"] == name
