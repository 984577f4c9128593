"""No reported metric comes from data that chose the model; k-fold cross-validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import zarr

from i2dl.samples.store import LEARN, SELECTION, VAL
from tests.conftest import FAST, SMALL_LTAE


class BatchSpy(L.Callback):
    """Records the store rows of every batch the trainer sees (fit and validation loops).

    Hydra imports this class under another module name than pytest does: the rows go to
    a file, ``<out>/<loop>.txt``.
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)

    def _record(self, loop: str, batch: Any) -> None:
        with open(self.out / f"{loop}.txt", "a") as f:
            f.write(" ".join(str(int(i)) for i in batch["index"]) + "\n")

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
        self._record("train", batch)

    def on_validation_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._record("validation", batch)


def _seen(out: Path, loop: str) -> np.ndarray:
    return np.unique(np.array((out / f"{loop}.txt").read_text().split(), dtype=np.int64))


def test_val_polygons_never_appear_in_a_batch_of_fit(make_cfg, tiny_dataset,
                                                     tmp_path: Path) -> None:
    from i2dl.stages.train import run as run_train

    spy = tmp_path / "spy"
    cfg = make_cfg(*tiny_dataset["overrides"], *FAST, *SMALL_LTAE, "trainer.max_epochs=3",
                   "+callbacks.spy._target_=tests.test_honest_evaluation.BatchSpy",
                   f"+callbacks.spy.out={spy}")
    summary = run_train(cfg)
    store = zarr.open_group(summary["store"], mode="r")
    split = store["split"][:]
    polygon = store["polygon_id"][:]
    assert (split == VAL).any() and (split == SELECTION).any() and (split == LEARN).any()
    trained = _seen(spy, "train")
    selected_on = _seen(spy, "validation")
    np.testing.assert_array_equal(trained, np.flatnonzero(split == LEARN))
    np.testing.assert_array_equal(selected_on, np.flatnonzero(split == SELECTION))
    val_polygons = set(polygon[split == VAL].tolist())
    assert val_polygons
    assert not val_polygons & set(polygon[np.concatenate([trained, selected_on])].tolist())
    # the report scores exactly the val pixels
    metrics = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    assert metrics["n_samples"] == int((split == VAL).sum()) == summary["n_val"]
    # the three parts are named alike in the class statistics
    stats = pd.read_csv(tmp_path / "run" / "class_statistics.csv")
    assert set(stats["split"]) == {"learn", "selection", "val"}
    assert stats.loc[stats["split"] == "selection", "polygons"].sum() == len(
        np.unique(polygon[split == SELECTION])
    )


def test_kfold_runs_every_fold_and_aggregates(make_cfg, tiny_dataset, tmp_path: Path) -> None:
    from i2dl.stages.train import run as run_train

    agg = run_train(make_cfg(*tiny_dataset["overrides"], *FAST, *SMALL_LTAE, "kfold=3",
                             "infer.write_proba=false"))
    run = tmp_path / "run"
    assert agg["n_runs"] == 3 and not agg.get("warnings")
    assert (run / "RESULTS.txt").is_file()
    val_polygons = []
    for i in range(3):
        summary = json.loads((run / f"fold_{i}" / "summary.json").read_text())
        assert summary["fold"] == i
        store = zarr.open_group(summary["store"], mode="r")
        val_polygons.append(set(store["polygon_id"][:][store["split"][:] == VAL].tolist()))
    # every polygon (3 per class, 3 classes) is val in exactly one fold
    assert sorted(p for s in val_polygons for p in s) == sorted(set().union(*val_polygons))
    assert len(set().union(*val_polygons)) == 9
