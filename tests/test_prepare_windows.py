"""prepare reads by blocks: the samples equal a whole-raster computation, whatever the blocks."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import Polygon

import i2dl.samples.extract as prepare_module
import i2dl.samples.reading as reading_module
from i2dl.io.vector import burn_polygons, burn_window
from i2dl.samples.extract import prepare
from i2dl.samples.store import open_store, read_array

H, W, T, C = 37, 45, 3, 2
TRANSFORM = from_origin(600000.0, 5100000.0, 10.0, 10.0)


def _xy(r: float, c: float) -> tuple[float, float]:
    return TRANSFORM @ (c, r)


@pytest.fixture
def irregular(tmp_path):
    """int16 stack, nodata -9999 in places; triangles, a polygon with a hole, the grid edge."""
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 3000, (T * C, H, W)).astype(np.int16)
    stack[:, 30:, 40:] = -9999  # no valid date at all there
    stack[1 * C : 2 * C, :5, :] = -9999  # one invalid date at the top
    raster = tmp_path / "stack.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=W, height=H, count=T * C,
                       dtype="int16", crs="EPSG:32633", transform=TRANSFORM, nodata=-9999) as dst:
        dst.write(stack)
    shapes = [
        Polygon([_xy(1, 1), _xy(1, 20), _xy(18, 3)]),                      # triangle
        Polygon([_xy(3, 22), _xy(3, 44), _xy(25, 44), _xy(25, 22)],
                holes=[[_xy(8, 28), _xy(8, 36), _xy(16, 36), _xy(16, 28)]]),  # with a hole
        Polygon([_xy(20, 5), _xy(36, 5), _xy(36, 21), _xy(20, 21)]),
        Polygon([_xy(26, 22), _xy(36.9, 22), _xy(36.9, 44.9), _xy(26, 44.9)]),  # to the edge
        Polygon([_xy(13, 14), _xy(19, 18), _xy(12, 20)]),
    ]
    codes = [1, 2, 3, 1, 2]
    gdf = gpd.GeoDataFrame({"code": codes}, geometry=shapes, crs="EPSG:32633")
    reference = tmp_path / "ref.gpkg"
    gdf.to_file(reference, driver="GPKG")
    dates = tmp_path / "dates.txt"
    dates.write_text("20200101\n20200201\n20200301\n")
    overrides = ["data.name=irregular", f"data.raster={raster}", f"data.dates_file={dates}",
                 "data.band_names=[b1,b2]", "data.masks=[]", f"data.reference={reference}",
                 "data.data_field=code", "data.nomenclature=null", "sampling.ratio=0.5"]
    return {"raster": raster, "gdf": gdf, "stack": stack, "overrides": overrides}


def _samples(store) -> dict[tuple[int, int], tuple[int, np.ndarray, np.ndarray]]:
    group = open_store(store)
    x, mask = read_array(group, "X"), read_array(group, "mask")
    row, col, code = (read_array(group, k) for k in ("row", "col", "code"))
    return {(int(r), int(c)): (int(k), xi, m) for r, c, k, xi, m in zip(row, col, code, x, mask,
                                                                      strict=True)}


@pytest.mark.parametrize("block", [4, 9, 256])
def test_block_extraction_equals_a_whole_raster_computation(
    make_cfg, irregular, monkeypatch, block
) -> None:
    monkeypatch.setattr(reading_module, "EXTRACT_BLOCK", block)
    monkeypatch.setattr(prepare_module, "STAT_ROWS", 7)  # statistics merged over chunks
    store = prepare(make_cfg(*irregular["overrides"]))
    got = _samples(store)
    assert [p.name for p in store.parent.iterdir() if "spool" in p.name] == []
    # independent: burn every polygon on the whole grid (pixel centres, last one wins)
    gdf = irregular["gdf"]
    burnt = rasterize([(g, i + 1) for i, g in enumerate(gdf.geometry)], out_shape=(H, W),
                      transform=TRANSFORM, fill=0, dtype="int32") - 1
    with rasterio.open(irregular["raster"]) as src:
        whole = src.read()  # (T*C, H, W) int16
    expected = {}
    for r, c in zip(*np.nonzero(burnt >= 0), strict=True):
        series = whole[:, r, c].reshape(T, C)
        valid = (series != -9999).all(axis=1)
        if valid.any():
            expected[(int(r), int(c))] = (int(gdf["code"].iloc[burnt[r, c]]), series, valid)
    assert set(got) == set(expected) and len(got) > 300
    for key, (code, series, valid) in expected.items():
        g_code, g_x, g_valid = got[key]
        assert g_code == code, key
        np.testing.assert_array_equal(g_valid, valid)
        np.testing.assert_array_equal(g_x[valid], series[valid].astype(np.float32))
    # the learn statistics (merged chunk by chunk) equal numpy's over the learn samples
    group = open_store(store)
    learn = read_array(group, "split") == 0
    obs = read_array(group, "X")[learn][read_array(group, "mask")[learn]]
    norm = group.attrs["norm"]
    np.testing.assert_allclose(norm["mean"], obs.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(norm["std"], obs.std(axis=0), rtol=1e-5)


def test_burn_window_equals_the_whole_grid_burn(irregular) -> None:
    """Also with overlapping polygons (the last one wins in both)."""
    extra = Polygon([_xy(10, 10), _xy(30, 40), _xy(5, 30)])
    gdf = gpd.GeoDataFrame(geometry=[*irregular["gdf"].geometry, extra], crs="EPSG:32633")
    values = np.arange(len(gdf)) * 10
    whole = burn_polygons(gdf.geometry, values, TRANSFORM, W, H)
    for win in (Window(0, 0, W, H), Window(3, 7, 11, 5), Window(40, 30, 5, 7),
                Window(20, 0, 1, 1)):
        part = burn_window(gdf, values, TRANSFORM, win)
        np.testing.assert_array_equal(
            part, whole[win.row_off : win.row_off + win.height,
                        win.col_off : win.col_off + win.width])
