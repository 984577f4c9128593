"""One definition of the accuracy metrics, shared by checkpoint selection and the reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, precision_score

from i2dl.evaluation.metrics import confusion_matrix, scores
from tests.conftest import FAST, SMALL_LTAE


def test_macro_f1_over_reference_classes_only() -> None:
    # the example: class 2 is only predicted, never in the reference
    sc = scores(confusion_matrix([0, 0, 1, 1], [0, 2, 1, 1], 3))
    assert sc.f1 == [pytest.approx(2 / 3), pytest.approx(1.0), 0.0]
    assert sc.f1_macro == pytest.approx(5 / 6)
    assert sc.recall[2] is None and sc.precision[2] == 0.0
    assert sc.oa == pytest.approx(0.75)


def test_scores_match_scikit_learn_on_random_labels() -> None:
    rng = np.random.default_rng(3)
    k = 6
    for _ in range(20):
        t = rng.integers(0, k - 1, 300)  # class k-1 never in the reference
        p = np.where(rng.random(300) < 0.6, t, rng.integers(0, k, 300))
        sc = scores(confusion_matrix(t, p, k))
        present = np.unique(t)
        assert sc.oa == pytest.approx(accuracy_score(t, p))
        assert sc.kappa == pytest.approx(cohen_kappa_score(t, p))
        assert sc.f1_macro == pytest.approx(f1_score(t, p, labels=present, average="macro"))
        assert sc.precision_macro == pytest.approx(
            precision_score(t, p, labels=present, average="macro", zero_division=0)
        )
        np.testing.assert_allclose(
            [v for v in sc.f1[: k - 1]], f1_score(t, p, labels=range(k - 1), average=None)
        )


def test_undefined_values() -> None:
    sc = scores(confusion_matrix([1, 1], [1, 1], 3))  # one class, perfectly predicted
    assert sc.kappa is None and sc.oa == 1.0 and sc.f1_macro == 1.0
    assert sc.f1[0] is None and sc.precision[0] is None
    empty = scores(np.zeros((2, 2)))
    assert empty.oa is None and empty.f1_macro is None
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="K, K"):
        scores(np.zeros((2, 3)))


def test_checkpoint_score_equals_reported_score(make_cfg, slovenia_dir: Path,
                                               tmp_path: Path) -> None:
    """The selection/fscore the best checkpoint was chosen on is the macro F1 that the report
    function prints for that checkpoint's predictions of the selection split.

    On real data (Slovenia, 2 epochs of a small LTAE) the score is far from 1, and the
    selection split holds classes that the model confuses with classes absent from it.
    """
    from i2dl.evaluation.run_report import compute_metrics
    from i2dl.samples.store import SELECTION
    from i2dl.stages.evaluate import predict_split
    from i2dl.stages.fit import run as run_fit
    from i2dl.stages.prepare import run as run_prepare
    from i2dl.training.build import load_classifier

    # the selection-chosen checkpoint itself (no refit on all labels, which selects nothing)
    cfg = make_cfg("+experiment=ltae", *FAST, *SMALL_LTAE, "refit=false")
    store = run_prepare(cfg)
    best = run_fit(cfg, store=store)
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    states = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert len(states) == 1 and states[0]["monitor"] == "selection/fscore"
    selected_on = float(states[0]["best_model_score"])
    model, info = load_classifier(tmp_path / "run", "best")
    y_true, y_pred = predict_split(model, store, SELECTION)
    printed = compute_metrics(y_true, y_pred, info.class_codes)["f1_macro"]
    assert printed == pytest.approx(selected_on, abs=1e-6)
    assert 0.05 < selected_on < 0.95
