"""Polygon-level learn/val split (iota2 ``arg_train.ratio`` / ``random_seed``).

iota2 splits the reference **polygons**, not the pixels, so that learn and val are
spatially disjoint: every pixel of a polygon goes to the same set. For each class,
``round(ratio * n)`` of its n polygons (at least one, and at least one left for val when
n >= 2) are drawn at random into learn, the rest into val.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from i2dl.errors import ConfigError
from i2dl.store import LEARN, VAL

log = logging.getLogger(__name__)

__all__ = ["LEARN", "VAL", "SinglePolygonClassWarning", "split_polygons"]


class SinglePolygonClassWarning(UserWarning):
    """A class has a single polygon: it cannot be in both learn and val."""


def split_polygons(
    polygon_ids: np.ndarray, codes: np.ndarray, ratio: float = 0.75, seed: int = 0
) -> dict[int, int]:
    """Assign each polygon to learn (``LEARN``) or val (``VAL``), class by class.

    Args:
        polygon_ids: (P,) int, unique polygon ids.
        codes: (P,) int, class code of each polygon.
        ratio: fraction of each class's polygons put in learn, 0 < ratio < 1
            (iota2 default 0.75).
        seed: random seed (iota2 ``random_seed``; one per run).

    Returns:
        polygon id -> split (``LEARN`` = 0 or ``VAL`` = 1, defined in :mod:`i2dl.store`).

    Raises:
        ConfigError: ``ratio`` not in (0, 1); polygon ids not unique.

    Warns:
        SinglePolygonClassWarning: for each class with a single polygon, which is kept in
        learn (the class then has no validation pixel).
    """
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"sampling.ratio must be strictly between 0 and 1, got {ratio}")
    polygon_ids = np.asarray(polygon_ids)
    codes = np.asarray(codes)
    if len(np.unique(polygon_ids)) != len(polygon_ids):
        raise ConfigError("polygon ids must be unique to split by polygon")
    rng = np.random.default_rng(seed)
    split: dict[int, int] = {}
    for code in np.unique(codes):
        ids = np.sort(polygon_ids[codes == code])
        n = len(ids)
        if n == 1:
            warnings.warn(
                f"class {int(code)} has a single polygon (id {int(ids[0])}): it cannot be in "
                "both learn and val, so it is kept in learn and the class has no validation "
                "pixel. Add polygons of this class for a trustworthy validation",
                SinglePolygonClassWarning,
                stacklevel=2,
            )
            split[int(ids[0])] = LEARN
            continue
        n_learn = min(max(int(round(ratio * n)), 1), n - 1)
        order = rng.permutation(n)
        for rank, idx in enumerate(order):
            split[int(ids[idx])] = LEARN if rank < n_learn else VAL
    return split
