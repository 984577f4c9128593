"""Hyper-parameter search with Hydra's Optuna sweeper (configs/hparams_search/ltae_optuna.yaml).

The search must maximise the cross-validated score on the **selection** split, never the
val polygons that the report scores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from i2dl.config import ROOT_DIR
from i2dl.errors import ConfigError
from i2dl.training.runs import objective_value
from tests.conftest import DATA_DIR, FAST, SMALL_LTAE


def test_optuna_search_maximises_the_cross_validated_selection_score(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                        reason="hydra-optuna-sweeper not installed (pip install -e '.[tune]')")
    if not (DATA_DIR / "sits_matogrosso_mod13q1" / "train.csv").is_file():
        pytest.skip(f"real data absent: {DATA_DIR / 'sits_matogrosso_mod13q1'}")
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "i2dl", "train", "+experiment=ltae", "+hparams_search=ltae_optuna",
        "data=sits_matogrosso_mod13q1", f"paths.data_dir={DATA_DIR}", "kfold=2",
        "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}",
        f"paths.store_dir={tmp_path / 'stores'}", *FAST, *SMALL_LTAE, "trainer.max_epochs=1",
    ]
    proc = subprocess.run(cmd, cwd=ROOT_DIR, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = {}
    for trial in (0, 1):
        folds = [json.loads((sweep / str(trial) / f"fold_{i}" / "summary.json").read_text())
                 for i in (0, 1)]
        trials[trial] = {
            "selection": np.mean([f["selection"]["f1_macro"] for f in folds]),
            "val": np.mean([f["f1_macro"] for f in folds]),
            "n_selection": [f["selection"]["n_samples"] for f in folds],
            "n_selection_store": [f["n_selection"] for f in folds],
        }
    # the best value is the best trial's mean selection macro F1 ...
    assert np.isclose(best["best_value"], max(t["selection"] for t in trials.values()))
    # ... scored on the selection pixels (not on val), as many as the store holds
    for t in trials.values():
        assert t["n_selection"] == t["n_selection_store"]
    assert set(best["best_params"]) >= {"model.optimizer.lr", "model.encoder.attention_dropout"}


def _summary(run: Path, selection: dict | None) -> Path:
    run.mkdir(parents=True)
    body = {"oa": 0.5, "f1_macro": 0.4, **({"selection": selection} if selection else {})}
    (run / "summary.json").write_text(json.dumps(body))
    return run


def test_objective_is_the_mean_selection_score(make_cfg, tmp_path: Path) -> None:
    runs = [_summary(tmp_path / f"r{i}", {"oa": oa, "f1_macro": f1, "kappa": 0.1})
            for i, (oa, f1) in enumerate([(0.9, 0.6), (0.7, 0.8)])]
    assert objective_value(make_cfg("objective=selection_fscore"), runs) == pytest.approx(0.7)
    assert objective_value(make_cfg("objective=selection_oa"), runs) == pytest.approx(0.8)
    assert objective_value(make_cfg(), runs) is None  # objective: null


def test_objective_selection_f1_is_a_deprecated_name_of_selection_fscore(
    make_cfg, tmp_path: Path
) -> None:
    runs = [_summary(tmp_path / f"r{i}", {"oa": 0.5, "f1_macro": f1, "kappa": 0.1})
            for i, f1 in enumerate([0.6, 0.8])]
    with pytest.warns(DeprecationWarning, match="selection_fscore"):
        assert objective_value(make_cfg("objective=selection_f1"), runs) == pytest.approx(0.7)


def test_objective_refuses_runs_without_selection_score(make_cfg, tmp_path: Path) -> None:
    run = _summary(tmp_path / "rf", None)  # a random forest: fits on the selection split
    with pytest.raises(ConfigError, match="no selection score"):
        objective_value(make_cfg("objective=selection_fscore"), [run])
    with pytest.raises(ConfigError, match="objective='val_f1'"):
        objective_value(make_cfg("objective=val_f1"), [run])
