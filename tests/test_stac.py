"""STAC input (issue 24): a time series read from a local STAC catalogue of COGs.

Offline only: every catalogue is written here with pystac, its assets as COGs made with
rasterio's COG driver (from the shared Slovenia stack, or synthetic); the API search is
checked with pystac-client's ``Client`` replaced, never on the network.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import zarr
from rasterio.transform import from_origin
from rasterio.windows import Window

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.io.raster import open_time_series
from i2dl.io.sensors.stac import StacSeries, load_items, search_items
from i2dl.io.sources import open_sensor
from tests.conftest import FAST

UTC = dt.timezone.utc


def write_cog(path: Path, band: np.ndarray, transform, crs: str, nodata=None) -> str:
    """One-band COG (32 px blocks, so that windows cross blocks); returns its file name."""
    with rasterio.open(path, "w", driver="COG", width=band.shape[1], height=band.shape[0],
                       count=1, dtype=band.dtype, crs=crs, transform=transform, nodata=nodata,
                       BLOCKSIZE=32) as dst:
        dst.write(band, 1)
    return path.name


def make_item(item_id: str, when: dt.datetime, bounds, props: dict, assets: dict) -> pystac.Item:
    left, bottom, right, top = bounds
    geom = {"type": "Polygon", "coordinates": [[[left, bottom], [right, bottom], [right, top],
                                                [left, top], [left, bottom]]]}
    item = pystac.Item(item_id, geom, list(bounds), when, dict(props))
    for key, (href, extra) in assets.items():
        item.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.COG,
                                         extra_fields=dict(extra)))
    return item


# -- the Slovenia stack as a STAC catalogue ---------------------------------------------
@pytest.fixture
def slovenia_stac(slovenia_dir: Path, tmp_path: Path) -> dict:
    """The Slovenia NDVI stack split per date into COGs, one item per acquisition.

    Each item has an ``ndvi`` asset (float32, the stack's band) and an SCL-like ``scl``
    asset made from CLM.tif and IS_DATA.tif (0 no data, 9 cloud, 4 vegetation), tile
    33TVL; the ItemCollection is ``items.json`` with hrefs relative to it.
    """
    folder = tmp_path / "catalogue"
    (folder / "cogs").mkdir(parents=True)
    with rasterio.open(slovenia_dir / "NDVI.tif") as src:
        ndvi, transform, crs, bounds = src.read(), src.transform, src.crs.to_string(), src.bounds
    with rasterio.open(slovenia_dir / "CLM.tif") as src:
        clm = src.read()
    with rasterio.open(slovenia_dir / "IS_DATA.tif") as src:
        is_data = src.read()
    stamps = (slovenia_dir / "dates.txt").read_text().split()
    items = []
    for t, stamp in enumerate(stamps):
        when = dt.datetime.fromisoformat(stamp).replace(tzinfo=UTC)
        name = when.strftime("%Y%m%dT%H%M%S")
        scl = np.where(is_data[t] == 0, 0, np.where(clm[t] == 1, 9, 4)).astype(np.uint8)
        assets = {
            "ndvi": ("cogs/" + write_cog(folder / "cogs" / f"{name}_NDVI.tif", ndvi[t],
                                         transform, crs), {}),
            "scl": ("cogs/" + write_cog(folder / "cogs" / f"{name}_SCL.tif", scl, transform,
                                        crs), {"raster:bands": [{"nodata": 0}]}),
        }
        props = {"grid:code": "MGRS-33TVL", "eo:cloud_cover": float(clm[t].mean() * 100)}
        items.append(make_item(f"S2_33TVL_{name}", when, tuple(bounds), props, assets))
    path = folder / "items.json"
    pystac.ItemCollection(items).save_object(dest_href=str(path))
    return {"items": path, "stamps": stamps}


def slovenia_stack(slovenia_dir: Path):
    return open_time_series(slovenia_dir / "NDVI.tif", dates_file=slovenia_dir / "dates.txt",
                            band_names=["NDVI"],
                            masks=[{"path": str(slovenia_dir / "CLM.tif"), "invalid_values": [1]},
                                   {"path": str(slovenia_dir / "IS_DATA.tif"),
                                    "valid_values": [1]}])


def test_reader_gives_the_stack_values_dates_and_validity(slovenia_dir, slovenia_stac) -> None:
    with slovenia_stack(slovenia_dir) as stack:
        x_ref, valid_ref = stack.read()
        dates_ref = list(stack.dates)
    opts = {"items": str(slovenia_stac["items"]), "bands": ["NDVI"], "assets": {"NDVI": "ndvi"}}
    with open_sensor("stac", opts, "T33TVL") as src:
        assert isinstance(src, StacSeries)
        assert (src.width, src.height, src.crs.to_epsg()) == (stack.width, stack.height, 32633)
        assert src.transform.almost_equals(stack.transform)
        assert src.band_names == ["NDVI"]
        x, valid = src.read()
        win = Window(7, 13, 50, 41)  # crosses the COGs' 32 px blocks
        x_win, valid_win = src.read(win)
    # the stack has two acquisitions on 2015-12-08: one date per day here, the first kept
    # (both are cloudy everywhere, so the mosaic takes the first item's values)
    assert len(dates_ref) == 68 and len(set(dates_ref)) == 67
    keep = [t for t, d in enumerate(dates_ref) if t == 0 or d != dates_ref[t - 1]]
    dropped = sorted(set(range(68)) - set(keep))
    assert src.dates == [dates_ref[t] for t in keep]
    assert not valid_ref[:, :, dropped].any()
    np.testing.assert_array_equal(x, x_ref[:, :, keep])
    np.testing.assert_array_equal(valid, valid_ref[:, :, keep])
    assert 0.3 < valid.mean() < 0.9  # clouds masked, clear dates kept
    np.testing.assert_array_equal(x_win, x[13:54, 7:57])
    np.testing.assert_array_equal(valid_win, valid[13:54, 7:57])


def test_main_job_runs_from_the_catalogue(make_cfg, slovenia_dir, slovenia_stac, tmp_path) -> None:
    """``data=stac_example`` on the catalogue = the same job on the stack (both gap-filled).

    Gap-filling every 10 days (iota2's default, and the example's) puts both series on the
    same dates: the stack's second acquisition of 2015-12-08 (cloudy everywhere) is one
    date with the first in the catalogue, which changes nothing once gap-filled.
    """
    from i2dl.stages import train

    common = ["+experiment=rf", *FAST, "seed=0", "model.estimator.n_estimators=50"]
    stack = train.run(make_cfg(
        *common, "data=slovenia_s2_ndvi", "+data.gapfilling.enabled=true",
        "+data.gapfilling.temporal_resolution=10", f"paths.output_dir={tmp_path / 'stack_run'}",
        f"paths.store_dir={tmp_path / 'stack_stores'}"))
    stac = train.run(make_cfg(
        *common, "data=stac_example", f"data.sensors.stac.items={slovenia_stac['items']}",
        "data.sensors.stac.bands=[NDVI]", "data.sensors.stac.assets={NDVI: ndvi}",
        "data.tile=T33TVL", "data.indices=[]", f"data.reference={slovenia_dir / 'reference.gpkg'}",
        "data.data_field=LULC_ID", f"data.nomenclature={slovenia_dir / 'nomenclature.txt'}"))
    g_stack, g_stac = (zarr.open_group(s["store"], mode="r") for s in (stack, stac))
    np.testing.assert_array_equal(g_stac["X"][:], g_stack["X"][:])
    np.testing.assert_array_equal(g_stac["mask"][:], g_stack["mask"][:])
    assert stac["n_val"] == stack["n_val"] > 0
    assert stac["oa"] == pytest.approx(stack["oa"], abs=1e-9)
    assert 0.5 < stac["oa"] <= 1.0
    assert (tmp_path / "run" / "maps" / "classif.tif").is_file()


# -- a synthetic Earth Search-like catalogue --------------------------------------------
CRS = "EPSG:32631"
T10 = from_origin(600000.0, 5000200.0, 10.0, 10.0)
T20 = from_origin(600000.0, 5000200.0, 20.0, 20.0)
BOUNDS = (600000.0, 5000000.0, 600240.0, 5000200.0)
SCALE = [{"nodata": 0, "scale": 0.0001, "offset": -0.1}]


@pytest.fixture
def s2_catalogue(tmp_path: Path) -> dict:
    """Earth Search v1 asset names (blue, red at 10 m, scl at 20 m), 24 x 20 px.

    - 2020-05-01: one item; SCL cloud (9) on the 20 m pixel (row 0, col 0).
    - 2020-05-11: two items of the same day: ``a`` has data on the left half only
      (nodata 0 on the right, SCL 0 there), ``b`` everywhere but a cloud over the left half.
    - 2020-05-21: one item of tile 31TCK (left out by the tile filter).
    - 2020-05-31: one item with eo:cloud_cover 90.
    Blue = 1000 + 100 * day index (+ the row), red = 2000 + ... (raw DN, 20 m blocks).
    """
    rows = np.kron(np.arange(10), np.ones(2, int))[:, None] * np.ones((1, 24), int)
    rows = (rows // 2 * 2).astype(np.uint16)  # constant on 2 x 2 blocks
    scl_ok = np.full((10, 12), 4, np.uint8)
    specs = []
    for k, (day, item_id, tile, cover) in enumerate([
            (1, "d1", "31TCJ", 10.0), (11, "d2a", "31TCJ", 20.0), (11, "d2b", "31TCJ", 30.0),
            (21, "d3", "31TCK", 0.0), (31, "d4", "31TCJ", 90.0)]):
        blue = (1000 + 100 * k + rows).astype(np.uint16)
        red = blue + 1000
        scl = scl_ok.copy()
        if item_id == "d1":
            scl[0, 0] = 9
        if item_id == "d2a":
            blue[:, 12:] = red[:, 12:] = 0
            scl[:, 6:] = 0
        if item_id == "d2b":
            scl[:, :6] = 8
        specs.append((day, item_id, tile, cover, blue, red, scl))
    items = []
    for day, item_id, tile, cover, blue, red, scl in specs:
        assets = {}
        for key, arr, tr in (("blue", blue, T10), ("red", red, T10), ("scl", scl, T20)):
            name = write_cog(tmp_path / f"{item_id}_{key}.tif", arr, tr, CRS, nodata=0)
            assets[key] = (name, {} if key == "scl" else {"raster:bands": SCALE})
        when = dt.datetime(2020, 5, day, 10, 30 + len(items), tzinfo=UTC)
        props = {"grid:code": f"MGRS-{tile}", "eo:cloud_cover": cover}
        items.append(make_item(item_id, when, BOUNDS, props, assets))
    path = tmp_path / "items.json"
    pystac.ItemCollection(items).save_object(dest_href=str(path))
    return {"items": path, "specs": {s[1]: s for s in specs}, "item_list": items}


def reflectance(raw: np.ndarray) -> np.ndarray:
    return raw.astype(np.float32) * np.float32(0.0001) + np.float32(-0.1)


def test_earth_search_names_scale_scl_and_same_day_mosaic(s2_catalogue) -> None:
    specs = s2_catalogue["specs"]
    with StacSeries(tile="31tcj", items=s2_catalogue["items"], bands=["B02", "B04"],
                    max_cloud_cover=50) as src:
        assert src.dates == [dt.date(2020, 5, 1), dt.date(2020, 5, 11)]  # d3: tile, d4: cover
        assert [i.id for i in src.items] == ["d1", "d2a", "d2b"]
        assert (src.width, src.height) == (24, 20) and src.transform == T10  # 10 m bands
        x, valid = src.read()
    _, _, _, _, blue1, red1, _ = specs["d1"]
    np.testing.assert_array_equal(x[:, :, 0, 0], reflectance(blue1))
    np.testing.assert_array_equal(x[:, :, 0, 1], reflectance(red1))
    cloud = np.zeros((20, 24), bool)
    cloud[:2, :2] = True  # the 20 m SCL cloud covers 2 x 2 pixels of the 10 m grid
    np.testing.assert_array_equal(valid[:, :, 0], ~cloud)
    # 2020-05-11: left half from d2a (d2b is cloudy there), right half from d2b
    a, b = specs["d2a"][4], specs["d2b"][4]
    np.testing.assert_array_equal(x[:, :12, 1, 0], reflectance(a[:, :12]))
    np.testing.assert_array_equal(x[:, 12:, 1, 0], reflectance(b[:, 12:]))
    assert valid[:, :, 1].all()


def test_same_day_first_keeps_the_first_item(s2_catalogue) -> None:
    with StacSeries(tile="T31TCJ", items=s2_catalogue["items"], bands=["B02"],
                    same_day="first", end_date=dt.date(2020, 5, 20)) as src:
        x, valid = src.read()
    assert len(src.dates) == 2
    assert valid[:, :12, 1].all() and not valid[:, 12:, 1].any()
    assert np.isnan(x[:, 12:, 1, 0]).all()  # no data there in d2a: NaN, invalid


def test_catalog_form_target_grid_and_custom_mask(s2_catalogue, tmp_path) -> None:
    catalog = pystac.Catalog("demo", "a local catalogue")
    for item in s2_catalogue["item_list"]:
        clone = item.clone()
        for asset in clone.assets.values():
            asset.href = str(tmp_path / Path(asset.href).name)
        catalog.add_item(clone)
    catalog.normalize_hrefs(str(tmp_path / "cat"))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    grid = {"crs": CRS, "bounds": list(BOUNDS), "resolution": 20}
    # a cloud mask by value: only SCL 4 is valid; nearest keeps the 2 x 2 blocks' value
    opts = {"bands": ["B02"], "grid": grid, "resampling": "nearest",
            "mask": {"assets": ["scl"], "valid_values": [4]}}
    with StacSeries(tile="T31TCJ", items=tmp_path / "cat" / "catalog.json", **opts) as src:
        assert len(src.dates) == 3 and (src.width, src.height) == (12, 10)
        x, valid = src.read()
    blue1 = s2_catalogue["specs"]["d1"][4]
    np.testing.assert_array_equal(x[:, :, 0, 0], reflectance(blue1[::2, ::2]))
    assert not valid[0, 0, 0] and valid[:, :, 0].sum() == 119
    with StacSeries(tile="T31TCJ", items=s2_catalogue["items"], bands=["B02"], mask=None,
                    end_date=dt.date(2020, 5, 1)) as src:
        assert src.read()[1].all()  # no mask asset: the cloud is not masked


def test_errors_name_the_item_the_asset_and_the_fix(s2_catalogue, tmp_path) -> None:
    items = s2_catalogue["items"]
    with pytest.raises(InputDataError, match=r"item 'd1' has no asset 'B05' or 'rededge1'.*"
                       r"blue, red, scl.*data.sensors.stac.assets,"):
        StacSeries(tile="T31TCJ", items=items, bands=["B05"])
    with pytest.raises(InputDataError, match=r"item 'd1' has no asset 'CLM' for the mask.*"
                       r"mask.assets \(or mask: null\)"):
        StacSeries(tile="T31TCJ", items=items, bands=["B02"], mask={"assets": "CLM"})
    with pytest.raises(ConfigError, match=r"bands \['NDVI'\].*assets: \{NDVI"):
        StacSeries(tile="T31TCJ", items=items, bands=["NDVI"])
    with pytest.raises(InputDataError, match=r"no STAC item of tile T32ULU.*T31TCJ, T31TCK"):
        StacSeries(tile="T32ULU", items=items, bands=["B02"])
    with pytest.raises(ConfigError, match="items .*or search"):
        StacSeries(tile="T31TCJ")
    with pytest.raises(InputFileNotFoundError, match="missing.json"):
        StacSeries(tile="T31TCJ", items=tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="same_day"):
        StacSeries(tile="T31TCJ", items=items, same_day="median")
    (tmp_path / "d2a_blue.tif").unlink()
    with StacSeries(tile="T31TCJ", items=items, bands=["B02"]) as src:
        with pytest.raises(InputFileNotFoundError, match=r"asset 'blue' of item 'd2a'"):
            src.read(Window(0, 0, 4, 4))

def test_search_builds_the_query_and_saves_the_items(s2_catalogue, tmp_path,
                                                     monkeypatch) -> None:
    pystac_client = pytest.importorskip("pystac_client")
    calls = {}

    class FakeSearch:
        def item_collection(self):
            return pystac.ItemCollection(s2_catalogue["item_list"][:3])

    class FakeClient:
        def search(self, **kwargs):
            calls.update(kwargs)
            return FakeSearch()

    monkeypatch.setattr(pystac_client.Client, "open", lambda url: calls.update(url=url)
                        or FakeClient())
    saved = tmp_path / "found.json"
    url = "https://earth-search.aws.element84.com/v1"
    found = search_items({"url": url, "collections": ["sentinel-2-l2a"],
                          "save_items": str(saved)}, "31TCJ", dt.date(2020, 5, 1), None, 40)
    assert calls["url"] == url and calls["collections"] == ["sentinel-2-l2a"]
    assert calls["datetime"] == "2020-05-01/.."
    assert calls["query"] == {"eo:cloud_cover": {"lte": 40.0},
                              "grid:code": {"eq": "MGRS-31TCJ"}}
    assert [i.id for i in found] == ["d1", "d2a", "d2b"]
    assert [i.id for i in load_items(saved)] == ["d1", "d2a", "d2b"]


def test_search_without_pystac_client_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pystac_client", None)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[stac\]"'):
        StacSeries(tile="T31TCJ", search={"url": "https://earth-search.aws.element84.com/v1"})
