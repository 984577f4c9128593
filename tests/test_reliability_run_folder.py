"""Run folders and outputs (issue 21): resume keys that see the rasters, a locked run folder,
writable output folders checked before work, a full disk explained, a quiet Dask cluster.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import filelock
import numpy as np
import pytest
import rasterio
import torch
from filelock import FileLock

from i2dl.cli import guarded_run, output_folders, run_stage
from i2dl.errors import ConfigError
from i2dl.io.files import (
    RUN_LOCK,
    DiskFullError,
    explain_disk_full,
    input_stamps,
    lock_path,
    run_folder_lock,
)
from i2dl.io.raster import open_time_series
from i2dl.maps.engine import PARTIAL_DIR, classify_raster
from i2dl.maps.run_maps import data_paths
from i2dl.samples.extract import prepare
from i2dl.samples.store import read_info
from tests.conftest import write_stack
from tests.test_config_checks import read_only

REPO = Path(__file__).resolve().parents[1]
W = torch.tensor([[1.0, -1.0], [0.0, 0.0], [-1.0, 1.0]])  # (K=3, C=2)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


# ---------------------------------------------------------------- 1. infer resume and inputs


def test_infer_resume_starts_afresh_when_the_raster_changed(
    make_cfg, tiny_dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed mid-map, raster rewritten with other pixels, same key: no stale window."""
    info = read_info(prepare(make_cfg(*tiny_dataset["overrides"])))
    calls = {"n": 0, "fail_at": 0}

    def predict(x: torch.Tensor, days: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt  # as a kill mid-map
        m = mask.unsqueeze(-1).float()
        return torch.softmax(((x * m).sum(1) / m.sum(1).clamp(min=1)) @ W.T * 3, dim=1)

    raster = tmp_path / "copy.tif"
    write_stack(raster, tiny_dataset["series"].reshape(-1, 20, 24), tiny_dataset["transform"])

    def classify(out: Path, key: str | None) -> None:
        with open_time_series(raster, tiny_dataset["dates_file"], ["b1", "b2"]) as series:
            classify_raster(series, info, predict, out, torch.device("cpu"), chunk_size=5,
                            batch_size=10_000, progress=False, resume_key=key)

    calls.update(n=0, fail_at=9)
    with pytest.raises(KeyboardInterrupt):
        classify(tmp_path / "maps", "model-A")
    assert len(list((tmp_path / "maps" / PARTIAL_DIR).glob("w*.npz"))) == 8
    calls.update(n=0, fail_at=0)
    classify(tmp_path / "before", None)  # the old raster's map
    old = tiny_dataset["series"]
    moved = np.roll(old, 7, axis=2)  # "flipped pixels": the fields move 7 rows down
    write_stack(raster, np.ascontiguousarray(moved).reshape(-1, 20, 24),
                tiny_dataset["transform"])
    calls.update(n=0, fail_at=0)
    with caplog.at_level(logging.INFO, logger="i2dl.maps.engine"):
        classify(tmp_path / "maps", "model-A")
    assert calls["n"] == 20  # every window computed again, none read back
    assert "windows already done" not in caplog.text
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warned and str(raster) in warned[0].getMessage(), caplog.text
    assert "changed" in warned[0].getMessage()
    classify(tmp_path / "fresh", None)
    new = _read(tmp_path / "maps" / "classif.tif")
    np.testing.assert_array_equal(new, _read(tmp_path / "fresh" / "classif.tif"))
    changed = (_read(tmp_path / "before" / "classif.tif") != new)[0]
    # the new raster changes classes in the windows finished before the kill (rows 0-4:
    # the first 5 windows): a stale resume would have kept the old ones there
    assert changed[:5].sum() >= 20, changed.astype(int)


def test_infer_resume_still_reuses_windows_of_unchanged_inputs(
    make_cfg, tiny_dataset, tmp_path: Path
) -> None:
    """The input stamps do not break the resume itself: same files, windows read back."""
    info = read_info(prepare(make_cfg(*tiny_dataset["overrides"])))
    calls = {"n": 0, "fail_at": 5}

    def predict(x: torch.Tensor, days: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt
        return torch.softmax(x.mean(1) @ W.T, dim=1)

    def classify() -> None:
        with open_time_series(tiny_dataset["raster"], tiny_dataset["dates_file"],
                              ["b1", "b2"]) as series:
            classify_raster(series, info, predict, tmp_path / "maps", torch.device("cpu"),
                            chunk_size=5, batch_size=10_000, progress=False,
                            resume_key="model-A")

    with pytest.raises(KeyboardInterrupt):
        classify()
    calls.update(n=0, fail_at=0)
    classify()
    assert calls["n"] == 20 - 4


def test_input_stamps_see_a_rewritten_file_and_skip_non_paths(tmp_path: Path) -> None:
    (tmp_path / "sensor").mkdir()
    (tmp_path / "sensor" / "B2.tif").write_bytes(b"a" * 10)
    mask = tmp_path / "mask.tif"
    mask.write_bytes(b"m")
    values = [str(mask), str(tmp_path / "sensor"), "NDVI", "", "not/a/file", 3, None]
    before = input_stamps(values)
    assert set(before) == {str(mask), str(tmp_path / "sensor"),
                           str(tmp_path / "sensor" / "B2.tif")}
    time.sleep(0.01)
    (tmp_path / "sensor" / "B2.tif").write_bytes(b"b" * 10)  # same size, rewritten
    after = input_stamps(values)
    assert after[str(mask)] == before[str(mask)]
    assert after[str(tmp_path / "sensor" / "B2.tif")] != before[str(tmp_path / "sensor" /
                                                                 "B2.tif")]


def test_data_paths_lists_every_string_of_the_data_config() -> None:
    data = {"raster": "/d/stack.tif", "masks": [{"path": "/d/clm.tif", "invalid_values": [1]}],
            "band_names": ["b1"], "sensors": {"s2": {"root": "/d/s2"}}, "label_offset": 0}
    assert sorted(data_paths(data)) == ["/d/clm.tif", "/d/s2", "/d/stack.tif", "b1"]


# ---------------------------------------------------------------- 2. one process per run folder


def _hold_in_another_process(run: Path) -> subprocess.Popen[str]:
    """A second Python process holding the run folder's lock until its stdin closes."""
    code = ("import sys; from i2dl.io.files import run_folder_lock\n"
            f"with run_folder_lock({str(run)!r}):\n"
            "    print('held', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_stage_on_a_run_folder_in_use_stops_at_once(
    tiny_dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, stores = tmp_path / "run", tmp_path / "stores"
    args = [f"hydra.run.dir={run}", f"paths.store_dir={stores}", *tiny_dataset["overrides"],
            "seed=0"]
    holder = _hold_in_another_process(run)
    try:
        t0 = time.monotonic()
        with pytest.raises(SystemExit) as exit_:
            run_stage("prepare", args)
        assert time.monotonic() - t0 < 60  # refused, not waiting for the other run
    finally:
        holder.communicate("", timeout=60)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lock = lock_path(run.resolve() / RUN_LOCK)
    assert str(run.resolve()) in err and str(lock) in err, err
    assert "another i2dl process" in err and "hydra.run.dir" in err
    assert not stores.exists() and not (run / ".hydra").exists()  # nothing written
    # the other process gone, the same command runs
    assert run_stage("prepare", args).is_dir()


def test_train_refuses_a_run_folder_held_by_another_lock(make_cfg, tiny_dataset,
                                                         tmp_path: Path) -> None:
    """The Python API too: ``train.run`` on a folder whose lock another holder has."""
    from i2dl.stages import train

    cfg = make_cfg(*tiny_dataset["overrides"], "seed=0")
    run = Path(cfg.paths.output_dir)
    run.mkdir(parents=True)
    other = FileLock(str(lock_path(run.resolve() / RUN_LOCK)), timeout=0)
    with other, pytest.raises(ConfigError, match="in use by another i2dl process"):
        train.run(cfg)
    assert not (tmp_path / "stores").exists()


def test_run_folder_lock_is_reentrant_in_one_process_and_released(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with run_folder_lock(run) as lock, run_folder_lock(run / ".") as again:
        assert lock == again
        with pytest.raises(filelock.Timeout):
            FileLock(str(lock), timeout=0).acquire()
    other = FileLock(str(lock), timeout=0)
    other.acquire()  # released when the outer block ended
    other.release()


# ---------------------------------------------------------------- 3. writable output folders


def test_read_only_maps_folder_is_named_before_infer_starts(
    tiny_dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from i2dl.stages import infer

    calls = []
    monkeypatch.setattr(infer, "run", lambda cfg: calls.append(cfg))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    args = [f"hydra.run.dir={run}", f"paths.store_dir={tmp_path / 'stores'}",
            *tiny_dataset["overrides"], "seed=0"]
    with read_only(run / "checkpoints"):  # not written by infer: no reason to stop it
        run_stage("infer", args)
    assert len(calls) == 1
    with read_only(run / "maps"):
        with pytest.raises(SystemExit) as exit_:
            run_stage("infer", args)
    assert exit_.value.code == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert f"{run / 'maps'}: the folder is not writable" in text, text
    assert "infer cannot write its outputs" in text and "chmod u+w" in text
    assert len(calls) == 1  # the stage never started


def test_a_file_in_place_of_an_output_folder_is_named(make_cfg) -> None:
    """Refused as root too: a file ``maps`` where infer writes its maps folder."""
    cfg = make_cfg()
    run = Path(cfg.paths.output_dir)
    run.mkdir(parents=True)
    (run / "maps").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"maps is not a folder") as err:
        with guarded_run(cfg, "infer"):
            pytest.fail("the stage must not start")
    assert "hydra.run.dir" in str(err.value)
    with guarded_run(cfg, "evaluate"):  # evaluate does not write maps/
        pass


def test_output_folders_of_each_stage(make_cfg) -> None:
    run = Path(make_cfg().paths.output_dir)
    for sub in ("checkpoints", "report/region_1", "maps/T31TCJ/.infer-partial", "seed_0/maps"):
        (run / sub).mkdir(parents=True)
    infer = output_folders(run, "infer")
    assert run / "maps" / "T31TCJ" / ".infer-partial" in infer and run / "final" in infer
    assert run / "checkpoints" not in infer and run / "report" not in infer
    train = output_folders(run, "train")
    assert {run / "checkpoints", run / "report" / "region_1", run / "seed_0" / "maps",
            run / "tb"} <= set(train)
    assert run / ".hydra" not in train


def test_read_only_subfolder_stops_guarded_run(make_cfg) -> None:
    cfg = make_cfg()
    run = Path(cfg.paths.output_dir)
    (run / "report" / "region_1").mkdir(parents=True)
    with read_only(run / "report" / "region_1"):
        with pytest.raises(ConfigError, match=r"report/region_1: the folder is not writable"):
            with guarded_run(cfg, "evaluate"):
                pytest.fail("the stage must not start")


# ---------------------------------------------------------------- 4. disk full


@pytest.mark.parametrize("code", [errno.EFBIG, errno.ENOSPC])
def test_disk_full_in_prepare_names_the_file_and_the_free_space(
    make_cfg, tiny_dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    from i2dl.stages import prepare as prepare_stage

    cfg = make_cfg(*tiny_dataset["overrides"], "seed=0")
    chunk = tmp_path / "stores" / "tiny.zarr" / "x" / "c" / "0"

    def full_disk(cfg: object, *args: object) -> Path:
        chunk.parent.mkdir(parents=True)
        with open(chunk, "wb") as fh:
            fh.write(b"x" * 4096)
            raise OSError(code, os.strerror(code))  # as write() under ulimit -f / a full disk

    monkeypatch.setattr(prepare_stage, "prepare", full_disk)
    with pytest.raises(DiskFullError) as err:
        prepare_stage.run(cfg)
    message = str(err.value)
    assert isinstance(err.value, OSError) and err.value.errno == code
    assert str(chunk) in message and "4.0 KiB" in message, message
    assert "free of" in message and str(tmp_path / "stores") in message
    assert "rerun the same command" in message


def test_disk_full_in_fit_stops_the_cli_with_the_file_named(
    tiny_dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from i2dl.stages import fit

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"

    def full_disk(cfg: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(ckpt))

    monkeypatch.setattr(fit, "run", full_disk)
    with pytest.raises(SystemExit) as exit_:
        run_stage("fit", [f"hydra.run.dir={tmp_path / 'run'}",
                          f"paths.store_dir={tmp_path / 'stores'}", *tiny_dataset["overrides"],
                          "seed=0"])
    assert exit_.value.code == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert f"writing {ckpt} failed: No space left on device" in text, text
    assert "free of" in text and "Traceback" not in text


def test_other_os_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), explain_disk_full([tmp_path]):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))


# ---------------------------------------------------------------- 5. the local Dask cluster


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_local_dask_cluster_serves_no_dashboard() -> None:
    pytest.importorskip("distributed")
    from i2dl.maps.cluster import dask_client

    with dask_client(None, n_workers=1, threads_per_worker=1, processes=False) as client:
        scheduler = client.cluster.scheduler
        assert "dashboard" not in scheduler.services
        assert _refused(scheduler.http_server.port)
        ports = client.run(lambda dask_worker: dask_worker.http_server.port)
        assert ports and all(_refused(p) for p in ports.values())


def _rf_task(model: object, x: np.ndarray, quiet: bool) -> int:
    """In a Dask worker: the joblib warnings of one ``predict_proba``."""
    import warnings

    from i2dl.maps.cluster import _sequential_joblib

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _sequential_joblib() if quiet else contextlib.nullcontext():
            model.predict_proba(x)  # type: ignore[attr-defined]
    return sum("Dask worker" in str(w.message) for w in caught)


def test_sklearn_in_a_dask_worker_warns_no_more() -> None:
    """The per-window "Inside a Dask worker ... n_jobs=1" warning of joblib is gone."""
    pytest.importorskip("distributed")
    from sklearn.ensemble import RandomForestClassifier

    from i2dl.maps.cluster import _sequential_joblib, dask_client

    rng = np.random.default_rng(0)
    x, y = rng.random((60, 3)), rng.integers(0, 2, 60)
    model = RandomForestClassifier(n_estimators=4, n_jobs=-1, random_state=0).fit(x, y)
    with dask_client(None, n_workers=1, threads_per_worker=1, processes=True) as client:
        loud = client.submit(_rf_task, model, x, False, pure=False).result()
        quiet = client.submit(_rf_task, model, x, True, pure=False).result()
    assert loud >= 1  # a daemonic worker: the warning this fix silences exists
    assert quiet == 0
    with _sequential_joblib():  # the same probabilities with one job
        np.testing.assert_array_equal(model.predict_proba(x), model.predict_proba(x))


def test_features_device_on_a_plain_stack_is_said_to_do_nothing(make_cfg, tiny_dataset,
                                                                 caplog) -> None:
    from omegaconf import open_dict

    from i2dl.features.source import open_source

    cfg = make_cfg(*tiny_dataset["overrides"])
    with open_dict(cfg):
        cfg.data.features_device = "cuda"
    with open_source(cfg.data):
        pass
    assert "data.features_device=cuda has no effect" in caplog.text
