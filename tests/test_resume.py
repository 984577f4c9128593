"""Re-running and resuming in a run folder: nothing of an old model mixed with a new one.

Issue 10: a re-run into an existing run folder wrote ``best-v1.ckpt`` while evaluate and
infer read ``best.ckpt`` (the old model); a killed run must resume and end with the
outputs an uninterrupted run writes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from i2dl.errors import StoreError
from i2dl.io.layout import checkpoint_path, read_fit_state
from i2dl.io.raster import open_time_series
from i2dl.maps.engine import PARTIAL_DIR, classify_raster
from i2dl.samples.extract import prepare
from i2dl.samples.store import read_info
from i2dl.stages import evaluate, fit, train
from tests.conftest import FAST, SMALL_LTAE
from tests.pause_run import pause_at

REPO = Path(__file__).resolve().parents[1]
#: Short, single-threaded (bit-reproducible) CPU runs.
QUICK = [*FAST, *SMALL_LTAE, "trainer.max_epochs=4", "cpu_threads=1", "datamodule.batch_size=32",
         "infer.chunk_size=8"]


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _metrics(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    return {k: summary[k] for k in ("oa", "kappa", "f1_macro", "n_learn", "n_val")}


def test_rerun_with_another_config_replaces_the_old_model(make_cfg, tiny_dataset, tmp_path):
    """The issue's case 1: no best-v1.ckpt; evaluate and infer use the new model; clean tb/."""
    first = train.run(make_cfg(*tiny_dataset["overrides"], *QUICK, "trainer.max_epochs=1"))
    run = Path(first["report"]).parents[1]
    started = time.time()
    # same run folder, another config (as after a kill -9 and a changed command)
    second = train.run(make_cfg(*tiny_dataset["overrides"], *QUICK, "seed=5"))
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["best.ckpt", "last.ckpt", "selection_curve.json"]
    assert second["best_checkpoint"] == str(run / "checkpoints" / "best.ckpt")
    # TensorBoard holds the second fit's events only
    events = list((run / "tb").rglob("events.out.tfevents.*"))
    assert events and all(p.stat().st_mtime >= started for p in events)
    # a fresh run folder with the second config gives the same report and map
    ref = tmp_path / "ref"
    cfg_ref = make_cfg(*tiny_dataset["overrides"], *QUICK, "seed=5", f"paths.output_dir={ref}")
    expected = train.run(cfg_ref)
    for key in ("oa", "kappa", "f1_macro"):
        assert second[key] == expected[key]
    np.testing.assert_array_equal(_read(run / "maps" / "classif.tif"),
                                  _read(ref / "maps" / "classif.tif"))
    for name, tensor in _weights(ref / "checkpoints" / "best.ckpt").items():
        torch.testing.assert_close(_weights(run / "checkpoints" / "best.ckpt")[name], tensor,
                                   rtol=0, atol=0)


def test_finished_fit_is_reused_and_resume_never_refits(make_cfg, tiny_dataset, caplog):
    cfg = make_cfg(*tiny_dataset["overrides"], *QUICK, "trainer.max_epochs=1")
    train.run(cfg)
    run = Path(cfg.paths.output_dir)
    best = run / "checkpoints" / "best.ckpt"
    before = best.stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert fit.run(cfg) == best
    assert best.stat().st_mtime_ns == before
    assert "reuse (finished with the same config)" in caplog.text
    assert (run / "summary.json").is_file()  # reused: the run's outputs are kept
    cfg_never = make_cfg(*tiny_dataset["overrides"], *QUICK, "trainer.max_epochs=1",
                         "resume=never")
    fit.run(cfg_never)
    assert best.stat().st_mtime_ns != before
    assert not (run / "summary.json").exists() and not (run / "maps").exists()
    assert read_fit_state(run)["status"] == "done"


def test_unfinished_fit_is_not_evaluated(make_cfg, tiny_dataset):
    cfg = make_cfg(*tiny_dataset["overrides"], *QUICK, "trainer.max_epochs=1")
    train.run(cfg)
    run = Path(cfg.paths.output_dir)
    state = json.loads((run / "fit_state.json").read_text())
    state["status"] = "running"  # as a fit killed after its first checkpoint leaves it
    (run / "fit_state.json").write_text(json.dumps(state))
    with pytest.raises(StoreError, match="did not finish"):
        checkpoint_path(run, "best")
    with pytest.raises(StoreError, match="resume"):
        evaluate.run(cfg)


def _kill_9_at(fn: object, target: str, n: int, flag: Path, timeout: float = 120) -> None:
    """Run ``fn()`` in a forked process paused at the n-th call of ``target``; SIGKILL it there.

    A fork starts in no time (the parent's imports are there), so kill tests stay short;
    the child is a real process killed with ``kill -9`` mid-stage.
    """
    def child() -> None:
        pause_at(target, n, flag)
        fn()  # type: ignore[operator]

    proc = multiprocessing.get_context("fork").Process(target=child, daemon=True)
    proc.start()
    deadline = time.monotonic() + timeout
    while not flag.exists() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    paused = flag.exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert paused, f"never reached the pause (exit code {proc.exitcode})"
    assert proc.exitcode == -signal.SIGKILL


def test_kill_9_in_each_stage_then_rerun_equals_uninterrupted(make_cfg, tiny_dataset, tmp_path,
                                                              fork_safe_reads):
    """kill -9 mid-prepare, mid-fit, mid-infer; the next run ends as an uninterrupted one."""
    # one thread: a forked child must not enter the parent's OpenMP pool (it can hang),
    # and the reference and the resumed fit then compute alike (bit-exact)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _kill_in_each_stage(make_cfg, tiny_dataset, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _kill_in_each_stage(make_cfg, tiny_dataset, tmp_path) -> None:
    ref, run = tmp_path / "ref", tmp_path / "run"

    def cfg(out: Path):  # noqa: ANN202
        return make_cfg(*tiny_dataset["overrides"], *QUICK, f"paths.output_dir={out}",
                        f"paths.store_dir={out / 'stores'}")

    expected = train.run(cfg(ref))
    stores = run / "stores"
    # killed while the store is written (3 of its 10 arrays in the temporary store)
    _kill_9_at(lambda: train.run(cfg(run)), "zarr:Group.create_array", 3, tmp_path / "f1")
    assert [p.name for p in stores.iterdir() if ".zarr.tmp-" in p.name]  # its orphan
    assert not list(stores.glob("*.zarr"))
    # killed at the start of the 3rd epoch (epochs 1-2 are in last.ckpt)
    _kill_9_at(lambda: train.run(cfg(run)), "models.base:SITSClassifier.on_train_epoch_start",
               3, tmp_path / "f2")
    assert not [p.name for p in stores.iterdir() if ".tmp-" in p.name]  # cleaned up
    assert read_fit_state(run)["status"] == "running"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    with pytest.raises(StoreError, match="did not finish"):
        evaluate.run(cfg(run))  # never the half-trained model
    # the fit resumes and finishes; killed after 4 of the 9 map windows
    _kill_9_at(lambda: train.run(cfg(run)), "i2dl.maps.engine:_predict_batch", 5, tmp_path / "f3")
    state = read_fit_state(run)
    assert state["status"] == "done" and state["resumed"] == 1
    assert len(list((run / "maps" / PARTIAL_DIR).glob("w*.npz"))) == 4
    assert not (run / "maps" / "classif.tif").exists()
    got = train.run(cfg(run))
    assert "4 of 9 windows already done" in (run / "logs" / "infer.log").read_text()
    for key in ("oa", "kappa", "f1_macro", "n_learn", "n_val"):
        assert got[key] == expected[key]
    _same_outputs(run, ref)
    # TensorBoard: one curve per metric, the events the killed fit logged after its
    # checkpoint purged (evaluate's hparam/* are written by each evaluate run)
    curves, ref_curves = _scalars(run / "tb"), _scalars(ref / "tb")
    assert curves.keys() == ref_curves.keys() and "selection/loss" in curves
    for tag, points in ref_curves.items():
        # steps exactly, values to float tolerance (pytest.approx takes no nested tuples)
        assert [s for s, _ in curves[tag]] == [s for s, _ in points], tag
        assert [v for _, v in curves[tag]] == pytest.approx([v for _, v in points]), tag


def _scalars(tb: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve of a TensorBoard folder as (step, value) lists (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        t: [(e.step, e.value) for e in acc.Scalars(t)]
        for t in acc.Tags()["scalars"] if not t.startswith("hparam/")
    }


def _same_outputs(run: Path, ref: Path) -> None:
    """The report, maps and best weights of two runs are identical; no temporary left."""
    for name in ("metrics.json", "confusion_matrix.csv"):
        assert (run / "report" / name).read_text() == (ref / "report" / name).read_text()
    for name in ("classif.tif", "confidence.tif"):
        np.testing.assert_array_equal(_read(run / "maps" / name), _read(ref / "maps" / name))
    for name, tensor in _weights(ref / "checkpoints" / "best.ckpt").items():
        torch.testing.assert_close(_weights(run / "checkpoints" / "best.ckpt")[name], tensor,
                                   rtol=0, atol=0)
    assert not list(run.rglob("*.tmp-*")) and not (run / "maps" / PARTIAL_DIR).exists()


def _run(args: list[str], flag: Path | None = None, target: str = "", n: int = 0,
         timeout: float = 240) -> subprocess.CompletedProcess | None:
    """``python -m i2dl ARGS``; with ``flag``, paused at the n-th call of ``target`` and killed.

    Returns:
        The finished process, or None when it was killed with SIGKILL at the pause.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if flag is None:
        proc = subprocess.run([sys.executable, "-m", "i2dl", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc
    cmd = [sys.executable, str(REPO / "tests" / "pause_run.py"), target, str(n), str(flag),
           "--", *args]
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + timeout
        while not flag.exists():
            assert proc.poll() is None, f"finished before the pause: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "never reached the pause"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return None


@pytest.mark.slow
def test_cli_kill_9_in_prepare_fit_and_infer_then_same_command(tiny_dataset, tmp_path):
    """The CLI: kill -9 mid-prepare, mid-fit, mid-infer; the same command ends as a clean run.

    Five ``python -m i2dl train`` processes (about 2 min on 2 busy cores, mostly imports),
    hence slow; the forked variant above runs by default.
    """
    def args(name: str) -> list[str]:
        return ["train", f"hydra.run.dir={tmp_path / name}",
                f"paths.store_dir={tmp_path / name / 'stores'}", *tiny_dataset["overrides"],
                *QUICK]

    _run(args("ref"))
    run = tmp_path / "killed"
    # 1. killed while the store is written (3 arrays of 10 in the temporary store)
    _run(args("killed"), tmp_path / "in_prepare", "zarr:Group.create_array", 3)
    stores = run / "stores"
    assert [p.name for p in stores.iterdir() if ".zarr.tmp-" in p.name]  # its orphan
    assert not list(stores.glob("*.zarr"))
    # 2. killed at the start of the third epoch (epochs 1-2 checkpointed in last.ckpt)
    _run(args("killed"), tmp_path / "in_fit", "models.base:SITSClassifier.on_train_epoch_start", 3)
    assert not [p.name for p in stores.iterdir() if ".tmp-" in p.name]  # cleaned up
    assert read_fit_state(run)["status"] == "running"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    # 3. the fit resumes and finishes; killed after 4 of the 9 map windows
    _run(args("killed"), tmp_path / "in_infer", "i2dl.maps.engine:_predict_batch", 5)
    state = read_fit_state(run)
    assert state["status"] == "done" and state["resumed"] == 1
    assert len(list((run / "maps" / PARTIAL_DIR).glob("w*.npz"))) == 4
    assert not (run / "maps" / "classif.tif").exists()
    # 4. the same command again: finishes the map from window 5
    _run(args("killed"))
    assert "4 of 9 windows already done" in (run / "logs" / "infer.log").read_text()
    assert _metrics(run) == _metrics(tmp_path / "ref")
    _same_outputs(run, tmp_path / "ref")


def test_infer_resumes_window_by_window(make_cfg, tiny_dataset, tmp_path):
    """An interrupted map: only the windows not done are computed again; same map."""
    info = read_info(prepare(make_cfg(*tiny_dataset["overrides"])))
    weights = torch.tensor([[1.0, -1.0], [0.0, 0.0], [-1.0, 1.0]])
    calls = {"n": 0, "fail_at": 0}

    def predict(x: torch.Tensor, days: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt  # as a Ctrl-C, or any crash, mid-map
        m = mask.unsqueeze(-1).float()
        return torch.softmax(((x * m).sum(1) / m.sum(1).clamp(min=1)) @ weights.T, dim=1)

    def classify(out: Path, key: str | None) -> object:
        series = open_time_series(tiny_dataset["raster"], tiny_dataset["dates_file"],
                                  ["b1", "b2"])
        with series:
            return classify_raster(series, info, predict, out, torch.device("cpu"),
                                   chunk_size=5, batch_size=10_000, write_proba=True,
                                   progress=False, resume_key=key)

    classify(tmp_path / "ref", None)
    n_windows = calls["n"]
    assert n_windows == 4 * 5  # 20 x 24 px in 5 px windows
    calls.update(n=0, fail_at=8)
    with pytest.raises(KeyboardInterrupt):
        classify(tmp_path / "maps", "model-A")
    assert not (tmp_path / "maps" / "classif.tif").exists()
    assert len(list((tmp_path / "maps" / PARTIAL_DIR).glob("w*.npz"))) == 7
    calls.update(n=0, fail_at=0)
    result = classify(tmp_path / "maps", "model-A")
    assert calls["n"] == n_windows - 7  # the 7 finished windows are not recomputed
    for name in ("classif", "confidence", "proba"):
        np.testing.assert_array_equal(_read(tmp_path / "maps" / f"{name}.tif"),
                                      _read(tmp_path / "ref" / f"{name}.tif"))
    assert result.n_pixels + result.n_nodata == 20 * 24
    assert not (tmp_path / "maps" / PARTIAL_DIR).exists()
    # another model's key never reuses finished windows
    calls.update(n=0, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        classify(tmp_path / "maps2", "model-A")
    calls.update(n=0, fail_at=0)
    classify(tmp_path / "maps2", "model-B")
    assert calls["n"] == n_windows
