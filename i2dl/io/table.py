"""Pixel-sample tables: CSV rows ``class, polygon_id, d1.b1, d1.b2, ..., dT.bC``.

The format of the TempCNN example data (Pelletier et al. 2019) and of iota2's learning
samples exported to text: no header, one pixel a row, the class label, the id of the
polygon the pixel comes from, then the series date-major (all channels of date 1, then of
date 2, ...).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from i2dl.errors import InputDataError, InputFileNotFoundError

log = logging.getLogger(__name__)


@dataclass
class PixelTable:
    """Samples read from a pixel table.

    Attributes:
        x: (N, T, C) float32 series.
        valid: (N, T) bool, False where any channel of the date is NaN (empty cell).
        codes: (N,) int64 class codes (label + ``label_offset``).
        polygon_id: (N,) int64.
    """

    x: np.ndarray
    valid: np.ndarray
    codes: np.ndarray
    polygon_id: np.ndarray


def read_pixel_table(
    path: str | Path, n_dates: int, n_channels: int, label_offset: int = 0
) -> PixelTable:
    """Read a headerless pixel table.

    Args:
        path: CSV file, comma-separated, no header.
        n_dates: T, acquisition dates per row.
        n_channels: C, channels per date.
        label_offset: added to the label to make the class code (e.g. 1 when labels
            start at 0, so that code 0 stays "no data" as in iota2).

    Returns:
        The samples; rows whose code is 0 (no data) are dropped (logged).

    Raises:
        InputFileNotFoundError: the file does not exist.
        InputDataError: a row does not have ``2 + T*C`` columns, or a label / polygon id is
            not an integer (row numbers given).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"pixel table {path} does not exist (data.table)")
    try:
        df = pd.read_csv(path, header=None, skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputDataError(
            f"{path}: cannot parse as a headerless CSV pixel table ({exc}); each row must be "
            f"class, polygon_id, then {n_dates} x {n_channels} values"
        ) from None
    expected = 2 + n_dates * n_channels
    if df.shape[1] != expected:
        raise InputDataError(
            f"{path} has {df.shape[1]} columns but data.n_dates={n_dates} x "
            f"{n_channels} channel(s) needs 2 + {n_dates * n_channels} = {expected} "
            "(class, polygon_id, then the series date-major). Fix data.n_dates / "
            "data.band_names or the table"
        )
    labels = pd.to_numeric(df[0], errors="coerce")
    pids = pd.to_numeric(df[1], errors="coerce")
    bad = labels.isna() | pids.isna() | (labels % 1 != 0) | (pids % 1 != 0)
    if bad.any():
        rows = (np.flatnonzero(bad.to_numpy()) + 1).tolist()[:20]
        raise InputDataError(
            f"{path}: rows {rows} have a class or polygon id that is not an integer "
            "(columns 1 and 2)"
        )
    values = df.iloc[:, 2:].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    x = values.reshape(len(df), n_dates, n_channels)
    valid = ~np.isnan(x).any(axis=2)
    codes = labels.to_numpy(np.int64) + int(label_offset)
    keep = codes != 0
    if (~keep).any():
        log.info("%s: %d row(s) with class code 0 (no data) ignored", path, int((~keep).sum()))
    if (codes < 0).any():
        raise InputDataError(
            f"{path}: negative class codes after data.label_offset={label_offset}"
        )
    return PixelTable(
        x=x[keep],
        valid=valid[keep],
        codes=codes[keep],
        polygon_id=pids.to_numpy(np.int64)[keep],
    )
