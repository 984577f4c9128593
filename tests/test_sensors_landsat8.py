"""THEIA Landsat-8 N2A reader on iota2's test products (and copies with edited masks)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.io.geotiff import block_windows
from i2dl.io.sensors.base import TimeSeriesSource
from i2dl.io.sensors.landsat8 import (
    LANDSAT8_BANDS,
    Landsat8N2A,
    find_landsat8_products,
    mask_invalid,
)
from tests.conftest import DATA_DIR

L8_REAL = DATA_DIR / "iota2_testdata" / "L8_50x50"
DATES = [dt.date(2016, 3, 30), dt.date(2016, 4, 15)]
#: tile -> (width, height) of iota2's test products
SIZES = {"D0005H0002": (50, 50), "D0005H0003": (56, 49)}


@pytest.fixture
def l8_root() -> Path:
    """iota2's Landsat-8 N2A test products, or skip."""
    if not (L8_REAL / "D0005H0002").is_dir():
        pytest.skip(f"real data absent: {L8_REAL} (set I2DL_DATA to the shared data folder)")
    return L8_REAL


def _files(root: Path, tile: str) -> list[dict[str, Path]]:
    """Image and mask paths per date, found independently of the reader."""
    out = []
    for folder in sorted((root / tile).iterdir()):
        files = {"image": next(folder.glob("*_ORTHO_SURF_CORR_PENTE_*.TIF"))}
        for m in ("NUA", "SAT", "DIV", "NODATA"):
            files[m] = next((folder / "MASK").glob(f"*_{m}.TIF"))
        out.append(files)
    return out


def _read1(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _expected_valid(files: dict[str, Path], nodata_mask: bool) -> np.ndarray:
    """Independent validity from the masks: NUA == 0, SAT == 0, DIV even (NODATA odd)."""
    nua = _read1(files["NUA"]).astype(np.int64)
    sat = _read1(files["SAT"]).astype(np.int64)
    div = _read1(files["DIV"]).astype(np.int64)
    ok = (nua == 0) & (sat == 0) & (div % 2 == 0)
    if nodata_mask:
        ok &= _read1(files["NODATA"]).astype(np.int64) % 2 == 1
    return ok


@pytest.mark.parametrize("tile", sorted(SIZES))
def test_real_products_found(l8_root: Path, tile: str) -> None:
    """Both real tiles: two dates, tile and site parsed, image and 4 masks found."""
    products = find_landsat8_products(l8_root, tile)
    assert [p.date for p in products] == DATES
    assert {(p.tile, p.site, p.satellite) for p in products} == {
        (tile, "France-Metropole", "LANDSAT8")
    }
    for product in products:
        assert product.image is not None and product.image.name.endswith(f"{tile}.TIF")
        assert sorted(product.masks) == ["DIV", "NODATA", "NUA", "SAT"]
    # the tile folder itself; the date filter is inclusive
    same = find_landsat8_products(l8_root / tile, tile, start_date="2016-04-15")
    assert [p.date for p in same] == DATES[1:]
    assert len(find_landsat8_products(l8_root, tile, "20160330", dt.date(2016, 3, 30))) == 1


@pytest.mark.parametrize("tile", sorted(SIZES))
def test_real_read_values_and_validity(l8_root: Path, tile: str) -> None:
    """Values = TIF / 1000 and validity = the masks, on both real tiles."""
    files = _files(l8_root, tile)
    with rasterio.open(files[0]["image"]) as ref:
        grid = (ref.width, ref.height, ref.transform, ref.crs)
    assert grid[:2] == SIZES[tile]
    with Landsat8N2A(l8_root, tile) as src:
        assert isinstance(src, TimeSeriesSource)
        assert src.dates == DATES
        assert src.band_names == list(LANDSAT8_BANDS) == [f"B{i}" for i in range(1, 8)]
        assert (src.width, src.height, src.transform, src.crs) == grid
        assert src.profile()["transform"] == grid[2]
        x, valid = src.read()
    w, h = SIZES[tile]
    assert x.shape == (h, w, 2, 7) and x.dtype == np.float32 and valid.shape == (h, w, 2)
    for t, f in enumerate(files):
        with rasterio.open(f["image"]) as img:
            raw = img.read(out_dtype="float32")
        np.testing.assert_array_equal(x[:, :, t, :], np.moveaxis(raw, 0, -1) / np.float32(1000))
        np.testing.assert_array_equal(valid[:, :, t], _expected_valid(f, nodata_mask=False))
    assert 0 < x.min() and x.max() < 1  # reflectance x 1000 in the N2A files
    with Landsat8N2A(l8_root, tile, use_nodata_mask=True) as src:
        _, valid_nd = src.read()
    for t, f in enumerate(files):
        np.testing.assert_array_equal(valid_nd[:, :, t], _expected_valid(f, nodata_mask=True))


def test_real_windows_and_band_selection(l8_root: Path) -> None:
    """Window reads and band selection on a real tile."""
    with Landsat8N2A(l8_root, "D0005H0003", bands=["B5", "B4"]) as src:
        assert src.band_names == ["B5", "B4"]
        x, valid = src.read()
        for win in block_windows(src.width, src.height, 16):
            xb, vb = src.read(win)
            r, c = int(win.row_off), int(win.col_off)
            np.testing.assert_array_equal(xb, x[r : r + xb.shape[0], c : c + xb.shape[1]])
            np.testing.assert_array_equal(vb, valid[r : r + xb.shape[0], c : c + xb.shape[1]])
        with pytest.raises(ValueError, match="outside the grid"):
            src.read(Window(50, 40, 10, 10))
    image = _files(L8_REAL, "D0005H0003")[0]["image"]
    with rasterio.open(image) as img:
        np.testing.assert_array_equal(x[:, :, 0, 0], img.read(5) / np.float32(1000))


@pytest.fixture
def edited_tile(l8_root: Path, tmp_path: Path) -> Path:
    """A copy of tile D0005H0002 with clouds, saturation, DIV and NODATA flags set."""
    root = tmp_path / "l8"
    shutil.copytree(l8_root / "D0005H0002", root / "D0005H0002")
    for t, f in enumerate(_files(root, "D0005H0002")):
        edits = {
            "NUA": [((1, 1), 1), ((2, 2), 8 + t)],
            "SAT": [((3, 4), 2)],
            "DIV": [((5, 5), 1), ((6, 6), 2), ((7, 7), 3), ((8, 8), 4 + t)],
            "NODATA": [((9, 9), 0), ((10, 10), 2)],
        }
        for name, cells in edits.items():
            with rasterio.open(f[name], "r+") as dst:
                arr = dst.read(1)
                for (r, c), v in cells:
                    arr[r, c] = v
                dst.write(arr, 1)
    return root


def test_mask_semantics_on_edited_masks(edited_tile: Path) -> None:
    """NUA/SAT non-zero, DIV odd (and NODATA even on request) are invalid."""
    files = _files(edited_tile, "D0005H0002")
    for nodata_mask in (False, True):
        with Landsat8N2A(edited_tile, "D0005H0002", use_nodata_mask=nodata_mask) as src:
            _, valid = src.read()
        for t, f in enumerate(files):
            np.testing.assert_array_equal(valid[:, :, t], _expected_valid(f, nodata_mask))
    with Landsat8N2A(edited_tile, "D0005H0002") as src:
        _, valid = src.read()
    # NUA != 0, SAT != 0, DIV odd -> invalid; DIV even -> valid
    assert not valid[1, 1].any() and not valid[2, 2].any() and not valid[3, 4].any()
    assert not valid[5, 5].any() and valid[6, 6].all() and not valid[7, 7].any()
    assert list(valid[8, 8]) == [True, False]  # DIV 4 then 5
    assert valid[9, 9].all() and valid.sum() == 2 * 2500 - 2 * 5 - 1


def test_mask_invalid_rules() -> None:
    """The per-mask rules, integer and float masks."""
    vals = np.array([0, 1, 2, 3, 8], dtype=np.uint16)
    assert list(mask_invalid("NUA", vals)) == [False, True, True, True, True]
    assert list(mask_invalid("DIV", vals)) == [False, True, False, True, False]
    assert list(mask_invalid("NODATA", vals)) == [True, False, True, False, True]
    floats = np.array([0.0, 1.0, np.nan, -3.4e38], dtype=np.float32)
    assert list(mask_invalid("SAT", floats)) == [False, True, True, True]


def test_bad_inputs_are_named(edited_tile: Path) -> None:
    """Bad arguments and broken products raise errors naming the value or file."""
    tile = "D0005H0002"
    with pytest.raises(InputDataError, match="D0005H0009") as err:
        find_landsat8_products(edited_tile, "D0005H0009")
    assert str(edited_tile) in str(err.value)
    with pytest.raises(InputDataError, match="out of the date range"):
        find_landsat8_products(edited_tile, tile, start_date="2017-01-01")
    with pytest.raises(InputFileNotFoundError):
        find_landsat8_products(edited_tile / "missing", tile)
    with pytest.raises(ConfigError, match="B8"):
        Landsat8N2A(edited_tile, tile, bands=["B8"])
    files = _files(edited_tile, tile)
    # a mask on another grid: named when read
    nua = files[1]["NUA"]
    arr = _read1(nua)
    with rasterio.open(nua) as s:
        crs, dtype = s.crs, s.dtypes[0]
    with rasterio.open(
        nua,
        "w",
        driver="GTiff",
        width=50,
        height=50,
        count=1,
        dtype=dtype,
        crs=crs,
        transform=from_origin(570450.0, 6264390.0, 30, 30),
    ) as dst:
        dst.write(arr, 1)
    with Landsat8N2A(edited_tile, tile) as src, pytest.raises(InputDataError, match="_NUA.TIF"):
        src.read()
    # a required mask missing
    files[0]["SAT"].unlink()
    with pytest.raises(InputDataError, match=r"_SAT\.TIF"):
        Landsat8N2A(edited_tile, tile)
    # NODATA only needed on request
    files[1]["NODATA"].unlink()
    files[0]["SAT"].write_bytes(files[1]["SAT"].read_bytes())
    Landsat8N2A(edited_tile, tile).close()
    with pytest.raises(InputDataError, match="use_nodata_mask=False"):
        Landsat8N2A(edited_tile, tile, use_nodata_mask=True)
