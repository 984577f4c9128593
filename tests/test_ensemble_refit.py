"""Issue 20: the LTAE's per-date input MLP, the refit on all labels, deep ensembles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from i2dl.errors import ConfigError, StoreError
from i2dl.io.layout import read_fit_state
from i2dl.samples.store import LEARN, SELECTION
from models import LTAE, ClassifierHead, DeepEnsemble, SITSClassifier, member_seed
from tests.conftest import FAST, SMALL_LTAE, masked_series


def _net(seed: int, c: int = 2, k: int = 3) -> SITSClassifier:
    torch.manual_seed(seed)
    enc = LTAE(c, d_model=16, n_head=4, d_k=4, mlp=[16, 8], input_mlp=[8, 12])
    return SITSClassifier(enc, ClassifierHead(enc.out_dim, k, hidden=[8]), k)


def _batch(c: int = 2) -> tuple[torch.Tensor, ...]:
    return masked_series(b=6, t=7, c=c, step_days=10, seed=0)


def test_input_mlp_ignores_masked_dates_and_keeps_the_magnitude_of_one_channel() -> None:
    torch.manual_seed(0)
    enc = LTAE(1, d_model=16, n_head=4, d_k=4, mlp=[16, 8], input_mlp=[8, 16]).eval()
    x, days, mask = _batch(c=1)
    out = enc(x, days, mask)
    assert out.shape == (6, 8)
    x2 = x.clone()
    x2[~mask] = float("nan")  # whatever an invalid date holds has no effect
    assert torch.allclose(enc(x2, days, mask), out, atol=1e-6)
    # One channel: what the attention reads of a date is LayerNorm(inconv(x)). Without the
    # MLP the date vectors of every x lie in a plane (span of the centred weight and bias:
    # rank <= 2, saturating to two directions for large |x|); the per-date MLP bends them
    # out of it, so dates of different values stay distinguishable.
    torch.manual_seed(0)
    plain = LTAE(1, d_model=16, n_head=4, d_k=4, mlp=[16, 8]).eval()
    values = torch.linspace(-3, 3, 50).unsqueeze(-1)  # (50, 1) normalised values
    with torch.no_grad():
        z_plain = plain.in_out_norm(plain.inconv(values))
        assert enc.input_mlp is not None
        z_mlp = enc.in_out_norm(enc.inconv(enc.input_mlp(values)))
    assert torch.linalg.matrix_rank(z_plain, rtol=1e-4) <= 2
    assert torch.linalg.matrix_rank(z_mlp, rtol=1e-4) >= 4


def test_input_mlp_bad_width_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="input_mlp"):
        LTAE(2, d_model=16, n_head=4, mlp=[16, 8], input_mlp=[8, 0])


def test_ensemble_averages_member_probabilities_and_round_trips(tmp_path: Path) -> None:
    members = [_net(1), _net(2), _net(3)]
    ens = DeepEnsemble(members)
    x, days, mask = _batch()
    p = ens.predict_proba(x, days, mask)
    expected = torch.stack([m.predict_proba(x, days, mask) for m in members]).mean(0)
    assert torch.allclose(p, expected, atol=1e-6)
    assert torch.allclose(p.sum(1), torch.ones(len(x)), atol=1e-5)
    # the members differ, so the average is not any one of them
    assert not torch.allclose(p, members[0].predict_proba(x, days, mask), atol=1e-4)
    assert torch.allclose(ens.eval()(x, days, mask).softmax(-1), p, atol=1e-5)
    path = ens.save(tmp_path / "ensemble.ckpt")
    other = DeepEnsemble([_net(7), _net(8), _net(9)])
    other.load_weights(path)
    assert torch.allclose(other.predict_proba(x, days, mask), p, atol=1e-6)
    with pytest.raises(StoreError, match="does not match 2 members"):
        DeepEnsemble([_net(7), _net(8)]).load_weights(path)


def test_ensemble_refuses_non_networks_and_member_seeds_keep_the_run_seed() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        DeepEnsemble([])
    with pytest.raises(ConfigError, match="deep networks"):
        DeepEnsemble([torch.nn.Linear(2, 2)])  # type: ignore[list-item]
    assert member_seed(3, 0) == 3
    assert len({member_seed(3, i) for i in range(5)}) == 5


def test_refit_trains_on_learn_and_selection_for_the_chosen_epochs(
    make_cfg, tiny_dataset: dict
) -> None:
    from i2dl.stages.train import run as run_train

    cfg = make_cfg("+experiment=ltae", *FAST, *SMALL_LTAE, *tiny_dataset["overrides"],
                   "trainer.max_epochs=3", "refit=true", "infer.chunk_size=16",
                   # the plain refit (SWA adds a BatchNorm pass: test_swa_refit_... below)
                   "callbacks.swa.enabled=false")
    summary = run_train(cfg)
    run = Path(cfg.paths.output_dir)
    state = read_fit_state(run)
    assert state is not None and state["best"] == "refit.ckpt"
    assert state["selected"] == "best.ckpt" and 0 <= state["selected_epoch"] < 3
    selected = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    refit = torch.load(run / "checkpoints" / "refit.ckpt", weights_only=True)
    assert selected["epoch"] == state["selected_epoch"]
    # trained for exactly the chosen number of epochs
    assert refit["epoch"] == state["selected_epoch"] + 1
    # a new network: not the selected one's weights
    key = next(k for k in refit["state_dict"] if k.endswith("inconv.weight"))
    assert not torch.equal(refit["state_dict"][key], selected["state_dict"][key])
    # ...trained on the learn and selection rows: the refit's batches count both splits
    from datamodules import PixelSeriesDataModule

    dm = PixelSeriesDataModule(store_path=summary["store"], batch_size=4)
    n_learn = dm.dataset(LEARN).n_samples
    dm.use_all_labels()
    assert dm.dataset(dm.train_splits).n_samples == n_learn + dm.dataset(SELECTION).n_samples
    # evaluate scored the refit model on val; the map exists
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["oa"] == pytest.approx(summary["oa"])
    assert (run / "maps" / "classif.tif").is_file()


def test_refit_epoch_count_averages_the_selection_curve_over_a_centred_window() -> None:
    from i2dl.training.loops import refit_epoch_count

    # a spike at epoch 1 and a plateau at epochs 5-7
    curve = [0.2, 0.9, 0.3, 0.3, 0.6, 0.7, 0.7, 0.65, 0.5]
    epochs = list(range(9))
    assert refit_epoch_count(curve, epochs, "max", 1) == 2  # the spike: epoch 1, counted from 1
    # window 3: epoch 6 has the best mean (0.6 + 0.7 + 0.7) / 3; the spike's is 1.4 / 3
    assert refit_epoch_count(curve, epochs, "max", 3) == 7
    # window 5, truncated at the ends: epoch 7's mean is (0.7 + 0.7 + 0.65 + 0.5) / 4
    assert refit_epoch_count(curve, epochs, "max", 5) == 8
    # loss: the lowest mean; NaN scores are left out of the means
    assert refit_epoch_count([2.0, float("nan"), 0.5, 0.6, 3.0], epochs[:5], "min", 3) == 3
    # a score not logged is null in selection_curve.json: None, read as NaN
    assert refit_epoch_count([2.0, None, 0.5, 0.6, 3.0], epochs[:5], "min", 3) == 3
    # epochs as recorded (a resumed curve starts where it was), ties -> the first
    assert refit_epoch_count([0.5, 0.5], [4, 5], "max", 1) == 5
    for window in (0, 2):
        with pytest.raises(ConfigError, match="odd integer"):
            refit_epoch_count(curve, epochs, "max", window)
    with pytest.raises(ConfigError, match="no finite score"):
        refit_epoch_count([float("nan")] * 3, [0, 1, 2], "max", 3)


def test_selection_curve_survives_a_resume() -> None:
    from i2dl.training.loops import SelectionCurve

    class _Trainer:
        sanity_checking = False
        current_epoch = 0
        callback_metrics = {"selection/fscore": torch.tensor(0.25)}

    trainer, curve = _Trainer(), SelectionCurve("selection/fscore")
    curve.on_validation_end(trainer, None)
    trainer.current_epoch = 1
    trainer.callback_metrics = {}  # not logged this epoch
    curve.on_validation_end(trainer, None)
    trainer.sanity_checking = True  # a sanity pass is not an epoch
    curve.on_validation_end(trainer, None)
    resumed = SelectionCurve("selection/fscore")
    resumed.load_state_dict(curve.state_dict())
    assert resumed.epochs == [0, 1]
    assert resumed.values[0] == pytest.approx(0.25) and np.isnan(resumed.values[1])


def test_refit_window_sets_the_refit_epochs_from_the_written_curve(
    make_cfg, tiny_dataset: dict
) -> None:
    from i2dl.stages.train import run as run_train

    cfg = make_cfg("+experiment=ltae", *FAST, *SMALL_LTAE, *tiny_dataset["overrides"],
                   "trainer.max_epochs=5", "enable_early_stop=false", "refit=true",
                   "refit_window=3", "infer.chunk_size=16", "callbacks.swa.enabled=false")
    run_train(cfg)
    run = Path(cfg.paths.output_dir)
    state = read_fit_state(run)
    curve = json.loads((run / "checkpoints" / "selection_curve.json").read_text())
    assert curve["epochs"] == [0, 1, 2, 3, 4] and curve["mode"] == "max"
    assert curve["monitor"] == "selection/fscore"
    # the best single epoch is the checkpoint callback's
    assert state is not None and curve["values"][state["selected_epoch"]] == pytest.approx(
        max(curve["values"]))
    # epoch i's mean over i-1..i+1 (two at the ends), computed here by hand
    v = curve["values"]
    means = [(v[0] + v[1]) / 2, *((v[i - 1] + v[i] + v[i + 1]) / 3 for i in range(1, 4)),
             (v[3] + v[4]) / 2]
    assert state["refit_epochs"] == int(np.argmax(means)) + 1
    refit = torch.load(run / "checkpoints" / "refit.ckpt", weights_only=True)
    assert refit["epoch"] == state["refit_epochs"]


def test_refit_window_is_part_of_the_fit_fingerprint_only_with_a_refit(
    make_cfg, tmp_path: Path
) -> None:
    from i2dl.stages.fit import RESUMABLE_KEYS, fit_fingerprint

    store = tmp_path / "absent.zarr"  # unreadable: its name stands for it
    fp = {(refit, w): fit_fingerprint(make_cfg(f"refit={refit}", f"refit_window={w}"), store,
                                      None)
          for refit in ("true", "false") for w in (1, 5)}
    # another refit epoch count makes another model: a finished fit is not reused for it
    assert fp[("true", 1)] != fp[("true", 5)]
    # without a refit the window changes nothing, and fits of older i2dl stay reusable
    assert fp[("false", 1)] == fp[("false", 5)]
    # a run killed during the refit resumes with the epoch count it had chosen
    assert "refit_epochs" in RESUMABLE_KEYS


def test_refit_window_must_be_odd(make_cfg) -> None:
    from i2dl.config import check_config

    with pytest.raises(ConfigError, match="refit_window"):
        check_config(make_cfg("refit_window=4"))


def test_refit_window_reader_accepts_odd_ints_and_null_only(make_cfg) -> None:
    from i2dl.training.deep import refit_window

    assert refit_window(make_cfg("refit_window=5")) == 5
    assert refit_window(make_cfg("refit_window=null")) == 1
    for bad in ("4", "0", "true", "2.5"):
        with pytest.raises(ConfigError, match="odd integer"):
            refit_window(make_cfg(f"refit_window={bad}"))


def test_ensemble_run_maps_the_mean_probability_and_reports_members(
    make_cfg, tiny_dataset: dict
) -> None:
    from i2dl.stages.train import run as run_train
    from i2dl.training.build import load_classifier

    cfg = make_cfg("+experiment=ltae", *FAST, *SMALL_LTAE, *tiny_dataset["overrides"],
                   "ensemble_size=2", "infer.chunk_size=16", "infer.write_proba=true")
    summary = run_train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / "checkpoints" / "ensemble.ckpt").is_file()
    for i in range(2):
        assert (run / "members" / f"member_{i}" / "checkpoints" / "best.ckpt").is_file()
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert len(metrics["members"]) == 2 and metrics["oa"] == pytest.approx(summary["oa"])
    model, _ = load_classifier(run)
    assert isinstance(model, DeepEnsemble) and len(model) == 2
    # the members are different networks (different seeds)
    w = [dict(m.named_parameters())["encoder.inconv.weight"] for m in model.members]
    assert not torch.equal(w[0], w[1])
    # the map's probabilities are the members' average, pixel by pixel (store pixels)
    import zarr

    from i2dl.samples.store import read_info

    info = read_info(summary["store"])
    store = zarr.open_group(summary["store"], mode="r")
    x, valid = store["X"][:].astype(np.float32), store["mask"][:]
    rows, cols = store["row"][:], store["col"][:]
    xt = torch.from_numpy(info.normalise(x, valid))
    days = torch.from_numpy(info.days).expand(len(xt), -1)
    mask = torch.from_numpy(valid)
    expected = model.predict_proba(xt, days, mask).numpy()
    members = np.stack([m.predict_proba(xt, days, mask).numpy() for m in model.members])
    assert np.allclose(expected, members.mean(0), atol=1e-6)
    with rasterio.open(run / "maps" / "proba.tif") as src:
        proba = src.read()
    with rasterio.open(run / "maps" / "confidence.tif") as src:
        conf = src.read(1)
    assert np.allclose(proba[:, rows, cols].T, expected, atol=1e-4)
    assert np.allclose(conf[rows, cols], expected.max(1), atol=1e-4)


def test_swa_needs_the_refit(make_cfg, tiny_dataset: dict, caplog) -> None:
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    from i2dl.training.loops import callbacks, swa_callbacks

    base = ("+experiment=ltae", *FAST, *SMALL_LTAE, *tiny_dataset["overrides"])
    cfg = make_cfg(*base, "refit=false", "callbacks.swa.enabled=true")
    assert swa_callbacks(cfg) == [] and "no weight averaging" in caplog.text
    assert swa_callbacks(make_cfg(*base, "refit=true", "callbacks.swa.enabled=false")) == []
    assert swa_callbacks(make_cfg(*FAST, *tiny_dataset["overrides"], "refit=true")) == [], \
        "off by default outside the LTAE experiments"
    assert swa_callbacks(make_cfg(*base, "refit=true"))  # on in +experiment=ltae
    # and in +experiment=tempcnn, whose refit is on too (docs/results.md)
    assert swa_callbacks(make_cfg("+experiment=tempcnn", *FAST, *tiny_dataset["overrides"]))
    (swa,) = swa_callbacks(make_cfg(*base, "refit=true", "callbacks.swa.enabled=true",
                                    "callbacks.swa.swa_lrs=0.002"))
    assert isinstance(swa, StochasticWeightAveraging)
    # never a callback of the selection fit, whose model is its best epoch
    cfg = make_cfg(*base, "refit=true", "callbacks.swa.enabled=true")
    assert not any(isinstance(cb, StochasticWeightAveraging) for cb in callbacks(cfg))


def test_swa_window_leaves_out_the_untrained_initial_weights() -> None:
    from i2dl.training.loops import swa_window

    # 0.75 of 20 epochs: Lightning averages at the start of epochs 14..19
    assert swa_window(0.75, 20) == (14, 19)
    assert swa_window(0.75, 3) == (1, 2)
    # 1 or 2 epochs: the window would start at epoch 0, whose start is the initial weights
    assert swa_window(0.75, 1) is None and swa_window(0.75, 2) is None
    assert swa_window(1, 4) is None  # an int start of 1 averages from epoch 0 too
    assert swa_window(2, 4) == (1, 3)
    assert swa_window(5, 4) is None  # empty: Lightning would copy the initial weights


def test_lightning_swa_of_a_one_epoch_fit_returns_the_initial_weights() -> None:
    """Why :func:`swa_window` exists: Lightning averages at epoch starts, so with
    swa_epoch_start 0.75 a 1-epoch fit ends as the untrained network (if this starts
    failing, Lightning changed and swa_window must follow)."""
    import lightning as L
    from lightning.pytorch.callbacks import StochasticWeightAveraging
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.lin(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, 3), torch.randint(0, 2, (64,))),
                      batch_size=16)
    for swa, changed in ((False, True), (True, False)):
        torch.manual_seed(1)
        model = Tiny()
        start = model.lin.weight.detach().clone()
        cbs = [StochasticWeightAveraging(swa_lrs=0.1, swa_epoch_start=0.75)] if swa else []
        L.Trainer(max_epochs=1, callbacks=cbs, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(model, data)
        assert (not torch.equal(model.lin.weight, start)) is changed


def test_swa_is_left_out_of_a_refit_too_short_for_it(make_cfg, tiny_dataset: dict,
                                                    caplog) -> None:
    from i2dl.training.loops import swa_callbacks

    cfg = make_cfg("+experiment=ltae", *FAST, *SMALL_LTAE, *tiny_dataset["overrides"])
    assert swa_callbacks(cfg, 20)
    for epochs in (1, 2):
        assert swa_callbacks(cfg, epochs) == []
    assert "too short for stochastic weight averaging" in caplog.text
    assert swa_callbacks(cfg, 3)


def test_swa_refit_averages_the_last_epochs(make_cfg, tiny_dataset: dict,
                                           tmp_path: Path) -> None:
    from i2dl.stages.train import run as run_train

    weights = {}
    for swa in ("false", "true"):
        cfg = make_cfg("+experiment=ltae", *FAST, *SMALL_LTAE, *tiny_dataset["overrides"],
                       "trainer.max_epochs=4", "refit=true", "enable_early_stop=false",
                       f"callbacks.swa.enabled={swa}", "callbacks.swa.swa_epoch_start=2",
                       "callbacks.swa.annealing_epochs=1", "infer.chunk_size=16",
                       f"paths.output_dir={tmp_path / ('run_swa_' + swa)}")
        summary = run_train(cfg)
        run = Path(cfg.paths.output_dir)
        refit = torch.load(run / "checkpoints" / "refit.ckpt", weights_only=True)
        weights[swa] = refit["state_dict"]
        assert 0.0 <= summary["oa"] <= 1.0 and (run / "maps" / "classif.tif").is_file()
    # same seed, same epochs: only the averaging differs
    key = next(k for k in weights["true"] if k.endswith("inconv.weight"))
    assert not torch.equal(weights["true"][key], weights["false"][key])


def test_attend_gapfilled_attends_the_interpolated_series_at_every_date() -> None:
    from models.layers import gapfilled

    x, days, mask = masked_series(b=5, t=9, c=2, step_days=10, seed=3)
    mask[4] = False  # a pixel without any valid date stays all-invalid
    torch.manual_seed(0)
    enc = LTAE(2, d_model=16, n_head=4, d_k=4, mlp=[16, 8], attend_gapfilled=True).eval()
    torch.manual_seed(0)
    plain = LTAE(2, d_model=16, n_head=4, d_k=4, mlp=[16, 8]).eval()
    with torch.no_grad():
        out = enc(x, days, mask)
        filled = gapfilled(x, days, mask)
        full = mask.any(dim=1, keepdim=True).expand_as(mask)
        assert torch.allclose(out, plain(filled, days, full), atol=1e-6)
        # the values at the invalid dates do not matter, their interpolation does
        noisy = torch.where(mask.unsqueeze(-1), x, torch.full_like(x, 1e6))
        assert torch.allclose(enc(noisy, days, mask), out, atol=1e-6)
        # attention over every date of the grid for pixels with a valid date
        assert (enc.attention_weights[:4] > 0).all()
        assert not torch.allclose(out[:4], plain(x, days, mask)[:4], atol=1e-4)
