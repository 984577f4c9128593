"""FeatureStack: sensors on a reference grid, gap-filling, user and external features."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, reproject
from rasterio.windows import Window

from i2dl.config import ROOT_DIR
from i2dl.features.source import open_feature_stack
from i2dl.io.geotiff import block_windows
from tests.conftest import SLOVENIA

EXAMPLE = ROOT_DIR / "scripts" / "examples" / "external_features.py"


def _stack_sensor(raster: Path, masks: bool = True) -> dict:
    opts = {"raster": str(raster), "dates_file": str(SLOVENIA / "dates.txt"),
            "band_names": ["NDVI"]}
    if masks:
        opts["masks"] = [{"path": str(SLOVENIA / "CLM.tif"), "invalid_values": [1]}]
    return opts


def _read_by_chunks(stack, size: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.zeros((stack.height, stack.width, stack.n_dates, stack.n_channels), np.float32)
    valid = np.zeros((stack.height, stack.width, stack.n_dates), bool)
    for win in block_windows(stack.width, stack.height, size):
        r, c, h, w = int(win.row_off), int(win.col_off), int(win.height), int(win.width)
        x[r : r + h, c : c + w], valid[r : r + h, c : c + w] = stack.read(win)
    return x, valid


@pytest.mark.parametrize("padding", [1, 0])
def test_external_features_chunked_with_padding_have_no_seams(
    slovenia_dir: Path, padding: int
) -> None:
    data = {
        "name": "slo", "tile": "slo", "sensors": {"stack": _stack_sensor(SLOVENIA / "NDVI.tif")},
        "gapfilling": {"enabled": False},
        "external_features": {"module": str(EXAMPLE), "functions": ["laplacian_of_mean_ndvi"],
                              "chunk_padding": padding},
    }
    with open_feature_stack(data) as stack:
        assert stack.band_names == ["NDVI", "lap_mean_ndvi"]
        whole, valid = stack.read()
        chunked, valid_c = _read_by_chunks(stack, 32)
    np.testing.assert_array_equal(valid, valid_c)
    lap_whole, lap_chunk = whole[..., 0, 1], chunked[..., 0, 1]
    ok = valid[..., 0]
    if padding:
        np.testing.assert_array_equal(lap_chunk[ok], lap_whole[ok])
    else:
        assert not np.array_equal(lap_chunk[ok], lap_whole[ok])


def test_user_features_are_date_independent_channels(slovenia_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "uf" / "slo").mkdir(parents=True)
    shutil.copy(SLOVENIA / "DEM.tif", tmp_path / "uf" / "slo" / "DEM.tif")
    data = {
        "name": "slo", "tile": "slo", "sensors": {"stack": _stack_sensor(SLOVENIA / "NDVI.tif")},
        "gapfilling": {"enabled": False},
        "user_features": {"root": str(tmp_path / "uf"), "patterns": ["DEM.tif"]},
    }
    with open_feature_stack(data) as stack, rasterio.open(SLOVENIA / "DEM.tif") as dem_src:
        x, valid = stack.read(Window(10, 20, 30, 40))
        dem = dem_src.read(1, window=Window(10, 20, 30, 40)).astype(np.float32)
        assert stack.band_names[-1].lower().startswith("dem")
    for t in (0, 5, 40):
        np.testing.assert_allclose(x[..., t, -1][valid[..., t]], dem[valid[..., t]])


def test_two_sensors_on_different_grids(slovenia_dir: Path, tmp_path: Path) -> None:
    """A 20 m sensor is resampled (bilinear) onto the 10 m reference grid."""
    with rasterio.open(SLOVENIA / "NDVI.tif") as src:
        ndvi = src.read(window=Window(0, 0, 100, 100))
        profile = src.profile | {"width": 100, "height": 100}
        t10 = src.transform
    coarse = ndvi.reshape(68, 50, 2, 50, 2).mean(axis=(2, 4))
    t20 = t10 * t10.scale(2, 2)
    for name, arr, tr in (("n10.tif", ndvi, t10), ("n20.tif", coarse, t20)):
        p = profile | {"width": arr.shape[2], "height": arr.shape[1], "transform": tr}
        p.pop("blockxsize", None), p.pop("blockysize", None)
        p["tiled"] = False
        with rasterio.open(tmp_path / name, "w", **p) as dst:
            dst.write(arr)
    data = {
        "name": "two", "tile": "x",
        "sensors": {"s10": {"kind": "stack", **_stack_sensor(tmp_path / "n10.tif", masks=False)},
                    "s20": {"kind": "stack", **_stack_sensor(tmp_path / "n20.tif", masks=False)}},
        "reference_sensor": "s10", "gapfilling": {"enabled": True, "temporal_resolution": None},
    }
    with open_feature_stack(data) as stack:
        assert stack.band_names == ["s10_NDVI", "s20_NDVI"]
        assert (stack.width, stack.height) == (100, 100)
        x, valid = stack.read(Window(10, 10, 60, 60))
    expected = np.zeros((68, 100, 100), np.float32)
    reproject(coarse, expected, src_transform=t20, dst_transform=t10, src_crs=profile["crs"],
              dst_crs=profile["crs"], resampling=Resampling.bilinear)
    # dates repeated on one day (two acquisitions on 2015-12-08) are merged by the grid
    assert valid.all()
    np.testing.assert_allclose(x[..., 0, 1], expected[0, 10:70, 10:70], atol=1e-5)
    np.testing.assert_allclose(x[..., 0, 0], ndvi[0, 10:70, 10:70], atol=1e-6)
