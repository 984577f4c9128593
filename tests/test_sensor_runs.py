"""The main job and the feature maps from sensor product folders (THEIA, Landsat-8)."""

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
from tests.conftest import DATA_DIR, FAST, SMALL_LTAE

TILE = "T31TCJ"
B10 = ("B2", "B3", "B4", "B8")
B20 = ("B5", "B6", "B7", "B8A", "B11", "B12")


def _tif(path: Path, data: np.ndarray, transform, dtype: str, nodata=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0],
                       count=1, dtype=dtype, crs="EPSG:32631", transform=transform,
                       nodata=nodata) as dst:
        dst.write(data.astype(dtype)[None])


@pytest.fixture
def theia_run_tree(tmp_path: Path) -> dict:
    """8 THEIA-like products (40 x 40 px at 10 m) with 3 crop classes in horizontal stripes.

    Class c has an NDVI peak at date 2c: NIR high / red low at that date. CLM marks a
    cloud on one corner of every third date.
    """
    rng = np.random.default_rng(0)
    root = tmp_path / "S2"
    t10 = from_origin(300000.0, 5000400.0, 10.0, 10.0)
    t20 = from_origin(300000.0, 5000400.0, 20.0, 20.0)
    classes = np.repeat([1, 2, 3], [14, 13, 13])[:, None].repeat(40, axis=1)  # (40, 40)
    dates = [dt.date(2021, 3, 1) + dt.timedelta(days=12 * i) for i in range(8)]
    for t, day in enumerate(dates):
        name = f"SENTINEL2A_{day:%Y%m%d}-105000-000_L2A_{TILE}_C_V1-0"
        folder = root / TILE / name
        peak = np.isin(classes, [c for c in (1, 2, 3) if t in (2 * c - 1, 2 * c)])
        refl = {b: np.full((40, 40), 0.1) for b in B10 + B20}
        refl["B8"] = np.where(peak, 0.45, 0.2)
        refl["B4"] = np.where(peak, 0.04, 0.12)
        for band in B10:
            value = refl[band] + rng.normal(0, 0.005, (40, 40))
            _tif(folder / f"{name}_FRE_{band}.tif", value * 10000, t10, "int16", -10000)
        for band in B20:
            value = refl[band][::2, ::2] + rng.normal(0, 0.005, (20, 20))
            _tif(folder / f"{name}_FRE_{band}.tif", value * 10000, t20, "int16", -10000)
        clm = np.zeros((40, 40))
        if t % 3 == 0:
            clm[:8, :8] = 2
        for mask, data in (("CLM", clm), ("SAT", np.zeros((40, 40))), ("EDG", np.zeros((40, 40)))):
            _tif(folder / "MASKS" / f"{name}_{mask}_R1.tif", data, t10, "uint8")
    polys, codes = [], []
    for c, (r0, r1) in zip((1, 2, 3), ((1, 13), (15, 26), (28, 39)), strict=True):
        for j in range(3):
            c0, c1 = 1 + 13 * j, 12 + 13 * j
            x0, y1 = t10 * (c0, r0)
            x1, y0 = t10 * (c1, r1)
            polys.append(box(x0, y0, x1, y1))
            codes.append(c)
    reference = tmp_path / "reference.gpkg"
    gpd.GeoDataFrame({"code": codes}, geometry=polys, crs="EPSG:32631").to_file(reference)
    return {"root": root, "reference": reference, "classes": classes, "dates": dates}


def test_main_job_from_theia_folders(theia_run_tree: dict, tmp_path: Path) -> None:
    """`python -m i2dl train +experiment=ltae data=theia_s2 ...`: same command as a stack."""
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "i2dl", "train", "+experiment=ltae", "data=theia_s2",
        f"data.sensors.sentinel2_theia.root={theia_run_tree['root']}", f"data.tile={TILE}",
        f"data.reference={theia_run_tree['reference']}", f"hydra.run.dir={run}",
        f"paths.store_dir={tmp_path / 'stores'}", *FAST, *SMALL_LTAE, "trainer.max_epochs=30",
        "datamodule.batch_size=64",
    ]
    proc = subprocess.run(cmd, cwd=ROOT_DIR, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    import zarr

    store = zarr.open_group(summary["store"], mode="r")
    names = store.attrs["band_names"]
    assert names == [*("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"),
                     "NDVI", "NDWI", "Brightness"]
    # 10-day grid from the first to the last acquisition (84 days): 9 dates
    assert store.attrs["dates"][0] == "2021-03-01" and len(store.attrs["dates"]) == 9
    with rasterio.open(run / "maps" / "classif.tif") as src:
        assert src.shape == (40, 40) and src.crs.to_epsg() == 32631
        classif = src.read(1)
    # the temporal signatures are separable: the map recovers the stripes almost everywhere
    assert (classif == theia_run_tree["classes"]).mean() > 0.9, summary
    assert summary["oa"] > 0.9


@pytest.fixture
def landsat_root() -> Path:
    root = DATA_DIR / "iota2_testdata" / "L8_50x50"
    if not root.is_dir():
        pytest.skip(f"real data absent: {root}")
    return root


def test_landsat8_feature_maps_and_mosaic(make_cfg, landsat_root: Path, tmp_path: Path) -> None:
    from i2dl.io.sensors.landsat8 import Landsat8N2A
    from i2dl.stages.features_map import run as run_features_map

    cfg = make_cfg(
        "data=theia_s2", "data.name=l8", "~data.sensors.sentinel2_theia",
        f"+data.sensors.landsat8_n2a.root={landsat_root}", "data.reference_sensor=landsat8_n2a",
        "data.tile=null", "data.list_tile=[D0005H0002,D0005H0003]", "data.gapfilling.enabled=false",
        "data.indices=[NDVI]", "features_map.chunk_size=20",
    )
    final = run_features_map(cfg)
    run = tmp_path / "run"
    tiles = {}
    for tile in ("D0005H0002", "D0005H0003"):
        with rasterio.open(run / "by_tiles" / f"{tile}.tif") as src:
            tiles[tile] = (src.read(), src.transform, src.bounds, src.descriptions)
        assert len(list((run / "customF").glob(f"{tile}_chunk_*.tif"))) >= 4
        # the tile's feature map equals the reader's values (+ NDVI computed here)
        with Landsat8N2A(landsat_root, tile) as l8:
            x, valid = l8.read()
            b4, b5 = l8.band_names.index("B4"), l8.band_names.index("B5")
        ndvi = (x[..., b5] - x[..., b4]) / (x[..., b5] + x[..., b4])
        expected = np.concatenate([x, ndvi[..., None]], axis=-1)
        expected[~valid] = np.nan
        got = tiles[tile][0].reshape(2, 8, *x.shape[:2]).transpose(2, 3, 0, 1)
        np.testing.assert_allclose(got, expected, rtol=1e-5, equal_nan=True)
    assert tiles["D0005H0002"][3][:2] == ("B1_20160330", "B2_20160330")
    with rasterio.open(final) as src:
        mosaic, transform, bounds = src.read(), src.transform, src.bounds
    b = [t[2] for t in tiles.values()]
    assert bounds.left == pytest.approx(min(x.left for x in b))
    assert bounds.right == pytest.approx(max(x.right for x in b))
    assert bounds.top == pytest.approx(max(x.top for x in b))
    assert bounds.bottom == pytest.approx(min(x.bottom for x in b))
    for data, tr, _, _ in tiles.values():
        col = round((tr.c - transform.c) / transform.a)
        row = round((tr.f - transform.f) / transform.e)
        window = mosaic[:, row : row + data.shape[1], col : col + data.shape[2]]
        both = ~np.isnan(data)
        np.testing.assert_array_equal(window[both], data[both])


def test_dateless_features_are_written_once(make_cfg, landsat_root: Path, tmp_path: Path) -> None:
    # issue 22: seasonal_variation has no date; it was written once per date
    from i2dl.features.source import open_source
    from i2dl.stages.features_map import run as run_features_map

    cfg = make_cfg(
        "data=theia_s2", "data.name=l8", "~data.sensors.sentinel2_theia",
        f"+data.sensors.landsat8_n2a.root={landsat_root}", "data.reference_sensor=landsat8_n2a",
        "data.tile=D0005H0002", "data.list_tile=null", "data.gapfilling.enabled=false",
        "data.indices=[NDVI]", "features_map.chunk_size=20",
        "data.external_features={functions:[{get_seasonal_variation:{red:B4,nir:B5}}]}",
    )
    final = run_features_map(cfg)
    with open_source(cfg.data, "D0005H0002") as source:
        x, valid = source.read()
        dated = [n for n in source.band_names if n not in source.static_names]
    t = len(source.dates)
    with rasterio.open(final) as src:
        bands, names = src.read(), src.descriptions
    assert source.static_names == ["seasonal_variation"]
    assert len(names) == t * len(dated) + 1 and names[-1] == "seasonal_variation"
    assert all(n.rsplit("_", 1)[-1].isdigit() for n in names[:-1])
    # the dated bands as before, the static one once: its value at any valid date
    got = bands[:-1].reshape(t, len(dated), *x.shape[:2]).transpose(2, 3, 0, 1)
    want = np.where(valid[..., None], x[..., : len(dated)], np.nan)
    np.testing.assert_allclose(got, want, rtol=1e-5, equal_nan=True)
    last = np.where(valid, x[..., -1], np.nan)
    any_valid = valid.any(axis=-1)
    np.testing.assert_allclose(bands[-1][any_valid], np.nanmax(last, axis=-1)[any_valid],
                               rtol=1e-5)
    assert np.isnan(bands[-1][~any_valid]).all()
