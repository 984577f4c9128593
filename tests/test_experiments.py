"""Every experiment runs end to end on the Slovenia example (short runs), and a seed repeats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from tests.conftest import FAST

EXPERIMENTS = {
    "ltae": [],
    "mlp": [],
    "ann": [],
    "ssa": [],
    "tempcnn": [],
    "ltae_ensemble": ["ensemble_size=2"],
    "tempcnn_ensemble": ["ensemble_size=2"],
    "rf": ["model.estimator.n_estimators=20"],
    "svm": ["model.max_samples=1500"],
    "extra_trees": ["model.estimator.n_estimators=20"],
}
SHORT = [*FAST, "trainer.max_epochs=1", "+trainer.limit_train_batches=4"]


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_short_run(name: str, make_cfg, slovenia_dir: Path, tmp_path: Path) -> None:
    from i2dl.stages.train import run as run_train

    cfg = make_cfg(f"+experiment={name}", *SHORT, *EXPERIMENTS[name])
    assert cfg.experiment_name == name
    summary = run_train(cfg)
    run = tmp_path / "run"
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    cm = pd.read_csv(run / "report" / "confusion_matrix.csv", index_col=0).to_numpy()
    assert cm.sum() == summary["n_val"] == metrics["n_samples"]
    assert metrics["oa"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)
    assert summary["experiment"] == name and summary["n_classes"] == 5
    with rasterio.open(run / "maps" / "classif.tif") as src:
        values = set(np.unique(src.read(1)).tolist())
    assert values <= {0, 1, 2, 3, 4, 8} and len(values - {0}) >= 1


def test_same_seed_same_metrics_on_cpu(make_cfg, slovenia_dir: Path, tmp_path: Path) -> None:
    from i2dl.stages.train import run as run_train

    results = []
    for i in range(2):
        cfg = make_cfg("+experiment=ltae", *SHORT, "seed=3",
                       f"paths.output_dir={tmp_path / f'r{i}'}")
        summary = run_train(cfg)
        results.append((summary, (tmp_path / f"r{i}" / "report" / "metrics.json").read_text()))
    assert results[0][1] == results[1][1]  # identical metrics.json, to the last digit
    with rasterio.open(results[0][0]["confidence_map"]) as a, \
            rasterio.open(results[1][0]["confidence_map"]) as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_early_stopping_is_on_by_default_and_follows_the_criterion(make_cfg) -> None:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from i2dl.training.loops import callbacks as _callbacks
    from i2dl.training.loops import precision as _precision

    default = _callbacks(make_cfg())
    stop = next(c for c in default if isinstance(c, EarlyStopping))
    assert (stop.monitor, stop.mode) == ("selection/fscore", "max")
    ckpt = next(c for c in default if isinstance(c, ModelCheckpoint))
    assert (ckpt.monitor, ckpt.mode) == ("selection/fscore", "max")
    no_stop = _callbacks(make_cfg("enable_early_stop=false"))
    assert not any(isinstance(c, EarlyStopping) for c in no_stop)
    cbs = _callbacks(make_cfg("callbacks.early_stopping.patience=3",
                              "model.model_selection_criterion=loss"))
    stop = next(c for c in cbs if isinstance(c, EarlyStopping))
    assert (stop.monitor, stop.patience, stop.mode) == ("selection/loss", 3, "min")
    assert _precision(make_cfg("trainer.accelerator=cpu")) == "32-true"
    assert _precision(make_cfg("trainer.precision=16-mixed")) == "16-mixed"


def test_balanced_class_weights_train(make_cfg, tiny_dataset, tmp_path: Path) -> None:
    import torch

    from i2dl.stages.train import run as run_train
    from tests.conftest import SMALL_LTAE

    summary = run_train(make_cfg(*tiny_dataset["overrides"], *FAST, *SMALL_LTAE,
                                 "model.class_weights=balanced"))
    ckpt = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=True)
    weights = ckpt["hyper_parameters"]["class_weights"]
    assert len(weights) == 3 and all(w > 0 for w in weights)
