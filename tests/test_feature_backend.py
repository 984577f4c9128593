"""Feature code against the NumPy API: NumPy on the CPU, CuPy on a GPU, same results."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import scipy.ndimage
import torch

from i2dl.errors import ConfigError
from i2dl.features import backend
from i2dl.features.external import apply_external
from i2dl.features.indices import compute_indices

BANDS = ["B2", "B3", "B4", "B8", "B11"]
DATES = [dt.date(2021, 1, 1) + dt.timedelta(days=10 * i) for i in range(4)]


def _chunk(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.6, (9, 11, len(DATES), len(BANDS))).astype(np.float32)
    x[0, 0, 0, 2:4] = 0.0  # NDVI's denominator 0 -> 0
    return x


def smoothed_ndvi(data, size: int = 3):
    """A user function written against ``data.xp``/``data.ndimage``: mean NDVI, smoothed."""
    xp = data.xp
    nir, red = data.get("B8"), data.get("B4")
    ndvi = xp.where(nir + red > 0, (nir - red) / xp.where(nir + red > 0, nir + red, 1), 0)
    return data.ndimage.uniform_filter(ndvi.mean(axis=-1), size=size), ["ndvi_smooth"]


def test_numpy_path_equals_direct_formulas() -> None:
    x = _chunk()
    out, names = compute_indices(x, BANDS, ("NDVI", "NDWI", "Brightness"))
    assert isinstance(out, np.ndarray) and names[-3:] == ["NDVI", "NDWI", "Brightness"]
    nir, red, swir = x[..., 3], x[..., 2], x[..., 4]
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = np.where(np.abs(nir + red) < 1e-5, 0, (nir - red) / (nir + red))
    np.testing.assert_allclose(out[..., -3], ndvi, rtol=1e-6)
    np.testing.assert_allclose(out[..., -2], (swir - nir) / (swir + nir), rtol=1e-5)
    np.testing.assert_allclose(out[..., -1], np.sqrt((x**2).sum(-1)), rtol=1e-6)
    feats, fnames = apply_external(x, BANDS, DATES, [(smoothed_ndvi, {})])
    mean = np.where(nir + red > 0, (nir - red) / np.where(nir + red > 0, nir + red, 1), 0)
    want = scipy.ndimage.uniform_filter(mean.mean(axis=-1), size=3)
    assert fnames == ["ndvi_smooth"] and isinstance(feats, np.ndarray)
    np.testing.assert_allclose(feats[..., 0], want, rtol=1e-5)


def test_array_module_and_zero_copy_to_torch() -> None:
    x = _chunk()
    assert backend.array_module(x) is np
    assert backend.ndimage(np) is scipy.ndimage
    t = backend.to_torch(x)
    t[0, 0, 0, 0] = 42.0  # shares memory: no copy on the way to torch
    assert x[0, 0, 0, 0] == 42.0
    with pytest.raises(TypeError):
        backend.to_torch([1, 2])
    assert backend.device_module("cpu") is np
    with pytest.raises(ConfigError, match="features.device"):
        backend.device_module("tpu")


def test_cuda_without_cupy_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(backend, "_cupy", lambda: None)
    with pytest.raises(ConfigError, match=r"\.\[gpu\]"):
        backend.device_module("cuda")
    assert backend.device_module("auto") is np  # auto falls back to NumPy


@pytest.mark.gpu
def test_cupy_equals_numpy() -> None:
    cupy = pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = _chunk(1)
    xg = cupy.asarray(x)
    out_np, _ = compute_indices(x, BANDS, ("NDVI", "NDWI", "Brightness"))
    out_gpu, _ = compute_indices(xg, BANDS, ("NDVI", "NDWI", "Brightness"))
    assert backend.is_cupy(out_gpu)
    np.testing.assert_allclose(backend.to_numpy(out_gpu), out_np, rtol=1e-5, atol=1e-6)
    f_np, _ = apply_external(x, BANDS, DATES, [(smoothed_ndvi, {})])
    f_gpu, _ = apply_external(xg, BANDS, DATES, [(smoothed_ndvi, {})])
    np.testing.assert_allclose(backend.to_numpy(f_gpu), f_np, rtol=1e-5, atol=1e-6)
    t = backend.to_torch(out_gpu)
    assert t.is_cuda and t.data_ptr() == out_gpu.data.ptr  # DLPack: same memory
