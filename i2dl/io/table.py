"""Pixel-sample tables: CSV rows ``class, polygon_id, d1.b1, d1.b2, ..., dT.bC``.

The format of the TempCNN example data (Pelletier et al. 2019) and of iota2's learning
samples exported to text: no header, one pixel a row, the class label, the id of the
polygon the pixel comes from, then the series date-major (all channels of date 1, then of
date 2, ...).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from i2dl.errors import InputDataError, InputFileNotFoundError

log = logging.getLogger(__name__)

#: Cells that mean "missing observation"; any other text (``null``, ``N/A``, ``-``...) is
#: refused as not a number rather than silently taken as missing.
MISSING_CELLS = ["", "nan", "NaN", "NAN", "NA"]


@dataclass
class PixelTable:
    """Samples read from a pixel table.

    Attributes:
        x: (N, T, C) float32 series.
        valid: (N, T) bool, False where any channel of the date is NaN (empty cell) or
            +-inf; such values are NaN in ``x``.
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

    Blank lines are skipped; an empty cell, ``nan``, ``NA`` (:data:`MISSING_CELLS`),
    ``inf`` or ``-inf`` is a missing observation (its date is invalid); any other text is
    an error, and so is a row with fewer or more cells than ``2 + T*C`` (never padded).
    Used for the Formosat-2 TempCNN table and for the UCR Crop and sits MOD13Q1 tables of
    ``../shared/data`` (same layout, codes from 1).

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
        InputDataError: the file is not UTF-8 text or holds no row; a row does not have
            ``2 + T*C`` columns; a label / polygon id is not an integer; a value is not a
            number; a class code is negative. Messages give the file, the line numbers
            (1-based, as in an editor) and the column (1-based).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"pixel table {path} does not exist (data.table)")
    expected = 2 + n_dates * n_channels
    layout = f"class, polygon_id, then {n_dates} dates x {n_channels} channel(s) date-major"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputDataError(f"{path} is not UTF-8 text ({exc}); save it as a plain CSV") from None
    rows_text = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not rows_text:
        raise InputDataError(f"{path} holds no row; each row must be {layout}")
    # file line number (1-based) of each non-blank row, and its number of cells
    lines = np.array([i for i, _ in rows_text], np.int64)
    counts = np.array([ln.count(",") + 1 for _, ln in rows_text], np.int64)
    if (counts != expected).any():
        if (counts == counts[0]).all():
            raise InputDataError(
                f"{path} has {counts[0]} columns but data.n_dates={n_dates} x "
                f"{n_channels} channel(s) needs 2 + {n_dates * n_channels} = {expected} "
                "(class, polygon_id, then the series date-major). Fix data.n_dates / "
                "data.band_names or the table"
            )
        bad = np.flatnonzero(counts != expected)[:10]
        where = ", ".join(f"line {lines[i]}: {counts[i]} cells" for i in bad)
        raise InputDataError(
            f"{path}: rows with a wrong number of columns ({where}; "
            f"{int((counts != expected).sum())} row(s) in all); every row needs {expected} "
            f"({layout}). Fix or remove these rows"
        )
    df = pd.read_csv(
        io.StringIO("\n".join(ln for _, ln in rows_text)), header=None, names=range(expected),
        keep_default_na=False, na_values=MISSING_CELLS,
    )
    labels = _integer_column(df[0], path, lines, 1, "class")
    pids = _integer_column(df[1], path, lines, 2, "polygon id")
    values = df.iloc[:, 2:]
    if not all(pd.api.types.is_numeric_dtype(t) for t in values.dtypes):  # find the text
        numeric = values.apply(pd.to_numeric, errors="coerce")
        bad_cells = numeric.isna().to_numpy() & values.notna().to_numpy()
        if bad_cells.any():
            rows, cols = np.nonzero(bad_cells)
            where = "; ".join(
                f"line {lines[r]}, column {c + 3}: {str(values.iat[r, c])!r}"
                for r, c in zip(rows[:10], cols[:10], strict=True)
            )
            raise InputDataError(
                f"{path}: values that are not numbers ({where}; {len(rows)} cell(s) in "
                "all). Leave a cell empty for a missing observation"
            )
        values = numeric
    x = values.to_numpy(np.float32).reshape(len(df), n_dates, n_channels)
    finite = np.isfinite(x)
    if not finite.all():  # +-inf is a missing observation exactly like NaN
        x[~finite] = np.nan
    valid = finite.all(axis=2)
    codes = labels + int(label_offset)
    if (codes < 0).any():
        rows = lines[codes < 0][:20].tolist()
        raise InputDataError(
            f"{path}: negative class codes after data.label_offset={label_offset} "
            f"(lines {rows}, column 1); codes must be >= 0 (0 = no data)"
        )
    keep = codes != 0
    if (~keep).any():
        log.info("%s: %d row(s) with class code 0 (no data) ignored", path, int((~keep).sum()))
    return PixelTable(x=x[keep], valid=valid[keep], codes=codes[keep], polygon_id=pids[keep])


def _integer_column(
    col: pd.Series, path: Path, lines: np.ndarray, number: int, what: str
) -> np.ndarray:
    """A column of integers as (N,) int64.

    Raises:
        InputDataError: a cell is empty or not an integer (file lines and column given).
    """
    num = pd.to_numeric(col, errors="coerce")
    bad = (num.isna() | (num % 1 != 0)).to_numpy()
    if bad.any():
        idx = np.flatnonzero(bad)
        rows = lines[idx][:20].tolist()
        first = str(col.iat[int(idx[0])])
        header = lines[idx[0]] == 1 and np.isnan(num.iat[int(idx[0])])
        hint = " (a header line? the table must have none)" if header else ""
        raise InputDataError(
            f"{path}: rows {rows} have a {what} that is not an integer in column {number} "
            f"(line {rows[0]}: {first!r}){hint}; column 1 is the class, column 2 the "
            "polygon id"
        )
    return num.to_numpy(np.int64)
