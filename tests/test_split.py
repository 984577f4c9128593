"""Unit tests of the polygon-level learn/val split."""

from __future__ import annotations

import numpy as np
import pytest

from i2dl.errors import ConfigError
from i2dl.samples.split import LEARN, SELECTION, VAL, SinglePolygonClassWarning, split_polygons


def test_split_is_per_class_with_ratio() -> None:
    ids = np.arange(100, 140)
    codes = np.repeat([1, 2, 3, 4], 10)  # 10 polygons per class
    split = split_polygons(ids, codes, ratio=0.75, seed=3)
    assert set(split) == set(ids.tolist())
    for code in (1, 2, 3, 4):
        members = ids[codes == code]
        n_learn = sum(split[int(i)] == LEARN for i in members)
        assert n_learn == 8  # round(0.75 * 10) = 8 (7.5 rounds to even 8)
        assert sum(split[int(i)] == VAL for i in members) == 2


def test_split_depends_on_seed_and_is_reproducible() -> None:
    ids, codes = np.arange(50), np.repeat([1, 2], 25)
    a = split_polygons(ids, codes, 0.5, seed=0)
    assert a == split_polygons(ids, codes, 0.5, seed=0)
    assert a != split_polygons(ids, codes, 0.5, seed=1)


def test_small_classes_keep_one_polygon_on_each_side() -> None:
    ids, codes = np.arange(4), np.array([1, 1, 2, 2])
    for ratio in (0.05, 0.95):
        split = split_polygons(ids, codes, ratio, seed=0)
        for code in (1, 2):
            sides = {split[int(i)] for i in ids[codes == code]}
            assert sides == {LEARN, VAL}, (ratio, code)


def test_single_polygon_class_goes_to_learn_with_warning() -> None:
    ids, codes = np.array([7, 8, 9]), np.array([1, 1, 5])
    with pytest.warns(SinglePolygonClassWarning, match="class 5 has a single polygon"):
        split = split_polygons(ids, codes, 0.75, seed=0)
    assert split[9] == LEARN


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_bad_ratio(ratio: float) -> None:
    with pytest.raises(ConfigError, match="sampling.ratio"):
        split_polygons(np.arange(4), np.array([1, 1, 2, 2]), ratio)


def test_duplicate_ids_rejected() -> None:
    with pytest.raises(ConfigError, match="unique"):
        split_polygons(np.array([1, 1]), np.array([1, 2]))


def test_selection_is_carved_from_learn_and_leaves_val_unchanged() -> None:
    ids = np.arange(60)
    codes = np.repeat([1, 2, 3], 20)
    two_way = split_polygons(ids, codes, ratio=0.75, seed=5)
    three_way = split_polygons(ids, codes, ratio=0.75, seed=5, selection_ratio=0.2)
    # iota2's ratio keeps its meaning: the same val polygons with or without selection
    assert {i for i, s in two_way.items() if s == VAL} == {
        i for i, s in three_way.items() if s == VAL
    }
    for code in (1, 2, 3):
        mine = [three_way[int(i)] for i in ids[codes == code]]
        assert mine.count(VAL) == 5
        assert mine.count(SELECTION) == 3  # round(0.2 * 15)
        assert mine.count(LEARN) == 12
    assert split_polygons(ids, codes, 0.75, 5, 0.2) == three_way  # seeded


def test_selection_fallback_for_small_classes() -> None:
    ids = np.arange(7)
    codes = np.array([1, 1, 2, 2, 2, 3, 3])
    with pytest.warns(SinglePolygonClassWarning, match="single learn polygon"):
        split = split_polygons(ids, codes, ratio=0.5, seed=0, selection_ratio=0.2)
    # class 1: 2 polygons -> 1 learn, 1 val: no selection; class 2: 3 polygons ->
    # 2 learn (round(1.5)) -> one of them goes to selection (at least one)
    by_class = {c: [split[int(i)] for i in ids[codes == c]] for c in (1, 2, 3)}
    assert sorted(by_class[1]) == [LEARN, VAL]
    assert sorted(by_class[2]) == [LEARN, VAL, SELECTION]
    with pytest.raises(ValueError, match="selection_ratio"):
        split_polygons(ids, codes, selection_ratio=1.0)


def test_kfold_partitions_polygons_by_class() -> None:
    ids = np.arange(100, 153)
    codes = np.array([1] * 20 + [2] * 23 + [3] * 10)
    k = 5
    val_of: dict[int, int] = {}
    for fold in range(k):
        split = split_polygons(ids, codes, seed=2, selection_ratio=0.25, folds=k, fold=fold)
        for pid, part in split.items():
            if part == VAL:
                assert pid not in val_of, "a polygon is val in two folds"
                val_of[pid] = fold
        for code in (1, 2, 3):
            mine = [split[int(i)] for i in ids[codes == code]]
            n = len(mine)
            assert mine.count(VAL) in (n // k, -(-n // k))  # stratified: sizes differ by <= 1
            assert mine.count(SELECTION) >= 1 and mine.count(LEARN) >= 1
    assert sorted(val_of) == ids.tolist()  # every polygon is val exactly once
    with pytest.raises(ValueError, match="sampling.fold"):
        split_polygons(ids, codes, folds=k, fold=k)
    with pytest.raises(ValueError, match="sampling.folds"):
        split_polygons(ids, codes, folds=1)
