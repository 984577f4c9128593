"""The spool's selected rows are read from its file, not through the memory map (issue 23).

Pages read through a memory map stay in the process's resident set: ``prepare`` of 10^6
samples at 70 dates x 10 bands (a 2.8 GB spool) peaked at 4.9 GB RSS because the whole
spool was read once through the map (scripts/bench/bench_tile.py). :class:`RowsView`
now reads runs of consecutive rows with ``readinto``; the rows must be the same.
"""

from __future__ import annotations

import numpy as np
import pytest

from i2dl.errors import StoreError
from i2dl.samples.reading import SampleSpool
from i2dl.samples.store import RowsView


@pytest.fixture
def spool(tmp_path):
    """A spool of 3 appended parts, 5000 samples of 7 dates x 3 channels, and its values."""
    rng = np.random.default_rng(0)
    parts = [rng.random((n, 7, 3), dtype=np.float32) for n in (1200, 2800, 1000)]
    sp = SampleSpool(tmp_path / "x.spool")
    for p in parts:
        sp.append(p)
    yield sp.array(7, 3), np.concatenate(parts)
    sp.remove()


@pytest.mark.parametrize("rows", [
    np.arange(5000),
    np.sort(np.random.default_rng(1).choice(5000, 1234, replace=False)),
    np.r_[0:10, 20:30, 4990:5000],
    np.array([4999]),
    np.array([], dtype=np.int64),
])
def test_rows_of_a_spool_equal_fancy_indexing(spool, rows) -> None:
    x, values = spool
    view = RowsView(x, rows)
    for key in (slice(None), slice(3, 700), slice(0, 0), slice(len(rows) - 1, None)):
        got = view[key]
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, values[rows[key]])


def test_a_view_of_a_map_and_an_array_are_indexed(spool) -> None:
    x, values = spool
    np.testing.assert_array_equal(RowsView(x[10:], np.arange(5, 50))[:], values[15:60])
    np.testing.assert_array_equal(RowsView(values, np.arange(7))[2:4], values[2:4])


def test_a_truncated_spool_is_an_error(spool) -> None:
    x, _ = spool
    with open(x.filename, "r+b") as fh:
        fh.truncate(100 * 7 * 3 * 4)
    with pytest.raises(StoreError, match="ended before row"):
        RowsView(x, np.arange(200, 300))[:]
