"""iota2's ``class_statistics.csv``: pixels and polygons per class, region, run and split.

The report of a sample selection (:mod:`i2dl.samples.selection`), with the selected
pixels of each class; and the checks that no class of the reference vanishes on the way
(:func:`warn_polygons_without_samples`, :func:`check_split_classes`): a polygon smaller
than a pixel holds no pixel centre (the pixel-centre rule of OTB's sample extraction) and
gives no sample, so a class of small polygons could disappear from the model without a
word.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from i2dl.errors import InputDataError
from i2dl.io.files import write_text_atomic
from i2dl.samples.store import LEARN, SELECTION, SPLIT_NAMES, VAL

log = logging.getLogger(__name__)

#: The ``sampling`` key that lets a class of the reference end with no learn sample.
ALLOW_MISSING_KEY = "sampling.allow_missing_classes"


class MissingSamplesWarning(UserWarning):
    """Polygons or classes of the reference gave no sample, or a split lacks classes."""

#: Columns of :func:`class_statistics`, in order.
STAT_COLUMNS = (
    "class",
    "region",
    "run",
    "split",
    "polygons",
    "available_pixels",
    "selected_pixels",
)


def class_statistics(
    y: np.ndarray,
    polygon_id: np.ndarray,
    split: np.ndarray,
    region: np.ndarray,
    selected: np.ndarray | None,
    run: int,
) -> pd.DataFrame:
    """Samples per class, region and split of one run (iota2's ``class_statistics.csv``).

    Args:
        y: (N,) int, class code of every labelled pixel (learn and val).
        polygon_id: (N,) int, the pixel's polygon.
        split: (N,) int, ``LEARN`` (0), ``VAL`` (1) or ``SELECTION`` (2).
        region: (N,) int, the pixel's region.
        selected: (N,) bool, True = kept in the store (selected learn pixels, every val
            and selection pixel); None = all kept.
        run: identifier of the run written in every row (its seed, or its index ``i`` in
            iota2's ``seed_<i>`` folders).

    Returns:
        One row per class x region x split (classes and regions seen anywhere in ``y`` /
        ``region``, zeros where empty), sorted by split (learn, selection, val), region,
        class, with columns :data:`STAT_COLUMNS`: ``class``, ``region``, ``run`` (int64),
        ``split`` ("learn"/"selection"/"val"), ``polygons`` (distinct polygon ids),
        ``available_pixels``, ``selected_pixels`` (int64).

    Raises:
        InputDataError: arrays of different shapes, or an unknown split value.
    """
    y = np.asarray(y)
    n = len(y)
    selected = np.ones(n, dtype=bool) if selected is None else np.asarray(selected, dtype=bool)
    arrays = {"polygon_id": polygon_id, "split": split, "region": region, "selected": selected}
    for name, arr in arrays.items():
        if np.shape(arr) != y.shape:
            raise InputDataError(
                f"class_statistics: {name} has shape {np.shape(arr)}, y has {y.shape}; every "
                "array must hold one value per pixel"
            )
    split = np.asarray(split)
    bad = np.setdiff1d(np.unique(split), list(SPLIT_NAMES))
    if len(bad):
        raise InputDataError(
            f"class_statistics: split values {bad.tolist()} are none of {SPLIT_NAMES}"
        )
    df = pd.DataFrame(
        {
            "class": y.astype(np.int64),
            "region": np.asarray(region).astype(np.int64),
            "split": split.astype(np.int64),
            "polygon_id": np.asarray(polygon_id),
            "selected": selected,
        }
    )
    stats = df.groupby(["split", "region", "class"]).agg(
        polygons=("polygon_id", "nunique"),
        available_pixels=("polygon_id", "size"),
        selected_pixels=("selected", "sum"),
    )
    parts = [LEARN, SELECTION, VAL] if (split == SELECTION).any() else [LEARN, VAL]
    full = pd.MultiIndex.from_product(
        [parts, np.unique(df["region"]), np.unique(df["class"])],
        names=["split", "region", "class"],
    )
    stats = stats.reindex(full, fill_value=0).astype(np.int64).reset_index()
    stats["split"] = stats["split"].map(SPLIT_NAMES)
    stats["run"] = np.int64(run)
    return stats[list(STAT_COLUMNS)].reset_index(drop=True)


def write_class_statistics(path: str | Path, df: pd.DataFrame) -> Path:
    """Write a :func:`class_statistics` table as CSV, atomically.

    The table goes to a temporary file in the same folder, then replaces ``path``
    (:func:`i2dl.io.files.write_text_atomic`), so a reader never sees a half-written file.

    Args:
        path: destination CSV; its folder is created if needed.
        df: the table (written without index).

    Returns:
        ``path``.

    Raises:
        OSError: the folder cannot be created or written.
    """
    return write_text_atomic(path, df.to_csv(index=False, lineterminator="\n"))


def _class_label(code: int, names: Mapping[int, str]) -> str:
    name = names.get(int(code))
    return f"{int(code)}" if name in (None, str(int(code))) else f"{int(code)} ({name!r})"


def _classes_have(codes: list[int], names: Mapping[int, str], where: str = "") -> str:
    """``class 3 ('water') <where> has`` or ``classes 3, 8 <where> have``."""
    labels = ", ".join(_class_label(c, names) for c in codes)
    where = f" {where}" if where else ""
    return f"class {labels}{where} has" if len(codes) == 1 else f"classes {labels}{where} have"


def _ids_text(ids: list[int], limit: int = 20) -> str:
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return f"{ids[:limit]}{more}"


def polygons_without_samples(
    polygon_ids: np.ndarray, codes: np.ndarray, sampled_ids: np.ndarray
) -> dict[int, list[int]]:
    """The reference polygons that gave no sample, by class.

    Args:
        polygon_ids: (P,) int, ids of the labelled reference polygons on the grid (the parts
            of an exploded MultiPolygon share their feature's id).
        codes: (P,) int, class code of each polygon.
        sampled_ids: (N,) int, polygon id of every extracted sample.

    Returns:
        class code -> sorted ids of its polygons with no sample (classes with none left out).
    """
    polygon_ids, codes = np.asarray(polygon_ids), np.asarray(codes)
    empty = ~np.isin(polygon_ids, np.unique(np.asarray(sampled_ids)))
    out: dict[int, list[int]] = {}
    for code in np.unique(codes[empty]):
        out[int(code)] = sorted({int(i) for i in polygon_ids[empty & (codes == code)]})
    return out


def warn_polygons_without_samples(
    polygon_ids: np.ndarray,
    codes: np.ndarray,
    sampled_ids: np.ndarray,
    names: Mapping[int, str],
    source: str,
) -> dict[int, list[int]]:
    """Warn of the reference polygons, and classes, that gave no sample.

    A polygon gives no sample when no pixel centre falls inside it (smaller or thinner
    than a pixel: OTB's pixel-centre rule, which i2dl follows), or when none of its pixels
    has a valid observation, or when it lies outside every eco-region. A class all of whose
    polygons are so is absent from the samples: :func:`check_split_classes` refuses that
    unless ``sampling.allow_missing_classes`` is true.

    Args:
        polygon_ids: (P,) int, ids of the labelled polygons on the grid.
        codes: (P,) int, their class codes.
        sampled_ids: (N,) int, polygon id of every sample.
        names: class code -> name, for messages.
        source: the reference file (and raster), for messages.

    Returns:
        class code -> ids of its polygons with no sample (empty when every polygon gave
        one).

    Warns:
        MissingSamplesWarning: one message naming, per class, the polygons without a
        sample (and the classes left with no sample at all); also logged.
    """
    empty = polygons_without_samples(polygon_ids, codes, sampled_ids)
    if not empty:
        return empty
    codes = np.asarray(codes)
    total = {int(c): int(len(np.unique(np.asarray(polygon_ids)[codes == c]))) for c in empty}
    gone = [c for c in empty if len(empty[c]) == total[c]]
    detail = "; ".join(
        f"class {_class_label(c, names)}: {len(ids)} of {total[c]} polygon(s), ids "
        f"{_ids_text(ids)}" for c, ids in empty.items()
    )
    n_empty = sum(len(v) for v in empty.values())
    head = f"{_classes_have(gone, names)} NO sample at all; " if gone else ""
    msg = (
        f"{source}: {head}{n_empty} polygon(s) gave no sample ({detail}). A polygon gives "
        "none when no pixel centre falls inside it (smaller or thinner than a pixel), when "
        "none of its pixels has a valid observation, or when it lies outside every region. "
        "Enlarge or merge such polygons, or check them against the raster grid"
    )
    log.warning("%s", msg)
    warnings.warn(msg, MissingSamplesWarning, stacklevel=2)
    return empty


def check_split_classes(
    codes: np.ndarray,
    split: np.ndarray,
    reference_codes: Collection[int],
    names: Mapping[int, str],
    source: str,
    allow_missing: bool = False,
    expect_val: bool = True,
) -> None:
    """Refuse a learn split with fewer than two classes, or without a class of the reference.

    Args:
        codes: (N,) int, class code of every kept sample (learn, selection, val).
        split: (N,) int, ``LEARN`` (0), ``VAL`` (1) or ``SELECTION`` (2).
        reference_codes: the classes of the reference (labelled polygons on the grid, or
            table rows), before any sample was dropped.
        names: class code -> name, for messages.
        source: the reference file or table, for messages.
        allow_missing: ``sampling.allow_missing_classes``: a class of the reference with
            no learn sample is warned of instead of refused (the model then never predicts
            it).
        expect_val: False with ``sampling.split_ground_truth=false`` (no val split by
            design: logged, not warned).

    Raises:
        InputDataError: the learn split holds fewer than two classes (a classifier needs
            two; the message lists the classes found and those missing), or a class of the
            reference has no learn sample and ``allow_missing`` is false.

    Warns:
        MissingSamplesWarning: a class missing from learn when ``allow_missing`` is true;
        a val split with fewer than two classes (kappa and the macro scores of the report
        are then undefined). Also logged.
    """
    codes, split = np.asarray(codes), np.asarray(split)
    learn = sorted(int(c) for c in np.unique(codes[split == LEARN]))
    missing = sorted(set(int(c) for c in reference_codes) - set(learn))
    found = ", ".join(_class_label(c, names) for c in learn) or "none"
    lost = ", ".join(_class_label(c, names) for c in missing)
    why = (
        f"; classes of the reference without a learn sample: {lost} (their polygons gave no "
        "sample, all went to val, or the selection strategy kept none of their pixels)"
        if missing else ""
    )
    if len(learn) < 2:
        raise InputDataError(
            f"{source}: the learn split holds {len(learn)} class(es) ({found}){why}; a "
            "classifier needs at least two. Give samples of at least two classes (check "
            "data.data_field, data.label_offset, and that the table or polygons hold every "
            "class)"
        )
    if missing:
        msg = (
            f"{source}: {_classes_have(missing, names, 'of the reference')} no learn sample, "
            f"so the model could never predict it (learn classes: {found}). Its polygons gave no "
            "sample (too small for a pixel centre, no valid observation, outside every "
            "region), all went to val (k-fold with a single polygon), or the selection "
            "strategy kept none of their pixels"
        )
        if not allow_missing:
            raise InputDataError(
                f"{msg}. Fix the polygons or the selection, remove the class from the "
                f"reference, or set ++{ALLOW_MISSING_KEY}=true to train without it"
            )
        log.warning("%s (%s=true: training without it)", msg, ALLOW_MISSING_KEY)
        warnings.warn(msg, MissingSamplesWarning, stacklevel=2)
    val = sorted(int(c) for c in np.unique(codes[split == VAL]))
    if not expect_val and not val:
        log.info("%s: sampling.split_ground_truth=false: every polygon is in learn, no val "
                 "polygon, no accuracy report", source)
    elif len(val) < 2:
        msg = (
            f"{source}: the val split holds {len(val)} class(es) "
            f"({', '.join(_class_label(c, names) for c in val) or 'none'}): the accuracy "
            "report's kappa and macro scores are undefined for it, and its OA is only that "
            "class's recall. Add polygons so that every class has at least two"
        )
        log.warning("%s", msg)
        warnings.warn(msg, MissingSamplesWarning, stacklevel=2)
