"""Unit tests of the polygon-level learn/val split."""

from __future__ import annotations

import numpy as np
import pytest

from i2dl.errors import ConfigError
from i2dl.sampling.split import LEARN, VAL, SinglePolygonClassWarning, split_polygons


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
