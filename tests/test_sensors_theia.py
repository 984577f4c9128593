"""THEIA Sentinel-2 L2A reader (and user features): synthetic products and iota2's test data."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import reproject
from rasterio.windows import Window

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.io.geotiff import block_windows
from i2dl.io.sensors.base import TimeSeriesSource
from i2dl.io.sensors.theia import Sentinel2Theia
from i2dl.io.sensors.theia_products import (
    BANDS_10M,
    THEIA_BANDS,
    TheiaProduct,
    find_theia_products,
)
from i2dl.io.sensors.userfeat import UserFeatures
from tests.conftest import DATA_DIR

TILE = "T31TCJ"
CRS = "EPSG:32631"
X0, Y0 = 300000.0, 5000000.0
T10 = from_origin(X0, Y0, 10, 10)
T20 = from_origin(X0, Y0, 20, 20)
NAMES = [
    "SENTINEL2A_20180511-105804-037_L2A_T31TCJ_D_V1-7",
    "SENTINEL2B_20180521-105702-711_L2A_T31TCJ_C_V2-2",
]
S2_REAL = DATA_DIR / "iota2_testdata" / "references" / "CoRegister" / "sensor_data"


def _write(path: Path, data: np.ndarray, transform: Any, nodata: float | None = None) -> None:
    data = data[None] if data.ndim == 2 else data
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=CRS,
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(data)


@pytest.fixture
def theia_tree(tmp_path: Path) -> dict[str, Any]:
    """Two THEIA products of tile T31TCJ (10 m bands 20x20 px, 20 m bands 10x10 px, masks).

    Returns a dict: ``root``, ``bands[t][name]`` (int16 arrays as written), ``masks[t][name]``
    (uint8 arrays), ``folders``.
    """
    rng = np.random.default_rng(42)
    root = tmp_path / "s2"
    tile_dir = root / TILE
    bands: list[dict[str, np.ndarray]] = []
    masks: list[dict[str, np.ndarray]] = []
    folders = []
    for t, name in enumerate(NAMES):
        folder = tile_dir / name
        folders.append(folder)
        arrays = {}
        for band in THEIA_BANDS:
            size = 20 if band in BANDS_10M else 10
            arrays[band] = rng.integers(0, 6000, (size, size)).astype("int16")
        if t == 0:
            arrays["B3"][2, 3] = -10000  # a 10 m nodata pixel
            arrays["B11"][6, 7] = -10000  # a 20 m nodata pixel -> 10 m rows 12-13, cols 14-15
        for band, arr in arrays.items():
            _write(folder / f"{name}_FRE_{band}.tif", arr, T10 if arr.shape[0] == 20 else T20)
        clm = np.zeros((20, 20), "uint8")
        clm[0, :4] = [1, 2, 32, 128]
        clm[5, 5] = 16
        clm[10 + t, 3] = 3
        sat = np.zeros((20, 20), "uint8")
        sat[8, 8 + t] = 4
        edg = np.zeros((20, 20), "uint8")
        edg[:, 19] = 1 if t == 1 else 0
        for mname, arr in (("CLM", clm), ("SAT", sat), ("EDG", edg)):
            _write(folder / "MASKS" / f"{name}_{mname}_R1.tif", arr, T10)
        # decoys: 20 m masks, SRE bands, metadata
        _write(folder / "MASKS" / f"{name}_CLM_R2.tif", clm[::2, ::2].copy(), T20)
        _write(folder / f"{name}_SRE_B2.tif", arrays["B2"] + 1, T10)
        (folder / f"{name}_MTD_ALL.xml").write_text("<Muscate_Metadata_Document/>")
        bands.append(arrays)
        masks.append({"CLM": clm, "SAT": sat, "EDG": edg})
    # not products of this tile
    (tile_dir / "SENTINEL2A_20180511-105804-037_L2A_T31TDJ_D_V1-7").mkdir()
    (tile_dir / "notes").mkdir()
    (tile_dir / "readme.txt").write_text("x")
    return {"root": root, "bands": bands, "masks": masks, "folders": folders}


def _up2(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)


def _expected_invalid(tree: dict[str, Any], t: int, cloud_bits: int | None = None) -> np.ndarray:
    """Independent validity: nodata in any band, CLM (bits), SAT, EDG."""
    b, m = tree["bands"][t], tree["masks"][t]
    bad = np.zeros((20, 20), bool)
    for band in THEIA_BANDS:
        nod = b[band] == -10000
        bad |= nod if band in BANDS_10M else _up2(nod)
    clm = m["CLM"] if cloud_bits is None else m["CLM"] & cloud_bits
    return bad | (clm != 0) | (m["SAT"] != 0) | (m["EDG"] != 0)


# --------------------------------------------------------------------------- discovery
def test_find_products_parses_folder_names(theia_tree: dict[str, Any]) -> None:
    """Date, time, tile, satellite, kind and version come from the folder name."""
    products = find_theia_products(theia_tree["root"], TILE)
    assert [p.name for p in products] == NAMES
    assert [p.date for p in products] == [dt.date(2018, 5, 11), dt.date(2018, 5, 21)]
    assert [p.satellite for p in products] == ["SENTINEL2A", "SENTINEL2B"]
    assert {p.tile for p in products} == {TILE}
    assert products[0].time == dt.time(10, 58, 4, 37000)
    assert (products[0].kind, products[0].version) == ("D", "1-7")
    assert (products[1].kind, products[1].version) == ("C", "2-2")
    p0 = products[0]
    assert sorted(p0.bands) == sorted(THEIA_BANDS)
    assert p0.bands["B8A"].name == f"{NAMES[0]}_FRE_B8A.tif"
    assert p0.bands["B11"].name == f"{NAMES[0]}_FRE_B11.tif"
    assert {k: v.name for k, v in p0.masks.items()} == {
        m: f"{NAMES[0]}_{m}_R1.tif" for m in ("CLM", "SAT", "EDG")
    }
    assert p0.stack is None
    sre = find_theia_products(theia_tree["root"], TILE, level="SRE")[0]
    assert list(sre.bands) == ["B2"] and sre.level == "SRE"
    # the tile folder itself, and the tile without its T
    same = find_theia_products(theia_tree["root"] / TILE, "31tcj")
    assert [p.name for p in same] == NAMES


def test_date_filter_is_inclusive(theia_tree: dict[str, Any]) -> None:
    """start_date and end_date both keep acquisitions on the bound."""
    root = theia_tree["root"]
    one = find_theia_products(root, TILE, start_date="2018-05-11", end_date=dt.date(2018, 5, 11))
    assert [p.date for p in one] == [dt.date(2018, 5, 11)]
    last = find_theia_products(root, TILE, start_date="20180512")
    assert [p.date for p in last] == [dt.date(2018, 5, 21)]
    both = find_theia_products(root, TILE, start_date="2018-05-11", end_date="2018-05-21")
    assert len(both) == 2
    with pytest.raises(InputDataError, match="out of the date range"):
        find_theia_products(root, TILE, end_date="2018-05-10")
    with pytest.raises(ConfigError, match="start_date"):
        find_theia_products(root, TILE, start_date="May")


def test_no_product_names_folder_and_lists_entries(theia_tree: dict[str, Any]) -> None:
    """No product: the error names the folder and lists what it holds."""
    with pytest.raises(InputDataError) as err:
        find_theia_products(theia_tree["root"] / TILE, "T32ULU")
    msg = str(err.value)
    assert str(theia_tree["root"] / TILE) in msg and "T32ULU" in msg
    assert "notes" in msg and NAMES[0] in msg  # what was found
    with pytest.raises(InputFileNotFoundError, match="does not exist"):
        find_theia_products(theia_tree["root"] / "nowhere", TILE)
    with pytest.raises(InputDataError, match="not named like"):
        TheiaProduct.from_folder(theia_tree["root"] / TILE / "notes")


# --------------------------------------------------------------------------- reading
def test_band_order_scaling_and_nearest_resampling(theia_tree: dict[str, Any]) -> None:
    """iota2 band order, value / 10000, nearest = 2x2 repeat of the 20 m pixels."""
    with Sentinel2Theia(theia_tree["root"], TILE, resampling="nearest") as src:
        assert isinstance(src, TimeSeriesSource)
        assert src.band_names == list(THEIA_BANDS)
        assert src.dates == [dt.date(2018, 5, 11), dt.date(2018, 5, 21)]
        assert (src.width, src.height, src.transform) == (20, 20, T10)
        assert src.crs == rasterio.crs.CRS.from_string(CRS)
        assert src.profile() == {
            "driver": "GTiff",
            "crs": src.crs,
            "transform": T10,
            "width": 20,
            "height": 20,
        }
        x, valid = src.read()
    assert x.shape == (20, 20, 2, 10) and x.dtype == np.float32
    assert valid.shape == (20, 20, 2) and valid.dtype == bool
    for t in range(2):
        for c, band in enumerate(THEIA_BANDS):
            raw = theia_tree["bands"][t][band]
            full = raw if band in BANDS_10M else _up2(raw)
            want = full.astype(np.float32) / np.float32(10000)
            got = x[:, :, t, c]
            if band in BANDS_10M:
                np.testing.assert_array_equal(got, want)  # 10 m: value / 10000, exactly
            else:
                nod = full == -10000
                np.testing.assert_array_equal(got[~nod], want[~nod])  # nearest == 2x2 repeat
                assert np.isnan(got[nod]).all()
    assert (x[2, 3, 0, 1] == np.float32(-1.0)) and not valid[2, 3, 0]


def test_band_selection_keeps_requested_order(theia_tree: dict[str, Any]) -> None:
    """Selected bands come in the requested order."""
    with Sentinel2Theia(theia_tree["root"], TILE, bands=["B8", "b2", "B11"]) as src:
        assert src.band_names == ["B8", "B2", "B11"]
        x, _ = src.read(Window(0, 0, 4, 4))
    b = theia_tree["bands"][1]
    np.testing.assert_array_equal(x[:, :, 1, 0], b["B8"][:4, :4] / np.float32(10000))
    np.testing.assert_array_equal(x[:, :, 1, 1], b["B2"][:4, :4] / np.float32(10000))


def test_bilinear_agrees_with_rasterio_resampling(theia_tree: dict[str, Any]) -> None:
    """Bilinear 20 m -> 10 m equals rasterio's resampling of the full raster."""
    with Sentinel2Theia(theia_tree["root"], TILE, resampling="bilinear") as src:
        x, _ = src.read()
        win = Window(3, 5, 9, 7)
        xw, vw = src.read(win)
    folder = theia_tree["folders"][1]
    for band in ("B5", "B8A", "B12"):
        c = THEIA_BANDS.index(band)
        path = folder / f"{NAMES[1]}_FRE_{band}.tif"
        with rasterio.open(path) as s20:
            # GDAL's resampled read of the full raster (rounds to int16): interior window
            gdal_read = s20.read(
                1, out_shape=(20, 20), resampling=Resampling.bilinear, out_dtype="float32"
            )
            # GDAL's warper on the full raster, in float32
            warped = np.full((20, 20), np.nan, np.float32)
            reproject(
                s20.read(1, out_dtype="float32"),
                warped,
                src_transform=s20.transform,
                src_crs=s20.crs,
                dst_transform=T10,
                dst_crs=s20.crs,
                src_nodata=-10000,
                dst_nodata=np.nan,
                resampling=Resampling.bilinear,
            )
        got = x[:, :, 1, c] * 10000
        inner = np.s_[2:18, 2:18]
        np.testing.assert_allclose(got[inner], gdal_read[inner], atol=0.5 + 1e-3)
        np.testing.assert_allclose(got, warped, rtol=0, atol=1e-3)
        # truly resampled: not the 2x2 repeat
        assert not np.allclose(got[inner], _up2(theia_tree["bands"][1][band])[inner])
    # a window equals the same part of the full read
    np.testing.assert_array_equal(xw, x[5:12, 3:12])


def test_window_reads_reassemble_full_read(theia_tree: dict[str, Any]) -> None:
    """Block windows give the same values and validity as one full read."""
    with Sentinel2Theia(theia_tree["root"], TILE) as src:
        x, valid = src.read()
        x2 = np.full_like(x, -7)
        v2 = np.zeros_like(valid)
        for w in block_windows(20, 20, 7):
            r, c = int(w.row_off), int(w.col_off)
            xb, vb = src.read(w)
            x2[r : r + xb.shape[0], c : c + xb.shape[1]] = xb
            v2[r : r + xb.shape[0], c : c + xb.shape[1]] = vb
        with pytest.raises(ValueError, match="outside the grid"):
            src.read(Window(15, 15, 10, 10))
    np.testing.assert_array_equal(x2, x)  # NaN compare equal here
    np.testing.assert_array_equal(v2, valid)


@pytest.mark.parametrize("resampling", ["nearest", "bilinear", "cubic"])
def test_validity_matches_masks(theia_tree: dict[str, Any], resampling: str) -> None:
    """Validity = not (nodata in a band, CLM, SAT or EDG), computed from the arrays."""
    with Sentinel2Theia(theia_tree["root"], TILE, resampling=resampling) as src:
        x, valid = src.read()
    for t in range(2):
        np.testing.assert_array_equal(valid[:, :, t], ~_expected_invalid(theia_tree, t))
    assert not np.isnan(x[valid]).any()


def test_cloud_bits_select_clm_bits(theia_tree: dict[str, Any]) -> None:
    """cloud_bits restricts the CLM test to those bits."""
    with Sentinel2Theia(theia_tree["root"], TILE, cloud_bits=(1, 5)) as src:
        _, valid = src.read()
    for t in range(2):
        want = ~_expected_invalid(theia_tree, t, cloud_bits=0b100010)
        np.testing.assert_array_equal(valid[:, :, t], want)
    assert valid[0, 0, 0] and not valid[0, 1, 0] and not valid[0, 2, 0] and valid[0, 3, 0]


def test_stack_only_product_is_read_in_iota2_order(theia_tree: dict[str, Any]) -> None:
    """A product with only iota2's FRE_STACK (10 bands, 10 m) mixes with band products."""
    folder = theia_tree["folders"][1]
    b = theia_tree["bands"][1]
    stack = np.stack([b[n] if n in BANDS_10M else _up2(b[n]) for n in THEIA_BANDS])
    for path in folder.glob("*_FRE_B*.tif"):
        path.unlink()
    _write(folder / f"{NAMES[1]}_FRE_STACK.tif", stack, T10)
    with Sentinel2Theia(theia_tree["root"], TILE, resampling="nearest") as src:
        assert src.band_names == list(THEIA_BANDS)
        x, valid = src.read()
    np.testing.assert_array_equal(x[:, :, 1, :], np.moveaxis(stack, 0, -1) / np.float32(10000))
    np.testing.assert_array_equal(valid[:, :, 1], ~_expected_invalid(theia_tree, 1))
    with Sentinel2Theia(theia_tree["root"], TILE, bands=("B8A", "B2")) as src:
        xs, _ = src.read()
    np.testing.assert_array_equal(xs[:, :, 1, 0], _up2(b["B8A"]) / np.float32(10000))
    np.testing.assert_array_equal(xs[:, :, 1, 1], b["B2"] / np.float32(10000))


def test_bad_inputs_are_named(theia_tree: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """Bad arguments and broken products raise errors naming the value or file."""
    root = theia_tree["root"]
    with pytest.raises(ConfigError, match="level"):
        Sentinel2Theia(root, TILE, level="TOA")
    with pytest.raises(ConfigError, match="B1"):
        Sentinel2Theia(root, TILE, bands=["B1"])
    with pytest.raises(ConfigError, match="resampling"):
        Sentinel2Theia(root, TILE, resampling="smooth")
    with pytest.raises(ConfigError, match="cloud_bits"):
        Sentinel2Theia(root, TILE, cloud_bits=[8])
    folder = theia_tree["folders"][0]
    # a 10 m band off the grid: named when read
    b4 = folder / f"{NAMES[0]}_FRE_B4.tif"
    _write(b4, theia_tree["bands"][0]["B4"], from_origin(X0 + 10, Y0, 10, 10))
    with Sentinel2Theia(root, TILE) as src, pytest.raises(InputDataError, match="B4.tif"):
        src.read()
    # missing band and no stack
    b4.unlink()
    with pytest.raises(InputDataError, match=r"_FRE_B4\.tif.*STACK"):
        Sentinel2Theia(root, TILE)
    # masks missing: warned, nodata only
    for path in (folder / "MASKS").iterdir():
        path.unlink()
    with caplog.at_level(logging.WARNING):
        with Sentinel2Theia(root, TILE, bands=["B2", "B3"]) as src:
            _, valid = src.read()
    assert "CLM_R1" in caplog.text
    assert valid[:, :, 0].sum() == 399  # only the B3 nodata pixel


def test_close_releases_files(theia_tree: dict[str, Any]) -> None:
    """Files stay open up to max_open, close() releases them, reads reopen."""
    src = Sentinel2Theia(theia_tree["root"], TILE, max_open=5)
    src.read(Window(0, 0, 2, 2))
    assert len(src._pool) == 5  # least recently used closed beyond max_open
    src.close()
    assert len(src._pool) == 0
    x, _ = src.read(Window(0, 0, 2, 2))  # reopens lazily
    assert x.shape == (2, 2, 2, 10)
    src.close()


# --------------------------------------------------------------------------- real data
@pytest.fixture
def s2_real() -> Path:
    """iota2's THEIA test products, or skip."""
    if not (S2_REAL / "T38KPD").is_dir():
        pytest.skip(f"real data absent: {S2_REAL} (set I2DL_DATA to the shared data folder)")
    return S2_REAL


@pytest.mark.parametrize("tile", ["T38KPD", "T38KPE"])
def test_real_theia_products(s2_real: Path, tile: str) -> None:
    """iota2's THEIA test folders: tiles, dates, and the FRE_STACK read as is."""
    folders = sorted(p for p in (s2_real / tile).iterdir() if p.name.startswith("SENTINEL2"))
    assert len(folders) == 2
    # dates parsed independently: second '_' field, before the first '-'
    want_dates = [dt.datetime.strptime(f.name.split("_")[1][:8], "%Y%m%d").date() for f in folders]
    products = find_theia_products(s2_real, tile)
    assert [p.date for p in products] == sorted(want_dates)
    assert {p.tile for p in products} == {tile}
    assert {p.satellite for p in products} == {"SENTINEL2A"}
    assert all(p.stack is not None and p.stack.name.endswith("_FRE_STACK.tif") for p in products)
    assert all(not p.bands and not p.masks for p in products)
    raw = []
    for product in products:
        with rasterio.open(product.stack) as s:
            count, grid = s.count, (s.width, s.height, s.transform, s.crs)
            raw.append(s.read(out_dtype="float32"))
    with Sentinel2Theia(s2_real, tile) as src:
        assert (src.width, src.height, src.transform, src.crs) == grid
        assert src.band_names == [f"band{i + 1}" for i in range(count)]
        x, valid = src.read()
    assert x.shape == (grid[1], grid[0], 2, count // 1)  # band count / 1 date per stack
    for t in range(2):
        np.testing.assert_array_equal(x[:, :, t, :], np.moveaxis(raw[t], 0, -1) / np.float32(10000))
    assert valid.all()  # no masks, no -10000 in the stacks


# --------------------------------------------------------------------------- userFeat
def test_user_features(tmp_path: Path) -> None:
    """User features (iota2 userFeat): names, values, nodata validity, pattern and grid errors."""
    tile_dir = tmp_path / "feat" / TILE
    dem = np.arange(400, dtype="float32").reshape(20, 20)
    dem[3, 4] = -9999
    slope = np.stack([np.full((20, 20), 1, "int16"), np.full((20, 20), 2, "int16")])
    _write(tile_dir / "DEM.tif", dem, T10, nodata=-9999)
    _write(tile_dir / "slope_aspect.tif", slope, T10)
    feats = UserFeatures(tmp_path / "feat", TILE, patterns=("DEM.tif", "slope"))
    with feats:
        assert feats.names == ["DEM", "slope_aspect_b1", "slope_aspect_b2"]
        assert (feats.width, feats.height, feats.transform) == (20, 20, T10)
        arr, valid = feats.read_static(Window(2, 1, 5, 4))
    assert arr.shape == (4, 5, 3) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr[:, :, 0], dem[1:5, 2:7])
    assert (arr[:, :, 2] == 2).all()
    assert valid.sum() == 19 and not valid[2, 2]
    named = UserFeatures(tile_dir, TILE, patterns=["*.tif"], band_names=["a", "b", "c"])
    assert named.names == ["a", "b", "c"] and named.files[0].name == "DEM.tif"
    with pytest.raises(InputDataError, match=r"'mnt'.*DEM\.tif"):
        UserFeatures(tmp_path / "feat", TILE, patterns=("mnt",))
    with pytest.raises(InputFileNotFoundError, match="T31TDJ"):
        UserFeatures(tmp_path / "feat", "T31TDJ")
    _write(tile_dir / "off.tif", dem, T20)
    with pytest.raises(InputDataError, match="off.tif"):
        UserFeatures(tmp_path / "feat", TILE, patterns=("DEM.tif", "off.tif"))
