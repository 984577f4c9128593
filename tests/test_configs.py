"""Every config group instantiates without data (as lightning-hydra-template's test_configs)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from i2dl.config import CONFIG_DIR
from i2dl.training.build import DataDims, build_classifier
from i2dl.training.loops import callbacks
from models import Classifier, SITSClassifier, SklearnClassifier

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def test_every_model_config_has_an_experiment() -> None:
    # one experiment per model, plus the deep ensembles of a model (<model>_ensemble)
    assert MODELS and set(MODELS) <= set(EXPERIMENTS)
    extra = set(EXPERIMENTS) - set(MODELS)
    assert all(e.endswith("_ensemble") and e.removesuffix("_ensemble") in MODELS for e in extra)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_model_config_instantiates(make_cfg, name: str) -> None:
    cfg = make_cfg(f"+experiment={name}")
    dims = DataDims(n_channels=3, n_dates=7, n_classes=4)  # T differs from every dataset
    clf = build_classifier(cfg.model, dims)
    assert isinstance(clf, Classifier) and clf.n_classes == 4
    if isinstance(clf, SITSClassifier):
        x = torch.randn(5, 7, 3)
        days = torch.arange(7).repeat(5, 1) * 10
        mask = torch.ones(5, 7, dtype=torch.bool)
        proba = clf.predict_proba(x, days, mask)
        assert proba.shape == (5, 4)
        torch.testing.assert_close(proba.sum(dim=1), torch.ones(5))
        assert clf.name == name.removesuffix("_ensemble")
    else:
        assert isinstance(clf, SklearnClassifier) and not clf.fitted


def test_model_config_without_target_is_a_clear_error(make_cfg) -> None:
    model = OmegaConf.to_container(make_cfg().model)
    del model["_target_"]
    with pytest.raises(ValueError, match="_target_"):
        build_classifier(model, DataDims(1, 4, 2))


def test_datamodule_trainer_callbacks_logger_instantiate(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("trainer.accelerator=cpu")
    dm = instantiate(cfg.datamodule)
    assert isinstance(dm, L.LightningDataModule) and dm.store_path is None
    trainer = instantiate(cfg.trainer, logger=False, callbacks=callbacks(cfg))
    assert isinstance(trainer, L.Trainer) and trainer.max_epochs == cfg.trainer.max_epochs
    loggers = [instantiate(lg) for lg in cfg.logger.values()]
    assert loggers and all(Path(lg.save_dir) == tmp_path / "run" / "tb" for lg in loggers)


@pytest.mark.parametrize("group", ["sampling", "data"])
def test_every_option_of_a_group_composes(make_cfg, group: str) -> None:
    for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
        cfg = make_cfg(f"{group}={path.stem}")
        assert cfg[group] is not None
