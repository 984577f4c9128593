"""Tests of the learn-pixel selection (iota2 sampleSelection / OTB SampleSelection).

Expected counts are computed here by independent formulas (Fractions for the
largest-remainder shares, OTB's periodic rule replayed literally) and compared with the
selection on the real Slovenia polygons rasterised on the NDVI grid.
"""

from __future__ import annotations

import math
import os
import warnings
from fractions import Fraction
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.features import rasterize

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.samples.class_statistics import STAT_COLUMNS, class_statistics, write_class_statistics
from i2dl.samples.selection import (
    SAMPLERS,
    SampleSelectionWarning,
    largest_remainder,
    periodic_indices,
    read_byclass_csv,
    select_samples,
    selection_from_config,
)
from i2dl.samples.split import split_polygons
from i2dl.samples.store import LEARN, VAL
from tests.conftest import DATA_DIR

SLOVENIA = DATA_DIR / "slovenia_s2_ndvi"

# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def slovenia_pixels() -> dict[str, np.ndarray]:
    """Labelled pixels of the Slovenia reference polygons (LULC_ID, 0 dropped) on NDVI.tif.

    Returns ``y`` (class), ``polygon_id`` (feature row), ``region`` (0 = left half of the
    grid, 1 = right half), in row-major pixel order.
    """
    raster, ref = SLOVENIA / "NDVI.tif", SLOVENIA / "reference.gpkg"
    if not (raster.is_file() and ref.is_file()):
        pytest.skip(f"real data absent: {SLOVENIA} (set I2DL_DATA to the shared data folder)")
    with rasterio.open(raster) as src:
        transform, shape, crs = src.transform, src.shape, src.crs
    gdf = gpd.read_file(ref).to_crs(crs)
    gdf = gdf[gdf["LULC_ID"] != 0].reset_index(drop=True)
    label = rasterize(
        ((g, int(v)) for g, v in zip(gdf.geometry, gdf["LULC_ID"], strict=True)),
        out_shape=shape,
        transform=transform,
        fill=0,
        dtype="int32",
    )
    poly = rasterize(
        ((g, i + 1) for i, g in enumerate(gdf.geometry)),
        out_shape=shape,
        transform=transform,
        fill=0,
        dtype="int32",
    )
    rows, cols = np.nonzero(label)
    return {
        "y": label[rows, cols].astype(np.int64),
        "polygon_id": poly[rows, cols].astype(np.int64) - 1,
        "region": (cols >= shape[1] // 2).astype(np.int32),
    }


def expected_counts(y: np.ndarray, strategy: str, **kw: object) -> dict[int, int]:
    """Per-class counts each strategy implies, computed independently of the module."""
    codes, avail = np.unique(y, return_counts=True)
    m = {int(c): int(a) for c, a in zip(codes, avail, strict=True)}
    if strategy == "all":
        return m
    if strategy == "constant":
        return {c: min(int(kw["n"]), a) for c, a in m.items()}
    if strategy == "smallest":
        small = min(m.values())
        return {c: small for c in m}
    if strategy == "percent":
        # OTB: floor(0.5 + p * m), i.e. round half up
        return {c: min(int(float(kw["p"]) * a + 0.5), a) for c, a in m.items()}
    if strategy == "byclass":
        table = kw["byclass"]
        return {c: min(int(table.get(c, 0)), a) for c, a in m.items()}  # type: ignore[union-attr]
    if strategy == "total":
        total, grand = int(kw["total"]), sum(m.values())
        quota = {c: Fraction(total * a, grand) for c, a in m.items()}
        out = {c: math.floor(q) for c, q in quota.items()}
        rank = sorted(m, key=lambda c: (-(quota[c] - out[c]), c))
        for c in rank[: total - sum(out.values())]:
            out[c] += 1
        return out
    raise AssertionError(strategy)


CASES = [
    ("all", {}),
    ("constant", {"n": 300}),  # classes 1 (11 px) and 8 (198 px) are clipped
    ("percent", {"p": 0.37}),
    ("total", {"total": 997}),
    ("smallest", {}),
    ("byclass", {"byclass": {2: 500, 3: 5000, 4: 101, 8: 0}}),  # 3 clipped, 1 absent
]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(("strategy", "kw"), CASES, ids=[c[0] for c in CASES])
def test_counts_match_strategy_on_real_polygons(
    slovenia_pixels: dict, strategy: str, kw: dict, sampler: str
) -> None:
    y = slovenia_pixels["y"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleSelectionWarning)
        mask = select_samples(y, strategy, sampler=sampler, seed=4, **kw)
    assert mask.dtype == bool and mask.shape == y.shape
    got = np.bincount(y[mask], minlength=y.max() + 1)
    want = expected_counts(y, strategy, **kw)
    assert {c: int(got[c]) for c in want} == want
    assert got.sum() == sum(want.values())  # nothing selected outside the classes
    if strategy == "total":
        assert mask.sum() == kw["total"]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(("strategy", "kw"), CASES, ids=[c[0] for c in CASES])
def test_per_region_counts_on_real_polygons(
    slovenia_pixels: dict, strategy: str, kw: dict, sampler: str
) -> None:
    y, region = slovenia_pixels["y"], slovenia_pixels["region"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleSelectionWarning)
        mask = select_samples(y, strategy, sampler=sampler, seed=1, groups=region, **kw)
        for g in (0, 1):
            inside = region == g
            want = expected_counts(y[inside], strategy, **kw)
            got = np.bincount(y[inside & mask], minlength=y.max() + 1)
            assert {c: int(got[c]) for c in want} == want, g
            # same as selecting the region's pixels alone
            alone = select_samples(y[inside], strategy, sampler=sampler, seed=1, **kw)
            np.testing.assert_array_equal(mask[inside], alone)


def test_total_shares_sum_exactly_for_many_totals(slovenia_pixels: dict) -> None:
    y = slovenia_pixels["y"]
    for total in (1, 2, 5, 13, 100, 999, 1234, len(y) - 1, len(y)):
        mask = select_samples(y, "total", total=total, sampler="periodic")
        assert mask.sum() == total
        got = np.bincount(y[mask], minlength=y.max() + 1)
        want = expected_counts(y, "total", total=total)
        assert {c: int(got[c]) for c in want} == want, total


def test_total_largest_remainder_small_example() -> None:
    # shares 10 * (5, 3, 2) / 10 = exact; 7 * (5, 3, 2) / 10 = 3.5, 2.1, 1.4 -> 3, 2, 1 + 1
    # to the largest remainder (class 1, 0.5) -> 4, 2, 1; equal remainders go to the
    # smaller code first: 2 * (1, 1, 1) / 3 -> classes 1 and 2
    y = np.array([1] * 5 + [2] * 3 + [3] * 2)
    mask = select_samples(y, "total", total=7, sampler="periodic")
    assert np.bincount(y[mask]).tolist() == [0, 4, 2, 1]
    y = np.array([4, 5, 6])
    mask = select_samples(y, "total", total=2, sampler="periodic")
    assert mask.tolist() == [True, True, False]


@pytest.mark.parametrize("minimum", [0, 1, 3])
def test_largest_remainder_is_exact_and_proportional(minimum: int) -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        counts = rng.integers(0, 60, size=int(rng.integers(1, 8)))
        floor = np.minimum(counts, minimum)
        some = int(rng.integers(0, counts.sum() + 1))
        for target in {0, int(floor.sum()), some, int(counts.sum())}:
            got = largest_remainder(counts, target, minimum=minimum)
            assert got.dtype == np.int64 and (got >= floor).all() and (got <= counts).all()
            assert got.sum() == max(target, floor.sum())
            # each class is within one of its exact share of what is left after the floor
            room, left = counts - floor, max(target - int(floor.sum()), 0)
            if room.sum():
                exact = [Fraction(left * int(r), int(room.sum())) for r in room]
                assert all(abs((g - f) - e) < 1 for g, f, e in zip(got, floor, exact, strict=True))


def test_largest_remainder_ties_go_to_the_first_class() -> None:
    # 2 * (1, 1, 1) / 3: equal remainders -> the first two classes
    assert largest_remainder(np.array([1, 1, 1]), 2).tolist() == [1, 1, 0]
    # minimum=1: one per present class, the rest (2) shared over the room (3, 1, 0, 0):
    # 1.5, 0.5 -> 1, 0 + the last one to the tied first class
    assert largest_remainder(np.array([4, 2, 1, 0]), 5, minimum=1).tolist() == [3, 1, 1, 0]
    # fewer items than classes: the floor wins over the target
    assert largest_remainder(np.array([5, 5, 5]), 2, minimum=1).tolist() == [1, 1, 1]
    # above the counts (the total strategy): proportional shares, unclipped
    assert largest_remainder(np.array([3, 7]), 50).tolist() == [15, 35]
    with pytest.raises(ValueError, match="target"):
        largest_remainder(np.array([1, 2]), -1)


def test_total_above_available_takes_all_with_warning() -> None:
    y = np.array([1] * 3 + [2] * 7)
    with pytest.warns(SampleSelectionWarning, match="class 2"):
        mask = select_samples(y, "total", total=50)
    assert mask.all()


def test_percent_rounds_half_up_as_otb() -> None:
    # p * m = 2.5 -> 3 (numpy's round would give 2), 0.5 -> 1, 7.5 -> 8
    y = np.array([1] * 5 + [2] * 1 + [3] * 15)
    mask = select_samples(y, "percent", p=0.5, sampler="periodic")
    assert np.bincount(y[mask]).tolist() == [0, 3, 1, 8]


# --------------------------------------------------------------------------- samplers


def test_random_is_reproducible_and_depends_on_seed(slovenia_pixels: dict) -> None:
    y = slovenia_pixels["y"]
    a = select_samples(y, "percent", p=0.3, seed=11)
    np.testing.assert_array_equal(a, select_samples(y, "percent", p=0.3, seed=11))
    b = select_samples(y, "percent", p=0.3, seed=12)
    assert not np.array_equal(a, b)
    assert np.array_equal(np.bincount(y[a]), np.bincount(y[b]))  # same counts


def test_periodic_ignores_seed(slovenia_pixels: dict) -> None:
    y = slovenia_pixels["y"]
    a = select_samples(y, "constant", n=10, sampler="periodic", seed=0)
    np.testing.assert_array_equal(
        a, select_samples(y, "constant", n=10, sampler="periodic", seed=9)
    )


def test_periodic_exact_indices_small_array() -> None:
    y = np.full(10, 5)
    idx = np.flatnonzero(select_samples(y, "constant", n=4, sampler="periodic"))
    assert idx.tolist() == [0, 2, 5, 7]  # floor(i * 10 / 4)
    # two interleaved classes: the rule applies to each class's candidates in order
    y = np.array([1, 2] * 10)
    idx = np.flatnonzero(select_samples(y, "constant", n=4, sampler="periodic"))
    assert idx.tolist() == [0, 1, 4, 5, 10, 11, 14, 15]
    assert periodic_indices(7, 7).tolist() == list(range(7))
    assert periodic_indices(7, 0).tolist() == []
    assert periodic_indices(9, 3).tolist() == [0, 3, 6]


def _otb_periodic(m: int, n: int) -> list[int]:
    """OTB PeriodicSampler::TakeSample (offset 0, no jitter) replayed literally."""
    rate, chosen, out = n / m, 0, []
    for processed in range(1, m + 1):
        if math.ceil(processed * rate - chosen) > 0:
            chosen += 1
            out.append(processed - 1)
    return out


@pytest.mark.parametrize(("m", "n"), [(10, 4), (7, 3), (100, 33), (1777, 300), (11, 11), (5, 1)])
def test_periodic_matches_otb_rule(m: int, n: int) -> None:
    assert periodic_indices(m, n).tolist() == _otb_periodic(m, n)


def test_random_selects_within_class_without_replacement() -> None:
    y = np.array([3] * 50 + [4] * 20)
    mask = select_samples(y, "constant", n=10, seed=2)
    assert mask[:50].sum() == 10 and mask[50:].sum() == 10


def test_groups_shape_and_bad_arguments() -> None:
    y = np.array([1, 1, 2])
    with pytest.raises(InputDataError, match="groups"):
        select_samples(y, "all", groups=np.array([0, 1]))
    with pytest.raises(InputDataError, match="1-D"):
        select_samples(y.reshape(1, 3), "all")
    with pytest.raises(ConfigError, match="unknown strategy 'half'"):
        select_samples(y, "half")
    with pytest.raises(ConfigError, match="unknown sampler"):
        select_samples(y, "all", sampler="pattern")
    with pytest.raises(ConfigError, match=r"needs n .*strategy.constant.nb"):
        select_samples(y, "constant")
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        select_samples(y, "percent", p=50)
    with pytest.raises(ConfigError, match=">= 1"):
        select_samples(y, "total", total=0)
    with pytest.raises(ConfigError, match="seed"):
        select_samples(y, "constant", n=1, seed=-1)


def test_empty_candidates() -> None:
    mask = select_samples(np.zeros(0, dtype=np.int64), "constant", n=5)
    assert mask.shape == (0,)


def test_clipping_warns_naming_class_and_region() -> None:
    y = np.array([1] * 3 + [2] * 10)
    groups = np.array([7] * 13)
    with pytest.warns(SampleSelectionWarning, match=r"region 7.*class 1: 5 asked, 3 available"):
        mask = select_samples(y, "constant", n=5, groups=groups)
    assert np.bincount(y[mask]).tolist() == [0, 3, 5]


def test_byclass_missing_class_warns_and_gets_none() -> None:
    y = np.array([1] * 4 + [2] * 4)
    with pytest.warns(SampleSelectionWarning, match=r"classes \[2\].*byclass"):
        mask = select_samples(y, "byclass", byclass={1: 2, 9: 5})
    assert np.bincount(y[mask], minlength=3).tolist() == [0, 2, 0]


# --------------------------------------------------------------------------- byclass CSV


def test_read_byclass_csv_formats(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("class,n\n1,100\n\n# comment\n2, 50\n3;7\n4\t0\n5 12\n")
    assert read_byclass_csv(f) == {1: 100, 2: 50, 3: 7, 4: 0, 5: 12}
    g = tmp_path / "b.csv"
    g.write_text("\ufeff11,5\r\n12,6\r\n")  # BOM, CRLF, no header
    assert read_byclass_csv(g) == {11: 5, 12: 6}
    h = tmp_path / "c.csv"
    h.write_text("forest,10\n2,3\n")
    assert read_byclass_csv(h, class_names={1: "forest", 2: "water"}) == {1: 10, 2: 3}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1,2,3\n", r"line 1: expected 'class,n'"),
        ("class,n\n1,10\nx,3\n", r"line 3: class 'x' is not an integer"),
        ("1,10\n2,ten\n", r"line 2: the pixel count 'ten' of class 2"),
        ("1,-4\n", r"line 1: the pixel count '-4'"),
        ("1,10\n\n1,20\n", r"line 3: class 1 is already given on line 1"),
        ("# only a comment\n\n", "no 'class,n' line"),
        ("class,n\n", "no 'class,n' line"),
    ],
)
def test_read_byclass_csv_errors(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(InputDataError, match=match) as err:
        read_byclass_csv(f)
    assert str(f) in str(err.value)


def test_read_byclass_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileNotFoundError, match="nope.csv"):
        read_byclass_csv(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- config


def test_default_config_keeps_everything(make_cfg) -> None:  # noqa: ANN001
    cfg = make_cfg("seed=7")
    kw = selection_from_config(cfg.sampling)
    assert kw == {
        "strategy": "all",
        "sampler": "random",
        "seed": 7,
        "n": None,
        "p": None,
        "total": None,
        "byclass": None,
    }
    assert cfg.sampling.ratio == 0.75  # existing keys kept


def test_preset_configs(make_cfg) -> None:  # noqa: ANN001
    kw = selection_from_config(make_cfg("sampling=percent").sampling)
    assert (kw["strategy"], kw["p"]) == ("percent", 0.5)
    kw = selection_from_config(make_cfg("sampling=constant", "sampling.per_class=9").sampling)
    assert (kw["strategy"], kw["n"]) == ("constant", 9)
    y = np.array([1] * 20 + [2] * 30)
    assert select_samples(y, **kw).sum() == 18


def test_config_errors_name_the_key(make_cfg, tmp_path: Path) -> None:  # noqa: ANN001
    cases = [
        (["sampling.strategy=constant"], "sampling.per_class"),
        (["sampling.strategy=percent"], "sampling.percent"),
        (["sampling.strategy=percent", "sampling.percent=50"], r"sampling.percent.*\(0, 1\]"),
        (["sampling.strategy=total"], "sampling.total"),
        (["sampling.strategy=total", "sampling.total=2.5"], "sampling.total"),
        (["sampling.strategy=byclass"], "sampling.byclass_csv"),
        (["sampling.strategy=half"], "sampling.strategy='half'"),
        (["sampling.sampler=pattern"], "sampling.sampler='pattern'"),
        (["sampling.strategy=smallest", "seed=null"], "sampling.selection_seed"),
    ]
    for overrides, match in cases:
        with pytest.raises(ConfigError, match=match):
            selection_from_config(make_cfg(*overrides).sampling)
    # periodic needs no seed
    kw = selection_from_config(make_cfg("sampling.sampler=periodic", "seed=null").sampling)
    assert kw["sampler"] == "periodic"


def test_config_byclass_and_ignored_keys(make_cfg, tmp_path: Path) -> None:  # noqa: ANN001
    f = tmp_path / "n.csv"
    f.write_text("1,3\n2,4\n")
    cfg = make_cfg("sampling.strategy=byclass", f"sampling.byclass_csv={f}")
    assert selection_from_config(cfg.sampling)["byclass"] == {1: 3, 2: 4}
    with pytest.warns(UserWarning, match="sampling.per_class=100 is ignored"):
        selection_from_config(make_cfg("sampling.per_class=100").sampling)
    with pytest.raises(InputFileNotFoundError):
        selection_from_config(
            make_cfg("sampling.strategy=byclass", f"sampling.byclass_csv={tmp_path}/x").sampling
        )


# --------------------------------------------------------------------------- report


def test_class_statistics_on_real_polygons(slovenia_pixels: dict, tmp_path: Path) -> None:
    y, pid, region = (slovenia_pixels[k] for k in ("y", "polygon_id", "region"))
    ids, first = np.unique(pid, return_index=True)
    split_of = split_polygons(ids, y[first], ratio=0.75, seed=0)
    split = np.array([split_of[int(i)] for i in pid], dtype=np.int8)
    learn = split == LEARN
    selected = ~learn  # all val pixels kept
    selected[learn] = select_samples(y[learn], "percent", p=0.5, seed=0, groups=region[learn])

    df = class_statistics(y, pid, split, region, selected, run=3)
    assert list(df.columns) == list(STAT_COLUMNS)
    classes, regions = np.unique(y), np.unique(region)
    assert len(df) == len(classes) * len(regions) * 2
    assert set(df["split"]) == {"learn", "val"} and (df["run"] == 3).all()
    for row in df.itertuples(index=False):
        in_group = (y == row[0]) & (region == row.region)
        in_group &= split == (LEARN if row.split == "learn" else VAL)
        assert row.available_pixels == in_group.sum()
        assert row.selected_pixels == (in_group & selected).sum()
        assert row.polygons == len(np.unique(pid[in_group]))
    assert df["available_pixels"].sum() == len(y)
    assert df["selected_pixels"].sum() == selected.sum()
    val = df[df["split"] == "val"]
    assert (val["selected_pixels"] == val["available_pixels"]).all()
    learn_df = df[df["split"] == "learn"]
    want = np.floor(0.5 + 0.5 * learn_df["available_pixels"]).astype(int)
    assert (learn_df["selected_pixels"] == want).all()

    out = write_class_statistics(tmp_path / "sub" / "class_statistics.csv", df)
    back = pd.read_csv(out)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert os.listdir(out.parent) == ["class_statistics.csv"]  # no temp file left


def test_class_statistics_zero_rows_and_errors() -> None:
    y = np.array([1, 1, 2])
    pid = np.array([10, 10, 11])
    split = np.array([0, 0, 1])
    region = np.array([0, 0, 0])
    df = class_statistics(y, pid, split, region, None, run=0)
    row = df[(df["class"] == 2) & (df["split"] == "learn")].iloc[0]
    assert (row.polygons, row.available_pixels, row.selected_pixels) == (0, 0, 0)
    row = df[(df["class"] == 1) & (df["split"] == "learn")].iloc[0]
    assert (row.polygons, row.available_pixels, row.selected_pixels) == (1, 2, 2)
    with pytest.raises(InputDataError, match="split values"):
        class_statistics(y, pid, np.array([0, 7, 1]), region, None, run=0)
    with pytest.raises(InputDataError, match="region"):
        class_statistics(y, pid, split, region[:2], None, run=0)


def test_write_class_statistics_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "class_statistics.csv"
    old = pd.DataFrame({"a": [1]})
    write_class_statistics(path, old)
    new = pd.DataFrame({"a": [2, 3]})

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_class_statistics(path, new)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(pd.read_csv(path), old)  # old file intact
    assert os.listdir(tmp_path) == ["class_statistics.csv"]  # temp removed
    write_class_statistics(path, new)  # overwrite
    pd.testing.assert_frame_equal(pd.read_csv(path), new)
