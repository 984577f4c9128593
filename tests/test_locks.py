"""Locks and orphaned temporaries: concurrent builders of one store, killed writers' leftovers."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import filelock
import pytest
import torch

from i2dl.io.files import ORPHAN_AGE_S, remove_orphans, target_lock, temporary_name
from i2dl.samples.store import read_info


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_remove_orphans_only_of_the_target_and_of_dead_writers(tmp_path: Path) -> None:
    final = tmp_path / "tiny.zarr"
    dead, live = _dead_pid(), os.getppid()
    names = {
        "dead": f".tiny.zarr.tmp-{dead}-0123abcd",
        "dead_old_copy": f".tiny.zarr.old-{dead}-89abcdef",
        "live": f".tiny.zarr.tmp-{live}-0123abcd",
        "other_target": f".other.zarr.tmp-{dead}-0123abcd",
        "legacy_old": ".tiny.zarr.tmp-deadbeef",
        "legacy_young": ".tiny.zarr.tmp-0badf00d",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
    stale = time.time() - ORPHAN_AGE_S - 60
    os.utime(tmp_path / names["legacy_old"], (stale, stale))
    removed = {p.name for p in remove_orphans(final)}
    assert removed == {names["dead"], names["dead_old_copy"], names["legacy_old"]}
    assert {p.name for p in tmp_path.iterdir()} == {
        names["live"], names["other_target"], names["legacy_young"]
    }
    # the writer's own pid is in its temporary names
    assert temporary_name(final).name.startswith(f".tiny.zarr.tmp-{os.getpid()}-")


def test_target_lock_excludes_a_second_writer(tmp_path: Path) -> None:
    final = tmp_path / "maps" / "classif.tif"
    with target_lock(final), pytest.raises(filelock.Timeout):
        with target_lock(final, timeout=0.2):
            pass
    with target_lock(final, timeout=0.2):  # released
        pass


def test_two_processes_preparing_one_store_build_it_once(make_cfg, tiny_dataset, tmp_path,
                                                         fork_safe_reads):
    """Two processes prepare the same store at once: one builds, the other waits, reuses."""
    from i2dl.samples import extract as prepare_module

    cfg = make_cfg(*tiny_dataset["overrides"])
    builds = tmp_path / "builds.txt"
    write_store = prepare_module.write_store

    def slow_write_store(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with open(builds, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # the other process asks for the lock meanwhile
        return write_store(*args, **kwargs)

    def child(out: Path) -> None:
        prepare_module.write_store = slow_write_store
        out.write_text(str(prepare_module.prepare(cfg)))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    try:
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=child, args=(tmp_path / f"out{i}",), daemon=True)
                 for i in range(2)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)
    finally:
        torch.set_num_threads(threads)
    assert [p.exitcode for p in procs] == [0, 0]
    paths = {(tmp_path / f"out{i}").read_text() for i in range(2)}
    assert len(paths) == 1
    assert len(builds.read_text().split()) == 1  # built once; the other reused it
    store = Path(paths.pop())
    assert read_info(store).n_samples > 0
    assert [p.name for p in store.parent.iterdir() if ".tmp-" in p.name] == []
