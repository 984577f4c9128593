"""The CPU speed paths of map inference (issue 23) give the former maps, up to float noise.

The former path is the LTAE's training-mode kernels in eval mode (``models.ltae_infer``
off) with the engine's former batches (fancy-indexed copies, normalised by NumPy).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from omegaconf import OmegaConf
from rasterio.transform import from_origin

from i2dl.io.raster import open_time_series
from i2dl.maps import engine
from i2dl.maps.device import batch_slice
from i2dl.samples.store import StoreInfo
from i2dl.training.build import DataDims, build_classifier
from models import ltae_infer
from models.ltae import LTAE

ROOT = Path(__file__).resolve().parents[1]
T, C, K, NODATA = 7, 3, 5, -10000


def _randomise_norms(module: torch.nn.Module) -> None:
    """BatchNorm running statistics and affines away from the identity (folding is tested)."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()


def _former(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path before issue 23 (see the module docstring)."""

    def predict_batch(fn, info, x, valid, days, device, pin, use_amp):  # noqa: ANN001, ANN202
        xb, mb = torch.from_numpy(info.normalise(x, valid)), torch.from_numpy(valid)
        return fn(xb, days.unsqueeze(0).expand(len(x), -1), mb).float().numpy()

    monkeypatch.setattr(ltae_infer, "supports", lambda enc: False)
    monkeypatch.setattr(engine, "_predict_batch", predict_batch)
    monkeypatch.setattr(engine, "batch_slice", lambda sel: sel)


@pytest.fixture
def raster(tmp_path: Path) -> tuple[Path, Path, StoreInfo]:
    """A 30 x 26 px int16 stack, T = 7 dates x C = 3 bands, nodata at ~30 % of the
    observations and every date of the first row (nodata pixels); its store attributes."""
    rng = np.random.default_rng(0)
    h, w = 30, 26
    data = rng.integers(0, 4000, (T * C, h, w)).astype(np.int16)
    cloud = rng.random((T, h, w)) < 0.3
    cloud[:, 0, :] = True
    data[np.repeat(cloud, C, axis=0)] = NODATA
    path = tmp_path / "stack.tif"
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=T * C,
                       dtype="int16", nodata=NODATA, crs="EPSG:32631",
                       transform=from_origin(300000.0, 5000000.0, 10.0, 10.0)) as dst:
        dst.write(data)
    dates = [dt.date(2022, 1, 3) + dt.timedelta(days=9 * i) for i in range(T)]
    dates_file = tmp_path / "dates.txt"
    dates_file.write_text("".join(f"{d.isoformat()}\n" for d in dates))
    info = StoreInfo(
        path=tmp_path, n_samples=0, dates=dates,
        days=np.array([(d - dates[0]).days for d in dates], dtype=np.int64),
        band_names=["b1", "b2", "b3"], class_codes=[1, 3, 5, 7, 9],
        class_names=[f"c{i}" for i in range(K)],
        mean=np.full(C, 2000.0, np.float32), std=np.full(C, 1000.0, np.float32),
        offset=np.full(C, 2000.0, np.float32), scale=np.full(C, 1000.0, np.float32),
        crs="", transform=(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0), width=w, height=h,
        attrs={},
    )
    return path, dates_file, info


def _maps(raster: tuple[Path, Path, StoreInfo], out: Path) -> dict[str, np.ndarray]:
    path, dates_file, info = raster
    torch.manual_seed(0)
    model = build_classifier(OmegaConf.load(ROOT / "configs/model/ltae.yaml"),
                             DataDims(C, T, K))
    _randomise_norms(model)
    with open_time_series(path, dates_file, ["b1", "b2", "b3"]) as series:
        res = engine.classify_raster(series, info, model.predict_proba, out,
                                     torch.device("cpu"), chunk_size=16, batch_size=100,
                                     write_proba=True, progress=False)
    maps = {}
    for name in ("classif", "confidence", "proba", "validity"):
        with rasterio.open(getattr(res, name)) as src:
            maps[name] = src.read()
    return maps


def test_default_ltae_maps_equal_the_former_path(raster, tmp_path, monkeypatch) -> None:
    new = _maps(raster, tmp_path / "new")
    with monkeypatch.context() as m:
        _former(m)
        old = _maps(raster, tmp_path / "old")
    np.testing.assert_allclose(new["proba"], old["proba"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(new["confidence"], old["confidence"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(new["validity"], old["validity"])
    # a class may differ only where the former path's two best classes tie within noise
    top2 = np.sort(old["proba"], axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4
    np.testing.assert_array_equal(new["classif"][0][clear], old["classif"][0][clear])
    assert (new["classif"][0, 0] == 0).all() and clear.mean() > 0.95


@pytest.mark.parametrize(
    "options",
    [
        {"temporal_conv": [16, 8], "attend_gapfilled": True},
        {"temporal_conv": [16, 8], "attend_gapfilled": False, "input_layernorm": True},
        {"temporal_conv": [], "attend_gapfilled": True},
        {"temporal_conv": [], "attend_gapfilled": False, "input_mlp": [8, 12]},
        {"temporal_conv": [8], "conv_kernel": 3, "projection_norm": "series"},  # fallback
    ],
)
def test_eval_kernels_match_the_training_kernels(options) -> None:
    torch.manual_seed(1)
    enc = LTAE(4, d_model=32, n_head=4, d_k=4, mlp=[32, 16], attention_dropout=0.1,
               **options)
    _randomise_norms(enc)
    enc.eval()
    b, t = 300, 9
    x = torch.randn(b, t, 4)
    mask = torch.rand(b, t) > 0.3
    mask[:4] = False  # pixels without any valid date
    x[~mask] = float("nan")
    days = torch.tensor([0, 3, 10, 11, 20, 40, 41, 60, 90]).expand(b, -1)
    with torch.no_grad():
        new, attn_new = enc(x, days, mask), enc.attention_weights
        old_supports = ltae_infer.supports
        ltae_infer.supports = lambda e: False  # type: ignore[assignment]
        try:
            old, attn_old = enc(x, days, mask), enc.attention_weights
        finally:
            ltae_infer.supports = old_supports  # type: ignore[assignment]
    assert torch.isfinite(new).all()
    torch.testing.assert_close(new, old, rtol=0, atol=2e-5)
    assert attn_new is not None and attn_old is not None
    assert attn_new.shape == (b, 4, t)
    torch.testing.assert_close(attn_new, attn_old, rtol=0, atol=2e-6)


def test_training_mode_does_not_run_the_eval_kernels(monkeypatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("eval kernels in training mode")

    monkeypatch.setattr(ltae_infer, "forward_eval", fail)
    enc = LTAE(3, d_model=16, n_head=4, d_k=4, mlp=[16, 8], temporal_conv=[8],
               attend_gapfilled=True)
    enc.train()
    x = torch.randn(6, 5, 3)
    out = enc(x, torch.arange(5).expand(6, -1), torch.ones(6, 5, dtype=torch.bool))
    assert out.shape == (6, 8)


def test_batch_slice_views_consecutive_pixels() -> None:
    assert batch_slice(np.arange(4, 9)) == slice(4, 9)
    sel = np.array([1, 2, 4])
    assert batch_slice(sel) is sel
    empty = np.array([], dtype=np.int64)
    assert batch_slice(empty) is empty


def test_cpu_batch_normalised_as_the_store_does(raster) -> None:
    _, _, info = raster
    rng = np.random.default_rng(2)
    x = rng.normal(2000, 900, (50, T, C)).astype(np.float32)
    valid = rng.random((50, T)) > 0.2
    seen = {}

    def fn(xb: torch.Tensor, db: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
        seen["x"] = xb.numpy().copy()
        return torch.full((len(xb), K), 1.0 / K)

    engine._predict_batch(fn, info, x, valid, torch.from_numpy(info.days), torch.device("cpu"),
                          False, False)
    np.testing.assert_array_equal(seen["x"], info.normalise(x, valid))  # bit for bit


def test_eval_kernels_run_under_bfloat16_autocast() -> None:
    # map inference on CUDA runs under bf16 autocast (infer.amp); the CPU autocast stands
    # in for it: the convolutions in bf16, the attention in float32 (the training-mode
    # kernels failed there with temporal_conv: a bf16 series met float32 weights)
    torch.manual_seed(4)
    enc = LTAE(5, d_model=32, n_head=4, d_k=4, mlp=[32, 16], temporal_conv=[16, 16],
               attend_gapfilled=True).eval()
    x, mask = torch.randn(50, 9, 5), torch.rand(50, 9) > 0.3
    days = (torch.arange(9) * 7).expand(50, -1)
    with torch.no_grad():
        full = enc(x, days, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = enc(x, days, mask)
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), full, rtol=0, atol=0.1)
