"""Tests of the feature step: gap-filling, spectral indices, external features."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.windows import Window
from scipy.ndimage import laplace

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.features import (
    ChunkData,
    apply_external,
    compute_indices,
    gapfill,
    interpolate,
    linear_gapfill,
    load_functions,
    read_padded,
    regular_grid,
)
from i2dl.features.external import padded_window
from i2dl.io.geotiff import block_windows
from i2dl.io.raster import TimeSeriesRaster, days_since, open_time_series

EXAMPLE = Path(__file__).resolve().parents[1] / "scripts" / "examples" / "external_features.py"


@pytest.fixture
def slovenia(slovenia_dir: Path) -> TimeSeriesRaster:
    """The real Slovenia NDVI series with its cloud mask (CLM 1 = cloud = invalid)."""
    with open_time_series(
        slovenia_dir / "NDVI.tif",
        slovenia_dir / "dates.txt",
        band_names=["NDVI"],
        masks=[{"path": slovenia_dir / "CLM.tif", "invalid_values": [1]}],
    ) as ts:
        yield ts


def reference_gapfill(
    x: np.ndarray, valid: np.ndarray, days: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Independent per-pixel reference: numpy.interp over the valid dates.

    numpy.interp repeats the first/last valid value outside the valid range, which is
    the constant extrapolation i2dl (and OTB) use. Pixels with no valid date: zeros.
    """
    h, w, _, c = x.shape
    y = np.zeros((h, w, len(target), c), dtype=np.float64)
    ok = np.zeros((h, w), dtype=bool)
    for i in range(h):
        for j in range(w):
            m = valid[i, j]
            if not m.any():
                continue
            assert len(np.unique(days[m])) == m.sum(), "reference needs distinct valid days"
            ok[i, j] = True
            for k in range(c):
                y[i, j, :, k] = np.interp(target, days[m], x[i, j, m, k].astype(np.float64))
    return y, ok


def numpy_gapfill(
    x: np.ndarray, valid: np.ndarray, days: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The oracle: the same algorithm as the torch gap-filling, in NumPy.

    (The former NumPy backend of ``i2dl.features.gapfill``.) Cumulative max/min of the
    valid indices, ``searchsorted`` of the target days, gather, interpolate; handles
    same-day acquisitions like the torch version, which ``numpy.interp`` does not.

    Args: x (..., T, C), valid (..., T), days (T,) non-decreasing, target (K,).
    Returns: y (..., K, C) float32 and y_valid (..., K) bool.
    """
    lead, (t, c) = x.shape[:-2], x.shape[-2:]
    x = x.reshape(-1, t, c).astype(np.float32)
    valid = valid.reshape(-1, t)
    n = x.shape[0]
    idx = np.arange(t)
    prev_src = np.maximum.accumulate(np.where(valid, idx, -1), axis=1)
    next_src = np.minimum.accumulate(np.where(valid, idx, t)[:, ::-1], axis=1)[:, ::-1]
    d = np.asarray(days).astype(np.float64)
    tau = np.asarray(target).astype(np.float64)
    right = np.searchsorted(d, tau, side="right") - 1  # last source index with day <= tau
    left = np.searchsorted(d, tau, side="left")  # first source index with day >= tau
    prev = np.where(right >= 0, prev_src[:, np.clip(right, 0, t - 1)], -1)  # (N, K)
    nxt = np.where(left < t, next_src[:, np.clip(left, 0, t - 1)], t)
    has_prev, has_next = prev >= 0, nxt < t
    p, q = np.clip(prev, 0, t - 1), np.clip(nxt, 0, t - 1)
    xp = np.take_along_axis(x, p[..., None], axis=1)  # (N, K, C)
    xn = np.take_along_axis(x, q[..., None], axis=1)
    dp, dn = d[p], d[q]
    span = dn - dp
    w = np.where(span > 0, (tau - dp) / np.where(span > 0, span, 1.0), 0.0)
    interp = xp + w.astype(np.float32)[..., None] * (xn - xp)
    y = np.where((has_prev & has_next)[..., None], interp, np.where(has_prev[..., None], xp, xn))
    any_valid = valid.any(axis=1)
    y = np.where(any_valid[:, None, None], y, 0.0).astype(np.float32)
    y_valid = np.broadcast_to(any_valid[:, None], (n, len(tau))).copy()
    return y.reshape(*lead, len(tau), c), y_valid.reshape(*lead, len(tau))


def numpy_linear_gapfill(x: np.ndarray, days: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Oracle of ``linear_gapfill``, one series at a time: each invalid position takes the
    value interpolated between the nearest valid positions before and after it (constant
    at the ends), valid positions are kept, all-invalid series become zeros."""
    out = np.zeros(x.shape, dtype=np.float64)
    for b in range(x.shape[0]):
        ok = np.flatnonzero(mask[b])
        if not len(ok):
            continue
        for i in range(x.shape[1]):
            before, after = ok[ok <= i], ok[ok >= i]
            if len(before) and len(after) and days[b, after[0]] > days[b, before[-1]]:
                p, q = before[-1], after[0]
                w = (days[b, i] - days[b, p]) / (days[b, q] - days[b, p])
                out[b, i] = x[b, p] + w * (x[b, q] - x[b, p])
            else:
                out[b, i] = x[b, before[-1]] if len(before) else x[b, after[0]]
    return out


# ---------------------------------------------------------------- regular grid


def test_regular_grid_every_n_days() -> None:
    dates = [dt.date(2020, 1, 1), dt.date(2020, 1, 7), dt.date(2020, 1, 31)]
    grid = regular_grid(dates, 10)
    assert grid == [
        dt.date(2020, 1, 1),
        dt.date(2020, 1, 11),
        dt.date(2020, 1, 21),
        dt.date(2020, 1, 31),
    ]
    assert regular_grid(dates, 7) == [dt.date(2020, 1, d) for d in (1, 8, 15, 22, 29)]
    assert regular_grid(["20200105", "2020-03-01"], 10, start="20200101", end="20200125") == [
        dt.date(2020, 1, 1),
        dt.date(2020, 1, 11),
        dt.date(2020, 1, 21),
    ]


@pytest.mark.parametrize("res", [0, -10, 2.5])
def test_regular_grid_bad_resolution(res: float) -> None:
    with pytest.raises(ConfigError, match="temporal_resolution"):
        regular_grid([dt.date(2020, 1, 1)], res)


def test_regular_grid_start_after_end() -> None:
    with pytest.raises(ConfigError, match="after end"):
        regular_grid([], 10, start="20200201", end="20200101")


# ---------------------------------------------------------------- gap-filling, real data


def test_gapfill_real_matches_reference(slovenia: TimeSeriesRaster) -> None:
    x, valid = slovenia.read(Window(30, 20, 40, 40))
    valid = valid.copy()
    valid[0, 0, :] = False  # pixels with no valid observation at all
    valid[5, 7, :] = False
    days = days_since(slovenia.dates, slovenia.dates[0])
    grid = days_since(regular_grid(slovenia.dates, 10), slovenia.dates[0])
    assert grid[0] == 0 and grid[-1] <= days[-1] and len(grid) > 80
    # also extrapolate before the first and after the last acquisition
    wide = np.arange(-35, days[-1] + 40, 10)
    for target in (grid, days, wide):
        ref, ok = reference_gapfill(x, valid, days, target)
        y, yv = gapfill(x, valid, days, target, device="cpu")
        assert y.shape == (40, 40, len(target), 1) and y.dtype == np.float32
        assert yv.shape == (40, 40, len(target))
        np.testing.assert_array_equal(yv, np.broadcast_to(ok[..., None], yv.shape))
        np.testing.assert_allclose(y, ref, atol=1e-5, rtol=0)
        assert not yv[0, 0].any() and not yv[5, 7].any()
        assert (y[0, 0] == 0).all() and (y[5, 7] == 0).all()
        yn, yvn = numpy_gapfill(x, valid, days, target)
        np.testing.assert_allclose(y, yn, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(yv, yvn)


def test_gapfill_real_keeps_valid_observations(slovenia: TimeSeriesRaster) -> None:
    x, valid = slovenia.read(Window(0, 0, 40, 40))
    days = days_since(slovenia.dates, slovenia.dates[0])
    y, _ = gapfill(x, valid, days, days)
    np.testing.assert_array_equal(y[valid], x[valid])
    # cloudy observations are replaced
    assert not np.allclose(y[~valid], x[~valid])


# ---------------------------------------------------------------- gap-filling, synthetic


def test_gapfill_hand_values_and_leading_dims() -> None:
    days = np.array([0, 10, 20, 40])
    x = np.array([1.0, 2.0, 3.0, 7.0], dtype=np.float32)[None, None, :, None].repeat(2, 0)
    valid = np.array([[[True, False, True, True]], [[False, True, False, False]]])
    target = np.array([-5, 0, 5, 10, 30, 45])
    for fill in (gapfill, numpy_gapfill):
        y, yv = fill(x, valid, days, target)
        assert y.shape == (2, 1, 6, 1) and yv.all()
        np.testing.assert_allclose(y[0, 0, :, 0], [1, 1, 1.5, 2, 5, 7], atol=1e-6)
        np.testing.assert_allclose(y[1, 0, :, 0], [2] * 6, atol=1e-6)  # one valid: constant


def test_gapfill_same_day_acquisitions_no_division_by_zero() -> None:
    days = np.array([0, 10, 10, 20])
    x = np.array([[0.0, 1.0, 3.0, 5.0]], dtype=np.float32)[..., None]
    valid = np.ones((1, 4), dtype=bool)
    target = np.array([5, 10, 15])
    for fill in (gapfill, numpy_gapfill):
        y, _ = fill(x, valid, days, target)
        assert np.isfinite(y).all()
        # before the shared day: the first acquisition of that day bounds the interval;
        # on it and after it: the last one
        np.testing.assert_allclose(y[0, :, 0], [0.5, 3.0, 4.0], atol=1e-6)


def test_gapfill_multichannel_torch_equals_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5, 9, 3)).astype(np.float32)
    valid = rng.random((6, 5, 9)) > 0.5
    valid[0, 0] = False
    days = np.sort(rng.integers(0, 100, 9))
    target = np.arange(-10, 120, 7)
    yn, vn = numpy_gapfill(x, valid, days, target)
    yt, vt = gapfill(x, valid, days, target, device="cpu")
    ya, va = gapfill(x, valid, days, target)  # default device: CUDA when available
    np.testing.assert_allclose(yt, yn, atol=1e-5)
    np.testing.assert_allclose(ya, yn, atol=1e-5)
    np.testing.assert_array_equal(vt, vn)
    np.testing.assert_array_equal(va, vn)
    assert not vn[0, 0].any() and (yn[0, 0] == 0).all()


def test_gapfill_random_same_day_and_edges_equal_numpy_oracle() -> None:
    """Many small random cases: repeated days, empty targets, all-invalid series."""
    rng = np.random.default_rng(3)
    for _ in range(100):
        n, t, c = int(rng.integers(0, 20)), int(rng.integers(1, 12)), int(rng.integers(1, 4))
        x = rng.normal(size=(n, t, c)).astype(np.float32)
        valid = rng.random((n, t)) > rng.random()
        days = np.sort(rng.integers(0, 20, t))  # repeated days likely
        target = rng.integers(-5, 30, int(rng.integers(0, 10)))
        yn, vn = numpy_gapfill(x, valid, days, target)
        yt, vt = gapfill(x, valid, days, target, device="cpu")
        assert yt.shape == yn.shape and yt.dtype == np.float32
        np.testing.assert_allclose(yt, yn, atol=1e-5)
        np.testing.assert_array_equal(vt, vn)


def test_interpolate_keeps_device_and_dtype() -> None:
    x = torch.tensor([[[1.0], [3.0]]], dtype=torch.float64)
    y, yv = interpolate(x, torch.tensor([[True, True]]), torch.tensor([0, 10]),
                        torch.tensor([5, 20]))
    assert y.dtype == torch.float64 and yv.dtype == torch.bool
    assert y[0, :, 0].tolist() == [2.0, 3.0] and yv.all()


# ---------------------------------------------------------------- linear_gapfill (networks)


def test_linear_gapfill_equals_oracle_with_padding_and_repeated_days() -> None:
    rng = np.random.default_rng(4)
    for _ in range(50):
        b, t, c = int(rng.integers(1, 10)), int(rng.integers(1, 10)), int(rng.integers(1, 3))
        x = rng.normal(size=(b, t, c)).astype(np.float32)
        mask = rng.random((b, t)) > rng.random()
        days = np.sort(rng.integers(0, 30, (b, t)), axis=1)
        if rng.random() < 0.3 and t > 2:
            days[:, -2:] = 0  # padded series: days not increasing at the end, masked
            mask[:, -2:] = False
        got = linear_gapfill(torch.from_numpy(x), torch.from_numpy(days), torch.from_numpy(mask))
        assert got.dtype == torch.float32 and got.shape == (b, t, c)
        np.testing.assert_allclose(got.numpy(), numpy_linear_gapfill(x, days, mask), atol=1e-5)
        np.testing.assert_array_equal(got.numpy()[mask], x[mask])  # valid kept exactly


def test_linear_gapfill_hand_values_gradient_and_shapes() -> None:
    x = torch.tensor([[[1.0], [9.0], [3.0], [9.0]], [[9.0], [9.0], [9.0], [9.0]]],
                     requires_grad=True)
    days = torch.tensor([[0, 5, 10, 20], [0, 5, 10, 20]])
    mask = torch.tensor([[True, False, True, False], [False, False, False, False]])
    y = linear_gapfill(x, days, mask)
    assert y[0, :, 0].tolist() == [1.0, 2.0, 3.0, 3.0] and (y[1] == 0).all()
    y.sum().backward()
    assert x.grad is not None and x.grad[0, 1, 0] == 0  # the invalid value has no effect
    with pytest.raises(ValueError, match="linear_gapfill expects"):
        linear_gapfill(x, days[:, :3], mask)


def test_linear_gapfill_shared_grid_path_equals_per_series_path() -> None:
    # days expanded from one row (a map window) take the shared-grid path; a contiguous
    # copy of the same days takes the per-series one: same values, never reading NaN
    rng = torch.Generator().manual_seed(3)
    b, t, c = 200, 8, 3
    x = torch.randn(b, t, c, generator=rng)
    mask = torch.rand(b, t, generator=rng) > 0.5
    mask[0], mask[1], mask[2] = False, True, False  # no valid date, all valid, one valid
    mask[2, 5] = True
    x[~mask] = float("nan")
    days = torch.tensor([0, 4, 4, 10, 25, 26, 40, 41])  # a repeated day (two passes)
    shared = days.expand(b, -1)
    assert shared.stride(0) == 0
    got = linear_gapfill(x, shared, mask)
    want = linear_gapfill(torch.where(mask.unsqueeze(-1), x, 0.0), shared.contiguous(), mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got[0] == 0).all() and torch.equal(got[1], x[1])
    assert torch.equal(got[2], x[2, 5].expand(t, c))
    torch.testing.assert_close(got[mask], x[mask], rtol=0, atol=0)  # valid dates unchanged
    xg = torch.where(mask.unsqueeze(-1), x, 0.0).requires_grad_(True)
    linear_gapfill(xg, shared, mask).sum().backward()
    assert xg.grad is not None and (xg.grad[~mask] == 0).all() and (xg.grad[1] == 1).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gapfill_cuda_equals_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 64, 30, 4)).astype(np.float32)
    valid = rng.random((64, 64, 30)) > 0.4
    days = np.sort(rng.integers(0, 300, 30))
    target = np.arange(0, 300, 10)
    yn, vn = numpy_gapfill(x, valid, days, target)
    yc, vc = gapfill(x, valid, days, target, device="cuda")
    np.testing.assert_allclose(yc, yn, atol=1e-5)
    np.testing.assert_array_equal(vc, vn)


def test_gapfill_bad_inputs() -> None:
    x = np.zeros((2, 3, 1), dtype=np.float32)
    valid = np.ones((2, 3), dtype=bool)
    with pytest.raises(InputDataError, match="non-decreasing"):
        gapfill(x, valid, [0, 10, 5], [0])
    with pytest.raises(InputDataError, match="one day offset per acquisition"):
        gapfill(x, valid, [0, 10], [0])
    with pytest.raises(InputDataError, match="valid"):
        gapfill(x, valid[:, :2], [0, 5, 10], [0])
    with pytest.raises(InputDataError, match="1-D"):
        gapfill(x, valid, [0, 5, 10], [[0]])


# ---------------------------------------------------------------- indices


S2_BANDS = ["B2", "B3", "B4", "B8", "B11"]


def _bands() -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.uniform(0.01, 0.6, size=(3, 4, 2, 5)).astype(np.float32)  # (H, W, T, C)


def test_indices_hand_formulas() -> None:
    x = _bands()
    y, names = compute_indices(x, S2_BANDS)
    assert names == [*S2_BANDS, "NDVI", "NDWI", "Brightness"]
    assert y.shape == (3, 4, 2, 8) and y.dtype == np.float32
    b2, b3, b4, b8, b11 = (x[..., i].astype(np.float64) for i in range(5))
    np.testing.assert_array_equal(y[..., :5], x)
    np.testing.assert_allclose(y[..., 5], (b8 - b4) / (b8 + b4), rtol=1e-5)
    # iota2's NDWI: (SWIR - NIR) / (SWIR + NIR)
    np.testing.assert_allclose(y[..., 6], (b11 - b8) / (b11 + b8), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        y[..., 7], np.sqrt(b2**2 + b3**2 + b4**2 + b8**2 + b11**2), rtol=1e-5
    )


def test_indices_drop_bands_and_select() -> None:
    x = _bands()
    y, names = compute_indices(x, S2_BANDS, indices=("ndvi",), keep_bands=False)
    assert names == ["NDVI"] and y.shape == (3, 4, 2, 1)
    full, _ = compute_indices(x, S2_BANDS)
    np.testing.assert_array_equal(y[..., 0], full[..., 5])
    y, names = compute_indices(
        x, S2_BANDS, indices=("NDVI", "NDWI"), keep_bands=False, index_factor=1000
    )
    np.testing.assert_allclose(y, full[..., 5:7] * 1000, rtol=1e-6)


def test_indices_sen2cor_names_landsat_and_roles() -> None:
    x = _bands()
    ref, _ = compute_indices(x, S2_BANDS)
    y, names = compute_indices(x, ["B02", "B03", "B04", "B08", "B11"])
    np.testing.assert_array_equal(y, ref)
    assert names[:5] == ["B02", "B03", "B04", "B08", "B11"]
    # Landsat 8: red B4, NIR B5, SWIR1 B6
    y, _ = compute_indices(x, ["B2", "B3", "B4", "B5", "B6"], sensor="landsat8")
    np.testing.assert_array_equal(y, ref)
    y, _ = compute_indices(
        x,
        ["blue", "green", "red", "nir", "swir1"],
        roles={"red": "red", "nir": "nir", "swir": "swir1"},
    )
    np.testing.assert_array_equal(y, ref)


def test_indices_zero_denominator_gives_zero() -> None:
    x = np.zeros((2, 5), dtype=np.float32)
    x[1] = [0.1, 0.1, 0.2, 0.2, 0.0]  # red == nir -> NDVI 0; swir + nir > 0
    y, _ = compute_indices(x, S2_BANDS, keep_bands=False)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[0], [0, 0, 0])
    np.testing.assert_allclose(y[1, :2], [0.0, -1.0])


def test_indices_missing_band_and_unknown_names() -> None:
    x = _bands()[..., :4]
    with pytest.raises(ConfigError, match=r"NDWI needs the swir band 'B11'"):
        compute_indices(x, ["B2", "B3", "B4", "B8"])
    y, names = compute_indices(x, ["B2", "B3", "B4", "B8"], indices=("NDVI",))
    assert names[-1] == "NDVI"
    with pytest.raises(ConfigError, match="unknown index 'EVI'"):
        compute_indices(x, ["B2", "B3", "B4", "B8"], indices=("EVI",))
    with pytest.raises(ConfigError, match="unknown sensor"):
        compute_indices(x, ["B2", "B3", "B4", "B8"], sensor="spot")
    with pytest.raises(InputDataError, match="band_names"):
        compute_indices(x, S2_BANDS)


# ---------------------------------------------------------------- external features


def _example_functions(names: list) -> list:
    return load_functions(EXAMPLE, names)


def test_laplacian_chunkwise_with_padding_has_no_seam(slovenia: TimeSeriesRaster) -> None:
    functions = _example_functions(["mean_ndvi", "laplacian_of_mean_ndvi"])
    days = days_since(slovenia.dates, slovenia.dates[0])
    grid = days_since(regular_grid(slovenia.dates, 10), slovenia.dates[0])
    grid_dates = regular_grid(slovenia.dates, 10)

    def features(x: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, list[str]]:
        y, _ = gapfill(x, valid, days, grid)
        return apply_external(y, ["NDVI"], grid_dates, functions)

    x, valid = slovenia.read()
    whole, names = features(x, valid)
    assert names == ["mean_ndvi", "lap_mean_ndvi"]
    assert whole.shape == (slovenia.height, slovenia.width, 2)
    expected_lap = laplace(whole[..., 0], mode="nearest")
    np.testing.assert_allclose(whole[..., 1], expected_lap, atol=1e-6)

    windows = block_windows(slovenia.width, slovenia.height, 32)
    assert len(windows) > 4
    padded = np.full_like(whole, np.nan)
    unpadded = np.full_like(whole, np.nan)
    for win in windows:
        rows = slice(win.row_off, win.row_off + win.height)
        cols = slice(win.col_off, win.col_off + win.width)
        xp, vp, inner = read_padded(slovenia, win, 1)
        padded[rows, cols] = features(xp, vp)[0][inner]
        x0, v0, inner0 = read_padded(slovenia, win, 0)
        assert x0.shape[:2] == (win.height, win.width)
        unpadded[rows, cols] = features(x0, v0)[0][inner0]
    np.testing.assert_array_equal(padded, whole)  # no seam, bit for bit
    # without padding the Laplacian differs, and only on chunk borders
    np.testing.assert_array_equal(unpadded[..., 0], whole[..., 0])
    diff = unpadded[..., 1] != whole[..., 1]
    assert diff.any()
    rows, cols = np.nonzero(diff)
    on_border = (rows % 32 == 0) | (rows % 32 == 31) | (cols % 32 == 0) | (cols % 32 == 31)
    assert on_border.all()


def test_padded_window_clips_to_grid() -> None:
    big, inner = padded_window(Window(0, 0, 32, 32), 2, 100, 101)
    assert (big.col_off, big.row_off, big.width, big.height) == (0, 0, 34, 34)
    assert inner == (slice(0, 32), slice(0, 32))
    big, inner = padded_window(Window(96, 32, 4, 32), 3, 100, 101)
    assert (big.col_off, big.row_off, big.width, big.height) == (93, 29, 7, 38)
    assert inner == (slice(3, 35), slice(3, 7))
    with pytest.raises(ConfigError, match="padding"):
        padded_window(Window(0, 0, 4, 4), -1, 10, 10)


def test_load_functions_entries_and_kwargs(tmp_path: Path) -> None:
    module = tmp_path / "custom_code.py"
    module.write_text(
        "import numpy as np\n"
        "def weighted(data, weights=(1.0,)):\n"
        "    x = sum(w * data.get(b).mean(axis=2) for b, w in zip(data.band_names, weights))\n"
        "    return x, ['weighted']\n"
        "def two(self):\n"
        "    ndvi = self.get_interpolated_Sentinel2_NDVI()\n"
        "    return np.stack([ndvi.min(axis=2), ndvi.max(axis=2)], axis=-1), ['lo', 'hi']\n"
        "CONSTANT = 3\n"
    )
    fns = load_functions(str(module), ["two", {"weighted": {"weights": [2.0, 0.0]}}])
    assert [kw for _, kw in fns] == [{}, {"weights": [2.0, 0.0]}]
    assert len(load_functions(module, "two weighted")) == 2
    assert load_functions(module, [["weighted", {"weights": [1.0]}]])[0][1] == {"weights": [1.0]}
    rng = np.random.default_rng(3)
    x = rng.random((4, 5, 3, 2)).astype(np.float32)
    dates = [dt.date(2020, 1, 1 + 10 * i) for i in range(3)]
    y, names = apply_external(x, ["NDVI", "B4"], dates, fns)
    assert names == ["lo", "hi", "weighted"] and y.shape == (4, 5, 3)
    np.testing.assert_allclose(y[..., 0], x[..., 0].min(axis=2))
    np.testing.assert_allclose(y[..., 2], 2 * x[..., 0].mean(axis=2), rtol=1e-6)


def test_load_functions_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileNotFoundError, match="does not exist"):
        load_functions(tmp_path / "missing.py", ["f"])
    with pytest.raises(ConfigError, match="cannot import"):
        load_functions("i2dl_no_such_module_xyz", ["f"])
    with pytest.raises(ConfigError, match="'nope' not found"):
        load_functions(EXAMPLE, ["nope"])
    with pytest.raises(ConfigError, match="empty"):
        load_functions(EXAMPLE, [])
    with pytest.raises(ConfigError, match="one key"):
        load_functions(EXAMPLE, [{"mean_ndvi": {}, "laplacian_of_mean_ndvi": {}}])
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_functions(EXAMPLE, [{"mean_ndvi": [1, 2]}])
    fns = load_functions("scripts.examples.external_features", ["mean_ndvi"])
    assert fns[0][0].__name__ == "mean_ndvi"


def test_apply_external_validates_outputs() -> None:
    x = np.zeros((4, 5, 2, 1), dtype=np.float32)
    dates = [dt.date(2020, 1, 1), dt.date(2020, 1, 11)]

    def wrong_shape(data: ChunkData) -> tuple:
        return np.zeros((5, 4, 1)), ["f"]

    def wrong_names(data: ChunkData) -> tuple:
        return np.zeros((4, 5, 2)), ["f"]

    def not_a_pair(data: ChunkData) -> np.ndarray:
        return np.zeros((4, 5, 1))

    for fn in (wrong_shape, wrong_names, not_a_pair):
        with pytest.raises(InputDataError, match=fn.__name__):
            apply_external(x, ["NDVI"], dates, [(fn, {})])
    with pytest.raises(InputDataError, match="H, W, T, C"):
        apply_external(x[..., 0], ["NDVI"], dates, [])
    data = ChunkData(x, ["NDVI"], dates)
    with pytest.raises(ConfigError, match="no band 'B4'"):
        data.get("B4")
    with pytest.raises(AttributeError):
        data.something_else  # noqa: B018
