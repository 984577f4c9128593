"""Tests of the encoders (LTAE, SSA, TempCNN, MLP, ANN) and the shared ClassifierHead (CPU, fast).

Every network is an encoder ``(x, days, mask) -> (B, out_dim)``; a
:class:`models.ClassifierHead` maps the features to ``(B, K)`` logits. ``HEADS`` holds,
per network, the head that makes encoder + head the network i2dl had before the split
(the YAML configs must use the same, see ``test_config_defaults_match_constructor_defaults``).
"""

from __future__ import annotations

import inspect
import math

import hydra
import pytest
import torch
from torch import Tensor, nn

from i2dl.errors import ConfigError
from models import LTAE, MLP, ClassifierHead, SimpleSelfAttention, TempCNN
from models.ltae import positional_encoding

NETS: dict[str, type[nn.Module]] = {
    "ltae": LTAE,
    "ssa": SimpleSelfAttention,
    "tempcnn": TempCNN,
    "mlp": MLP,
    "ann": MLP,
}
#: Options of the configs that build a shared class with other defaults
#: (``configs/model/ann.yaml``: the ANN is the MLP with one plain hidden layer).
CONFIG_OPTIONS: dict[str, dict] = {
    "ann": {"hidden": [128], "batch_norm": False, "dropout": 0.0},
}
#: Networks whose weights depend on T (gap-filled fixed-length input).
FIXED_T = ["mlp", "ann", "tempcnn"]
#: Networks that accept any T at forward time.
ANY_T = ["ltae", "ssa"]
#: Head of each network's default config, reproducing the pre-split network.
HEADS: dict[str, dict] = {
    "ltae": {"hidden": [64, 32], "batch_norm": True, "dropout": 0.0},
    "ssa": {"hidden": [64], "batch_norm": False, "dropout": 0.2},
    "tempcnn": {"hidden": [], "batch_norm": True, "dropout": 0.0},
    "mlp": {"hidden": [], "batch_norm": True, "dropout": 0.0},
    "ann": {"hidden": [], "batch_norm": True, "dropout": 0.0},
}
#: out_dim of each default encoder (independent of C and T).
DEFAULT_OUT_DIM = {"ltae": 128, "ssa": 64, "tempcnn": 256, "mlp": 128, "ann": 128}


def _inputs(b: int, t: int, c: int, seed: int = 0, p_invalid: float = 0.25):
    """Random (x, days, mask) with sorted days and the first date always valid."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, c, generator=g)
    days = torch.sort(torch.randint(0, 365, (b, t), generator=g), dim=1).values
    mask = torch.rand(b, t, generator=g) > p_invalid
    mask[:, 0] = True
    return x, days, mask


def _encoder(name: str, c: int, t: int, **options) -> nn.Module:
    """The encoder ``name`` for C channels; n_dates=T passed where the constructor takes it."""
    cls = NETS[name]
    for key, value in CONFIG_OPTIONS.get(name, {}).items():
        options.setdefault(key, value)
    if "n_dates" in inspect.signature(cls).parameters:
        options.setdefault("n_dates", t)
    return cls(in_channels=c, **options)


class _Classifier(nn.Module):
    """Encoder followed by a head, ``(x, days, mask) -> (B, K)``."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
        return self.head(self.encoder(x, days, mask))


def _build(name: str, c: int, k: int, t: int, head: dict | None = None, **options) -> _Classifier:
    """Seeded encoder then head (the head's layers are created last)."""
    torch.manual_seed(0)
    enc = _encoder(name, c, t, **options)
    head_cfg = HEADS[name] if head is None else head
    return _Classifier(enc, ClassifierHead(enc.out_dim, k, **head_cfg))


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ------------------------------------------------------------------ encoder interface


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("t,c", [(7, 3), (68, 1), (1, 2)])
def test_encoder_returns_out_dim_features(name, t, c):
    """Default encoders: (B, out_dim) finite float32 features for several T, C; train and eval."""
    torch.manual_seed(0)
    enc = _encoder(name, c, t)
    assert enc.out_dim == DEFAULT_OUT_DIM[name]
    x, days, mask = _inputs(4, t, c)
    for mode in (True, False):
        enc.train(mode)
        out = enc(x, days, mask)
        assert out.shape == (4, enc.out_dim)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("t,c,k", [(7, 3, 4), (12, 2, 13)])
def test_encoder_plus_head_gives_logits(name, t, c, k):
    """Encoder + default head: (B, K) finite float32 logits."""
    net = _build(name, c, k, t)
    x, days, mask = _inputs(4, t, c)
    for mode in (True, False):
        net.train(mode)
        out = net(x, days, mask)
        assert out.shape == (4, k)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(NETS))
def test_encoders_take_no_n_classes(name):
    """The number of classes belongs to the head only."""
    assert "n_classes" not in inspect.signature(NETS[name]).parameters
    with pytest.raises(TypeError, match="n_classes"):
        _encoder(name, 2, 5, n_classes=3)


@pytest.mark.parametrize("name", ANY_T)
def test_attention_encoders_accept_any_number_of_dates(name):
    """LTAE and SSA are not tied to one T: the same encoder takes T = 3, 10 and 40."""
    torch.manual_seed(0)
    enc = _encoder(name, 2, 10).eval()
    for t in (3, 10, 40):
        x, days, mask = _inputs(2, t, 2)
        assert enc(x, days, mask).shape == (2, enc.out_dim)


@pytest.mark.parametrize("name", FIXED_T)
@pytest.mark.parametrize("t", [5, 23])
def test_fixed_t_encoders_built_for_another_length(name, t):
    """Fixed-T encoders built for another T; the default out_dim does not depend on T."""
    torch.manual_seed(0)
    enc = _encoder(name, 3, t).eval()
    x, days, mask = _inputs(2, t, 3)
    assert enc(x, days, mask).shape == (2, DEFAULT_OUT_DIM[name])


@pytest.mark.parametrize(
    "name,options,expected",
    [
        ("mlp", {"hidden": []}, lambda t, c: t * c),
        ("ann", {"hidden": []}, lambda t, c: t * c),
        ("tempcnn", {"dense": None, "filters": [8, 4]}, lambda t, c: 4 * t),
        ("tempcnn", {"dense": 16}, lambda t, c: 16),
        ("ltae", {"d_model": 32, "n_head": 4, "mlp": [32, 24, 16]}, lambda t, c: 16),
        ("ssa", {"d_model": 24, "n_head": 3}, lambda t, c: 24),
    ],
)
def test_out_dim_follows_options(name, options, expected):
    """out_dim is the width of the last encoder layer; without dense layers, the flat width."""
    t, c = 6, 2
    enc = _encoder(name, c, t, **options).eval()
    assert enc.out_dim == expected(t, c)
    x, days, mask = _inputs(3, t, c)
    assert enc(x, days, mask).shape == (3, expected(t, c))


def test_ssa_works_without_n_dates():
    """SimpleSelfAttention can be built without n_dates."""
    enc = SimpleSelfAttention(2)
    x, days, mask = _inputs(2, 5, 2)
    assert enc(x, days, mask).shape == (2, 64)


@pytest.mark.parametrize("name", list(NETS))
def test_backward_gives_finite_gradients(name):
    """Gradients are finite and reach every parameter, even with an all-invalid sample."""
    net = _build(name, 3, 4, 9)
    x, days, mask = _inputs(6, 9, 3)
    mask[2] = False  # one all-invalid sample
    net(x, days, mask).sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------ ClassifierHead


def test_head_layer_order():
    """Linear, BatchNorm1d, ReLU, Dropout per hidden width, then the final Linear."""
    head = ClassifierHead(10, 3, hidden=[8, 4], batch_norm=True, dropout=0.1)
    assert [type(m) for m in head.layers] == [
        nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout,
        nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout,
        nn.Linear,
    ]
    widths = [(m.in_features, m.out_features) for m in head.layers if isinstance(m, nn.Linear)]
    assert widths == [(10, 8), (8, 4), (4, 3)]
    assert all(m.p == 0.1 for m in head.layers if isinstance(m, nn.Dropout))
    # no batch norm, no dropout (p = 0 adds no module)
    plain = ClassifierHead(10, 3, hidden=[8], batch_norm=False, dropout=0.0)
    assert [type(m) for m in plain.layers] == [nn.Linear, nn.ReLU, nn.Linear]
    # no hidden layer: a single Linear whatever batch_norm and dropout say
    linear = ClassifierHead(10, 3, batch_norm=True, dropout=0.5)
    assert [type(m) for m in linear.layers] == [nn.Linear]
    assert _n_params(linear) == 10 * 3 + 3


def test_head_forward_and_parameter_count():
    """(B, D) -> (B, K); count = Linear weights and biases + 2 per batch-norm unit."""
    head = ClassifierHead(12, 5, hidden=[7], batch_norm=True, dropout=0.2)
    out = head(torch.randn(4, 12))
    assert out.shape == (4, 5) and out.dtype == torch.float32
    assert _n_params(head) == (12 * 7 + 7) + 2 * 7 + (7 * 5 + 5)
    # the head is a function of its input (not a constant)
    head.eval()
    a, b = torch.randn(2, 12), torch.randn(2, 12)
    assert not torch.allclose(head(a), head(b))


def test_head_refuses_features_of_another_width():
    head = ClassifierHead(12, 5)
    with pytest.raises(ValueError, match=r"\(B, 12\).*got \(4, 11\).*in_features=encoder.out_dim"):
        head(torch.randn(4, 11))
    with pytest.raises(ValueError, match=r"got \(12,\)"):
        head(torch.randn(12))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"in_features": 0}, r"ClassifierHead: `in_features` must be a positive int, got 0"),
        ({"n_classes": -1}, r"`n_classes` must be a positive int, got -1"),
        ({"n_classes": 2.0}, r"`n_classes` must be a positive int, got 2.0"),
        ({"hidden": [16, 0]}, r"`hidden\[1\]` must be a positive int, got 0"),
        ({"hidden": 16}, r"`hidden` must be a list of widths such as \[256, 128\], got 16"),
        ({"batch_norm": "yes"}, r"`batch_norm` must be true or false, got 'yes'"),
        ({"dropout": 1.0}, r"`dropout` must be in \[0, 1\), got 1.0"),
        ({"dropout": "high"}, r"`dropout` must be a number in \[0, 1\), got 'high'"),
    ],
)
def test_head_bad_arguments_raise_config_error(kwargs, match):
    args = {"in_features": 8, "n_classes": 3, **kwargs}
    with pytest.raises(ConfigError, match=match):
        ClassifierHead(**args)


# ------------------------------------------------------------------ same as before the split


def _old_layers(name: str, c: int, k: int, t: int) -> list[nn.Module]:
    """The layers of the pre-split network, created in its order (head layers last)."""
    if name == "ltae":
        d, h, dk = 256, 16, 8
        inconv, in_out_norm = nn.Linear(c, d), nn.LayerNorm(d)
        query = nn.Parameter(torch.empty(h, dk))
        nn.init.normal_(query, mean=0.0, std=math.sqrt(2.0 / dk))
        key = nn.Linear(d, h * dk)
        nn.init.normal_(key.weight, mean=0.0, std=math.sqrt(2.0 / dk))
        # LTAE.parameters() yields its own `query` before its submodules' parameters
        return [
            nn.ParameterList([query]), inconv, in_out_norm, key,
            nn.Linear(256, 128), nn.BatchNorm1d(128), nn.LayerNorm(128),  # mlp, out_norm
            nn.Linear(128, 64), nn.BatchNorm1d(64), nn.Linear(64, 32), nn.BatchNorm1d(32),
            nn.Linear(32, k),  # decoder
        ]
    if name == "ssa":
        return [
            nn.Linear(c, 64), nn.MultiheadAttention(64, 4, batch_first=True), nn.LayerNorm(64),
            nn.Linear(64, 64), nn.Linear(64, k),
        ]
    if name == "tempcnn":
        convs: list[nn.Module] = []
        for c_in in (c, 64, 64):
            convs += [nn.Conv1d(c_in, 64, 5, padding="same"), nn.BatchNorm1d(64)]
        return [*convs, nn.Linear(64 * t, 256), nn.BatchNorm1d(256), nn.Linear(256, k)]
    if name == "mlp":
        return [
            nn.Linear(t * c, 256), nn.BatchNorm1d(256), nn.Linear(256, 128),
            nn.BatchNorm1d(128), nn.Linear(128, k),
        ]
    assert name == "ann"
    return [nn.Linear(t * c, 128), nn.Linear(128, k)]


@pytest.mark.parametrize("name", list(NETS))
def test_seeded_encoder_then_head_has_the_old_initial_weights(name):
    """Same seed, encoder then head: the initial weights of the pre-split network, bit for bit."""
    t, c, k = 9, 3, 5
    torch.manual_seed(0)
    ref = _old_layers(name, c, k, t)
    expected = [p for m in ref for p in m.parameters()]
    got = list(_build(name, c, k, t).parameters())
    assert [tuple(p.shape) for p in got] == [tuple(p.shape) for p in expected]
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


def test_ltae_plus_head_equals_hand_composed_reference():
    """LTAE + ClassifierHead(hidden=[64, 32]) computes the paper's L-TAE with its decoder."""
    t, c, k = 8, 3, 5
    torch.manual_seed(0)
    q, inconv, in_out_norm, key, mlp_lin, mlp_bn, out_norm, *decoder = _old_layers("ltae", c, k, t)
    net = _build("ltae", c, k, t).eval()
    for m in (mlp_bn, *decoder):
        m.eval()
    x, days, mask = _inputs(4, t, c, seed=5)
    x = torch.where(mask[..., None], x, 0.0)
    days = torch.where(mask, days, 0)
    with torch.no_grad():
        z = in_out_norm(inconv(x)) + positional_encoding(days, 256, 16, 1000.0)
        scores = torch.einsum("hd,bthd->bht", q[0], key(z).view(4, t, 16, 8)) / math.sqrt(8)
        attn = torch.softmax(scores.masked_fill(~mask[:, None, :], float("-inf")), dim=-1)
        pooled = torch.einsum("bht,bthc->bhc", attn, z.view(4, t, 16, 16)).reshape(4, 256)
        feats = out_norm(torch.relu(mlp_bn(mlp_lin(pooled))))
        h = feats
        for lin, bn in zip(decoder[:-1:2], decoder[1::2], strict=True):
            h = torch.relu(bn(lin(h)))
        expected = decoder[-1](h)
        torch.testing.assert_close(net.encoder(x, days, mask), feats)
        torch.testing.assert_close(net(x, days, mask), expected)


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize("name", list(CONFIG_OPTIONS))
def test_config_of_a_shared_class_sets_its_defaults(make_cfg, name):
    """``model=ann`` builds :class:`models.MLP` with the ANN's options."""
    encoder = make_cfg(f"+experiment={name}").model.encoder
    assert encoder._target_ == "models.MLP"
    assert {k: encoder[k] for k in CONFIG_OPTIONS[name]} == CONFIG_OPTIONS[name]


@pytest.mark.parametrize("name", list(NETS))
def test_instantiate_from_experiment_config(make_cfg, name):
    """Each experiment config composes and builds its encoder and head."""
    cfg = make_cfg(f"+experiment={name}")
    assert cfg.experiment_name == name
    assert cfg.model.name == name
    assert cfg.model._target_ == "models.SITSClassifier"
    t, c, k = 11, 3, 4
    kwargs = {"n_dates": t} if name in FIXED_T else {}
    enc = hydra.utils.instantiate(cfg.model.encoder, in_channels=c, **kwargs)
    assert isinstance(enc, NETS[name])
    head = hydra.utils.instantiate(cfg.model.head)(in_features=enc.out_dim, n_classes=k)
    assert isinstance(head, ClassifierHead)
    x, days, mask = _inputs(3, t, c)
    out = head(enc(x, days, mask))
    assert out.shape == (3, k) and torch.isfinite(out).all()
    opt = hydra.utils.instantiate(cfg.model.optimizer)(
        [*enc.parameters(), *head.parameters()]
    )
    assert type(opt) is torch.optim.AdamW


@pytest.mark.parametrize("name", list(NETS))
def test_config_defaults_match_constructor_defaults(make_cfg, name):
    """The YAML builds the default encoder and the head that reproduces the pre-split network."""
    cfg = make_cfg(f"+experiment={name}")
    kwargs = {"n_dates": 9} if name in FIXED_T else {}
    torch.manual_seed(0)
    enc = hydra.utils.instantiate(cfg.model.encoder, in_channels=2, **kwargs)
    head = hydra.utils.instantiate(cfg.model.head)(in_features=enc.out_dim, n_classes=3)
    built = [*enc.parameters(), *head.parameters()]
    # the LTAE config adds the temporal convolution of issue 20 to the paper's network
    # (the constructor's default, which the other tests of this file exercise)
    extra = {"temporal_conv": [64, 64], "conv_kernel": 5} if name == "ltae" else {}
    reference = list(_build(name, 2, 3, 9, **extra).parameters())
    assert [p.shape for p in built] == [p.shape for p in reference], name
    assert all(torch.equal(a, b) for a, b in zip(built, reference, strict=True)), name
    assert (head.hidden, head.batch_norm, head.dropout) == (
        tuple(HEADS[name]["hidden"]), HEADS[name]["batch_norm"], HEADS[name]["dropout"]
    )


def test_tempcnn_config_keeps_the_paper_weight_decay(make_cfg):
    cfg = make_cfg("+experiment=tempcnn")
    assert cfg.model.optimizer._target_ == "torch.optim.AdamW"
    assert cfg.model.optimizer.weight_decay == pytest.approx(1e-6)


# ------------------------------------------------------------------ masking


@pytest.mark.parametrize("name", list(NETS))
def test_values_at_masked_dates_do_not_matter(name):
    """Values at invalid dates (NaN included) leave the features unchanged; valid ones do not."""
    t, c = 10, 3
    torch.manual_seed(0)
    enc = _encoder(name, c, t).eval()
    x, days, mask = _inputs(5, t, c, seed=2)
    mask[:, 3] = False
    mask[:, 7] = False
    mask[:, 9] = False  # trailing invalid date: extrapolated from the last valid one
    with torch.no_grad():
        ref = enc(x, days, mask)
        x2 = x.clone()
        x2[:, 3] = 1e3 * torch.randn(5, c)
        x2[:, 7] = float("nan")
        x2[:, 9] = -7.0
        torch.testing.assert_close(enc(x2, days, mask), ref, atol=1e-5, rtol=1e-5)
        # a valid date does matter (otherwise this test could not fail)
        x3 = x.clone()
        x3[:, 1] += 3.0
        assert not torch.allclose(enc(x3, days, mask), ref, atol=1e-4)


@pytest.mark.parametrize("name", ANY_T)
def test_days_at_masked_dates_do_not_matter(name):
    """Attention encoders ignore the days of invalid dates but not those of valid dates."""
    torch.manual_seed(0)
    enc = _encoder(name, 2, 8).eval()
    x, days, mask = _inputs(4, 8, 2, seed=3)
    mask[:, 4] = False
    with torch.no_grad():
        ref = enc(x, days, mask)
        days2 = days.clone()
        days2[:, 4] = 9999
        torch.testing.assert_close(enc(x, days2, mask), ref)
        days3 = days.clone()
        days3[:, 0] -= 100
        assert not torch.allclose(enc(x, days3, mask), ref, atol=1e-4)


@pytest.mark.parametrize("name", FIXED_T)
def test_gapfilled_networks_see_the_interpolated_value(name):
    """An invalid date gives the same features as a valid date holding the interpolation."""
    t, c = 6, 1
    torch.manual_seed(0)
    enc = _encoder(name, c, t).eval()
    x = torch.tensor([[0.0, 1.0, 5.0, 3.0, 2.0, 1.0]]).unsqueeze(-1).repeat(2, 1, 1)
    days = torch.tensor([[0, 10, 20, 40, 50, 60]]).repeat(2, 1)
    mask = torch.ones(2, t, dtype=torch.bool)
    mask[:, 2] = False  # interpolated between day 10 (1.0) and day 40 (3.0): 1 + 2/3
    filled = x.clone()
    filled[:, 2] = 1.0 + 2.0 / 3.0
    with torch.no_grad():
        got = enc(x, days, mask)
        torch.testing.assert_close(
            got, enc(filled, days, torch.ones_like(mask)), atol=1e-5, rtol=1e-5
        )
        # and not the value stored at the invalid date
        assert not torch.allclose(got, enc(x, days, torch.ones_like(mask)), atol=1e-4)


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
    enc = _encoder(name, 2, 8)
    x, days, mask = _inputs(2, 7, 2)
    with pytest.raises(ValueError, match=r"built for T=8.*T=7"):
        enc(x, days, mask)


@pytest.mark.parametrize("name", list(NETS))
def test_bad_shapes_raise_value_error(name):
    """Badly shaped or typed inputs raise ValueError with a clear message."""
    enc = _encoder(name, 2, 8)
    x, days, mask = _inputs(2, 8, 2)
    with pytest.raises(ValueError, match=r"C=3 channels.*in_channels=2"):
        enc(torch.randn(2, 8, 3), days, mask)
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        enc(x[0], days, mask)
    with pytest.raises(ValueError, match="`days` shape"):
        enc(x, days[:, :5], mask)
    with pytest.raises(ValueError, match="`mask` shape"):
        enc(x, days, mask[:1])
    with pytest.raises(ValueError, match="bool"):
        enc(x, days, mask.float())
    with pytest.raises(ValueError, match="float"):
        enc(x.long(), days, mask)


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("mlp", {"hidden": [256, 0]}, r"MLP: `hidden\[1\]` must be a positive int"),
        ("mlp", {"hidden": 256}, "list of widths"),
        ("mlp", {"dropout": 1.0}, r"`dropout` must be in \[0, 1\)"),
        ("ann", {"batch_norm": "yes"}, "MLP: `batch_norm` must be true or false"),
        ("ann", {"dropout": -0.1}, "dropout"),
        ("ssa", {"d_model": 30, "n_head": 4}, r"d_model=30 must be divisible by n_head=4.*28"),
        ("ssa", {"period": 0}, r"`period` .* must be a number > 0, got 0"),
        ("ssa", {"attention_dropout": 2}, "attention_dropout"),
        ("tempcnn", {"filters": []}, "`filters` must list at least one width"),
        ("tempcnn", {"kernel_size": 0}, "kernel_size"),
        ("tempcnn", {"dense": 2.5}, r"`dense` must be a positive int, got 2.5 \(or null"),
        ("tempcnn", {"dense": 0}, r"`dense` .* got 0"),
        ("ltae", {"d_model": 30, "n_head": 4, "mlp": [30]}, "divisible by n_head"),
        ("ltae", {"d_model": 32, "n_head": 4, "mlp": [64]}, r"mlp\[0\]=64 must equal d_model=32"),
        ("ltae", {"mlp": []}, "`mlp` must list at least one width"),
        ("ltae", {"mlp": [256, -3]}, r"`mlp\[1\]` must be a positive int, got -3"),
        ("ltae", {"d_k": 2.5}, "`d_k` must be a positive int, got 2.5"),
        ("ltae", {"dropout": 1.0}, r"LTAE: `dropout` must be in \[0, 1\)"),
        ("ltae", {"attention_dropout": 1.0}, r"LTAE: `attention_dropout` must be in \[0, 1\)"),
        ("ltae", {"attention_dropout": "x"}, r"LTAE: `attention_dropout` must be a number"),
    ],
)
def test_bad_options_raise_config_error(name, options, match):
    """Invalid options raise ConfigError naming the option and its value."""
    with pytest.raises(ConfigError, match=match):
        _encoder(name, 2, 8, **options)


@pytest.mark.parametrize("period", [0, -1.0, float("nan"), "long", None, True])
def test_ltae_period_validation(period):
    """LTAE's `period` must be a number > 0; the message names it and the paper's 1000."""
    with pytest.raises(ConfigError, match=r"LTAE: `period` .* must be a number > 0, got .*1000"):
        LTAE(2, period=period)


def test_ltae_period_is_used_and_stored():
    """`period` replaces `T`: stored as a float, and it changes the encoding."""
    torch.manual_seed(0)
    enc = LTAE(2, d_model=32, n_head=4, mlp=(32,), period=365).eval()
    assert enc.period == 365.0 and not hasattr(enc, "T")
    x, days, mask = _inputs(3, 6, 2)
    with torch.no_grad():
        ref = enc(x, days, mask)
        enc.period = 1000.0
        assert not torch.allclose(enc(x, days, mask), ref, atol=1e-4)
    with pytest.raises(TypeError, match="'T'"):
        LTAE(2, T=1000)  # the former name is refused, not silently ignored


@pytest.mark.parametrize("name", list(NETS))
def test_bad_sizes_raise_config_error(name):
    """Non-positive sizes raise ConfigError naming the argument."""
    with pytest.raises(ConfigError, match="in_channels"):
        _encoder(name, 0, 8)
    if "n_dates" in inspect.signature(NETS[name]).parameters:
        with pytest.raises(ConfigError, match=r"`n_dates` must be a positive int, got 0"):
            _encoder(name, 2, 8, n_dates=0)
    assert issubclass(ConfigError, ValueError)


# ------------------------------------------------------------------ parameter counts


def _linear(i: int, o: int) -> int:
    return i * o + o


def _bn(n: int) -> int:
    return 2 * n


def _conv(i: int, o: int, k: int) -> int:
    return i * o * k + o


def _expected_mlp(t: int, c: int) -> int:
    return _linear(t * c, 256) + _bn(256) + _linear(256, 128) + _bn(128)


def _expected_ann(t: int, c: int) -> int:
    return _linear(t * c, 128)


def _expected_ssa(t: int, c: int) -> int:
    d = 64
    attention = _linear(d, 3 * d) + _linear(d, d)  # in-projection (q, k, v) + out-projection
    return _linear(c, d) + attention + 2 * d


def _expected_tempcnn(t: int, c: int) -> int:
    convs = _conv(c, 64, 5) + 2 * _conv(64, 64, 5) + 3 * _bn(64)
    return convs + _linear(64 * t, 256) + _bn(256)


EXPECTED = {
    "mlp": _expected_mlp,
    "ann": _expected_ann,
    "ssa": _expected_ssa,
    "tempcnn": _expected_tempcnn,
}
#: Parameters of the default head for features of width D and K classes.
EXPECTED_HEAD = {
    "mlp": lambda d, k: _linear(d, k),
    "ann": lambda d, k: _linear(d, k),
    "ssa": lambda d, k: _linear(d, 64) + _linear(64, k),
    "tempcnn": lambda d, k: _linear(d, k),
}


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("t,c,k", [(68, 1, 5), (149, 3, 13)])
def test_parameter_counts_match_formula_and_docstring(name, t, c, k):
    """Encoder and encoder + head counts equal the layer formula and appear in the docstring."""
    enc_expected = EXPECTED[name](t, c)
    total_expected = enc_expected + EXPECTED_HEAD[name](DEFAULT_OUT_DIM[name], k)
    net = _build(name, c, k, t)
    assert _n_params(net.encoder) == enc_expected
    assert _n_params(net) == total_expected
    doc = NETS[name].__doc__ or ""
    assert f"{enc_expected:,}" in doc, (name, enc_expected)
    assert f"{total_expected:,}" in doc, (name, total_expected)


def test_documented_reference_counts():
    """The totals quoted in the module docstrings for T=68, C=1, K=5 (unchanged by the split)."""
    total = {n: EXPECTED[n](68, 1) + EXPECTED_HEAD[n](DEFAULT_OUT_DIM[n], 5) for n in EXPECTED}
    assert total == {"mlp": 51_973, "ann": 9_477, "ssa": 21_381, "tempcnn": 1_158_021}


def test_mlp_and_ann_defaults_differ_as_documented():
    """MLP: two hidden layers, batch norm, dropout; ANN: one plain hidden layer."""
    mlp, ann = MLP(1, 68), _encoder("ann", 1, 68)
    assert mlp.hidden == (256, 128) and mlp.batch_norm and mlp.dropout == 0.2
    assert ann.hidden == (128,) and not ann.batch_norm and ann.dropout == 0.0
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.Dropout)) for m in ann.modules())
    assert sum(isinstance(m, nn.BatchNorm1d) for m in mlp.modules()) == 2
    assert sum(isinstance(m, nn.Dropout) for m in mlp.modules()) == 2
    # the ANN and its default head have no batch norm, so a training batch of one pixel works
    x, days, mask = _inputs(1, 68, 1)
    head = ClassifierHead(ann.out_dim, 5, **HEADS["ann"])
    assert head.train()(ann.train()(x, days, mask)).shape == (1, 5)


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
    """Each encoder + its default head learns a small timing-only problem in 100 Adam steps."""
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


# ------------------------------------------------------------------ end to end

#: Overrides that shrink each network for the end-to-end run.
SMALL = {
    "mlp": ["model.encoder.hidden=[16,8]"],
    "ann": ["model.encoder.hidden=[8]"],
    "ssa": ["model.encoder.d_model=16", "model.encoder.n_head=2", "model.head.hidden=[8]"],
    "tempcnn": ["model.encoder.filters=[8,8,8]", "model.encoder.dense=16"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMALL))
def test_train_experiment_on_tiny_data(make_cfg, tiny_dataset, name):
    """`train +experiment=<name>` runs prepare, fit, evaluate and infer on tiny data."""
    from i2dl.stages.train import run as run_train
    from tests.conftest import FAST

    cfg = make_cfg(f"+experiment={name}", *tiny_dataset["overrides"], *FAST, *SMALL[name])
    summary = run_train(cfg)
    assert summary["experiment"] == name
