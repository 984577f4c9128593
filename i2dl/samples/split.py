"""Polygon-level learn / selection / val split (iota2 ``arg_train.ratio`` / ``random_seed``).

iota2 splits the reference **polygons**, not the pixels, so that learn and val are
spatially disjoint: every pixel of a polygon goes to the same set. For each class,
``round(ratio * n)`` of its n polygons (at least one, and at least one left for val when
n >= 2) are drawn at random into learn, the rest into val: iota2's ``ratio`` keeps this
meaning here.

i2dl then carves a **selection** subset out of each class's learn polygons
(``sampling.selection_ratio``, default 0.2): the deep models choose their checkpoint,
stop early and schedule their learning rate on it, so that the val polygons that the
report scores are never seen by anything that chose the model. A class with ``m`` learn
polygons gives ``round(selection_ratio * m)`` of them to selection, at least one and at
most ``m - 1``; a class with a single learn polygon keeps it in learn (a warning says so;
the selection scores then ignore the class, as the macro F1 averages over the classes of
the reference). The selection draw uses its own random stream, so the val polygons are the
same as without a selection subset for the same seed.

Polygon-grouped k-fold cross-validation (as sits' ``sits_kfold_validate``, stratified by
class): with ``folds=K``, each class's polygons are shuffled and dealt into K folds; fold
``fold`` is val, the others learn (then selection is carved from them as above).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from i2dl.errors import ConfigError
from i2dl.samples.store import LEARN, SELECTION, VAL

log = logging.getLogger(__name__)

__all__ = [
    "LEARN",
    "SELECTION",
    "VAL",
    "SinglePolygonClassWarning",
    "split_polygons",
]


class SinglePolygonClassWarning(UserWarning):
    """A class has too few polygons to be in every part of the split."""


def _check_ratio(name: str, value: float, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"sampling.{name} must be a number, got {value!r}") from None
    if not ((allow_zero and v == 0.0) or 0.0 < v < 1.0):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise ConfigError(f"sampling.{name} must be in {bound}, got {value!r}")
    return v


def _learn_val(
    ids: np.ndarray, ratio: float, rng: np.random.Generator, folds: int | None, fold: int,
    split_ground_truth: bool = True,
) -> np.ndarray:
    """Split values (LEARN or VAL) of one class's sorted polygon ids."""
    n = len(ids)
    out = np.full(n, LEARN, dtype=np.int8)
    if not split_ground_truth:
        return out
    if folds is not None:
        # deal the shuffled polygons into folds: fold sizes differ by at most one
        out[rng.permutation(n)[np.arange(n) % folds == fold]] = VAL
        return out
    if n == 1:
        return out
    order = rng.permutation(n)
    n_learn = min(max(int(round(ratio * n)), 1), n - 1)
    out[order[n_learn:]] = VAL
    return out


def split_polygons(
    polygon_ids: np.ndarray,
    codes: np.ndarray,
    ratio: float = 0.75,
    seed: int = 0,
    selection_ratio: float = 0.0,
    folds: int | None = None,
    fold: int = 0,
    split_ground_truth: bool = True,
) -> dict[int, int]:
    """Assign each polygon to learn, selection or val, class by class.

    Args:
        polygon_ids: (P,) int, unique polygon ids.
        codes: (P,) int, class code of each polygon.
        ratio: fraction of each class's polygons put in learn (+ selection), 0 < ratio < 1
            (iota2 default 0.75); unused with ``folds``.
        seed: random seed (iota2 ``random_seed``; one per run).
        selection_ratio: fraction of each class's learn polygons moved to selection, in
            [0, 1); 0 = no selection subset (learn/val only).
        folds: K for polygon-grouped, class-stratified k-fold cross-validation; None for
            iota2's ratio split.
        fold: with ``folds``, the fold (0..K-1) that is val.
        split_ground_truth: False = iota2's ``split_ground_truth: false``: every polygon
            in learn (then selection is carved from it as usual), no val polygon.

    Returns:
        polygon id -> split (``LEARN`` = 0, ``VAL`` = 1, ``SELECTION`` = 2, defined in
        :mod:`i2dl.samples.store`).

    Raises:
        ConfigError: a ratio out of range, ``folds`` < 2 or ``fold`` not in 0..K-1,
            polygon ids not unique, ``folds`` with ``split_ground_truth=False``.

    Warns:
        SinglePolygonClassWarning: for a class with a single polygon (kept in learn, no
        val pixel), and for a class with a single learn polygon when a selection subset
        is asked for (kept in learn, no selection pixel).
    """
    ratio = _check_ratio("ratio", ratio)
    selection_ratio = _check_ratio("selection_ratio", selection_ratio, allow_zero=True)
    if folds is not None and not split_ground_truth:
        raise ConfigError("sampling.folds needs val folds: it cannot be combined with "
                          "sampling.split_ground_truth=false")
    if folds is not None:
        if isinstance(folds, bool) or int(folds) < 2:
            raise ConfigError(f"sampling.folds must be null or an integer >= 2, got {folds!r}")
        folds = int(folds)
        if not 0 <= int(fold) < folds:
            raise ConfigError(f"sampling.fold must be in 0..{folds - 1}, got {fold!r}")
        fold = int(fold)
    polygon_ids = np.asarray(polygon_ids)
    codes = np.asarray(codes)
    if len(np.unique(polygon_ids)) != len(polygon_ids):
        raise ConfigError("polygon ids must be unique to split by polygon")
    rng = np.random.default_rng(seed)
    # the selection draw has its own stream: the val polygons do not depend on it
    rng_selection = np.random.default_rng([int(seed), 1])
    split: dict[int, int] = {}
    for code in np.unique(codes):
        ids = np.sort(polygon_ids[codes == code])
        if len(ids) == 1 and folds is None and split_ground_truth:
            warnings.warn(
                f"class {int(code)} has a single polygon (id {int(ids[0])}): it cannot be in "
                "both learn and val, so it is kept in learn and the class has no validation "
                "pixel. Add polygons of this class for a trustworthy validation",
                SinglePolygonClassWarning,
                stacklevel=2,
            )
        parts = _learn_val(ids, ratio, rng, folds, fold, split_ground_truth)
        learn = np.flatnonzero(parts == LEARN)
        if selection_ratio > 0:
            if len(learn) == 1:
                warnings.warn(
                    f"class {int(code)} has a single learn polygon (id {int(ids[learn[0]])}): "
                    "it stays in learn and the class has no selection pixel (checkpoint "
                    "selection ignores it). Add polygons of this class",
                    SinglePolygonClassWarning,
                    stacklevel=2,
                )
            elif len(learn) > 1:
                m = len(learn)
                n_sel = min(max(int(round(selection_ratio * m)), 1), m - 1)
                parts[learn[rng_selection.permutation(m)[:n_sel]]] = SELECTION
        for pid, part in zip(ids, parts, strict=True):
            split[int(pid)] = int(part)
    return split


def fusion_holdout(ids: np.ndarray, codes: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """The polygons held apart from every run to score the fusion of the runs' maps.

    iota2's ``merge_final_classifications_ratio``: the fused map of ``runs`` seeds is
    scored on reference data that no run learnt from, validated or selected on. Each run
    re-splits the other polygons with its own seed; these are drawn once, with the first
    run's seed, so they are the same in every run. Per class, ``floor(ratio * n)`` of its
    ``n`` polygons, leaving at least two (one for learn, one for val); a class with fewer
    than three polygons gives none.

    Args:
        ids: (P,) int polygon ids, unique.
        codes: (P,) int class code of each polygon.
        ratio: fraction in [0, 1).
        seed: the draw's seed (the first run's).

    Returns:
        (P,) bool, True for a held-apart polygon.

    Raises:
        ConfigError: ``ratio`` outside [0, 1).
    """
    if not 0.0 <= float(ratio) < 1.0:
        raise ConfigError(f"fusion_validation_ratio={ratio} must be in [0, 1)")
    held = np.zeros(len(ids), dtype=bool)
    if not ratio:
        return held
    rng = np.random.default_rng([int(seed), 0xF05])  # its own stream
    for code in np.unique(codes):
        members = np.flatnonzero(codes == code)
        members = members[np.argsort(ids[members])]  # independent of the input order
        n_hold = min(int(np.floor(float(ratio) * len(members))), len(members) - 2)
        if n_hold > 0:
            held[rng.choice(members, size=n_hold, replace=False)] = True
    return held
