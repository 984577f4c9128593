"""The debug config group (configs/debug/, as lightning-hydra-template's): composes and runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from i2dl.config import CONFIG_DIR
from tests.conftest import SMALL_LTAE

DEBUG = sorted(p.stem for p in (Path(CONFIG_DIR) / "debug").glob("*.yaml"))


def test_debug_group_has_the_template_configs() -> None:
    assert DEBUG == ["default", "fast_dev_run", "limit", "overfit"]


@pytest.mark.parametrize("name", DEBUG)
def test_debug_config_composes_with_an_experiment(make_cfg, name: str) -> None:
    """``+experiment=ltae debug=NAME`` composes; the trainer it sets instantiates."""
    cfg = make_cfg("+experiment=ltae", f"debug={name}")
    assert cfg.task_name == "debug"
    assert cfg.experiment_name == "ltae"
    assert cfg.trainer.accelerator == "cpu" and cfg.datamodule.num_workers == 0
    expected = {
        "default": {"max_epochs": 1},
        "fast_dev_run": {"limit_train_batches": 1, "limit_val_batches": 1, "max_epochs": 1},
        "overfit": {"overfit_batches": 3, "max_epochs": 20},
        "limit": {"limit_train_batches": 3, "limit_val_batches": 2, "max_epochs": 3},
    }[name]
    assert {k: cfg.trainer[k] for k in expected} == expected
    instantiate(cfg.trainer, logger=False, enable_progress_bar=False)


@pytest.mark.parametrize("name", DEBUG)
def test_debug_config_runs_on_tiny_data(make_cfg, tiny_dataset, name: str) -> None:
    """A short run with each debug config (train: prepare, fit, evaluate, infer)."""
    from i2dl.stages.train import run

    overrides = [*tiny_dataset["overrides"], *SMALL_LTAE, "trainer.enable_progress_bar=false"]
    if name == "overfit":
        overrides.append("trainer.max_epochs=2")
    summary = run(make_cfg("+experiment=ltae", f"debug={name}", *overrides))
    assert summary["experiment"] == "ltae"
