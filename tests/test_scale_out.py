"""Several processes and machines: DDP training, and multiruns through submitit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.pixel_series import StoreBlockDataset, loader_settings
from i2dl.config import ROOT_DIR
from i2dl.errors import ConfigError
from i2dl.io.layout import read_fit_state
from i2dl.samples.extract import prepare
from i2dl.samples.store import LEARN, SELECTION
from i2dl.training import ddp
from tests.conftest import FAST, SMALL_LTAE


def _indices(dataset: StoreBlockDataset) -> list[np.ndarray]:
    return [b["index"].numpy() for b in dataset]


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_ranks_read_disjoint_equal_shares(make_cfg, tiny_dataset, world) -> None:
    store = prepare(make_cfg(*tiny_dataset["overrides"], "store.samples_per_chunk=16"))
    whole = np.concatenate(_indices(StoreBlockDataset(store, LEARN, 8, shuffle=True)))
    shares, batches = [], []
    for rank in range(world):
        torch.manual_seed(123)  # every rank draws the same chunk order (same seed)
        ds = StoreBlockDataset(store, LEARN, 8, shuffle=True, rank=rank, world_size=world)
        got = _indices(ds)
        batches.append(len(got))
        shares.append(np.concatenate(got))
    sizes = {len(s) for s in shares}
    assert sizes == {len(whole) // world}  # same count on every rank: same number of steps
    assert len(set(batches)) == 1
    together = np.concatenate(shares)
    assert len(np.unique(together)) == len(together)  # disjoint
    assert set(together) <= set(whole) and len(whole) - len(together) < world
    # evaluation splits are not truncated: every selection sample is seen once
    sel = [np.concatenate(_indices(StoreBlockDataset(store, SELECTION, 8, rank=r,
                                                     world_size=world))) for r in range(world)]
    full = np.concatenate(_indices(StoreBlockDataset(store, SELECTION, 8)))
    assert sorted(np.concatenate(sel).tolist()) == sorted(full.tolist())


def test_loader_settings_per_device() -> None:
    assert loader_settings("auto", "auto", on_cuda=False, cpus=16) == (0, False)
    assert loader_settings("auto", "auto", on_cuda=True, cpus=16) == (8, True)
    assert loader_settings("auto", "auto", on_cuda=True, cpus=2) == (1, True)
    assert loader_settings("auto", "auto", on_cuda=True, cpus=1) == (1, True)
    assert loader_settings(3, False, on_cuda=True) == (3, False)
    for bad in ((-1, False), ("two", False), (0, "yes")):
        with pytest.raises(ConfigError, match="datamodule"):
            loader_settings(*bad, on_cuda=False)


def test_process_rank_and_launch_from_the_environment() -> None:
    assert ddp.process_rank({}) == 0
    assert ddp.process_rank({"LOCAL_RANK": "1"}) == 1
    assert ddp.process_rank({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}) == 3
    assert ddp.process_rank({"SLURM_PROCID": "3", "SLURM_NTASKS": "1"}) == 0  # not srun -n
    assert ddp.launch_id({}) is None
    assert ddp.launch_id({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "2", "SLURM_NTASKS": "2"}) \
        == "slurm-7-2"
    assert ddp.launch_id({ddp.LAUNCH_ENV: "x", "SLURM_JOB_ID": "7"}) == "x"


def test_ddp_fit_on_two_cpu_processes(tiny_dataset, tmp_path: Path) -> None:
    """The CLI with trainer=ddp: two processes (gloo), one checkpoint, rank 1 follows."""
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "i2dl", "train", "+experiment=ltae", "trainer=ddp",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false",
        f"paths.output_dir={run}",
        f"paths.store_dir={tmp_path / 'stores'}", *tiny_dataset["overrides"], *FAST,
        *SMALL_LTAE, "cpu_threads=1", "refit=false",  # the ltae experiment's refit: one process
    ]
    proc = subprocess.run(cmd, cwd=ROOT_DIR, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = read_fit_state(run)
    assert state is not None and state["status"] == "done"
    assert state["launch"].startswith("local-")
    assert [p.name for p in (run / "checkpoints").glob("*.ckpt")] != []
    assert not list((run / "checkpoints").glob("*-v1.ckpt"))
    rank1 = (run / "logs" / "fit_rank1.log").read_text()
    assert "follows rank 0's fit" in rank1 and state["launch"] in rank1
    summary = json.loads((run / "summary.json").read_text())  # rank 0 went on to evaluate
    assert 0 <= summary["oa"] <= 1
    assert (run / "maps" / "classif.tif").is_file()


@pytest.mark.parametrize("option", ["refit=true", "ensemble_size=2"])
def test_ddp_refuses_refit_and_ensembles(make_cfg, tiny_dataset, option: str) -> None:
    from i2dl.stages import train

    cfg = make_cfg(*tiny_dataset["overrides"], *FAST, "trainer=ddp", "trainer.devices=1",
                   "trainer.accelerator=cpu", option)
    with pytest.raises(ConfigError, match="refit=true and ensemble_size > 1"):
        train.run(cfg)


def test_ddp_refuses_runs_and_folds(make_cfg, tiny_dataset) -> None:
    from i2dl.stages import train

    cfg = make_cfg(*tiny_dataset["overrides"], "trainer=ddp", "runs=2")
    with pytest.raises(ConfigError, match="multirun"):
        train.run(cfg)


def test_multirun_through_the_submitit_launcher(tiny_dataset, tmp_path: Path) -> None:
    """configs/hydra/launcher/local_jobs.yaml: each seed a submitit job (the SLURM twin)."""
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "i2dl", "train", "-m", "+experiment=rf", "seed=0,1",
        "hydra/launcher=local_jobs", f"hydra.sweep.dir={sweep}",
        f"paths.store_dir={tmp_path / 'stores'}", *tiny_dataset["overrides"], *FAST,
    ]
    proc = subprocess.run(cmd, cwd=ROOT_DIR, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seeds = sorted(json.loads((sweep / str(i) / "summary.json").read_text())["seed"]
                   for i in (0, 1))
    assert seeds == [0, 1]
    assert list((sweep / ".submitit").glob("*_log.out"))  # ran as submitit jobs
    assert not (sweep / ".submitit" / "%j").exists()  # no literal %j folder (issue 21)


def test_slurm_launcher_config_composes() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from i2dl.config import CONFIG_DIR, CONFIG_NAME

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        full = compose(config_name=CONFIG_NAME, overrides=["hydra/launcher=slurm"],
                       return_hydra_config=True)
    launcher = full.hydra.launcher
    assert "SlurmLauncher" in launcher._target_
    assert launcher.gpus_per_node == 1 and launcher.timeout_min == 240
