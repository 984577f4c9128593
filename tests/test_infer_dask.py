"""Map inference on Dask as the other per-tile stages (issue 23): the run's ``dask`` group.

``dask.engine=dask`` makes every window of a tile a named task of a 2-worker LocalCluster
(threads of the test process, ``dask.processes=false``: starts in about a second and lets
a test break a task; ``tests/test_inference_engines.py`` runs worker processes). The maps
must be those of the serial run; a window that fails once is retried (``dask.retries``),
one that always fails stops infer with an error naming the tile, the window and its log,
and leaves no map.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import i2dl.maps.cluster as cluster
from i2dl.errors import ConfigError, InputDataError
from i2dl.maps.cluster import DaskSettings, infer_settings
from i2dl.stages import fit, infer, prepare
from tests.conftest import FAST
from tests.test_inference import _read

#: a 2-worker local cluster of threads
DASK = ["dask.engine=dask", "dask.n_workers=2", "dask.processes=false"]
MAPS = ("classif", "confidence", "proba")
#: 3 x 3 windows of 8 px on the 24 x 20 tiny stack
N_WINDOWS = 9


@pytest.fixture
def trained(make_cfg, tiny_dataset, tmp_path) -> tuple[list[str], dict[str, np.ndarray]]:
    """A run with a fitted random forest and its serial maps: (overrides, maps by name)."""
    base = [*tiny_dataset["overrides"], *FAST, "+experiment=rf", "infer.chunk_size=8",
            "infer.write_proba=true", "infer.resume=false", "infer.cog=false"]
    cfg = make_cfg(*base)
    prepare.run(cfg)
    fit.run(cfg)
    assert infer.run(cfg) is not None
    maps = tmp_path / "run" / "maps"
    return base, {name: _read(maps / f"{name}.tif")[0] for name in MAPS}


def _assert_serial_maps(run: Path, serial: dict[str, np.ndarray]) -> None:
    for name in MAPS:
        np.testing.assert_array_equal(serial[name], _read(run / "maps" / f"{name}.tif")[0])


def _break_window(monkeypatch, window: int, times: int) -> list[int]:
    """Make the read of ``window`` fail its first ``times`` attempts (workers are threads)."""
    tries = [0]
    real = cluster.read_series_window

    def flaky(series, win):
        if (int(win.row_off) // 8) * 3 + int(win.col_off) // 8 == window:
            tries[0] += 1
            if tries[0] <= times:
                raise InputDataError(f"simulated read error in window {window}")
        return real(series, win)

    monkeypatch.setattr(cluster, "read_series_window", flaky)
    return tries


def test_infer_on_the_run_dask_group_writes_the_serial_maps(make_cfg, trained,
                                                           tmp_path) -> None:
    base, serial = trained
    result = infer.run(make_cfg(*base, *DASK))
    run = tmp_path / "run"
    _assert_serial_maps(run, serial)
    assert result is not None and result.n_pixels > 0
    logs = run / "logs" / "infer"
    assert sorted(p.name for p in logs.glob("*.log")) == sorted(
        f"classify_tiny_window_{i}.log" for i in range(N_WINDOWS))
    text = (logs / "classify_tiny_window_4.log").read_text()
    assert "tile tiny, window 4 (rows 8-16, cols 8-16): started" in text
    assert text.endswith("done\n")
    assert "local Dask cluster: 2 workers" in (run / "logs" / "infer.log").read_text()


def test_a_window_that_fails_once_is_retried(make_cfg, trained, tmp_path,
                                             monkeypatch) -> None:
    base, serial = trained
    tries = _break_window(monkeypatch, window=4, times=1)
    infer.run(make_cfg(*base, *DASK, "dask.retries=1"))
    assert tries[0] == 2
    _assert_serial_maps(tmp_path / "run", serial)
    text = (tmp_path / "run" / "logs" / "infer" / "classify_tiny_window_4.log").read_text()
    assert text.count("tile tiny, window 4 (rows 8-16, cols 8-16): started") == 2
    assert "simulated read error in window 4" in text and text.endswith("done\n")


def test_a_window_that_always_fails_is_reported_by_name(make_cfg, trained, tmp_path,
                                                        monkeypatch) -> None:
    base, _ = trained
    maps = tmp_path / "run" / "maps"
    shutil.rmtree(maps)  # the serial run's
    tries = _break_window(monkeypatch, window=4, times=99)
    log = tmp_path / "run" / "logs" / "infer" / "classify_tiny_window_4.log"
    reported = (r"tile tiny, window 4 \(rows 8-16, cols 8-16\) failed 2 time\(s\) on the Dask "
                r"cluster \(dask.retries=1.*simulated read error in window 4\. Its log: ")
    with pytest.raises(InputDataError, match=reported + re.escape(str(log))):
        infer.run(make_cfg(*base, *DASK, "dask.retries=1"))  # the window's own error class
    assert tries[0] == 2 and "Traceback" in log.read_text()
    # no map, not even a half-written one (the lock of target_lock stays)
    assert [p.name for p in maps.iterdir() if not p.name.endswith(".lock")] == []


def test_infer_follows_the_dask_group_and_keeps_its_own_keys(make_cfg, caplog) -> None:
    assert infer_settings(make_cfg()) is None
    run = infer_settings(make_cfg("dask.engine=dask", "dask.n_workers=3", "dask.retries=2"))
    assert run == DaskSettings(None, 3, 1, True, 2)
    # the former infer-only keys still work, on the run's other keys, and are logged
    with caplog.at_level("INFO", logger="i2dl.maps.cluster"):
        own = infer_settings(make_cfg("infer.engine=dask", "infer.dask.n_workers=4",
                                      "dask.retries=1",
                                      "infer.dask.address=tcp://10.0.0.1:8786"))
    assert own == DaskSettings("tcp://10.0.0.1:8786", 4, 1, True, 1)
    assert "infer.engine='dask'" in caplog.text and "infer.dask.n_workers=4" in caplog.text
    assert infer_settings(make_cfg("dask.engine=dask", "infer.engine=local")) is None
    for bad, key in (("infer.dask.n_workers=0", "infer.dask.n_workers"),
                     ("dask.threads_per_worker=0", "dask.threads_per_worker"),
                     ("dask.retries=-1", "dask.retries"),
                     ("+infer.dask.retries=-2", "infer.dask.retries")):
        with pytest.raises(ConfigError, match=key):
            infer_settings(make_cfg("dask.engine=dask", bad))
    with pytest.raises(ConfigError, match="infer.engine='spark'"):
        infer_settings(make_cfg("infer.engine=spark"))
