"""Sentinel-1 backscatter on the tile grid (S1Tiling / iota2 layout) and S1 + S2 runs.

No public S1 sample is available here: the trees are synthetic but follow S1Tiling's
names exactly (``s1a_31TCJ_vv_DES_008_20210301t060000.tif`` + ``..._BorderMask.tif``).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box

from i2dl.config import ROOT_DIR
from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.features.source import open_source
from i2dl.io.sensors.sentinel1 import Sentinel1, open_sentinel1
from tests.conftest import FAST

TILE = "T31TCJ"
T10 = from_origin(300000.0, 5000400.0, 10.0, 10.0)
S2_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")


def _tif(path: Path, data: np.ndarray, dtype: str = "float32", nodata=None,
         transform=T10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0],
                       count=1, dtype=dtype, crs="EPSG:32631", transform=transform,
                       nodata=nodata) as dst:
        dst.write(data.astype(dtype)[None])


def s1_name(pol: str, orbit: str, day: dt.date, sat: str = "s1a", relorb: int = 8) -> str:
    """S1Tiling's file stem for one image (tile written without its T, as S1Tiling does)."""
    return f"{sat}_31TCJ_{pol.lower()}_{orbit}_{relorb:03d}_{day:%Y%m%d}t060000"


def write_s1(root: Path, orbit: str, day: dt.date, vv: np.ndarray, vh: np.ndarray,
             border: np.ndarray | None = None, **kw) -> None:
    for pol, data in (("vv", vv), ("vh", vh)):
        stem = s1_name(pol, orbit, day, **kw)
        _tif(root / TILE / f"{stem}.tif", data)
        if border is not None:
            _tif(root / TILE / f"{stem}_BorderMask.tif", border, "uint8")


D0 = dt.date(2021, 3, 1)


@pytest.fixture
def s1_tree(tmp_path: Path) -> dict:
    """3 DES dates and 2 ASC dates, 6 x 5 px, known linear backscatter."""
    root = tmp_path / "S1"
    rng = np.random.default_rng(3)
    values = {}
    border = np.ones((6, 5), np.uint8)
    border[:, 0] = 0  # first column outside the swath
    for orbit, days in (("DES", [0, 12, 24]), ("ASC", [5, 17])):
        for d in days:
            day = D0 + dt.timedelta(days=d)
            vv = rng.uniform(0.02, 0.3, (6, 5)).astype(np.float32)
            vh = rng.uniform(0.002, 0.05, (6, 5)).astype(np.float32)
            vv[2, 2] = 0.0  # no data
            write_s1(root, orbit, day, vv, vh, border)
            values[(orbit, day)] = (vv, vh)
    return {"root": root, "values": values, "border": border}


def test_reader_splits_orbits_and_converts_to_db(s1_tree: dict) -> None:
    readers = open_sentinel1({"root": str(s1_tree["root"]), "ratio": True}, TILE)
    assert sorted(readers) == ["sentinel1_asc", "sentinel1_des"]
    des = readers["sentinel1_des"]
    assert des.dates == [D0, D0 + dt.timedelta(days=12), D0 + dt.timedelta(days=24)]
    assert readers["sentinel1_asc"].dates == [D0 + dt.timedelta(days=5),
                                              D0 + dt.timedelta(days=17)]
    assert des.band_names == ["VV", "VH", "VH_VV"]
    x, valid = des.read()
    assert x.shape == (6, 5, 3, 3) and x.dtype == np.float32
    vv, vh = s1_tree["values"][("DES", D0 + dt.timedelta(days=12))]
    ok = valid[:, :, 1]
    assert not ok[:, 0].any(), "border mask 0 is invalid"
    assert not ok[2, 2], "VV = 0 is no data"
    assert ok.sum() == 6 * 4 - 1
    np.testing.assert_allclose(x[:, :, 1, 0][ok], 10 * np.log10(vv[ok]), rtol=1e-5)
    np.testing.assert_allclose(x[:, :, 1, 1][ok], 10 * np.log10(vh[ok]), rtol=1e-5)
    np.testing.assert_allclose(x[:, :, 1, 2][ok], 10 * np.log10(vh[ok]) - 10 * np.log10(vv[ok]),
                               rtol=1e-4, atol=1e-4)
    assert (x[~valid] == 0).all()
    for r in readers.values():
        r.close()


def test_reader_linear_values_window_and_start_date(s1_tree: dict) -> None:
    from rasterio.windows import Window

    with Sentinel1(s1_tree["root"], "31TCJ", orbit="DES", values="linear", ratio=True,
                   start_date="2021-03-10") as des:
        assert len(des.dates) == 2  # the 2021-03-01 image is before start_date
        x, valid = des.read(Window(1, 1, 3, 2))
    vv, vh = s1_tree["values"][("DES", D0 + dt.timedelta(days=24))]
    np.testing.assert_allclose(x[:, :, 1, 0], vv[1:3, 1:4] * valid[:, :, 1], rtol=1e-6)
    ok = valid[:, :, 1]
    np.testing.assert_allclose(x[:, :, 1, 2][ok], vh[1:3, 1:4][ok] / vv[1:3, 1:4][ok], rtol=1e-5)


def test_same_day_relative_orbits_are_merged(tmp_path: Path) -> None:
    root = tmp_path / "S1"
    a = np.full((4, 4), 0.1, np.float32)
    a[:, 2:] = 0  # orbit 8 covers the left half
    b = np.full((4, 4), 0.2, np.float32)
    write_s1(root, "DES", D0, a, a, relorb=8)
    write_s1(root, "DES", D0, b, b, relorb=110, sat="s1b")
    with Sentinel1(root, TILE, orbit="DES", values="linear") as des:
        assert des.dates == [D0]
        x, valid = des.read()
    assert valid.all()
    np.testing.assert_allclose(x[:, :2, 0, 0], 0.1)
    np.testing.assert_allclose(x[:, 2:, 0, 0], 0.2)


def test_reader_errors(s1_tree: dict, tmp_path: Path) -> None:
    root = s1_tree["root"]
    with pytest.raises(InputFileNotFoundError, match="no Sentinel-1 ASC image of tile T31TDJ"):
        Sentinel1(root, "T31TDJ", orbit="ASC")
    with pytest.raises(InputFileNotFoundError, match="does not exist"):
        Sentinel1(tmp_path / "nowhere", TILE)
    with pytest.raises(ConfigError, match="orbit"):
        Sentinel1(root, TILE, orbit="NORTH")
    with pytest.raises(ConfigError, match="ratio needs both VV and VH"):
        Sentinel1(root, TILE, polarisations=["VV"], ratio=True)
    with pytest.raises(ConfigError, match="root is required"):
        open_sentinel1({}, TILE)
    # a date with VV but no VH
    lone = tmp_path / "lone"
    _tif(lone / TILE / f"{s1_name('vv', 'DES', D0)}.tif", np.ones((3, 3)))
    with pytest.raises(InputDataError, match="has no VH image"):
        Sentinel1(lone, TILE)
    # an image on another grid is named when read
    shifted = from_origin(300010.0, 5000400.0, 10.0, 10.0)
    later = D0 + dt.timedelta(days=40)
    for pol in ("vv", "vh"):
        _tif(root / TILE / f"{s1_name(pol, 'DES', later)}.tif", np.ones((6, 5)),
             transform=shifted)
    with Sentinel1(root, TILE) as des, pytest.raises(InputDataError, match="grid"):
        des.read()


def test_each_orbit_is_gapfilled_from_its_own_dates(s1_tree: dict) -> None:
    data = {
        "sensors": {"sentinel1": {"root": str(s1_tree["root"]), "values": "linear"}},
        "tile": TILE, "gapfilling": {"enabled": True, "temporal_resolution": 6},
        "indices": ["NDVI"],  # optical only: S1 gets none, and this does not fail
    }
    with open_source(data) as src:
        assert src.band_names == ["sentinel1_asc_VV", "sentinel1_asc_VH",
                                  "sentinel1_des_VV", "sentinel1_des_VH"]
        # grid every 6 days from 03-01 to 03-25
        assert src.dates == [D0 + dt.timedelta(days=6 * i) for i in range(5)]
        x, valid = src.read()
    des = s1_tree["values"]
    # day 6: DES between day 0 and day 12 (halfway), ASC between day 5 and 17 (1/12)
    r, c = 4, 3
    vv0, vv12 = des[("DES", D0)][0][r, c], des[("DES", D0 + dt.timedelta(days=12))][0][r, c]
    a5, a17 = des[("ASC", D0 + dt.timedelta(days=5))][0][r, c], \
        des[("ASC", D0 + dt.timedelta(days=17))][0][r, c]
    assert valid[r, c].all()
    np.testing.assert_allclose(x[r, c, 1, 2], (vv0 + vv12) / 2, rtol=1e-5)
    np.testing.assert_allclose(x[r, c, 1, 0], a5 + (a17 - a5) / 12, rtol=1e-5)
    # outside the swath (border) for both orbits: no valid date
    assert not valid[:, 0].any()


def test_raw_dates_of_several_sensors_are_merged(s1_tree: dict) -> None:
    data = {
        "sensors": {"sentinel1": {"root": str(s1_tree["root"]), "values": "linear"}},
        "tile": TILE, "gapfilling": {"enabled": False},
    }
    with open_source(data) as src:
        days = [(d - D0).days for d in src.dates]
        assert days == [0, 5, 12, 17, 24]
        x, valid = src.read()
    # at day 5 only ASC observed: valid there; DES interpolated (not zero) at day 5
    r, c = 1, 1
    assert valid[r, c].all()
    d0 = s1_tree["values"][("DES", D0)][0][r, c]
    d12 = s1_tree["values"][("DES", D0 + dt.timedelta(days=12))][0][r, c]
    np.testing.assert_allclose(x[r, c, 1, 2], d0 + (d12 - d0) * 5 / 12, rtol=1e-5)


def _theia(root: Path, day: dt.date, refl: dict[str, np.ndarray]) -> None:
    name = f"SENTINEL2A_{day:%Y%m%d}-105000-000_L2A_{TILE}_C_V1-0"
    t20 = from_origin(300000.0, 5000400.0, 20.0, 20.0)
    folder = root / TILE / name
    for band in S2_BANDS:
        value = refl[band] if band in ("B2", "B3", "B4", "B8") else refl[band][::2, ::2]
        transform = T10 if band in ("B2", "B3", "B4", "B8") else t20
        _tif(folder / f"{name}_FRE_{band}.tif", value * 10000, "int16", -10000, transform)
    zero = np.zeros(refl["B2"].shape)
    for mask in ("CLM", "SAT", "EDG"):
        _tif(folder / "MASKS" / f"{name}_{mask}_R1.tif", zero, "uint8")


@pytest.fixture
def s1_s2_tree(tmp_path: Path) -> dict:
    """30 x 30 px, 3 classes in stripes: the same S2 signal for all, VH differs by class."""
    rng = np.random.default_rng(1)
    classes = np.repeat([1, 2, 3], 10)[:, None].repeat(30, axis=1)
    s2 = tmp_path / "S2"
    for i in range(5):
        day = D0 + dt.timedelta(days=10 * i)
        refl = {b: rng.uniform(0.05, 0.4, (30, 30)) for b in S2_BANDS}  # no class signal
        _theia(s2, day, refl)
    s1 = tmp_path / "S1"
    for i in range(6):
        day = D0 + dt.timedelta(days=7 * i + 2)
        vh_db = np.choose(classes - 1, [-22.0, -17.0, -12.0]) + rng.normal(0, 0.7, (30, 30))
        vv_db = -10.0 + rng.normal(0, 0.7, (30, 30))
        write_s1(s1, "DES", day, 10 ** (vv_db / 10), 10 ** (vh_db / 10))
    polys, codes = [], []
    for c, r0 in zip((1, 2, 3), (1, 11, 21), strict=True):
        for j in range(3):
            x0, y1 = T10 @ (1 + 10 * j, r0)
            x1, y0 = T10 @ (9 + 10 * j, r0 + 8)
            polys.append(box(x0, y0, x1, y1))
            codes.append(c)
    reference = tmp_path / "reference.gpkg"
    gpd.GeoDataFrame({"code": codes}, geometry=polys, crs="EPSG:32631").to_file(reference)
    return {"s1": s1, "s2": s2, "reference": reference, "classes": classes}


def _train(tree: dict, run: Path, tmp_path: Path, *extra: str) -> dict:
    cmd = [
        sys.executable, "-m", "i2dl", "train", "+experiment=rf", "data=theia_s2",
        f"data.sensors.sentinel2_theia.root={tree['s2']}", f"data.tile={TILE}",
        f"data.reference={tree['reference']}", f"hydra.run.dir={run}",
        f"paths.store_dir={tmp_path / 'stores'}", *FAST, *extra,
    ]
    proc = subprocess.run(cmd, cwd=ROOT_DIR, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((run / "summary.json").read_text())


def test_s1_s2_run_uses_the_s1_features(s1_s2_tree: dict, tmp_path: Path) -> None:
    """Classes separable only by VH: S2 alone is near chance, S1 + S2 maps them."""
    alone = _train(s1_s2_tree, tmp_path / "s2", tmp_path)
    both = _train(s1_s2_tree, tmp_path / "s1s2", tmp_path,
                  f"+data.sensors.sentinel1.root={s1_s2_tree['s1']}")
    import zarr

    names = zarr.open_group(both["store"], mode="r").attrs["band_names"]
    assert "sentinel1_des_VH" in names and "sentinel2_theia_NDVI" in names
    assert alone["oa"] < 0.6, alone
    assert both["oa"] > 0.9, both
    with rasterio.open(tmp_path / "s1s2" / "maps" / "classif.tif") as src:
        assert (src.read(1) == s1_s2_tree["classes"]).mean() > 0.9
