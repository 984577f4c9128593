"""Reference polygons are checked against iota2's rules, every problem reported at once.

Fixtures are written to disk (GeoPackage or Shapefile) and read back, so feature ids are
the ones the file stores; the expected ids, overlaps and validity are computed here with
pyogrio/shapely independently of :mod:`i2dl.io.validation`.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from shapely.geometry import MultiPolygon, Point, Polygon, box

from i2dl.errors import InputDataError
from i2dl.io.validation import MAX_LISTED, validate_reference
from i2dl.io.vector import read_reference
from tests.conftest import DATA_DIR

D5H2 = DATA_DIR / "iota2_testdata" / "references" / "D5H2_groundTruth_samples.shp"
CRS = "EPSG:32633"
BOWTIE = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])  # two triangles of area 1 crossing at (1, 1)


def _write(path: Path, geoms: list, code: list | None = None, **fields: list) -> Path:
    """Write features as given (no promotion to Multi) and return the path."""
    data = {"code": code if code is not None else list(range(1, len(geoms) + 1)), **fields}
    gdf = gpd.GeoDataFrame(data, geometry=geoms, crs=CRS)
    gdf.to_file(path, engine="pyogrio", promote_to_multi=False)
    return path


def _read(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_file(path, engine="pyogrio", fid_as_index=True)


def _validate(path: Path, field: str = "code", **kw: bool) -> tuple[gpd.GeoDataFrame, dict]:
    return validate_reference(_read(path), path, field, **kw)


def _problem_lines(err: pytest.ExceptionInfo) -> list[str]:
    """The message's problem lines (one per broken rule)."""
    return [ln for ln in str(err.value).splitlines() if ln.startswith("  - ")]


# ---------------------------------------------------------------- real iota2 ground truth


@pytest.fixture
def d5h2() -> Path:
    if not D5H2.is_file():
        pytest.skip(f"real iota2 test data absent: {D5H2} (set I2DL_DATA to the data folder)")
    return D5H2


def test_real_ground_truth_rejected_for_its_multipolygon_then_accepted(d5h2: Path) -> None:
    raw = pyogrio.read_dataframe(d5h2, fid_as_index=True)
    multi_ids = raw.index[raw.geom_type == "MultiPolygon"].tolist()
    assert len(multi_ids) == 1
    # the file's other properties, computed by brute force over all pairs
    geoms = raw.geometry.to_numpy()
    invalid_ids = raw.index[~shapely.is_valid(geoms)].tolist()
    overlaps = [
        (int(raw.index[i]), int(raw.index[j]))
        for i, j in itertools.combinations(range(len(raw)), 2)
        if shapely.intersection(geoms[i], geoms[j]).area > 0
    ]
    assert invalid_ids == [] and overlaps == []  # iota2's own test data follows its rules

    with pytest.raises(InputDataError) as err:
        _validate(d5h2, "CODE")
    lines = _problem_lines(err)
    assert len(lines) == 1  # only the MultiPolygon rule is broken
    assert re.search(
        rf"1 MultiPolygon feature\(s\), fid \[{multi_ids[0]}\].*"
        r"sampling\.explode_multipolygons=true",
        lines[0],
    )
    assert str(d5h2) in str(err.value)

    out, report = _validate(d5h2, "CODE", explode_multipolygons=True)
    n_parts = len(raw.geometry[multi_ids[0]].geoms)
    assert report == {
        "features_read": len(raw),
        "exploded": 1,
        "repaired": 0,
        "polygons": len(raw) - 1 + n_parts,
    }
    assert (out.geom_type == "Polygon").all() and out.is_valid.all()
    assert (out.index == multi_ids[0]).sum() == n_parts
    assert set(out.loc[multi_ids[0], "CODE"]) == {raw.loc[multi_ids[0], "CODE"]}


# ---------------------------------------------------------------- overlaps


def test_overlapping_squares_listed_as_a_pair(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "overlap.gpkg", [box(0, 0, 10, 10), box(50, 0, 60, 10), box(5, 5, 15, 15)]
    )
    fids = _read(path).index.tolist()
    with pytest.raises(InputDataError, match=r"overlaps: 1 pair\(s\)") as err:
        _validate(path)
    assert f"[({fids[0]}, {fids[2]})]" in str(err.value)
    assert "Remove or merge the overlapping polygons" in str(err.value)


def test_polygon_inside_another_overlaps(tmp_path: Path) -> None:
    path = _write(tmp_path / "nested.shp", [box(0, 0, 10, 10), box(2, 2, 4, 4)])
    fids = _read(path).index.tolist()
    assert fids == [0, 1]  # Shapefile ids start at 0
    with pytest.raises(InputDataError, match=r"\(fid, fid\): \[\(0, 1\)\]"):
        _validate(path)


@pytest.mark.parametrize(
    "second",
    [box(10, 0, 20, 10), box(10, 10, 20, 20), box(10, 5, 20, 7)],
    ids=["shared-edge", "shared-corner", "part-of-edge"],
)
def test_touching_squares_do_not_overlap(tmp_path: Path, second: Polygon) -> None:
    path = _write(tmp_path / "touching.gpkg", [box(0, 0, 10, 10), second])
    out, report = _validate(path)
    assert len(out) == 2 and report["polygons"] == 2


def test_long_lists_are_cut_with_a_count(tmp_path: Path) -> None:
    n = MAX_LISTED + 7  # a row of squares each overlapping the next: n - 1 pairs
    path = _write(tmp_path / "chain.gpkg", [box(5 * i, 0, 5 * i + 10, 10) for i in range(n)])
    with pytest.raises(InputDataError) as err:
        _validate(path)
    msg = str(err.value)
    assert f"{n - 1} pair(s)" in msg and f"({n - 1 - MAX_LISTED} more)" in msg


# ---------------------------------------------------------------- invalid geometries


def test_bowtie_listed_then_repaired(tmp_path: Path) -> None:
    path = _write(tmp_path / "bowtie.gpkg", [box(10, 10, 12, 12), BOWTIE])
    fid = int(_read(path).index[1])
    reason = shapely.is_valid_reason(BOWTIE)
    assert reason.startswith("Self-intersection")
    with pytest.raises(InputDataError) as err:
        _validate(path)
    (line,) = _problem_lines(err)
    assert f"({fid}, {reason!r})" in line
    assert "sampling.make_valid=true" in line

    out, report = _validate(path, make_valid=True)
    assert report["repaired"] == 1 and report["exploded"] == 0
    parts = out.loc[[fid]]
    assert len(parts) == 2  # the two triangles, same feature id and label
    assert (parts.geom_type == "Polygon").all() and parts.is_valid.all()
    assert parts.area.sum() == pytest.approx(2.0)
    assert set(parts["code"]) == {2}
    assert report["polygons"] == 3


def test_read_reference_passes_make_valid(tmp_path: Path) -> None:
    path = _write(tmp_path / "bowtie.gpkg", [box(10, 10, 12, 12), BOWTIE])
    fid = int(_read(path).index[1])
    bounds = (-1.0, -1.0, 20.0, 20.0)
    with pytest.raises(InputDataError, match="invalid geometry"):
        read_reference(path, "code", CRS, bounds)
    ref = read_reference(path, "code", CRS, bounds, make_valid=True)
    repaired = ref.polygons[ref.polygons["polygon_id"] == fid]
    assert len(repaired) == 2 and repaired.is_valid.all()
    assert repaired.area.sum() == pytest.approx(2.0)


# ---------------------------------------------------------------- all problems at once


def test_every_problem_is_listed_in_one_error(tmp_path: Path) -> None:
    geoms = [
        box(0, 0, 10, 10),  # overlaps the next one
        box(5, 5, 15, 15),
        Polygon([(20, 0), (22, 2), (22, 0), (20, 2)]),  # bow-tie
        Point(40, 40),
        MultiPolygon([box(50, 0, 52, 2), box(60, 0, 62, 2)]),
        None,
        box(80, 0, 82, 2),
    ]
    code = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 2.5]  # the last one is not a class code
    path = _write(tmp_path / "9_many.gpkg", geoms, code=code)
    raw = pyogrio.read_dataframe(path, fid_as_index=True)
    f = raw.index.tolist()
    assert raw.geometry.isna().sum() == 1
    with pytest.raises(InputDataError) as err:
        _validate(path)
    lines = _problem_lines(err)
    kinds = [ln[4:].split(":", 1)[0] for ln in lines]
    assert kinds == [
        "file name",
        "label values",
        "empty geometry",
        "not polygons",
        "MultiPolygon",
        "invalid geometry",
        "overlaps",
    ]
    by_kind = dict(zip(kinds, lines, strict=True))
    assert "'9_many.gpkg'" in by_kind["file name"]
    assert f"fid [{f[6]}]" in by_kind["label values"] and "2.5" in by_kind["label values"]
    assert f"fid [{f[5]}]" in by_kind["empty geometry"]
    assert f"({f[3]}, 'Point')" in by_kind["not polygons"]
    assert f"fid [{f[4]}]" in by_kind["MultiPolygon"]
    assert f"({f[2]}, 'Self-intersection" in by_kind["invalid geometry"]
    assert f"[({f[0]}, {f[1]})]" in by_kind["overlaps"]
    assert str(err.value).startswith(f"{path}: 7 kind(s) of problem")


# ---------------------------------------------------------------- file name and label field


def test_file_name_must_start_with_a_letter(tmp_path: Path) -> None:
    path = _write(tmp_path / "1_ref.gpkg", [box(0, 0, 1, 1), box(2, 0, 3, 1)])
    with pytest.raises(InputDataError, match=r"'1_ref\.gpkg' does not start with an ASCII letter"):
        _validate(path)
    renamed = _write(tmp_path / "ref_1.gpkg", [box(0, 0, 1, 1), box(2, 0, 3, 1)])
    assert len(_validate(renamed)[0]) == 2


def test_float_labels_with_fractions_are_listed(tmp_path: Path) -> None:
    squares = [box(3 * i, 0, 3 * i + 2, 2) for i in range(5)]
    path = _write(tmp_path / "floats.gpkg", squares, code=[1.0, 1.5, 2.0, -3.0, 0.0])
    fids = _read(path).index.to_numpy()
    with pytest.raises(InputDataError, match=r"positive integer class codes") as err:
        _validate(path)
    (line,) = _problem_lines(err)
    assert f"fid {fids[[1, 3]].tolist()}" in line and "[1.5, -3.0]" in line

    whole = _write(tmp_path / "whole.gpkg", squares, code=[1.0, 1.0, 2.0, np.nan, 0.0])
    out, _ = _validate(whole)  # whole numbers, empty and 0 (no data) are fine
    assert len(out) == 5


def test_string_labels_are_accepted(tmp_path: Path) -> None:
    squares = [box(3 * i, 0, 3 * i + 2, 2) for i in range(3)]
    path = _write(tmp_path / "strings.shp", squares, crop=["wheat", "maize", "wheat"])
    out, report = _validate(path, "crop")
    assert list(out["crop"]) == ["wheat", "maize", "wheat"] and report["polygons"] == 3


def test_label_field_of_another_type_is_refused(tmp_path: Path) -> None:
    squares = [box(3 * i, 0, 3 * i + 2, 2) for i in range(2)]
    path = _write(tmp_path / "bools.gpkg", squares, irrigated=[True, False])
    with pytest.raises(InputDataError, match=r"'irrigated' .*is of type bool.*integer or string"):
        _validate(path, "irrigated")


def test_missing_label_field_and_geometry_problems_together(tmp_path: Path) -> None:
    path = _write(tmp_path / "nofield.gpkg", [box(0, 0, 2, 2), box(1, 1, 3, 3)])
    with pytest.raises(InputDataError) as err:
        _validate(path, "CODE")
    lines = _problem_lines(err)
    assert len(lines) == 2
    assert "'CODE' (data.data_field) not found" in lines[0] and "['code']" in lines[0]
    assert lines[1].startswith("  - overlaps:")
