"""THEIA Sentinel-2 L3A, THEIA Landsat-8 L2A (MUSCATE) and Landsat-5 N2A readers.

No public sample of these products is available here: the trees are synthetic and follow
the real file names exactly.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from i2dl.errors import ConfigError, InputDataError
from i2dl.features.source import open_source
from i2dl.io.sensors.landsat8 import Landsat5N2A
from i2dl.io.sensors.theia import Landsat8Theia, Sentinel2L3A

TILE = "T31TCJ"
S2 = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")


def _tif(path: Path, data: np.ndarray, transform, dtype: str, nodata=None,
         crs="EPSG:32631") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=dtype, crs=crs, transform=transform,
                       nodata=nodata) as dst:
        dst.write(data.astype(dtype))


def _values(shape, seed):
    return np.random.default_rng(seed).integers(100, 5000, shape)


@pytest.fixture
def l3a_tree(tmp_path: Path) -> dict:
    root = tmp_path / "L3A"
    t10 = from_origin(300000.0, 5000200.0, 10.0, 10.0)
    t20 = from_origin(300000.0, 5000200.0, 20.0, 20.0)
    flg = np.array([[0, 1, 2, 3, 4, 4]] * 6)
    stored = {}
    for i, day in enumerate((dt.date(2020, 2, 15), dt.date(2020, 1, 15))):  # not sorted
        name = f"SENTINEL2X_{day:%Y%m%d}-000000-000_L3A_{TILE}_C_V1-2"
        for band in S2:
            fine = band in ("B2", "B3", "B4", "B8")
            data = _values((6, 6) if fine else (3, 3), 10 * i + S2.index(band))
            stored[(day, band)] = data
            _tif(root / TILE / name / f"{name}_FRC_{band}.tif", data, t10 if fine else t20,
                 "int16", -10000)
        _tif(root / TILE / name / "MASKS" / f"{name}_FLG_R1.tif", flg, t10, "uint8")
    return {"root": root, "stored": stored, "flg": flg}


def test_sentinel2_l3a(l3a_tree: dict) -> None:
    with Sentinel2L3A(l3a_tree["root"], TILE, resampling="nearest") as src:
        assert src.dates == [dt.date(2020, 1, 15), dt.date(2020, 2, 15)]
        assert src.band_names == list(S2)
        x, valid = src.read()
    day = dt.date(2020, 1, 15)
    np.testing.assert_allclose(x[:, :, 0, S2.index("B4")], l3a_tree["stored"][(day, "B4")] / 1e4,
                               rtol=1e-6)
    b11 = l3a_tree["stored"][(day, "B11")]
    np.testing.assert_allclose(x[:, :, 0, S2.index("B11")], np.kron(b11, np.ones((2, 2))) / 1e4,
                               rtol=1e-6)  # 20 m -> 10 m, nearest
    # valid where FLG is water (3) or land (4); no data, cloud and snow are invalid
    np.testing.assert_array_equal(valid[:, :, 1], np.isin(l3a_tree["flg"], (3, 4)))
    with Sentinel2L3A(l3a_tree["root"], TILE, start_date="2020-02-01") as src:
        assert src.dates == [dt.date(2020, 2, 15)]
    with pytest.raises(ConfigError, match="FRC"):
        Sentinel2L3A(l3a_tree["root"], TILE, level="FRE")


def test_l3a_errors_name_the_expected_folders(tmp_path: Path) -> None:
    (tmp_path / "L3A" / TILE / "something_else").mkdir(parents=True)
    with pytest.raises(InputDataError, match="SENTINEL2X_YYYYMMDD-000000-000_L3A_T31TCJ"):
        Sentinel2L3A(tmp_path / "L3A", TILE)


@pytest.fixture
def l8_tree(tmp_path: Path) -> dict:
    root = tmp_path / "L8"
    t30 = from_origin(300000.0, 5000300.0, 30.0, 30.0)
    stored = {}
    for i, day in enumerate((dt.date(2018, 5, 12), dt.date(2018, 5, 28))):
        name = f"LANDSAT8-OLITIRS-XS_{day:%Y%m%d}-103217-123_L2A_{TILE}_D_V1-4"
        for b in range(1, 8):
            data = _values((5, 4), 7 * i + b)
            stored[(day, f"B{b}")] = data
            _tif(root / TILE / name / f"{name}_FRE_B{b}.tif", data, t30, "int16", -10000)
        clm = np.zeros((5, 4))
        clm[0, 0] = 2
        for mask, m in (("CLM", clm), ("SAT", np.zeros((5, 4))), ("EDG", np.zeros((5, 4)))):
            _tif(root / TILE / name / "MASKS" / f"{name}_{mask}_XS.tif", m, t30, "uint8")
    return {"root": root, "stored": stored}


def test_landsat8_theia_and_its_ndvi_bands(l8_tree: dict) -> None:
    with Landsat8Theia(l8_tree["root"], TILE) as src:
        assert src.band_names == [f"B{b}" for b in range(1, 8)] and src.width == 4
        x, valid = src.read()
    day = dt.date(2018, 5, 28)
    np.testing.assert_allclose(x[:, :, 1, 4], l8_tree["stored"][(day, "B5")] / 1e4, rtol=1e-6)
    assert not valid[0, 0].any() and valid[1:].all()  # CLM_XS non-zero
    data = {"sensors": {"landsat8_theia": {"root": str(l8_tree["root"])}}, "tile": TILE,
            "gapfilling": {"enabled": False}, "indices": ["NDVI"], "keep_bands": False}
    with open_source(data) as src:
        assert src.band_names == ["NDVI"]
        ndvi, _ = src.read()
    red, nir = l8_tree["stored"][(day, "B4")], l8_tree["stored"][(day, "B5")]
    ok = valid[:, :, 1]  # invalid observations are zeroed
    np.testing.assert_allclose(ndvi[:, :, 1, 0][ok], ((nir - red) / (nir + red))[ok], rtol=1e-5)


@pytest.fixture
def l5_tree(tmp_path: Path) -> dict:
    root = tmp_path / "L5"
    tile = "D0005H0002"
    t30 = from_origin(600000.0, 6800000.0, 30.0, 30.0)
    stored = {}
    for i, day in enumerate((dt.date(2009, 7, 3), dt.date(2009, 8, 4))):
        name = f"LANDSAT5_TM_XS_{day:%Y%m%d}_N2A_France-Metropole{tile}"
        image = _values((6, 5, 4), i)
        stored[day] = image
        folder = root / tile / name
        _tif(folder / f"{name.replace('_N2A_', '_N2A_ORTHO_SURF_CORR_PENTE_')}.TIF", image, t30,
             "int16", crs="EPSG:2154")
        div = np.zeros((5, 4))
        div[2, 3] = 1  # odd: no data
        for mask, m in (("NUA", np.zeros((5, 4))), ("SAT", np.zeros((5, 4))), ("DIV", div)):
            _tif(folder / "MASK" / f"{name}_{mask}.TIF", m, t30, "uint8", crs="EPSG:2154")
    return {"root": root, "tile": tile, "stored": stored}


def test_landsat5_n2a_and_its_ndvi_bands(l5_tree: dict) -> None:
    with Landsat5N2A(l5_tree["root"], l5_tree["tile"]) as src:
        assert src.band_names == ["B1", "B2", "B3", "B4", "B5", "B6"]
        x, valid = src.read()
    day = dt.date(2009, 8, 4)
    np.testing.assert_allclose(x[:, :, 1, :], l5_tree["stored"][day].transpose(1, 2, 0) / 1e3,
                               rtol=1e-6)
    assert not valid[2, 3].any() and valid.sum() == 2 * (20 - 1)
    data = {"sensors": {"landsat5_n2a": {"root": str(l5_tree["root"])}},
            "tile": l5_tree["tile"], "gapfilling": {"enabled": False}, "indices": ["NDVI"],
            "keep_bands": False}
    with open_source(data) as src:
        ndvi, _ = src.read()
    red, nir = l5_tree["stored"][day][2], l5_tree["stored"][day][3]  # B3, B4
    ok = valid[:, :, 1]
    np.testing.assert_allclose(ndvi[:, :, 1, 0][ok], ((nir - red) / (nir + red))[ok], rtol=1e-5)
    with pytest.raises(ConfigError, match="B7"):
        Landsat5N2A(l5_tree["root"], l5_tree["tile"], bands=["B7"])
