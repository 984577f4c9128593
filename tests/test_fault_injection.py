"""Fault injection (issue 21): kill -9 at random points of every stage, and a full disk.

Each case interrupts the main job in a forked process, then reruns it to the end and
checks that the result equals an uninterrupted run (report, maps, best weights, no
temporary left): :func:`tests.test_resume._same_outputs`. The kill points are drawn from a
seeded generator over the stage functions that run many times (store arrays, epochs,
batches, map windows), so every run of this module tries the same points and a failure is
reproducible. The disk-full cases run the command line under a file size limit
(``ulimit -f``, as the issue did): the job must stop with the clear message (the file,
the free space), no traceback, and the same command must then finish as a clean run.
Long: marked ``slow`` (``python -m pytest -m slow tests/test_fault_injection.py``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from i2dl.stages import train
from tests.test_resume import QUICK, REPO, _kill_9_at, _same_outputs

pytestmark = pytest.mark.slow

#: functions called many times by one stage each, and how many calls each stage makes
#: at least on the tiny dataset with QUICK settings (prepare, fit, infer)
KILL_POINTS = [
    ("zarr:Group.create_array", 9),
    ("models.base:SITSClassifier.on_train_epoch_start", 4),
    ("models.base:SITSClassifier.training_step", 20),
    ("i2dl.maps.engine:_predict_batch", 9),
]
#: the draw: (target, n-th call), 4 cases from a fixed seed
DRAWS = [(t, int(n)) for (t, top), n in zip(
    KILL_POINTS, np.random.default_rng(2107).integers(1, [top for _, top in KILL_POINTS]),
    strict=True)]


def _cfg(make_cfg, tiny_dataset, out: Path):  # noqa: ANN202
    return make_cfg(*tiny_dataset["overrides"], *QUICK, f"paths.output_dir={out}",
                    f"paths.store_dir={out / 'stores'}")


@pytest.fixture
def one_thread():  # noqa: ANN201
    """Forked children must not enter the parent's OpenMP pool; bit-exact reruns."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("target", "n"), DRAWS, ids=[f"{t.split(':')[1]}#{n}" for t, n in DRAWS])
def test_kill_at_a_random_point_then_rerun_equals_uninterrupted(
        make_cfg, tiny_dataset, tmp_path, fork_safe_reads, one_thread, target, n) -> None:
    ref, run = tmp_path / "ref", tmp_path / "run"
    expected = train.run(_cfg(make_cfg, tiny_dataset, ref))
    _kill_9_at(lambda: train.run(_cfg(make_cfg, tiny_dataset, run)), target, n,
               tmp_path / "flag")
    got = train.run(_cfg(make_cfg, tiny_dataset, run))
    for key in ("oa", "kappa", "f1_macro", "n_learn", "n_val"):
        assert got[key] == expected[key]
    _same_outputs(run, ref)


def _cli(args: list[str], limit_kib: int | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m i2dl ARGS`` in a shell, under ``ulimit -f LIMIT`` (1 KiB blocks) if given."""
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "i2dl", *args])
    if limit_kib is not None:
        command = f"ulimit -f {int(limit_kib)}; exec {command}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("limit_kib", [64, 200])
def test_full_disk_stops_clearly_and_the_rerun_recovers(tiny_dataset, tmp_path,
                                                        limit_kib) -> None:
    # the case: `ulimit -f` in prepare (64 KiB: a store chunk of the tiny data is
    # ~9 KB, its temporary spool larger) and in fit (200 KiB: a checkpoint is ~350 KB)
    def args(name: str) -> list[str]:
        return ["train", f"hydra.run.dir={tmp_path / name}",
                f"paths.store_dir={tmp_path / name / 'stores'}", *tiny_dataset["overrides"],
                *QUICK]

    assert _cli(args("ref")).returncode == 0
    failed = _cli(args("run"), limit_kib)
    text = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "Traceback" not in text, text[-3000:]
    assert "free" in text and str(tmp_path / "run") in text, text[-3000:]
    done = _cli(args("run"))  # the space is back: the same command finishes
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    got = json.loads((tmp_path / "run" / "summary.json").read_text())
    expected = json.loads((tmp_path / "ref" / "summary.json").read_text())
    for key in ("oa", "kappa", "f1_macro"):
        assert got[key] == expected[key]
    _same_outputs(tmp_path / "run", tmp_path / "ref")
