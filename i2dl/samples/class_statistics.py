"""iota2's ``class_statistics.csv``: pixels and polygons per class, region, run and split.

The report of a sample selection (:mod:`i2dl.samples.selection`), with the selected
pixels of each class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from i2dl.errors import InputDataError
from i2dl.io.files import write_text_atomic
from i2dl.samples.store import LEARN, SELECTION, SPLIT_NAMES, VAL

log = logging.getLogger(__name__)

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
