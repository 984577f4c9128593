"""Tests of the models.ltae.LTAE encoder and models.base.SITSClassifier (CPU, fast)."""

from __future__ import annotations

import functools
import logging

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from i2dl.errors import ConfigError
from models import LTAE, ClassifierHead, SITSClassifier, criterion_monitor
from models.ltae import positional_encoding

#: A small LTAE encoder (out_dim 16) and the head of its classifier.
SMALL = dict(d_model=32, n_head=4, d_k=8, mlp=(32, 16), dropout=0.1)
SMALL_HEAD = dict(hidden=[16], batch_norm=True, dropout=0.0)


def _clf(n_classes: int, **kw) -> SITSClassifier:
    """A small LTAE classifier: encoder + head (the head built by SITSClassifier)."""
    return SITSClassifier(LTAE(2, **SMALL), functools.partial(ClassifierHead, **SMALL_HEAD),
                          n_classes, **kw)


def _inputs(b: int, t: int, c: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, c, generator=g)
    days = torch.sort(torch.randint(0, 365, (b, t), generator=g), dim=1).values
    mask = torch.rand(b, t, generator=g) > 0.2
    mask[:, 0] = True
    return x, days, mask


# --------------------------------------------------------------------------- LTAE


@pytest.mark.parametrize("t,c", [(7, 3), (68, 1), (68, 3), (1, 2)])
def test_ltae_default_forward_shape(t, c):
    """The default encoder returns (B, mlp[-1]) = (B, 128) features for any T and C."""
    torch.manual_seed(0)
    net = LTAE(in_channels=c)
    assert net.d_model == 256 and net.n_head == 16 and net.d_k == 8 and net.period == 1000.0
    assert net.out_dim == 128
    x, days, mask = _inputs(4, t, c)
    out = net(x, days, mask)
    assert out.shape == (4, 128)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    logits = ClassifierHead(net.out_dim, 5, hidden=[64, 32])(out)
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    att = net.attention_weights
    assert att is not None and att.shape == (4, 16, t)
    # attention sums to one over dates, zero on invalid dates
    torch.testing.assert_close(att.sum(-1), torch.ones(4, 16))
    assert (att.masked_select(~mask[:, None, :].expand_as(att)) == 0).all()


def test_ltae_float_days_accepted():
    net = LTAE(3, **SMALL).eval()
    x, days, mask = _inputs(2, 5, 3)
    out_int = net(x, days, mask)
    out_float = net(x, days.double() + 0.0, mask)
    torch.testing.assert_close(out_int, out_float)


def test_ltae_masked_dates_are_ignored():
    torch.manual_seed(1)
    net = LTAE(3, **SMALL).eval()
    x, days, mask = _inputs(5, 10, 3, seed=2)
    mask[:, 3] = False
    mask[:, 7] = False
    with torch.no_grad():
        ref = net(x, days, mask)

        x2, days2 = x.clone(), days.clone()
        x2[:, 3] = 1e3 * torch.randn(5, 3)
        x2[:, 7] = float("nan")
        days2[:, 3] = 9999
        days2[:, 7] = -50
        out = net(x2, days2, mask)
        assert torch.allclose(ref, out, atol=1e-6)

        # a valid date does matter (otherwise this test could not fail)
        x3 = x.clone()
        x3[:, 0] += 5.0
        assert not torch.allclose(ref, net(x3, days, mask), atol=1e-4)
        days3 = days.clone()
        days3[:, 0] += 100
        assert not torch.allclose(ref, net(x, days3, mask), atol=1e-4)


def test_ltae_all_invalid_sample_is_finite():
    torch.manual_seed(0)
    net = LTAE(2, **SMALL)
    x, days, mask = _inputs(4, 6, 2)
    mask[1] = False
    x[1] = float("nan")
    for mode in ("train", "eval"):
        net.train(mode == "train")
        out = net(x, days, mask)
        assert torch.isfinite(out).all()
        assert (net.attention_weights[1] == 0).all()
    # gradients stay finite too
    net.train()
    net(x, days, mask).sum().backward()
    for p in net.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_ltae_shape_errors():
    net = LTAE(3, **SMALL)
    x, days, mask = _inputs(2, 5, 3)
    with pytest.raises(ValueError, match=r"C=2 channels.*in_channels=3"):
        net(x[..., :2], days, mask)
    with pytest.raises(ValueError, match=r"`mask` shape \(2, 4\)"):
        net(x, days, mask[:, :4])
    with pytest.raises(ValueError, match=r"`days` shape \(5,\)"):
        net(x, days[0], mask)
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        net(x[0], days, mask)
    with pytest.raises(ValueError, match=r"bool"):
        net(x, days, mask.long())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(d_model=30, n_head=4, mlp=(30,)), "divisible by n_head"),
        (dict(d_model=32, n_head=4, mlp=(64, 16)), r"mlp\[0\]=64 must equal d_model=32"),
        (dict(n_head=0), "n_head"),
        (dict(d_k=2.5), "d_k"),
        (dict(dropout=1.0), "dropout"),
        (dict(period=0), r"`period` \(positional encoding period, days\) must be a number > 0"),
        (dict(period=-365.0), r"got -365.0; the L-TAE paper uses 1000"),
    ],
)
def test_ltae_bad_constructor_args(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LTAE(3, **kwargs)


def test_positional_encoding_matches_formula():
    d_model, n_head, period = 32, 4, 1000.0
    d_h = d_model // n_head
    days = np.array([[0, 1, 17, 365], [3, 100, 730, 1500]], dtype=np.int64)
    expected = np.zeros(days.shape + (d_h,))
    for b in range(days.shape[0]):
        for t in range(days.shape[1]):
            for i in range(d_h):
                angle = days[b, t] / period ** (2 * (i // 2) / d_h)
                expected[b, t, i] = np.sin(angle) if i % 2 == 0 else np.cos(angle)
    expected = np.tile(expected, (1, 1, n_head))
    got = positional_encoding(torch.from_numpy(days), d_model, n_head, period)
    assert got.shape == (2, 4, d_model) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_ltae_uses_positional_encoding_with_its_period():
    """The model's encoding equals positional_encoding(days, d_model, n_head, period)."""
    net = LTAE(2, period=500.0, **SMALL).eval()
    assert net.period == 500.0
    x, days, _ = _inputs(3, 4, 2)
    mask = torch.ones(3, 4, dtype=torch.bool)
    b, t, h = 3, 4, SMALL["n_head"]
    d_k = SMALL["d_k"]
    with torch.no_grad():
        got = net(x, days, mask)
        z = net.in_out_norm(net.inconv(net.in_norm(x)))
        z = z + positional_encoding(days, SMALL["d_model"], h, 500.0)
        k = net.key(z).view(b, t, h, d_k)
        attn = torch.softmax(torch.einsum("hd,bthd->bht", net.query, k) / d_k**0.5, dim=-1)
        pooled = torch.einsum("bht,bthc->bhc", attn, z.view(b, t, h, -1)).reshape(b, -1)
        torch.testing.assert_close(got, net.out_norm(net.mlp(pooled)))
        net.period = 1000.0
        assert not torch.allclose(net(x, days, mask), got)


def test_ltae_single_channel_input_is_used():
    """With C=1 the default model depends on x; the paper's input LayerNorm would not."""
    torch.manual_seed(0)
    x, days, mask = _inputs(4, 6, 1)
    x2 = x + 1.0
    net = LTAE(1, **SMALL).eval()
    with torch.no_grad():
        assert not torch.allclose(net(x, days, mask), net(x2, days, mask), atol=1e-4)
    net_ln = LTAE(1, input_layernorm=True, **SMALL).eval()
    with torch.no_grad():
        torch.testing.assert_close(net_ln(x, days, mask), net_ln(x2, days, mask))


# ------------------------------------------------------------------- SITSClassifier


class _Toy(Dataset):
    """Two separable classes: class 1 has values shifted up by 2."""

    def __init__(self, n: int, seed: int, t: int = 6, c: int = 2) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 2
        self.x = torch.randn(n, t, c, generator=g) + 2.0 * self.y[:, None, None]
        self.days = torch.sort(torch.randint(0, 365, (n, t), generator=g), dim=1).values
        self.mask = torch.rand(n, t, generator=g) > 0.1
        self.mask[:, 0] = True

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "days": self.days[i], "mask": self.mask[i], "y": self.y[i]}


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


@pytest.fixture(scope="module")
def trained():
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pl.seed_everything(0, verbose=False)
    model = _clf(
        2,
        optimizer=functools.partial(torch.optim.Adam, lr=5e-3),
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5),
    )
    train = DataLoader(_Toy(256, seed=1), batch_size=32, shuffle=True, drop_last=True)
    val = DataLoader(_Toy(128, seed=2), batch_size=64)
    trainer = _trainer(max_epochs=5)
    trainer.fit(model, train, val)
    return trainer, model, val


def test_classifier_trains_and_logs(trained):
    trainer, model, _ = trained
    m = trainer.callback_metrics
    for key in ("selection/fscore", "selection/oa", "selection/kappa", "selection/loss",
                "learn/loss", "learn/oa", "learn/kappa", "learn/fscore"):
        assert key in m, f"{key} missing from {sorted(m)}"
    assert m["selection/oa"] > 0.9
    assert m["selection/fscore"] > 0.9
    assert m["selection/loss"] < 0.5
    # the StepLR scheduler was stepped per epoch: 5 epochs, step 2 -> lr 5e-3 / 4
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(5e-3 / 4)


def test_classifier_predict(trained):
    trainer, model, val = trained
    probs = trainer.predict(model, DataLoader(_PredictOnly(val.dataset), batch_size=50))
    probs = torch.cat(probs)
    assert probs.shape == (128, 2) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(128))
    ds = val.dataset
    direct = model.predict_proba(ds.x, ds.days, ds.mask)
    torch.testing.assert_close(probs, direct)
    assert (direct.argmax(-1) == ds.y).float().mean() > 0.9


class _PredictOnly(Dataset):
    def __init__(self, ds: _Toy) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = dict(self.ds[i])
        del item["y"]
        return item


def test_predict_proba_restores_mode():
    model = _clf(3)
    model.train()
    x, days, mask = _inputs(4, 5, 2)
    p = model.predict_proba(x, days, mask)
    assert model.training and model.encoder.training and model.head.training
    assert p.shape == (4, 3) and not p.requires_grad


def test_checkpoint_round_trip(trained, tmp_path):
    trainer, model, val = trained
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    # torch.load(weights_only=True) must accept the checkpoint
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert hparams["n_classes"] == 2 and hparams["model_selection_criterion"] == "fscore"
    reloaded = _clf(2)
    reloaded.load_weights(path)
    assert not reloaded.training
    ds = val.dataset
    torch.testing.assert_close(
        reloaded.predict_proba(ds.x, ds.days, ds.mask),
        model.predict_proba(ds.x, ds.days, ds.mask),
        rtol=0,
        atol=0,
    )


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
def test_checkpoint_round_trip_with_class_weights(tmp_path):
    model = _clf(3, class_weights=torch.tensor([1.0, 2.0, 0.5]), model_selection_criterion="kappa")
    path = tmp_path / "w.ckpt"
    trainer = _trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(model, DataLoader(_Toy(16, seed=3), batch_size=8))
    trainer.save_checkpoint(path)
    reloaded = _clf(3, class_weights=[1.0, 1.0, 1.0])
    reloaded.load_weights(path)  # the weights are a buffer of the state dict
    torch.testing.assert_close(reloaded.class_weights, torch.tensor([1.0, 2.0, 0.5]))
    with pytest.raises(ValueError, match="does not match"):
        _clf(4).load_weights(path)
    with pytest.raises(ValueError, match="not found"):
        _clf(3).load_weights(tmp_path / "missing.ckpt")


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_class_weights_change_the_loss():
    torch.manual_seed(0)
    net = LTAE(2, **SMALL)
    head = ClassifierHead(net.out_dim, 2, **SMALL_HEAD)
    batch = _Toy(8, seed=4)[:]
    batch = {"x": batch["x"], "days": batch["days"], "mask": batch["mask"], "y": batch["y"]}
    plain = SITSClassifier(net, head, 2)
    weighted = SITSClassifier(net, head, 2, class_weights=[1.0, 10.0])
    net.eval()
    head.eval()
    logits = head(net(batch["x"], batch["days"], batch["mask"]))
    expected_plain = torch.nn.functional.cross_entropy(logits, batch["y"])
    expected_w = torch.nn.functional.cross_entropy(
        logits, batch["y"], weight=torch.tensor([1.0, 10.0])
    )
    assert not torch.allclose(expected_plain, expected_w)
    torch.testing.assert_close(plain._shared_step(batch, "val"), expected_plain)
    torch.testing.assert_close(weighted._shared_step(batch, "val"), expected_w)


def test_criterion_monitor():
    assert criterion_monitor("fscore") == ("selection/fscore", "max")
    assert criterion_monitor("oa") == ("selection/oa", "max")
    assert criterion_monitor("kappa") == ("selection/kappa", "max")
    assert criterion_monitor("loss") == ("selection/loss", "min")
    with pytest.raises(ValueError, match=r"'f1'.*\['fscore', 'kappa', 'loss', 'oa'\]"):
        criterion_monitor("f1")


def test_invalid_classifier_args():
    with pytest.raises(ValueError, match="model_selection_criterion='accuracy'"):
        _clf(2, model_selection_criterion="accuracy")
    with pytest.raises(ValueError, match="class_weights has 3 values but n_classes=2"):
        _clf(2, class_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="n_classes"):
        _clf(0)
    with pytest.raises(ValueError, match="out_dim"):
        SITSClassifier(torch.nn.Linear(2, 3), ClassifierHead(3, 2), 2)


def test_missing_batch_key():
    model = _clf(2)
    x, days, mask = _inputs(3, 4, 2)
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['y'\]"):
        model.training_step({"x": x, "days": days, "mask": mask}, 0)


def test_reduce_on_plateau_monitors_criterion():
    model = _clf(
        2,
        scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode="min"),
        model_selection_criterion="loss",
    )
    conf = model.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.Adam)
    assert conf["optimizer"].param_groups[0]["lr"] == 1e-3
    assert conf["lr_scheduler"]["monitor"] == "selection/loss"
    assert conf["lr_scheduler"]["interval"] == "epoch"


def test_class_weights_as_numpy_array_are_accepted() -> None:
    """The pipeline passes balanced weights as a NumPy array (datamodule.class_weights)."""
    weights = np.array([0.5, 2.0, 1.0], dtype=np.float32)
    module = _clf(3, class_weights=weights)
    assert module.hparams["class_weights"] == [0.5, 2.0, 1.0]
    assert torch.equal(module.class_weights, torch.tensor([0.5, 2.0, 1.0]))
