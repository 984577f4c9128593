"""iota2's split_ground_truth: false (issue 22): every polygon learns, no accuracy report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from i2dl.errors import ConfigError
from i2dl.samples.split import split_polygons
from i2dl.samples.store import LEARN, SELECTION, VAL
from tests.conftest import FAST


def test_split_polygons_without_val() -> None:
    ids, codes = np.arange(12), np.repeat([1, 2, 3], 4)
    split = split_polygons(ids, codes, selection_ratio=0.25, split_ground_truth=False)
    values = np.array([split[i] for i in ids])
    assert VAL not in values
    assert ((values == SELECTION).reshape(3, 4).sum(axis=1) == 1).all()  # 1 of 4 per class
    assert (values == LEARN).sum() == 9
    with pytest.raises(ConfigError, match="split_ground_truth"):
        split_polygons(ids, codes, folds=3, split_ground_truth=False)


def test_a_run_without_validation_says_so_and_maps(make_cfg, tiny_dataset,
                                                   tmp_path: Path, caplog) -> None:
    from i2dl.stages.train import run as run_train

    cfg = make_cfg("+experiment=rf", *FAST, *tiny_dataset["overrides"],
                   "sampling.split_ground_truth=false", "model.estimator.n_estimators=5",
                   "infer.chunk_size=16")
    summary = run_train(cfg)
    run = Path(cfg.paths.output_dir)
    assert summary["n_val"] == 0 and summary["oa"] is None and summary["f1_macro"] is None
    assert summary["n_learn"] + summary["n_selection"] == 3 * 3 * 24  # every labelled pixel
    assert not (run / "report" / "metrics.json").exists()
    assert "no accuracy report" in caplog.text
    assert (run / "maps" / "classif.tif").is_file()  # maps as usual
    assert json.loads((run / "summary.json").read_text())["oa"] is None
    with pytest.raises(ConfigError, match="split_ground_truth=false"):
        run_train(make_cfg("+experiment=rf", *FAST, *tiny_dataset["overrides"],
                           "sampling.split_ground_truth=false", "runs=2"))


def test_a_deep_model_without_validation(make_cfg, tiny_dataset, tmp_path: Path) -> None:
    from i2dl.stages.train import run as run_train
    from tests.conftest import SMALL_LTAE

    cfg = make_cfg("+experiment=ltae", *FAST, *SMALL_LTAE, *tiny_dataset["overrides"],
                   "sampling.split_ground_truth=false", "trainer.max_epochs=2",
                   "infer.chunk_size=16")
    summary = run_train(cfg)
    assert summary["oa"] is None and summary["n_selection"] > 0
    assert (Path(cfg.paths.output_dir) / "report" / "index.html").is_file()
