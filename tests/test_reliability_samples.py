"""Issue 21, samples and reports: nothing silently wrong in what prepare and the reports say.

Cases: a class whose polygons hold no pixel centre (3), a one-class table and a one-class
val report (4), polygon ids beyond int64 (8), text integer labels, class-0 rows under
``data.label_offset=0``, a reference without a CRS, and multi-run intervals outside [0, 1].
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import zarr
from shapely.geometry import Point

from i2dl.errors import InputDataError
from i2dl.evaluation.aggregate import describe
from i2dl.evaluation.results_files import stat_line
from i2dl.evaluation.run_report import compute_metrics, format_metrics
from i2dl.io.vector import read_reference
from i2dl.samples.class_statistics import (
    MissingSamplesWarning,
    check_split_classes,
    polygons_without_samples,
)
from i2dl.samples.extract import prepare
from i2dl.samples.store import LEARN, SELECTION, VAL, read_array, read_info
from tests.conftest import DATA_DIR

FORMOSAT = DATA_DIR / "formosat2_crops"


# ------------------------------------------------ case 3: polygons without a pixel centre


def _shrink(tiny_dataset: dict, tmp_path: Path, rows: list[int]) -> Path:
    """The tiny reference with the polygons of ``rows`` shrunk to 1 m buffers.

    A 1 m disc around a pixel corner holds no pixel centre of the 10 m grid.
    """
    gdf = tiny_dataset["gdf"].copy()
    for i in rows:
        x0, y0 = gdf.geometry.iloc[i].bounds[:2]
        gdf.loc[i, "geometry"] = Point(x0, y0).buffer(1.0)
    path = tmp_path / "shrunk.gpkg"
    gdf.to_file(path, driver="GPKG")
    return path


def _fids(path: Path) -> list[int]:
    return gpd.read_file(path, engine="pyogrio", fid_as_index=True).index.tolist()


def test_class_without_pixel_centre_is_refused_naming_class_and_polygons(
    tiny_dataset: dict, make_cfg, tmp_path: Path
) -> None:
    """Class 3's three polygons shrunk below a pixel: refused, not a 2-class store."""
    ref = _shrink(tiny_dataset, tmp_path, [6, 7, 8])
    fids = _fids(ref)[6:9]
    cfg = make_cfg(*tiny_dataset["overrides"], f"data.reference={ref}")
    with pytest.warns(MissingSamplesWarning, match=rf"class 3 has NO sample at all.*3 of 3 "
                      rf"polygon\(s\), ids \[{fids[0]}, {fids[1]}, {fids[2]}\]"):
        with pytest.raises(InputDataError, match=r"class 3 of the reference has no learn "
                           r"sample.*allow_missing_classes=true"):
            prepare(cfg)
    assert not any(Path(cfg.store.dir).glob("*.zarr"))


def test_class_without_sample_trains_without_it_when_allowed(
    tiny_dataset: dict, make_cfg, tmp_path: Path
) -> None:
    ref = _shrink(tiny_dataset, tmp_path, [6, 7, 8])
    cfg = make_cfg(*tiny_dataset["overrides"], f"data.reference={ref}",
                   "++sampling.allow_missing_classes=true")
    with pytest.warns(MissingSamplesWarning, match=r"class 3 of the reference has no learn"):
        store = prepare(cfg)
    assert read_info(store).class_codes == [1, 2]


def test_some_polygons_without_sample_are_named(
    tiny_dataset: dict, make_cfg, tmp_path: Path, caplog
) -> None:
    """One polygon of class 2 is too small: warned by id, the class keeps its others."""
    ref = _shrink(tiny_dataset, tmp_path, [4])
    fid = _fids(ref)[4]
    cfg = make_cfg(*tiny_dataset["overrides"], f"data.reference={ref}")
    with caplog.at_level(logging.WARNING), pytest.warns(
        MissingSamplesWarning, match=rf"1 polygon\(s\) gave no sample \(class 2: 1 of 3 "
        rf"polygon\(s\), ids \[{fid}\]\)"
    ):
        store = prepare(cfg)
    assert "NO sample at all" not in caplog.text
    group = zarr.open_group(str(store), mode="r")
    assert fid not in set(read_array(group, "polygon_id").tolist())
    assert read_info(store).class_codes == [1, 2, 3]


def test_polygons_without_samples_by_class() -> None:
    ids = np.array([10, 11, 12, 20, 20, 30])  # 20: two parts of one exploded feature
    codes = np.array([1, 1, 1, 2, 2, 3])
    assert polygons_without_samples(ids, codes, np.array([10, 10, 20])) == {1: [11, 12], 3: [30]}
    assert polygons_without_samples(ids, codes, ids) == {}


def test_kfold_class_entirely_in_val_is_refused() -> None:
    """A class whose only polygon is the val fold has no learn sample."""
    codes = np.array([1, 1, 2, 2, 3])
    split = np.array([LEARN, VAL, LEARN, SELECTION, VAL])
    with pytest.raises(InputDataError, match=r"t\.csv: class 3 \('water'\) of the reference"):
        check_split_classes(codes, split, {1, 2, 3}, {3: "water"}, "t.csv")
    with pytest.warns(MissingSamplesWarning, match="class 3 "):
        check_split_classes(codes, split, {1, 2, 3}, {}, "t.csv", allow_missing=True)


# ------------------------------------------------------------- case 4: one-class tables


def _table(path: Path, rows: list[tuple[int, object]], t: int = 3, c: int = 2) -> Path:
    """A pixel table: one row per (label, polygon id), values by polygon."""
    rng = np.random.default_rng(0)
    lines = []
    for label, pid in rows:
        values = rng.normal(float(label), 0.1, size=t * c)
        lines.append(",".join([str(label), str(pid), *(f"{v:.4f}" for v in values)]))
    path.write_text("\n".join(lines) + "\n")
    return path


def _table_cfg(make_cfg, path: Path, *extra: str):
    return make_cfg("data=formosat2_crops", "data.name=toy", f"data.table={path}",
                    "data.n_dates=3", "data.band_names=[b1,b2]", "data.nomenclature=null",
                    *extra)


def test_one_class_table_is_refused(make_cfg, tmp_path: Path) -> None:
    path = _table(tmp_path / "one.csv", [(3, p) for p in range(8) for _ in range(3)])
    cfg = _table_cfg(make_cfg, path)
    with pytest.raises(InputDataError, match=r"one\.csv: the learn split holds 1 class\(es\) "
                       r"\(4\); a classifier needs at least two"):
        prepare(cfg)
    assert not any(Path(cfg.store.dir).glob("*.zarr"))


def test_formosat_one_class_rows_are_refused(make_cfg, tmp_path: Path) -> None:
    """Real data: the rows of label 3 of the Formosat-2 table (the issue's `grep '^3,'`)."""
    if not (FORMOSAT / "train.csv").is_file():
        pytest.skip(f"real data absent: {FORMOSAT} (set I2DL_DATA to the shared data folder)")
    lines = (FORMOSAT / "train.csv").read_text().splitlines()
    path = tmp_path / "class3.csv"
    path.write_text("\n".join(ln for ln in lines if ln.startswith("3,")) + "\n")
    cfg = make_cfg("data=formosat2_crops", f"data.table={path}")
    with pytest.raises(InputDataError, match=r"learn split holds 1 class\(es\) \(4 \('corn'\)\)"):
        prepare(cfg)


def test_one_class_val_report_says_undefined() -> None:
    """A multi-class model scored on a one-class val: no kappa 0 / macro F1 as if defined."""
    m = compute_metrics([2, 2, 2, 2], [2, 2, 2, 5], [2, 5], ["wheat", "forest"])
    assert m["oa"] == 0.75  # the recall of class 2
    assert m["kappa"] is None and m["f1_macro"] is None and m["recall_macro"] is None
    assert "single class (2 wheat)" in m["undefined"]
    text = format_metrics(m)
    assert "kappa n/a" in text and "macro F1 n/a" in text and "undefined: " in text
    two = compute_metrics([2, 5], [2, 2], [2, 5])
    assert "undefined" not in two and two["f1_macro"] is not None


# -------------------------------------------------------- case 8: ids beyond int64


@pytest.mark.parametrize("big", [10**19, 10**20])  # in uint64 range (wraps), beyond (-2**63)
def test_polygon_ids_beyond_int64_are_renumbered_losslessly(
    make_cfg, tmp_path: Path, big: int
) -> None:
    ids = [big + k for k in range(4)] + [7, 8, 9, 10]  # 2 classes x 4 polygons, 3 px each
    rows = [(1 + (i >= 4), pid) for i, pid in enumerate(ids) for _ in range(3)]
    path = _table(tmp_path / "big.csv", rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no numpy cast warning either
        with pytest.warns(MissingSamplesWarning, match=rf"big\.csv, column 2 \(polygon id\): "
                          rf"4 id\(s\) beyond int64, e\.g\. {big} on line 1"):
            store = prepare(_table_cfg(make_cfg, path, "data.label_offset=0"))
    group = zarr.open_group(str(store), mode="r")
    stored = read_array(group, "polygon_id")
    original = read_info(store).attrs["polygon_ids"]
    assert original == [str(v) for v in sorted(ids)]
    # every pixel keeps its own polygon: 8 distinct ids, 3 pixels each, one split each
    recovered = np.array([int(original[i]) for i in stored], dtype=object)
    assert sorted(set(recovered.tolist())) == sorted(ids)
    assert all((recovered == pid).sum() == 3 for pid in ids)
    split = read_array(group, "split")
    assert all(len(set(split[stored == s].tolist())) == 1 for s in np.unique(stored))


def test_polygon_ids_within_int64_are_kept(make_cfg, tmp_path: Path) -> None:
    ids = [-5, 2**62, 3, 4, 11, 12, 13, 14]  # negative and large, but int64
    rows = [(1 + (i >= 4), pid) for i, pid in enumerate(ids) for _ in range(2)]
    path = _table(tmp_path / "ok.csv", rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store = prepare(_table_cfg(make_cfg, path, "data.label_offset=0"))
    group = zarr.open_group(str(store), mode="r")
    assert sorted(set(read_array(group, "polygon_id").tolist())) == sorted(ids)
    assert "polygon_ids" not in read_info(store).attrs


# ------------------------------------------------------------------------ unclear cases


def test_label_offset_zero_drops_class_zero_rows_with_a_warning(
    make_cfg, tmp_path: Path
) -> None:
    rows = [(label, 10 * label + p) for label in (0, 1, 2) for p in range(3) for _ in range(2)]
    path = _table(tmp_path / "zero.csv", rows)
    with pytest.warns(MissingSamplesWarning, match=r"zero\.csv: 6 of 18 rows have class code 0 "
                      r"\(label 0 \+ data\.label_offset=0\).*data\.label_offset=1"):
        store = prepare(_table_cfg(make_cfg, path, "data.label_offset=0"))
    assert read_info(store).class_codes == [1, 2]


def test_integer_labels_stored_as_text_keep_their_codes(
    tiny_dataset: dict, tmp_path: Path
) -> None:
    gdf = tiny_dataset["gdf"].copy()
    gdf["txt"] = gdf["code"].map({1: "1", 2: "8", 3: "12"})  # would be 1, 3, 2 as names
    path = tmp_path / "text_codes.gpkg"
    gdf.to_file(path, driver="GPKG")
    bounds = (500000.0, 5000040.0, 500240.0, 5000240.0)
    ref = read_reference(path, "txt", "EPSG:32633", bounds)
    assert sorted(ref.class_names) == [1, 8, 12] and not ref.string_labels
    by_row = dict(zip(ref.polygons["polygon_id"], ref.polygons["code"], strict=True))
    expected = gdf["txt"].astype(int).tolist()
    assert [by_row[f] for f in _fids(path)] == expected


def test_mixed_integer_and_name_labels_warn(tiny_dataset: dict, tmp_path: Path, caplog) -> None:
    gdf = tiny_dataset["gdf"].copy()
    gdf["txt"] = gdf["code"].map({1: "8", 2: "forest", 3: "water"})
    path = tmp_path / "mixed.gpkg"
    gdf.to_file(path, driver="GPKG")
    bounds = (500000.0, 5000040.0, 500240.0, 5000240.0)
    with caplog.at_level(logging.WARNING, logger="i2dl.io.vector"):
        ref = read_reference(path, "txt", "EPSG:32633", bounds)
    assert ref.class_names == {1: "8", 2: "forest", 3: "water"}
    assert "mixes integer labels ['8'] with names" in caplog.text


def test_reference_without_crs_warns_naming_the_file(tiny_dataset: dict, tmp_path: Path) -> None:
    gdf = tiny_dataset["gdf"].copy().set_crs(None, allow_override=True)
    path = tmp_path / "nocrs.gpkg"
    gdf.to_file(path, driver="GPKG")
    bounds = (500000.0, 5000040.0, 500240.0, 5000240.0)
    with pytest.warns(UserWarning, match=r"nocrs\.gpkg declares no CRS: its coordinates are "
                      r"assumed to be in the raster's CRS"):
        ref = read_reference(path, "code", "EPSG:32633", bounds)
    assert len(ref.polygons) == 9
    with warnings.catch_warnings():  # a declared CRS: no warning
        warnings.simplefilter("error")
        read_reference(tiny_dataset["reference"], "code", "EPSG:32633", bounds)


# ------------------------------------------------------------ multi-run intervals


def test_two_run_interval_is_bounded_and_flagged() -> None:
    """Macro F1 of 2 runs: the t interval (t = 12.7) left [0, 1]; now clipped and flagged."""
    st = describe([0.3139, 0.4461])
    assert st["ci_half_width"] > 0.8  # the unclipped t interval spans -0.46..1.22
    assert (st["ci_low"], st["ci_high"]) == (0.0, 1.0) and st["ci_clipped"]
    assert "2 runs are too few" in st["ci_note"]
    line = stat_line("Macro F1", st)
    assert "95% CI 0.0000\u20131.0000, clipped" in line and "not meaningful" in line
    kappa = describe([-0.9, 0.2], bounds=(-1.0, 1.0))
    assert kappa["ci_low"] == -1.0 and kappa["ci_high"] == 1.0
    three = describe([0.70, 0.72, 0.74])
    assert three["ci_note"] is None and not three["ci_clipped"]
    assert 0.0 < three["ci_low"] < three["ci_high"] < 1.0


def test_slovenia_class_8_shrunk_below_a_pixel_is_refused(
    slovenia_dir: Path, make_cfg, tmp_path: Path
) -> None:
    """Real data (the issue's case): class 8 polygons shrunk to 1 m discs inside them."""
    import rasterio

    with rasterio.open(slovenia_dir / "NDVI.tif") as src:
        transform = src.transform
    gdf = gpd.read_file(slovenia_dir / "reference.gpkg", engine="pyogrio", fid_as_index=True)
    shrunk = gdf["LULC_ID"] == 8
    for fid in gdf.index[shrunk]:  # a 1 m disc inside the polygon: no overlap
        geom = gdf.geometry[fid]
        gdf.loc[fid, "geometry"] = geom.intersection(geom.representative_point().buffer(1.0))
        col, row = ~transform @ gdf.geometry[fid].centroid.coords[0]
        centre = Point(transform @ (int(col) + 0.5, int(row) + 0.5))
        assert not gdf.geometry[fid].contains(centre)  # the only pixel centre within reach
    path = tmp_path / "reference.gpkg"
    gdf.to_file(path, driver="GPKG")
    cfg = make_cfg(f"data.reference={path}")
    # 8 of the 11 class-8 polygons reach the raster; polygons 32 (class 3) and 21 (class 4)
    # of the real file hold no pixel centre either
    with pytest.warns(MissingSamplesWarning, match=r"class 8 \('artificial surface'\) has NO "
                      r"sample at all; 10 polygon\(s\) gave no sample \(class 3 \('grassland'\): "
                      r"1 of 26 polygon\(s\), ids \[32\];.*class 8 \('artificial surface'\): 8 of "
                      r"8 polygon\(s\), ids \[14, 35, 39, 52, 54, 56, 57, 76\]\)"):
        with pytest.raises(InputDataError, match=r"class 8 \('artificial surface'\) of the "
                           r"reference has no learn sample"):
            prepare(cfg)
