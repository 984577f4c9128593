"""Tests of the training recipe (issue 9): AdamW and its parameter groups, the warm-up +
cosine schedule, label smoothing, LTAE attention dropout, gradient clipping and the
augmentation of pixel series. Each test checks that an option changes behaviour as
documented (CPU, fast)."""

from __future__ import annotations

import functools
import logging
import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from torch.nn import functional as F
from torch.utils.data import DataLoader

from i2dl.errors import ConfigError
from i2dl.training.build import DataDims, build_classifier
from models import LTAE, ClassifierHead, SITSClassifier
from models.augment import SeriesAugmentation, drop_dates, jitter, mask_block, shift_days
from models.schedule import warmup_cosine, warmup_cosine_factor
from tests.test_models import _Toy
from tests.test_networks import _inputs as random_inputs

SMALL = dict(d_model=32, n_head=4, d_k=8, mlp=(32, 16), dropout=0.0)
SMALL_HEAD = dict(hidden=[16], batch_norm=True, dropout=0.0)
DEEP = ["ltae", "ssa", "tempcnn", "mlp", "ann"]


def _clf(n_classes: int = 3, c: int = 2, **kw) -> SITSClassifier:
    torch.manual_seed(0)
    return SITSClassifier(LTAE(c, **SMALL), functools.partial(ClassifierHead, **SMALL_HEAD),
                          n_classes, **kw)


#: random (x, days, mask), 30 % invalid dates by default
_inputs = functools.partial(random_inputs, p_invalid=0.3)


def _batch(b: int = 8, t: int = 6, c: int = 2, k: int = 3, seed: int = 0) -> dict:
    x, days, mask = _inputs(b, t, c, seed)
    return {"x": x, "days": days, "mask": mask, "y": torch.arange(b) % k}


# ----------------------------------------------------------------- schedule


def test_warmup_cosine_follows_the_formula():
    """Warm-up 10 of 100 steps, final ratio 0.01: values computed by hand."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = warmup_cosine(opt, total_steps=100, warmup_fraction=0.1, min_lr_ratio=0.01)
    lrs = []
    for _ in range(101):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1 * 1 / 10)  # first step: 1/10 of the rate, not 0
    assert lrs[4] == pytest.approx(0.1 * 5 / 10)
    assert lrs[9] == pytest.approx(0.1)  # end of the warm-up
    assert lrs[10] == pytest.approx(0.1)  # cosine starts at the full rate
    assert lrs[55] == pytest.approx(0.1 * (0.01 + 0.99 * 0.5))  # half-way: mean of the ends
    assert lrs[100] == pytest.approx(0.1 * 0.01)  # the end: min_lr_ratio
    # warm-up increasing, then decay non-increasing
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_warmup_cosine_without_warmup_and_after_the_end():
    assert warmup_cosine_factor(0, 10, 0, 0.0) == pytest.approx(1.0)
    assert warmup_cosine_factor(10, 10, 0, 0.0) == pytest.approx(0.0)
    assert warmup_cosine_factor(25, 10, 0, 0.2) == pytest.approx(0.2)  # stays at the floor


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(total_steps=0), "total_steps must be a positive int"),
        (dict(total_steps=10.0), "total_steps must be a positive int"),
        (dict(total_steps=10, warmup_fraction=1.0), r"warmup_fraction must be in \[0, 1\)"),
        (dict(total_steps=10, min_lr_ratio=-0.1), r"min_lr_ratio must be in \[0, 1\]"),
    ],
)
def test_warmup_cosine_bad_arguments(kwargs, match):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match=match):
        warmup_cosine(opt, **kwargs)


def test_step_schedulers_get_the_trainer_steps():
    """A factory with `total_steps` gets estimated_stepping_batches and interval 'step'."""
    model = _clf(scheduler=functools.partial(warmup_cosine, warmup_fraction=0.1))
    model.trainer = SimpleNamespace(estimated_stepping_batches=40)
    conf = model.configure_optimizers()
    assert conf["lr_scheduler"]["interval"] == "step"
    lam = conf["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert lam(3) == pytest.approx(warmup_cosine_factor(3, 40, 4, 0.01)) == pytest.approx(1.0)
    assert lam(40) == pytest.approx(0.01)

    one_cycle = _clf(scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.01))
    one_cycle.trainer = SimpleNamespace(estimated_stepping_batches=40)
    conf = one_cycle.configure_optimizers()
    assert conf["lr_scheduler"]["interval"] == "step"
    assert conf["lr_scheduler"]["scheduler"].total_steps == 40

    # a bound total_steps is left alone; an epoch scheduler stays per epoch
    bound = _clf(scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.01,
                                             total_steps=7))
    bound.trainer = SimpleNamespace(estimated_stepping_batches=40)
    assert bound.configure_optimizers()["lr_scheduler"]["scheduler"].total_steps == 7
    epoch = _clf(scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2))
    assert epoch.configure_optimizers()["lr_scheduler"]["interval"] == "epoch"


def test_step_scheduler_needs_a_finite_number_of_steps():
    model = _clf(scheduler=functools.partial(warmup_cosine))
    model.trainer = SimpleNamespace(estimated_stepping_batches=float("inf"))
    with pytest.raises(ConfigError, match="trainer.max_epochs or trainer.max_steps"):
        model.configure_optimizers()


class _LrRecorder(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
def test_warmup_cosine_is_stepped_per_optimizer_step_in_fit():
    """2 epochs x 4 batches = 8 steps, 2 of warm-up: the lr of each batch follows the formula."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pl.seed_everything(0, verbose=False)
    model = _clf(2, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
                 scheduler=functools.partial(warmup_cosine, warmup_fraction=0.25,
                                             min_lr_ratio=0.1))
    recorder = _LrRecorder()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(model, DataLoader(_Toy(32, seed=1), batch_size=8))
    expected = [1e-2 * warmup_cosine_factor(s, 8, 2, 0.1) for s in range(8)]
    assert recorder.lrs == pytest.approx(expected)
    assert expected[0] == pytest.approx(5e-3) and expected[1] == pytest.approx(1e-2)
    # after the last step: the floor, 0.1 of the rate
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3)


# ---------------------------------------------------------------- optimiser


def test_no_weight_decay_on_biases_and_norms():
    model = _clf(optimizer=functools.partial(torch.optim.AdamW, weight_decay=0.05),
                 decay_bias_and_norm=False)
    opt = model.configure_optimizers()
    assert type(opt) is torch.optim.AdamW
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(q.ndim >= 2 for q in decay["params"])
    assert all(q.ndim < 2 for q in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    # the LTAE master queries (H, d_k) are decayed, LayerNorm weights are not
    ids = {id(q) for q in no_decay["params"]}
    assert id(model.encoder.query) not in ids and id(model.encoder.out_norm.weight) in ids

    same = _clf(optimizer=functools.partial(torch.optim.AdamW, weight_decay=0.05))
    (group,) = same.configure_optimizers().param_groups
    assert group["weight_decay"] == 0.05


# ----------------------------------------------------------- label smoothing


def _smoothed_ce(logits: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """-sum_k q_k log p_k with q = (1 - eps) one_hot(y) + eps / K, batch mean."""
    k = logits.shape[1]
    q = (1 - eps) * F.one_hot(y, k).float() + eps / k
    return -(q * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_label_smoothing_changes_the_learn_loss_only():
    batch = _batch()
    model = _clf(3, label_smoothing=0.2).eval()
    with torch.no_grad():
        logits = model(batch["x"], batch["days"], batch["mask"])
        plain = F.cross_entropy(logits, batch["y"])
        smooth = _smoothed_ce(logits, batch["y"], 0.2)
        learn = model._shared_step(batch, "learn")
        selection = model._shared_step(batch, "selection")
    assert abs(float(smooth - plain)) > 1e-3
    torch.testing.assert_close(learn, smooth)
    torch.testing.assert_close(selection, plain)  # selection/loss: the plain cross-entropy
    # eps = 0 is the plain loss
    model0 = _clf(3).eval()
    with torch.no_grad():
        torch.testing.assert_close(model0._shared_step(batch, "learn"), plain)


@pytest.mark.parametrize("value", [-0.1, 1.0, "a", True, None])
def test_bad_label_smoothing(value):
    with pytest.raises(ConfigError, match="label_smoothing must be a number in"):
        _clf(label_smoothing=value)


# -------------------------------------------------------- attention dropout


def test_ltae_attention_dropout_is_active_in_train_mode_only():
    x, days, mask = _inputs(6, 9, 2)
    torch.manual_seed(0)
    with_drop = LTAE(2, attention_dropout=0.5, **SMALL)
    without = LTAE(2, **SMALL)
    without.load_state_dict(with_drop.state_dict())  # no parameter of its own
    assert with_drop.attention_dropout.p == 0.5 and without.attention_dropout.p == 0.0
    with torch.no_grad():
        # eval mode first (train-mode calls update the BatchNorm running statistics)
        with_drop.eval()
        without.eval()
        torch.testing.assert_close(with_drop(x, days, mask), without(x, days, mask))
        with_drop.train()
        without.train()
        a, b = with_drop(x, days, mask), with_drop(x, days, mask)
        assert not torch.allclose(a, b, atol=1e-5)  # a new dropout draw each call
        # reported attention is the softmax before dropout: rows still sum to 1
        torch.testing.assert_close(with_drop.attention_weights.sum(-1), torch.ones(6, 4))
        torch.testing.assert_close(without(x, days, mask), without(x, days, mask))


def test_ltae_attention_dropout_drops_attention_weights():
    """The dropout sits on the (B, H, T) attention weights; masked dates stay at 0."""
    x, days, mask = _inputs(4, 7, 2)
    net = LTAE(2, attention_dropout=0.5, **SMALL).train()
    seen = {}
    net.attention_dropout.register_forward_hook(
        lambda m, inp, out: seen.update(inp=inp[0], out=out)
    )
    net(x, days, mask)
    assert seen["inp"].shape == (4, 4, 7)
    dropped = (seen["out"] == 0) & (seen["inp"] > 0)
    assert dropped.any()
    kept = seen["out"] != 0
    torch.testing.assert_close(seen["out"][kept], 2.0 * seen["inp"][kept])
    assert (seen["out"].masked_select(~mask[:, None, :].expand(4, 4, 7)) == 0).all()


# --------------------------------------------------------------- augmentation


def test_drop_dates_keeps_one_valid_date_per_pixel():
    torch.manual_seed(0)
    _, _, mask = _inputs(2000, 12, 1, p_invalid=0.3)
    mask[5] = False  # a pixel without any valid date stays without
    for p in (0.3, 0.95):
        out = drop_dates(mask, p)
        assert out.dtype == torch.bool and out.shape == mask.shape
        assert not (out & ~mask).any()  # only valid dates are dropped
        assert (out.sum(1) >= 1)[mask.any(1)].all()
        assert not out[5].any()
    out = drop_dates(mask, 0.3)
    frac = 1 - out.sum() / mask.sum()
    assert 0.27 < float(frac) < 0.33  # about p of the valid dates
    # with p close to 1 most pixels are left with exactly the one restored date
    heavy = drop_dates(mask, 0.95)
    assert (heavy.sum(1) == 1).float().mean() > 0.4
    assert drop_dates(mask, 0.0) is mask


def test_restored_date_is_a_random_valid_date():
    torch.manual_seed(0)
    mask = torch.zeros(4000, 5, dtype=torch.bool)
    mask[:, [1, 3]] = True
    out = drop_dates(mask, 0.999)
    share_1 = out[:, 1].float().mean()
    assert not out[:, [0, 2, 4]].any()
    assert 0.4 < float(share_1) < 0.6


def test_mask_block_masks_one_contiguous_run_of_bounded_length():
    torch.manual_seed(0)
    n, t = 4000, 20
    mask = torch.ones(n, t, dtype=torch.bool)
    out = mask_block(mask, 0.25)  # up to floor(0.25 * 20) = 5 dates
    masked = ~out
    lengths = masked.sum(1)
    assert set(lengths.tolist()) == set(range(6))  # uniform on 0..5
    assert abs(float(lengths.float().mean()) - 2.5) < 0.15
    # one contiguous run: the masked dates of a pixel span exactly their count
    idx = torch.arange(t).expand(n, t)
    first = torch.where(masked, idx, t).min(1).values
    last = torch.where(masked, idx, -1).max(1).values
    some = lengths > 0
    assert torch.equal((last - first + 1)[some], lengths[some])
    # every start is drawn, the first and the last date are both masked sometimes
    assert masked[:, 0].any() and masked[:, -1].any()
    assert mask_block(mask, 0.0) is mask


def test_mask_block_keeps_a_valid_date_and_masks_only_valid_dates():
    torch.manual_seed(1)
    mask = torch.zeros(3000, 4, dtype=torch.bool)
    mask[:, 1] = True  # a single valid date: always restored if masked
    mask[7] = False  # no valid date: stays without
    out = mask_block(mask, 0.99)
    assert not (out & ~mask).any()
    assert torch.equal(out[mask.any(1)], mask[mask.any(1)]) and not out[7].any()


def test_jitter_adds_noise_of_the_given_std_at_valid_dates():
    torch.manual_seed(0)
    x, _, mask = _inputs(500, 10, 3)
    x = torch.where(mask[..., None], x, torch.zeros(()))
    out = jitter(x, mask, 0.03)
    delta = (out - x)[mask]
    assert (out - x)[~mask].abs().max() == 0  # invalid dates keep their 0
    assert float(delta.std()) == pytest.approx(0.03, rel=0.05)
    assert abs(float(delta.mean())) < 0.003
    assert jitter(x, mask, 0.0) is x


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32])
def test_shift_days_moves_each_pixel_by_one_integer(dtype):
    torch.manual_seed(0)
    _, days, _ = _inputs(400, 8, 1)
    days = days.to(dtype)
    out = shift_days(days, 5)
    assert out.dtype == dtype
    delta = (out - days).double()
    assert (delta == delta[:, :1]).all()  # the same shift for every date of a pixel
    assert (delta == delta.round()).all() and delta.abs().max() <= 5
    assert set(delta[:, 0].long().tolist()) == set(range(-5, 6))  # uniform on [-5, 5]
    assert shift_days(days, 0) is days


def test_augmentation_module_is_a_no_op_in_eval_mode():
    x, days, mask = _inputs(16, 8, 2)
    aug = SeriesAugmentation(date_dropout=0.5, jitter=0.1, time_shift=3, time_mask=0.3)
    aug.eval()
    assert aug(x, days, mask) == (x, days, mask)
    aug.train()
    torch.manual_seed(0)
    x2, days2, mask2 = aug(x, days, mask)
    assert not torch.equal(mask2, mask) and not torch.equal(x2, x)
    assert not torch.equal(days2, days)
    # seeded through torch's RNG: the same seed gives the same augmentation
    torch.manual_seed(0)
    x3, days3, mask3 = aug(x, days, mask)
    assert torch.equal(x2, x3) and torch.equal(days2, days3) and torch.equal(mask2, mask3)
    assert SeriesAugmentation(time_mask=0.3).active
    off = SeriesAugmentation().train()
    assert not off.active and off(x, days, mask) == (x, days, mask)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(date_dropout=1.0), r"date_dropout must be in \[0, 1\)"),
        (dict(jitter=-0.1), "jitter .* must be a finite number >= 0"),
        (dict(jitter=float("inf")), "jitter"),
        (dict(time_shift=2.5), r"time_shift \(days\) must be an int >= 0"),
        (dict(time_shift=-1), "time_shift"),
        (dict(date_dropout="x"), "must be numbers"),
        (dict(time_mask=1.0), r"time_mask .* must be in \[0, 1\)"),
        (dict(time_mask="x"), "time_mask"),
    ],
)
def test_bad_augmentation_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SeriesAugmentation(**kwargs)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_augmentation_runs_in_training_step_only():
    """The encoder sees augmented inputs in training_step, the batch's own in validation
    and prediction; the augmentation adds nothing to the checkpoint."""
    batch = _batch(b=64, t=10)
    model = _clf(3, augmentation={"date_dropout": 0.5, "jitter": 0.1, "time_shift": 4})
    assert isinstance(model.augmentation, SeriesAugmentation)
    assert not any(k.startswith("augmentation") for k in model.state_dict())
    seen: list[tuple[torch.Tensor, ...]] = []
    model.encoder.register_forward_pre_hook(lambda m, args: seen.append(args))

    model.train()
    model.training_step(batch, 0)
    x, days, mask = seen[-1]
    assert not torch.equal(mask, batch["mask"]) and not (mask & ~batch["mask"]).any()
    assert (mask.sum(1) >= 1).all()
    assert not torch.equal(x, batch["x"])
    shift = days - batch["days"]
    assert (shift == shift[:, :1]).all() and shift.abs().max() <= 4 and shift.abs().max() > 0

    model.eval()
    model.validation_step(batch, 0)
    for got, ref in zip(seen[-1], (batch["x"], batch["days"], batch["mask"]), strict=True):
        assert torch.equal(got, ref)
    model.train()  # predict_proba switches to eval mode itself
    model.predict_proba(batch["x"], batch["days"], batch["mask"])
    for got, ref in zip(seen[-1], (batch["x"], batch["days"], batch["mask"]), strict=True):
        assert torch.equal(got, ref)
    model.predict_step(batch, 0)  # in train mode too: predict never augments
    for got, ref in zip(seen[-1], (batch["x"], batch["days"], batch["mask"]), strict=True):
        assert torch.equal(got, ref)


def test_bad_augmentation_type():
    with pytest.raises(ConfigError, match="augmentation must be"):
        _clf(augmentation=0.1)
    with pytest.raises(ConfigError, match="date_dropout"):
        _clf(augmentation={"date_dropout": 2.0})


# ------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", DEEP)
def test_deep_configs_build_the_recipe(make_cfg, name):
    # defaults chosen by 5-fold cross-validation (docs/results.md): AdamW, attention dropout
    # and clipping on; schedule and smoothing off; augmentation on in the LTAE only (date
    # dropout and jitter, "Regularising the LTAE"), off in the others
    default = build_classifier(make_cfg(f"+experiment={name}").model,
                               DataDims(n_channels=2, n_dates=7, n_classes=3))
    assert isinstance(default, SITSClassifier) and default.label_smoothing == 0.0
    if name == "ltae":
        aug = default.augmentation
        assert isinstance(aug, SeriesAugmentation) and aug.active
        assert aug.date_dropout == pytest.approx(0.1) and aug.jitter == pytest.approx(0.03)
        assert aug.time_shift == 0
    else:
        assert default.augmentation is None or not default.augmentation.active
    opt = default.configure_optimizers()
    assert type(opt) is torch.optim.AdamW  # constant lr: the optimiser alone
    cfg = make_cfg(f"+experiment={name}", *RECIPE_ON)
    model = build_classifier(cfg.model, DataDims(n_channels=2, n_dates=7, n_classes=3))
    assert isinstance(model, SITSClassifier)
    assert model.label_smoothing == pytest.approx(0.1)
    assert isinstance(model.augmentation, SeriesAugmentation) and model.augmentation.active
    assert model.augmentation.time_shift == 5
    model.trainer = SimpleNamespace(estimated_stepping_batches=100)
    conf = model.configure_optimizers()
    opt = conf["optimizer"]
    assert type(opt) is torch.optim.AdamW
    # TempCNN: the paper's 1e-6; LTAE: sits' 1e-6 (issue 20); the others torch's 1e-2
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(
        1e-6 if name in ("tempcnn", "ltae") else 1e-2
    )
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert conf["lr_scheduler"]["interval"] == "step"
    lam = conf["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert lam(0) == pytest.approx(1 / 5) and lam(100) == pytest.approx(0.01)
    if name == "ltae":
        assert model.encoder.attention_dropout.p == pytest.approx(0.1)
    if name == "ssa":
        assert model.encoder.attention.dropout == pytest.approx(0.1)


#: The schedule, smoothing and augmentation switched on from the command line.
RECIPE_ON = [
    "model.scheduler={_target_:models.schedule.warmup_cosine,_partial_:true,"
    "warmup_fraction:0.05,min_lr_ratio:0.01}",
    "model.label_smoothing=0.1",
    "model.augmentation.date_dropout=0.1",
    "model.augmentation.jitter=0.03",
    "model.augmentation.time_shift=5",
]


@pytest.mark.parametrize("name", DEEP)
def test_every_recipe_part_switches_off_from_the_command_line(make_cfg, name):
    overrides = [
        f"+experiment={name}",
        "model.scheduler=null",
        "model.augmentation=null",
        "model.label_smoothing=0",
        "model.optimizer.weight_decay=0",
        "model.decay_bias_and_norm=true",
        "trainer.gradient_clip_val=null",
    ]
    if name in ("ltae", "ssa"):
        overrides.append("model.encoder.attention_dropout=0")
    cfg = make_cfg(*overrides)
    model = build_classifier(cfg.model, DataDims(n_channels=2, n_dates=7, n_classes=3))
    assert model.augmentation is None and model.label_smoothing == 0.0
    opt = model.configure_optimizers()  # no scheduler: the optimiser alone, one group
    assert isinstance(opt, torch.optim.Optimizer) and len(opt.param_groups) == 1
    assert cfg.trainer.gradient_clip_val is None
    cfg = make_cfg(f"+experiment={name}", *RECIPE_ON, "model.augmentation.date_dropout=0.3",
                   "model.scheduler.warmup_fraction=0.2")
    model = build_classifier(cfg.model, DataDims(n_channels=2, n_dates=7, n_classes=3))
    assert model.augmentation.date_dropout == pytest.approx(0.3)


def test_trainer_config_clips_gradients(make_cfg):
    cfg = make_cfg("trainer.accelerator=cpu")
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.gradient_clip_algorithm == "norm"
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    assert trainer.gradient_clip_val == 1.0 and trainer.gradient_clip_algorithm == "norm"


class _GradNorm(pl.Callback):
    """Global gradient norm of each step, after Lightning's clipping (gradients are kept
    until the next step zeroes them)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = [q.grad.norm() for q in pl_module.parameters() if q.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack(grads))))


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
def test_ltae_config_trains_with_the_whole_recipe(make_cfg, tmp_path):
    """The default LTAE config (shrunk) fits a few steps with the trainer config: clipping
    holds the gradient norm at its value, the loss stays finite, and the checkpoint (with
    the LambdaLR state) reloads with torch.load(weights_only=True)."""
    from tests.conftest import FAST, SMALL_LTAE

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    cfg = make_cfg("+experiment=ltae", *FAST, *SMALL_LTAE, *RECIPE_ON,
                   "trainer.gradient_clip_val=0.01")
    pl.seed_everything(0, verbose=False)
    model = build_classifier(cfg.model, DataDims(n_channels=2, n_dates=6, n_classes=2))
    norms = _GradNorm()
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[norms],
                          enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, DataLoader(_Toy(64, seed=1), batch_size=16))
    assert trainer.lr_scheduler_configs[0].interval == "step"
    assert len(norms.norms) == 8
    assert max(norms.norms) == pytest.approx(0.01, rel=1e-3)  # clipped to gradient_clip_val
    assert math.isfinite(float(trainer.callback_metrics["learn/loss"]))
    trainer.save_checkpoint(tmp_path / "best.ckpt")
    reloaded = build_classifier(cfg.model, DataDims(n_channels=2, n_dates=6, n_classes=2))
    reloaded.load_weights(tmp_path / "best.ckpt")
    ds = _Toy(16, seed=2)
    torch.testing.assert_close(reloaded.predict_proba(ds.x, ds.days, ds.mask),
                               model.predict_proba(ds.x, ds.days, ds.mask))


# ----------------------------------------------------------------- LTAE projection norm


def test_ltae_series_norm_matches_a_direct_computation():
    torch.manual_seed(0)
    enc = LTAE(2, **SMALL, projection_norm="series").eval()
    with torch.no_grad():
        enc.series_scale.uniform_(0.5, 2.0)
        enc.series_shift.uniform_(-1.0, 1.0)
    x, days, mask = _inputs(4, 6, 2, p_invalid=0.4)
    z = enc.inconv(x)  # (B, T, D), the projection before the normalisation
    got = enc._series_norm(z, mask.unsqueeze(-1))
    for b in range(4):
        zb = z[b][mask[b]].detach().double()  # (t_valid, D)
        want = (zb - zb.mean()) / torch.sqrt(zb.var(unbiased=False) + 1e-5)
        want = want * enc.series_scale.double() + enc.series_shift.double()
        torch.testing.assert_close(got[b][mask[b]].double(), want, rtol=1e-4, atol=1e-4)
        assert (got[b][~mask[b]] == 0).all()


def test_ltae_date_norm_loses_the_profile_of_a_single_channel_and_series_norm_keeps_it():
    """C = 1, no bias: a LayerNorm per date maps every positive value to the same vector, so
    doubling one date changes nothing; the series normalisation keeps the temporal profile."""
    x, days, mask = _inputs(3, 5, 1, p_invalid=0.0)
    x = x.abs() + 0.1
    x2 = x.clone()
    x2[:, 2] *= 2.0  # one date twice as bright, same sign
    outs = {}
    for norm in ("date", "series"):
        torch.manual_seed(0)
        enc = LTAE(1, **SMALL, projection_norm=norm).eval()
        with torch.no_grad():
            enc.inconv.bias.zero_()
        outs[norm] = (enc(x, days, mask), enc(x2, days, mask))
    torch.testing.assert_close(outs["date"][0], outs["date"][1])
    assert (outs["series"][0] - outs["series"][1]).abs().max() > 1e-3


def test_ltae_bad_projection_norm():
    with pytest.raises(ConfigError, match="projection_norm"):
        LTAE(2, **SMALL, projection_norm="batch")
