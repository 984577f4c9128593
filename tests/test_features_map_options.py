"""features-map: iota2's number_of_chunks, tmp products (MaskCommunSL, dates) and int16."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from i2dl.errors import ConfigError
from i2dl.stages.features_map import run as run_features_map
from tests.conftest import write_stack


@pytest.fixture
def masked(tiny_dataset, tmp_path):
    """The tiny stack with a mask: rows 0-2 x cols 0-3 invalid at every date."""
    t = len(tiny_dataset["dates"])
    clm = np.zeros((t, 20, 24))
    clm[:, 0:3, 0:4] = 1
    clm[2, :, :12] = 1
    mask = write_stack(tmp_path / "mask.tif", clm, tiny_dataset["transform"], dtype="uint8")
    overrides = [o for o in tiny_dataset["overrides"] if not o.startswith("data.masks")]
    return [*overrides, f"data.masks=[{{path:{mask},invalid_values:[1]}}]"]


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src


def test_number_of_chunks_tmp_products_and_int16(make_cfg, masked, tiny_dataset, tmp_path):
    default = run_features_map(make_cfg(*masked, f"paths.output_dir={tmp_path / 'a'}"))
    strips = run_features_map(make_cfg(*masked, f"paths.output_dir={tmp_path / 'b'}",
                                       "features_map.number_of_chunks=3"))
    chunks = sorted((tmp_path / "b" / "customF").glob("*_chunk_*.tif"))
    assert len(chunks) == 3
    heights = [rasterio.open(c).height for c in chunks]
    assert sum(heights) == 20 and max(heights) - min(heights) <= 1  # row strips
    a, _ = _read(default)
    b, _ = _read(strips)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)])
    # iota2's tmp products of the tile
    tmp = tmp_path / "a" / "features" / "tiny" / "tmp"
    mask, _ = _read(tmp / "MaskCommunSL.tif")
    want = np.ones((20, 24), np.uint8)
    want[0:3, 0:4] = 0  # no valid date there
    np.testing.assert_array_equal(mask[0], want)
    dates = [d.strftime("%Y%m%d") for d in tiny_dataset["dates"]]
    assert (tmp / "stack_tiny_input_dates.txt").read_text().split() == dates
    assert (tmp / "stack_tiny_interpolation_dates.txt").read_text().split() == dates
    # int16: round(value * 1000), nodata -10000, band scale 1/1000
    run_features_map(make_cfg(*masked, f"paths.output_dir={tmp_path / 'c'}",
                              "features_map.dtype=int16", "features_map.scale=1000"))
    with rasterio.open(tmp_path / "c" / "by_tiles" / "tiny.tif") as src:
        c = src.read()
        assert src.dtypes[0] == "int16" and src.nodata == -10000
        assert src.scales[0] == pytest.approx(1e-3)
    valid = ~np.isnan(a)
    np.testing.assert_array_equal(c[~valid], -10000)
    np.testing.assert_allclose(c[valid] / 1000.0, a[valid], atol=0.5e-3 + 1e-6)


@pytest.mark.parametrize("override, match", [
    ("features_map.number_of_chunks=0", "number_of_chunks"),
    ("features_map.dtype=uint8", "dtype"),
])
def test_bad_options(make_cfg, masked, override, match) -> None:
    with pytest.raises(ConfigError, match=match):
        run_features_map(make_cfg(*masked, override))
