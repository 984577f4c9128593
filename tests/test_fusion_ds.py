"""Dempster-Shafer fusion and the undecided label, against hand-worked examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from i2dl.errors import ConfigError
from i2dl.maps.fusion import dempster_shafer, majority_vote, mass_of_belief
from tests.conftest import FAST

CODES = np.array([1, 2, 3])


def test_a_confident_run_outweighs_two_unreliable_ones() -> None:
    # run 0 says class 1 with precision 0.95; runs 1 and 2 say class 2 with precision 0.6
    maps = np.array([[[1]], [[2]], [[2]]])
    mob = np.array([[0.95, 0.9, 0.9], [0.6, 0.6, 0.6], [0.6, 0.6, 0.6]])
    # by hand, plausibility of each class = product over runs of p (run chose it) or 1 - p:
    #   class 1: 0.95 * 0.4 * 0.4 = 0.152; class 2: 0.05 * 0.6 * 0.6 = 0.018;
    #   class 3: 0.05 * 0.4 * 0.4 = 0.008  -> class 1, where the majority says 2
    fused, agreement = dempster_shafer(maps, CODES, mob)
    assert fused[0, 0] == 1 and agreement[0, 0] == pytest.approx(1 / 3)
    assert majority_vote(maps, CODES)[0][0, 0] == 2
    # equally reliable runs: Dempster-Shafer agrees with the majority
    fused, _ = dempster_shafer(maps, CODES, np.full((3, 3), 0.8))
    assert fused[0, 0] == 2


def test_ties_get_the_undecided_label_and_nodata_stays() -> None:
    maps = np.array([[[1, 0]], [[2, 0]]], dtype=np.uint8)  # a 1-vs-2 tie, and nodata
    mob = np.full((2, 3), 0.7)
    fused, agreement = dempster_shafer(maps, CODES, mob, undecided_label=255)
    assert fused.tolist() == [[255, 0]] and agreement[0, 1] == 0
    assert majority_vote(maps, CODES, undecided_label=255)[0].tolist() == [[255, 0]]
    assert majority_vote(maps, CODES)[0].tolist() == [[1, 0]]  # no label: smallest code


def test_mass_of_belief_from_a_confusion_matrix() -> None:
    cm = np.array([[8, 2, 0], [1, 6, 3], [0, 0, 10]])  # rows = reference
    np.testing.assert_allclose(mass_of_belief(cm, "precision"), [8 / 9, 6 / 8, 10 / 13])
    np.testing.assert_allclose(mass_of_belief(cm, "recall"), [0.8, 0.6, 1.0])
    np.testing.assert_allclose(mass_of_belief(cm, "accuracy"), [24 / 30] * 3)
    with pytest.raises(ConfigError, match="fusion_mob"):
        mass_of_belief(cm, "kappa")


def test_runs_fused_by_dempster_shafer(make_cfg, tiny_dataset, tmp_path: Path) -> None:
    from i2dl.stages.train import run as run_train

    agg = run_train(make_cfg(*tiny_dataset["overrides"], *FAST, "+experiment=rf", "runs=2",
                             "fusion=true", "fusion_method=dempster_shafer",
                             "fusion_undecided_label=200"))
    run = tmp_path / "run"
    maps, mob = [], []
    for i in range(2):
        with rasterio.open(run / f"seed_{i}" / "maps" / "classif.tif") as src:
            maps.append(src.read(1))
        cm = pd.read_csv(run / f"seed_{i}" / "report" / "confusion_matrix.csv", index_col=0)
        mob.append(np.diag(cm.to_numpy()) / cm.to_numpy().sum(axis=0).clip(min=1))
    maps = np.stack(maps)
    with rasterio.open(run / "final" / "Classif_Fusion.tif") as f:
        fused = f.read(1)
    assert agg["fusion"]["method"] == "dempster_shafer"
    want, _ = dempster_shafer(maps, CODES, np.array(mob), undecided_label=200)
    np.testing.assert_array_equal(fused, want)
    disagree = (maps[0] != maps[1]) & (maps > 0).all(axis=0)
    # where the two runs disagree, the run with the larger mass for its class wins
    for r, c in zip(*np.nonzero(disagree), strict=True):
        p0, p1 = mob[0][maps[0, r, c] - 1], mob[1][maps[1, r, c] - 1]
        if not np.isclose(p0, p1):
            assert fused[r, c] == (maps[0, r, c] if p0 > p1 else maps[1, r, c])


def test_a_unanimous_vote_of_low_precision_wins() -> None:
    # issue 22: both runs chose class 2 with precision 0.3. Belief of {2} = 0.3 * 0.3;
    # classes 1 and 3 were chosen by no run and are not the only unchosen class: belief 0.
    # (Their plausibility, 0.7 * 0.7, is the larger: deciding by it gave 1 or a tie.)
    maps = np.array([[[2]], [[2]]])
    mob = np.full((2, 3), 0.3)
    fused, agreement = dempster_shafer(maps, CODES, mob, undecided_label=255)
    assert fused[0, 0] == 2 and agreement[0, 0] == 1.0
    assert dempster_shafer(maps, CODES, mob)[0][0, 0] == 2


def test_the_only_unchosen_class_keeps_the_belief_left_by_every_run() -> None:
    # three classes, runs chose 1 and 2 with precision 0.4 each: the belief of {3} is
    # 0.6 * 0.6 = 0.36 (each run's "not my class" leaves only 3), above 0.4 * 0.6 = 0.24
    maps = np.array([[[1]], [[2]]])
    fused, _ = dempster_shafer(maps, CODES, np.full((2, 3), 0.4))
    assert fused[0, 0] == 3
    # with a fourth class, {3} is no longer the intersection of the complements: belief 0,
    # and 1 and 2 tie
    codes4 = np.array([1, 2, 3, 4])
    fused, _ = dempster_shafer(maps, codes4, np.full((2, 4), 0.4), undecided_label=255)
    assert fused[0, 0] == 255


def test_fused_map_scored_on_polygons_no_run_saw_and_one_final_folder(
        make_cfg, tiny_dataset, tmp_path: Path) -> None:
    import json

    import zarr

    from i2dl.samples.store import FUSION
    from i2dl.stages.train import run as run_train

    # 3 polygons per class: one per class is held apart from both runs
    agg = run_train(make_cfg(*tiny_dataset["overrides"], *FAST, "+experiment=rf", "runs=2",
                             "fusion=true", "fusion_validation_ratio=0.34",
                             "model.estimator.n_estimators=5"))
    run = tmp_path / "run"
    held, truth, rc = [], None, None
    for i in range(2):
        store = json.loads((run / f"seed_{i}" / "summary.json").read_text())["store"]
        g = zarr.open_group(store, mode="r")
        split, pid = g["split"][:], g["polygon_id"][:]
        held.append(set(pid[split == FUSION].tolist()))
        assert not held[-1] & set(pid[split != FUSION].tolist())  # never learn/val/selection
        if i == 0:
            sel = split == FUSION
            truth, rc = g["code"][:][sel], (g["row"][:][sel], g["col"][:][sel])
    assert held[0] == held[1] and len(held[0]) == 3  # the same polygons, one per class
    scores = agg["fusion"]["scores"]
    with rasterio.open(run / "final" / "Classif_Fusion.tif") as src:
        fused = src.read(1)[rc]
    assert scores["n_samples"] == len(truth)
    assert scores["oa"] == pytest.approx(float((fused == truth).mean()), abs=1e-6)
    with rasterio.open(run / "seed_1" / "maps" / "classif.tif") as src:
        run1 = src.read(1)[rc]
    assert scores["runs"]["seed_1"]["oa"] == pytest.approx(float((run1 == truth).mean()),
                                                           abs=1e-6)
    metrics = json.loads((run / "final" / "fusion_report" / "metrics.json").read_text())
    assert metrics["oa"] == scores["oa"]
    text = (run / "RESULTS.txt").read_text()
    assert "held apart from every run" in text and "seed_0" in text.split("Fusion of the runs")[1]
    # iota2's one final/ folder: every seed's products beside the fusion
    for name in ("Classif_Seed_0.tif", "Classif_Seed_1.tif", "Confidence_Seed_1.tif",
                 "Classif_Fusion.tif"):
        assert (run / "final" / name).is_file()


def test_slovenia_two_run_dempster_shafer_keeps_every_agreed_pixel(
        make_cfg, slovenia_dir, tmp_path: Path) -> None:
    # issue 22's reproduction: where both runs agree, the fusion took 255 (undecided)
    from i2dl.stages.train import run as run_train

    agg = run_train(make_cfg("+experiment=rf", *FAST, "runs=2", "fusion=true",
                             "fusion_method=dempster_shafer", "fusion_undecided_label=255",
                             "model.estimator.n_estimators=20"))
    run = tmp_path / "run"
    maps = []
    for i in range(2):
        with rasterio.open(run / f"seed_{i}" / "maps" / "classif.tif") as src:
            maps.append(src.read(1))
    with rasterio.open(run / "final" / "Classif_Fusion.tif") as src:
        fused = src.read(1)
    agree = (maps[0] == maps[1]) & (maps[0] > 0)
    assert agree.sum() > 1000
    np.testing.assert_array_equal(fused[agree], maps[0][agree])
    # no class that neither run chose (Slovenia has 5 classes: never the only unchosen one)
    chosen = (fused == maps[0]) | (fused == maps[1]) | (fused == 255)
    assert chosen[(maps[0] > 0) & (maps[1] > 0)].all()
    scores = agg["fusion"]["scores"]
    assert scores["n_samples"] > 0 and set(scores["runs"]) == {"seed_0", "seed_1"}
