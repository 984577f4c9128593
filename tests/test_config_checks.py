"""Every config value is checked when the config is composed, before any work.

``python -m i2dl <stage> key=value`` with a bad value stops with exit status 2 and a
message naming the key, its value, the rule and an example of the fix; neither the run
folder nor the store folder is created. Read-only output folders are named the same way,
and ``seed=null`` draws a seed that is recorded in the run folder.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from i2dl.cli import run_stage
from i2dl.config import CONFIG_DIR, check_config, config_checks
from i2dl.errors import ConfigError
from i2dl.io.layout import DRAWN_SEED

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))

#: (override, key named in the message)
BAD_VALUES = [
    ("sampling.ratio=abc", "sampling.ratio"),
    ("sampling.ratio=1.5", "sampling.ratio"),
    ("sampling.ratio=0", "sampling.ratio"),
    ("sampling.selection_ratio=-0.1", "sampling.selection_ratio"),
    ("sampling.selection_ratio=1", "sampling.selection_ratio"),
    ("sampling.percent=2", "sampling.percent"),
    ("sampling.per_class=0", "sampling.per_class"),
    ("sampling.strategy=most", "sampling.strategy"),
    ("sampling.sampler=lhs", "sampling.sampler"),
    ("sampling.folds=1", "sampling.folds"),
    ("sampling.folds=3 sampling.fold=3", "sampling.fold"),
    ("sampling.random_seed=-1", "sampling.random_seed"),
    ("seed=-1", "seed"),
    ("seed=abc", "seed"),
    ("runs=0", "runs"),
    ("kfold=1", "kfold"),
    ("kfold=3 runs=2", "kfold"),
    ("cpu_threads=0", "cpu_threads"),
    ("trainer.max_epochs=0", "trainer.max_epochs"),
    ("trainer.max_epochs=2.5", "trainer.max_epochs"),
    ("datamodule.batch_size=0", "datamodule.batch_size"),
    ("datamodule.batch_size=true", "datamodule.batch_size"),
    ("datamodule.num_workers=-1", "datamodule.num_workers"),
    ("store.samples_per_chunk=0", "store.samples_per_chunk"),
    ("model.model_selection_criterion=accuracy", "model.model_selection_criterion"),
    ("infer.batch_size=0", "infer.batch_size"),
    ("infer.batch_size=big", "infer.batch_size"),
    ("infer.chunk_size=-512", "infer.chunk_size"),
    ("infer.device=gpu", "infer.device"),
    ("features_map.chunk_size=0", "features_map.chunk_size"),
    ("callbacks.early_stopping.patience=-1", "callbacks.early_stopping.patience"),
    ("store.normalization=minmax", "store.normalization"),
    ("store.rebuild_damaged=maybe", "store.rebuild_damaged"),
    ("objective=val_f1", "objective"),
    ("resume=always", "resume"),
    ("infer.resume=2", "infer.resume"),
]


def _outputs(tmp_path: Path) -> list[str]:
    return [f"hydra.run.dir={tmp_path / 'run'}", f"paths.store_dir={tmp_path / 'stores'}"]


@pytest.mark.parametrize(("override", "key"), BAD_VALUES)
def test_bad_value_stops_the_cli_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, key: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_stage("prepare", [*_outputs(tmp_path), *override.split()])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{key}=" in err, err
    assert "expected" in err and "e.g." in err  # the rule and the fix
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "stores").exists()


def test_every_bad_value_is_listed_in_one_error(make_cfg) -> None:
    cfg = make_cfg("sampling.ratio=abc", "infer.chunk_size=0", "trainer.max_epochs=0",
                   "model.model_selection_criterion=acc")
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    msg = str(err.value)
    assert msg.startswith("4 invalid configuration value(s)")
    assert "sampling.ratio='abc': expected a number in (0, 1); e.g. sampling.ratio=0.75" in msg
    assert "infer.chunk_size=0: expected an integer >= 1" in msg
    assert "trainer.max_epochs=0" in msg
    assert "model.model_selection_criterion='acc': expected one of fscore, kappa, loss, oa" in msg


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_passes_the_checks(make_cfg, experiment: str) -> None:
    check_config(make_cfg(f"+experiment={experiment}"))


def test_seed_null_and_bounds_are_valid(make_cfg, monkeypatch) -> None:
    import torch

    # cuda:1 is valid on a machine with two CUDA devices (refused without: test_reliability_fit)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_config(make_cfg("seed=null", "kfold=5", "sampling.selection_ratio=0",
                          "sampling.percent=1", "infer.device=cuda:1", "cpu_threads=2"))


def test_every_checked_key_exists_in_the_config(make_cfg) -> None:
    """A renamed key must not silently drop out of the checks."""
    cfg = make_cfg()
    sklearn_only = {"model.max_samples", "model.estimator.n_estimators",
                    "model.estimator.max_depth", "model.estimator.min_samples_split"}
    missing = [
        c.key for c in config_checks()
        if c.key not in sklearn_only and OmegaConf.select(cfg, c.key, default="<absent>")
        == "<absent>"
    ]
    assert missing == []


# ---------------------------------------------------------------- read-only folders


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` read-only for this process (chmod; ``chattr +i`` for root), or skip."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    immutable = False
    try:
        probe = folder / "probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:  # root ignores permission bits
            probe.unlink()
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True,
                                       check=False).returncode == 0
            if not immutable:
                pytest.skip("cannot make a folder read-only here (root without chattr)")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=False)
        folder.chmod(0o755)


@pytest.mark.parametrize("which", ["run", "stores"])
def test_read_only_output_folder_is_named_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    parent = tmp_path / "locked"
    run = parent / "run" if which == "run" else tmp_path / "run"
    stores = parent / "stores" if which == "stores" else tmp_path / "stores"
    key = "hydra.run.dir" if which == "run" else "store.dir"
    with read_only(parent):
        with pytest.raises(SystemExit) as exit_:
            run_stage("prepare", [f"hydra.run.dir={run}", f"paths.store_dir={stores}"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"{key}={parent / which}" in err and str(parent) in err, err
        assert "not writable" in err
        assert not run.exists() and not stores.exists()


# ---------------------------------------------------------------- seed=null


def test_seed_null_draws_a_seed_recorded_and_reused(tiny_dataset, tmp_path: Path) -> None:
    args = [*_outputs(tmp_path), *tiny_dataset["overrides"], "seed=null",
            "sampling.selection_ratio=0.34"]
    store = run_stage("prepare", args)
    seed = int((tmp_path / "run" / DRAWN_SEED).read_text())
    # the store is built with the drawn seed, named after it, and records it
    assert store.name.startswith(f"tiny_seed{seed}_")
    # a later stage on the same run folder with seed=null uses the same seed: same store
    assert run_stage("prepare", args) == store
    assert int((tmp_path / "run" / DRAWN_SEED).read_text()) == seed


def test_seed_null_train_records_the_seed_in_the_summary(tiny_dataset, tmp_path: Path) -> None:
    args = [*_outputs(tmp_path), *tiny_dataset["overrides"], "seed=null", "+experiment=rf",
            "model.estimator.n_estimators=5", "model.estimator.n_jobs=1", "infer.device=cpu",
            "sampling.selection_ratio=0.34"]
    summary = run_stage("train", args)
    seed = int((tmp_path / "run" / DRAWN_SEED).read_text())
    assert summary["seed"] == seed
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["seed"] == seed
    assert Path(summary["store"]).name.startswith(f"tiny_seed{seed}_")


@pytest.mark.parametrize(("override", "match"), [
    ("dask.engine=spark", "dask.engine"),
    ("dask.retries=-1", "dask.retries"),
    ("dask.n_workers=0", "dask.n_workers"),
    ("+dask.retires=2", "dask.retries"),
])
def test_the_dask_group_is_checked_before_any_work(make_cfg, override, match) -> None:
    from i2dl.config import check_config

    with pytest.raises(ConfigError, match=match):
        check_config(make_cfg(override))
