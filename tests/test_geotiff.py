"""GeoTIFF helpers: the one profile, block windows, and the windowed mosaic."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.merge import merge
from rasterio.transform import from_origin

from i2dl.errors import ConfigError, InputDataError
from i2dl.io.geotiff import TILE, block_windows, geotiff_profile, mosaic


def _tile(path: Path, x0: float, y0: float, shape: tuple[int, int, int], dtype: str,
          nodata: float | None, seed: int, res: float = 1.0, crs: str = "EPSG:32631",
          descriptions: list[str] | None = None) -> Path:
    """A random raster with ~20 % nodata pixels (or zeros when there is no nodata)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 6, shape).astype(dtype)
    hole = rng.random(shape) < 0.2
    data[hole] = 0 if nodata is None else nodata
    profile = geotiff_profile(shape[2], shape[1], shape[0], dtype, crs,
                              from_origin(x0, y0, res, res), nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = tuple(descriptions)
    return path


#: Overlapping and disjoint tiles of different sizes (upper-left x, y; bands, rows, cols).
LAYOUT = [(0, 1000, (2, 300, 420)), (300, 1100, (2, 500, 380)), (650, 700, (2, 90, 60)),
          (-40.0, 650.0, (2, 60, 600))]


@pytest.mark.parametrize(("dtype", "nodata"),
                         [("uint8", 0), ("uint16", None), ("float32", math.nan),
                          ("float32", -9999.0), ("int16", -1)])
@pytest.mark.parametrize("block_bytes", [1, 2**30])  # 256-pixel blocks, or one block
def test_mosaic_equals_rasterio_merge(tmp_path: Path, dtype: str, nodata: float | None,
                                      block_bytes: int) -> None:
    paths = [_tile(tmp_path / f"t{i}.tif", x, y, shape, dtype, nodata, seed=i)
             for i, (x, y, shape) in enumerate(LAYOUT)]
    out = mosaic(paths, tmp_path / "out" / "mosaic.tif", block_bytes=block_bytes)
    sources = [rasterio.open(p) for p in paths]
    try:
        want, transform = merge(sources, nodata=sources[0].nodata)
    finally:
        for s in sources:
            s.close()
    with rasterio.open(out) as got:
        assert got.transform == transform and got.shape == want.shape[1:]
        assert got.dtypes[0] == dtype and got.count == 2
        assert got.nodata == nodata or (math.isnan(got.nodata) and math.isnan(nodata))
        assert got.block_shapes[0] == (TILE, TILE) and got.compression.value == "DEFLATE"
        np.testing.assert_array_equal(got.read(), want)
    assert [p.name for p in out.parent.iterdir()] == ["mosaic.tif"]  # no temporary left


def test_mosaic_first_valid_wins_and_descriptions(tmp_path: Path) -> None:
    a = _tile(tmp_path / "a.tif", 0, 10, (1, 10, 10), "float32", math.nan, 0,
              descriptions=["NDVI_20200101"])
    b = _tile(tmp_path / "b.tif", 0, 10, (1, 10, 10), "float32", math.nan, 1)
    with rasterio.open(a) as sa, rasterio.open(b) as sb:
        va, vb = sa.read(1), sb.read(1)
    got_path = mosaic([a, b], tmp_path / "m.tif")
    with rasterio.open(got_path) as got:
        assert got.descriptions == ("NDVI_20200101",)  # the first input's by default
        np.testing.assert_array_equal(got.read(1), np.where(np.isnan(va), vb, va))
    with rasterio.open(mosaic([a, b], tmp_path / "n.tif", descriptions=["x"])) as got:
        assert got.descriptions == ("x",)


def test_mosaic_opens_one_input_at_a_time(tmp_path: Path, monkeypatch) -> None:
    # GDAL keeps a decoded block per open dataset: a many-tile mosaic must not hold every
    # input open at once (issue 23); same pixels as rasterio's merge
    paths = [_tile(tmp_path / f"t{i}.tif", x, y, shape, "int16", -1, seed=i)
             for i, (x, y, shape) in enumerate(LAYOUT)]
    real_open, open_now, most = rasterio.open, [0], [0]

    class Counted:
        def __init__(self, *args, **kwargs) -> None:
            self.ds = real_open(*args, **kwargs)
            open_now[0] += 1
            most[0] = max(most[0], open_now[0])

        def __enter__(self):
            return self.ds.__enter__()

        def __exit__(self, *exc) -> None:
            open_now[0] -= 1
            self.ds.__exit__(*exc)

    monkeypatch.setattr("i2dl.io.geotiff.rasterio.open", Counted)
    out = mosaic(paths, tmp_path / "m.tif", block_bytes=1)
    monkeypatch.undo()
    assert open_now[0] == 0 and most[0] == 2  # the output and one input
    sources = [rasterio.open(p) for p in paths]
    want, _ = merge(sources, nodata=-1)
    for s in sources:
        s.close()
    with rasterio.open(out) as got:
        np.testing.assert_array_equal(got.read(), want)


def test_mosaic_nonaligned_grid_matches_merge(tmp_path: Path) -> None:
    paths = [_tile(tmp_path / "a.tif", 0, 1000, (1, 300, 500), "uint8", 0, 0),
             _tile(tmp_path / "b.tif", 300.4, 1100.3, (1, 400, 300), "uint8", 0, 1)]
    sources = [rasterio.open(p) for p in paths]
    want, _ = merge(sources, nodata=0)
    for s in sources:
        s.close()
    with rasterio.open(mosaic(paths, tmp_path / "m.tif", block_bytes=1)) as got:
        np.testing.assert_array_equal(got.read(), want)


def test_mosaic_bad_inputs(tmp_path: Path) -> None:
    a = _tile(tmp_path / "a.tif", 0, 10, (1, 10, 10), "uint8", 0, 0)
    with pytest.raises(ConfigError, match="nothing to mosaic"):
        mosaic([], tmp_path / "m.tif")
    other_crs = _tile(tmp_path / "b.tif", 0, 10, (1, 10, 10), "uint8", 0, 0, crs="EPSG:32632")
    with pytest.raises(ConfigError, match="different CRS"):
        mosaic([a, other_crs], tmp_path / "m.tif")
    two_bands = _tile(tmp_path / "c.tif", 0, 10, (2, 10, 10), "uint8", 0, 0)
    with pytest.raises(InputDataError, match="c.tif has 2 bands"):
        mosaic([a, two_bands], tmp_path / "m.tif")
    with pytest.raises(InputDataError, match="nodata -1 cannot be stored in the uint8"):
        mosaic([a], tmp_path / "m.tif", nodata=-1)
    with pytest.raises(InputDataError, match="2 band descriptions"):
        mosaic([a], tmp_path / "m.tif", descriptions=["x", "y"])
    assert not (tmp_path / "m.tif").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_geotiff_profile() -> None:
    t = from_origin(0, 0, 10, 10)
    p = geotiff_profile(5, 4, 3, "float32", "EPSG:32631", t, nodata=0.0)
    assert (p["width"], p["height"], p["count"], p["dtype"], p["nodata"]) == (5, 4, 3,
                                                                              "float32", 0.0)
    assert (p["tiled"], p["blockxsize"], p["compress"], p["predictor"], p["BIGTIFF"]) == (
        True, 256, "deflate", 3, "IF_SAFER")
    assert geotiff_profile(5, 4, 1, np.uint16, None, t)["predictor"] == 2
    palette = geotiff_profile(5, 4, 1, "uint8", None, t, predictor=False, photometric="palette")
    assert "predictor" not in palette and palette["photometric"] == "palette"


@pytest.mark.parametrize(("width", "height", "size"), [(24, 20, 8), (23, 17, 5), (7, 3, 100),
                                                       (1, 1, 1), (0, 5, 3)])
def test_block_windows_cover_grid_once(width: int, height: int, size: int) -> None:
    cover = np.zeros((height, width), dtype=int)
    windows = block_windows(width, height, size)
    for w in windows:
        assert 0 < w.width <= size and 0 < w.height <= size
        cover[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    assert (cover == 1).all()
    assert len(windows) == -(-width // size) * -(-height // size)


def test_block_windows_error_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="infer.chunk_size must be >= 1 pixel, got 0"):
        block_windows(10, 10, 0, "infer.chunk_size")
