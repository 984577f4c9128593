"""Chunked inference: chunking does not change the maps; nodata; products' layout."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from i2dl.errors import ConfigError
from i2dl.io.raster import open_time_series
from i2dl.maps.device import resolve_batch_size, resolve_device
from i2dl.maps.engine import classify_raster
from i2dl.samples.extract import prepare
from i2dl.samples.store import read_info
from tests.conftest import write_stack

W = torch.tensor([[1.0, -1.0], [0.0, 0.0], [-1.0, 1.0]])  # (K=3, C=2)


def predict(x: torch.Tensor, days: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A fixed 'model': softmax of a linear map of the mean valid observation."""
    m = mask.unsqueeze(-1).float()
    mean = (x * m).sum(1) / m.sum(1).clamp(min=1)
    return torch.softmax(mean @ W.T * 3, dim=1)


def _setup(make_cfg, tiny_dataset, tmp_path):
    # one pixel (row 0, col 0) cloudy at every date -> must be nodata
    with rasterio.open(tiny_dataset["cloud"]) as src:
        clm, transform = src.read(), src.transform
    clm[:, 0, 0] = 1
    cloud = write_stack(tmp_path / "clm_all.tif", clm, transform, dtype="uint8")
    overrides = [o for o in tiny_dataset["overrides"] if not o.startswith("data.masks")]
    overrides.append(f"data.masks=[{{path:{cloud},invalid_values:[1]}}]")
    info = read_info(prepare(make_cfg(*overrides)))
    series = open_time_series(
        tiny_dataset["raster"], tiny_dataset["dates_file"], ["b1", "b2"],
        masks=[{"path": str(cloud), "invalid_values": [1]}],
    )
    return info, series


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile


def test_chunking_does_not_change_maps(make_cfg, tiny_dataset, tmp_path) -> None:
    info, series = _setup(make_cfg, tiny_dataset, tmp_path)
    cpu = torch.device("cpu")
    with series:
        a = classify_raster(series, info, predict, tmp_path / "a", cpu, chunk_size=7, batch_size=5,
                            write_proba=True, progress=False)
        b = classify_raster(series, info, predict, tmp_path / "b", cpu, chunk_size=1000,
                            write_proba=True, progress=False)
        x, valid = series.read()
    for name in ("classif", "confidence", "proba"):
        np.testing.assert_array_equal(_read(getattr(a, name))[0], _read(getattr(b, name))[0])
    # independent whole-image computation
    xn = (x - info.mean) / info.std
    xn[~valid] = 0
    h, w = valid.shape[:2]
    p = predict(torch.from_numpy(xn.reshape(h * w, 6, 2)), torch.zeros(h * w, 6),
                torch.from_numpy(valid.reshape(h * w, 6))).numpy()
    expected = np.asarray(info.class_codes)[p.argmax(1)].reshape(h, w)
    expected[~valid.any(axis=2)] = 0
    classif, profile = _read(a.classif)
    np.testing.assert_array_equal(classif[0], expected)
    assert classif[0, 0, 0] == 0 and a.n_nodata == 1 and a.n_pixels == h * w - 1
    conf = _read(a.confidence)[0][0]
    assert conf[0, 0] == 0 and np.allclose(conf.ravel()[1:], p.max(1)[1:], rtol=1e-6)
    assert profile["nodata"] == 0 and profile["dtype"] == "uint8"
    assert profile["transform"] == tiny_dataset["transform"]
    with rasterio.open(a.proba) as src:
        assert src.count == 3 and src.descriptions[0].startswith("proba_1")


def test_mismatched_series_is_rejected(make_cfg, tiny_dataset, tmp_path) -> None:
    info, _ = _setup(make_cfg, tiny_dataset, tmp_path)
    # the same raster read as 12 dates x 1 channel
    dates12 = tmp_path / "dates12.txt"
    dates12.write_text("\n".join(f"2020-01-{d:02d}" for d in range(1, 13)))
    series = open_time_series(tiny_dataset["raster"], dates12, ["b1"])
    with series, pytest.raises(ConfigError, match="same acquisition dates and bands"):
        classify_raster(series, info, predict, tmp_path / "c", torch.device("cpu"), progress=False)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("tpu-ish")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(make_cfg, tiny_dataset, tmp_path) -> None:
    info, series = _setup(make_cfg, tiny_dataset, tmp_path)
    with series:
        a = classify_raster(series, info, predict, tmp_path / "cpu", torch.device("cpu"),
                            progress=False)
        b = classify_raster(series, info, predict, tmp_path / "gpu", torch.device("cuda"),
                            amp=False, progress=False)
    np.testing.assert_array_equal(_read(a.classif)[0], _read(b.classif)[0])


def test_resolve_batch_size_auto_per_device(monkeypatch) -> None:
    """auto: a few thousand pixels on the CPU (fewer for long series), large on CUDA."""
    cpu = torch.device("cpu")
    sizes = [resolve_batch_size("auto", cpu, t, threads=1) for t in (6, 24, 70, 300)]
    assert sizes == [32768, 8192, 2048, 1024]  # powers of two within CPU_BATCH_RANGE
    assert resolve_batch_size(" AUTO ", cpu, 24, threads=2) == 16384
    assert resolve_batch_size("auto", cpu, 24, threads=64) == 32768
    assert resolve_batch_size("auto", cpu, 24) in (8192, 16384, 32768)  # torch's threads
    # CUDA from free memory, without a GPU: 80 GiB free -> the cap, 1 GiB free -> less
    cuda = torch.device("cuda", 0)
    for free, want in ((80 * 2**30, 65536), (2**30, 4096), (12 * 2**30, 16384)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d, f=free: (f, 80 * 2**30))
        assert resolve_batch_size("auto", cuda, 24) == want
    assert resolve_batch_size(777, cpu, 24) == 777
    assert resolve_batch_size(np.int64(5), cpu, 24) == 5


@pytest.mark.parametrize("bad", [0, -3, True, "big", "4096", 2.5, None])
def test_resolve_batch_size_rejects_bad_values(bad) -> None:
    with pytest.raises(ConfigError, match="infer.batch_size"):
        resolve_batch_size(bad, torch.device("cpu"), 24)


@pytest.mark.gpu
def test_normalisation_on_the_gpu_equals_the_cpus() -> None:
    """On CUDA the batch is normalised on the device: same probabilities as on the CPU."""
    import datetime as dt
    from pathlib import Path

    from i2dl.maps.engine import _predict_batch
    from i2dl.samples.store import StoreInfo

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(0)
    t, c = 7, 3
    offset = rng.normal(size=c).astype(np.float32)
    scale = rng.uniform(0.5, 2, c).astype(np.float32)
    info = StoreInfo(Path("."), 0, [dt.date(2020, 1, 1)] * t, np.arange(t) * 10, ["a", "b", "c"],
                     [1, 2], ["x", "y"], offset, scale, offset, scale, "", (1, 0, 0, 0, -1, 0),
                     1, 1, {})
    x = rng.normal(size=(500, t, c)).astype(np.float32)
    valid = rng.random((500, t)) > 0.3
    weights = torch.randn(c, 2)

    def fn(xb, db, mb):  # any function of the normalised values
        return torch.softmax((xb * mb.unsqueeze(-1)).sum(1) @ weights.to(xb.device), dim=-1)

    days = torch.arange(t) * 10
    cpu = _predict_batch(fn, info, x, valid, days, torch.device("cpu"), False, False)
    gpu = _predict_batch(fn, info, x, valid, days.cuda(), torch.device("cuda"), True, False)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6)
