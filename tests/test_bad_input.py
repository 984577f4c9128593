"""Bad input data gets a clear error and leaves nothing behind.

Each test runs ``prepare`` through the config on a broken copy of the tiny synthetic
dataset and checks the exception type, that the message says what/where/how to fix, and
that no (half-written) store was left in the store folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import zarr
from shapely.affinity import translate
from shapely.geometry import MultiPolygon

from i2dl.errors import InputDataError, InputFileNotFoundError
from i2dl.io.vector import read_reference
from i2dl.samples.extract import prepare, store_path
from i2dl.samples.split import SinglePolygonClassWarning
from i2dl.samples.store import LEARN
from tests.conftest import DATA_DIR, write_stack

D5H2 = DATA_DIR / "iota2_testdata" / "references" / "D5H2_groundTruth_samples.shp"


def _overrides(ds: dict, **data: object) -> list[str]:
    """The tiny dataset's overrides with some ``data.<key>`` values replaced."""
    out = [o for o in ds["overrides"] if o.split("=", 1)[0].removeprefix("data.") not in data]
    return out + [f"data.{k}={v}" for k, v in data.items()]


def _assert_nothing_written(tmp_path: Path) -> None:
    stores = tmp_path / "stores"
    # nothing but the store's lock file (i2dl.io.files.target_lock)
    assert not stores.exists() or all(p.suffix == ".lock" for p in stores.iterdir()), list(
        stores.iterdir()
    )
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


def _fids(path: Path) -> np.ndarray:
    """Feature ids as the file stores them (read independently of i2dl)."""
    return pyogrio.read_dataframe(path, fid_as_index=True).index.to_numpy()


# ---------------------------------------------------------------- label field


def test_missing_label_field_lists_available_fields(make_cfg, tiny_dataset, tmp_path) -> None:
    cfg = make_cfg(*_overrides(tiny_dataset, data_field="nope"))
    ref = re.escape(str(tiny_dataset["reference"]))
    # (?s): the path heads the message, the problems follow on lines of their own
    with pytest.raises(InputDataError, match=rf"(?s){ref}.*'nope'.*data\.data_field") as err:
        prepare(cfg)
    msg = str(err.value)
    # every field of the file is offered, and the fix is named
    assert "'code'" in msg and "'name'" in msg
    assert "Set data.data_field to one of them" in msg
    assert isinstance(err.value, ValueError)
    _assert_nothing_written(tmp_path)


def test_non_integer_float_labels_name_the_features(make_cfg, tiny_dataset, tmp_path) -> None:
    gdf = tiny_dataset["gdf"].copy()
    gdf["code"] = gdf["code"].astype(float)
    bad_rows = [1, 5]
    gdf.loc[bad_rows, "code"] = [1.5, 2.25]
    path = tmp_path / "float_labels.gpkg"
    gdf.to_file(path, driver="GPKG")
    expected = _fids(path)[bad_rows].tolist()
    cfg = make_cfg(*_overrides(tiny_dataset, reference=path))
    with pytest.raises(InputDataError, match=r"integer class codes") as err:
        prepare(cfg)
    msg = str(err.value)
    assert str(path) in msg and "'code'" in msg
    assert f"fid {expected}" in msg
    _assert_nothing_written(tmp_path)


# ---------------------------------------------------------------- dates file


def test_dates_file_shorter_than_band_count(make_cfg, tiny_dataset, tmp_path) -> None:
    lines = tiny_dataset["dates_file"].read_text().splitlines()
    short = tmp_path / "dates_short.txt"
    short.write_text("\n".join(lines[:-1]) + "\n")  # 5 dates for 6 x 2 = 12 bands
    with rasterio.open(tiny_dataset["raster"]) as src:
        n_bands = src.count
    assert n_bands == 12 and len(lines) - 1 == 5
    cfg = make_cfg(*_overrides(tiny_dataset, dates_file=short))
    expected = rf"has {n_bands} bands.*gives 5 acquisition dates"
    with pytest.raises(InputDataError, match=expected) as err:
        prepare(cfg)
    msg = str(err.value)
    assert str(tiny_dataset["raster"]) in msg and str(short) in msg
    assert "Fix the dates file" in msg
    _assert_nothing_written(tmp_path)


def test_dates_file_malformed_line_is_named(make_cfg, tiny_dataset, tmp_path) -> None:
    lines = tiny_dataset["dates_file"].read_text().splitlines()
    lines[2] = "the third of March"
    bad = tmp_path / "dates_bad.txt"
    bad.write_text("\n".join(lines) + "\n")
    cfg = make_cfg(*_overrides(tiny_dataset, dates_file=bad))
    with pytest.raises(InputDataError, match=rf"{re.escape(str(bad))}, line 3\b.*YYYY-MM-DD"):
        prepare(cfg)
    _assert_nothing_written(tmp_path)


def test_missing_dates_file(make_cfg, tiny_dataset, tmp_path) -> None:
    missing = tmp_path / "no_dates.txt"
    cfg = make_cfg(*_overrides(tiny_dataset, dates_file=missing))
    expected = rf"{re.escape(str(missing))}.*data\.dates_file"
    with pytest.raises(InputFileNotFoundError, match=expected):
        prepare(cfg)
    _assert_nothing_written(tmp_path)


# ---------------------------------------------------------------- geometry


def test_polygons_outside_raster_give_both_bounds(make_cfg, tiny_dataset, tmp_path) -> None:
    gdf = tiny_dataset["gdf"].copy()
    gdf["geometry"] = gdf.geometry.apply(lambda g: translate(g, xoff=200_000.0, yoff=-300_000.0))
    path = tmp_path / "far.gpkg"
    gdf.to_file(path, driver="GPKG")
    with rasterio.open(tiny_dataset["raster"]) as src:
        rb = tuple(src.bounds)
    pb = tuple(gdf.total_bounds)
    cfg = make_cfg(*_overrides(tiny_dataset, reference=path))
    with pytest.raises(InputDataError, match=r"none of the 9 labelled polygons intersects") as err:
        prepare(cfg)
    msg = str(err.value)
    assert str(path) in msg
    # both extents, in metres: left/bottom of each appear in the message
    assert f"polygon bounds ({pb[0]:.1f}, {pb[1]:.1f}, {pb[2]:.1f}, {pb[3]:.1f})" in msg
    assert f"raster bounds ({rb[0]:.1f}, {rb[1]:.1f}, {rb[2]:.1f}, {rb[3]:.1f})" in msg
    assert "same area" in msg and "CRS" in msg
    _assert_nothing_written(tmp_path)


def test_multipolygon_rejected_then_exploded_in_prepare(make_cfg, tiny_dataset, tmp_path) -> None:
    gdf = tiny_dataset["gdf"].copy()
    # merge the 2nd and 3rd polygons of class 2 (rows 4, 5) into one MultiPolygon feature
    merged = MultiPolygon([gdf.geometry.iloc[4], gdf.geometry.iloc[5]])
    gdf = gdf.drop(index=5).reset_index(drop=True)
    gdf.loc[4, "geometry"] = merged
    path = tmp_path / "multi.gpkg"
    # keep Polygons as Polygons (geopandas would otherwise promote every feature to Multi)
    gdf.to_file(path, driver="GPKG", engine="pyogrio", promote_to_multi=False)
    on_disk = pyogrio.read_dataframe(path, fid_as_index=True)
    assert (on_disk.geom_type == "MultiPolygon").sum() == 1
    multi_fid = int(on_disk.index[on_disk.geom_type == "MultiPolygon"][0])

    cfg = make_cfg(*_overrides(tiny_dataset, reference=path))
    expected = rf"MultiPolygon.*fid \[{multi_fid}\].*explode_multipolygons"
    with pytest.raises(InputDataError, match=expected):
        prepare(cfg)
    _assert_nothing_written(tmp_path)

    cfg = make_cfg(*_overrides(tiny_dataset, reference=path), "sampling.explode_multipolygons=true")
    store = zarr.open_group(str(prepare(cfg)), mode="r")
    pid, y = store["polygon_id"][:], store["code"][:]
    # both parts (2 x 24 px) carry the MultiPolygon's id and class 2
    assert (pid == multi_fid).sum() == 48
    assert set(y[pid == multi_fid].tolist()) == {2}
    assert len(set(store["split"][:][pid == multi_fid].tolist())) == 1  # one feature, one side
    assert len(np.unique(pid)) == 8


# ---------------------------------------------------------------- single-polygon class


def test_single_polygon_class_warns_and_goes_to_learn(make_cfg, tiny_dataset, tmp_path) -> None:
    gdf = tiny_dataset["gdf"]
    keep = gdf[(gdf["code"] != 3) | (gdf.index == 7)]  # class 3 keeps a single polygon
    path = tmp_path / "single.gpkg"
    keep.to_file(path, driver="GPKG")
    on_disk = pyogrio.read_dataframe(path, fid_as_index=True)
    lone_fid = int(on_disk.index[on_disk["code"] == 3][0])
    cfg = make_cfg(*_overrides(tiny_dataset, reference=path))
    expected = rf"class 3 has a single polygon \(id {lone_fid}\)"
    with pytest.warns(SinglePolygonClassWarning, match=expected):
        out = prepare(cfg)
    assert out == store_path(cfg) and out.is_dir()
    store = zarr.open_group(str(out), mode="r")
    y, split, pid = store["code"][:], store["split"][:], store["polygon_id"][:]
    sel = y == 3
    assert sel.sum() == 24  # the 4 x 6 px polygon, none fully masked
    assert set(pid[sel].tolist()) == {lone_fid}
    assert (split[sel] == LEARN).all()
    # the other classes still have a validation part
    assert (split[~sel] != LEARN).any()
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


# ---------------------------------------------------------------- unreadable rasters


def test_raster_path_that_does_not_exist(make_cfg, tiny_dataset, tmp_path) -> None:
    missing = tmp_path / "nowhere" / "stack.tif"
    cfg = make_cfg(*_overrides(tiny_dataset, raster=missing))
    expected = rf"cannot open raster {re.escape(str(missing))}.*data\.raster.*Check the path"
    with pytest.raises(InputFileNotFoundError, match=expected) as err:
        prepare(cfg)
    assert isinstance(err.value, FileNotFoundError)
    _assert_nothing_written(tmp_path)


def test_raster_that_is_not_a_raster(make_cfg, tiny_dataset, tmp_path) -> None:
    text = tmp_path / "stack_text.tif"
    text.write_text("this is not a GeoTIFF\n")
    cfg = make_cfg(*_overrides(tiny_dataset, raster=text))
    expected = rf"cannot open raster {re.escape(str(text))}.*data\.raster"
    with pytest.raises(InputFileNotFoundError, match=expected):
        prepare(cfg)
    _assert_nothing_written(tmp_path)


def test_mask_that_does_not_exist(make_cfg, tiny_dataset, tmp_path) -> None:
    missing = tmp_path / "no_clm.tif"
    cfg = make_cfg(*_overrides(tiny_dataset, masks=f"[{{path:{missing},invalid_values:[1]}}]"))
    with pytest.raises(InputFileNotFoundError, match=rf"{re.escape(str(missing))}.*data\.masks"):
        prepare(cfg)
    _assert_nothing_written(tmp_path)


def test_mask_on_another_grid(make_cfg, tiny_dataset, tmp_path) -> None:
    with rasterio.open(tiny_dataset["cloud"]) as src:
        clm, transform = src.read(), src.transform
    shifted = rasterio.Affine(transform.a, 0.0, transform.c + 10.0, 0.0, transform.e, transform.f)
    other = write_stack(tmp_path / "clm_shifted.tif", clm[:, :, :-1], shifted, dtype="uint8")
    cfg = make_cfg(*_overrides(tiny_dataset, masks=f"[{{path:{other},invalid_values:[1]}}]"))
    with pytest.raises(InputDataError, match=r"resample the mask onto the stack's grid") as err:
        prepare(cfg)
    msg = str(err.value)
    assert str(other) in msg and str(tiny_dataset["raster"]) in msg
    assert "23x20 px" in msg and "24x20 px" in msg
    _assert_nothing_written(tmp_path)


def test_missing_reference_file(make_cfg, tiny_dataset, tmp_path) -> None:
    missing = tmp_path / "no_reference.gpkg"
    cfg = make_cfg(*_overrides(tiny_dataset, reference=missing))
    expected = rf"{re.escape(str(missing))}.*data\.reference"
    with pytest.raises(InputFileNotFoundError, match=expected):
        prepare(cfg)
    _assert_nothing_written(tmp_path)


# ---------------------------------------------------------------- real iota2 ground truth


@pytest.fixture
def d5h2() -> Path:
    if not D5H2.is_file():
        pytest.skip(f"real iota2 test data absent: {D5H2} (set I2DL_DATA to the data folder)")
    return D5H2


def test_real_multipolygon_rejected_with_its_fid(d5h2) -> None:
    gdf = gpd.read_file(d5h2, engine="pyogrio", fid_as_index=True)
    multi_ids = gdf.index[gdf.geom_type == "MultiPolygon"].tolist()
    assert len(multi_ids) == 1 and len(gdf) == 28
    with pytest.raises(InputDataError, match=r"1 MultiPolygon feature\(s\)") as err:
        read_reference(d5h2, "CODE", gdf.crs, tuple(gdf.total_bounds))
    msg = str(err.value)
    assert f"fid {multi_ids}" in msg
    assert str(d5h2) in msg and "explode_multipolygons" in msg


def test_real_multipolygon_exploded_keeps_fid_and_code(d5h2) -> None:
    gdf = gpd.read_file(d5h2, engine="pyogrio", fid_as_index=True)
    is_multi = gdf.geom_type == "MultiPolygon"
    multi_fid = int(gdf.index[is_multi][0])
    n_parts = len(gdf.geometry[multi_fid].geoms)
    assert n_parts >= 2
    ref = read_reference(
        d5h2, "CODE", gdf.crs, tuple(gdf.total_bounds), explode_multipolygons=True
    )
    polys = ref.polygons
    assert len(polys) > len(gdf) - 1
    assert len(polys) == int((~is_multi).sum()) + n_parts
    assert (polys.geom_type == "Polygon").all()
    parts = polys[polys["polygon_id"] == multi_fid]
    assert len(parts) == n_parts
    assert set(parts["code"].tolist()) == {int(gdf.loc[multi_fid, "CODE"])}
    whole = gdf.geometry[multi_fid].area
    assert abs(parts.area.sum() - whole) < 1e-6 * whole
    # the other features keep their own fid and code, one row each
    others = polys[polys["polygon_id"] != multi_fid].set_index("polygon_id")
    assert sorted(others.index) == sorted(gdf.index[~is_multi])
    assert (others["code"] == gdf.loc[others.index, "CODE"]).all()
