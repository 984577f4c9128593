"""OBIA core on Slovenia: segment statistics in one windowed pass, SLIC, labels."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize

from i2dl.builders.obia import compute_segments, label_segments, segment_statistics
from i2dl.errors import ConfigError
from i2dl.io.raster import open_time_series


@pytest.fixture
def series(slovenia_dir):
    masks = [{"path": str(slovenia_dir / "CLM.tif"), "invalid_values": [1]}]
    with open_time_series(slovenia_dir / "NDVI.tif", slovenia_dir / "dates.txt", ["NDVI"],
                          masks=masks) as s:
        yield s


def _grid_segments(series) -> np.ndarray:
    """Blocks of 13 x 17 pixels: many cross 16-pixel windows."""
    rows, cols = np.mgrid[0 : series.height, 0 : series.width]
    return (rows // 13) * 100 + cols // 17 + 1


def test_statistics_equal_numpy_and_do_not_depend_on_windows(series) -> None:
    seg = _grid_segments(series)
    small = segment_statistics(series, seg, chunk_size=16)
    whole = segment_statistics(series, seg, chunk_size=4096)
    np.testing.assert_array_equal(small.ids, whole.ids)
    np.testing.assert_allclose(small.x, whole.x, rtol=1e-6, equal_nan=True)
    x, valid = series.read()
    assert small.names == ["NDVI_mean", "NDVI_std", "NDVI_min", "NDVI_max", "count"]
    for i in (0, 7, len(small.ids) - 1):
        sel = seg == small.ids[i]
        v, m = x[sel][..., 0].astype(np.float64), valid[sel]  # (n, T)
        for t in range(series.n_dates):
            obs = v[m[:, t], t]
            assert small.x[i, t, 4] == len(obs)
            if len(obs) == 0:
                assert not small.valid[i, t] and np.isnan(small.x[i, t, 0])
                continue
            np.testing.assert_allclose(small.x[i, t, :4],
                                       [obs.mean(), obs.std(), obs.min(), obs.max()],
                                       rtol=1e-5, atol=1e-6)
        assert small.n_pixels[i] == sel.sum()
    with pytest.raises(ConfigError, match="stats_used"):
        segment_statistics(series, seg, stats=["median"])


def test_slic_segmentation_and_majority_labels(series, slovenia_dir, tmp_path) -> None:
    path = compute_segments(series, tmp_path / "segments.tif", n_segments=150, compactness=0.1)
    with rasterio.open(path) as src:
        seg = src.read(1)
        transform = src.transform
    ids = np.unique(seg[seg > 0])
    assert 50 <= len(ids) <= 400
    # statistics from the raster file equal those from the array
    a = segment_statistics(series, path, ["mean", "count"], chunk_size=32)
    b = segment_statistics(series, seg, ["mean", "count"], chunk_size=4096)
    np.testing.assert_allclose(a.x, b.x, rtol=1e-6, equal_nan=True)
    ref = gpd.read_file(slovenia_dir / "reference.gpkg")
    codes = ref["LULC_ID"].to_numpy()
    pids = np.arange(100, 100 + len(ref))
    code, pid, fraction = label_segments(path, ids, ref, codes, pids, min_fraction=0.5,
                                         chunk_size=16)
    burnt = rasterize([(g, i + 1) for i, g in enumerate(ref.geometry)], out_shape=seg.shape,
                      transform=transform, fill=0, dtype="int32") - 1
    labelled = 0
    for i, s in enumerate(ids):
        inside = burnt[seg == s]
        counts = np.bincount(inside[inside >= 0], minlength=len(ref))
        share = counts.max() / (seg == s).sum() if counts.any() else 0.0
        assert fraction[i] == pytest.approx(share)
        if share >= 0.5:
            labelled += 1
            assert code[i] == codes[counts.argmax()] and pid[i] == pids[counts.argmax()]
        else:
            assert code[i] == 0 and pid[i] == -1
    assert labelled > 5
