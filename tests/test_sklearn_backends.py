"""scikit-learn classifiers: features, fitting on a store, probabilities, persistence, configs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.pixel_series import StoreBlockDataset
from i2dl.samples.extract import prepare
from i2dl.samples.store import read_info
from i2dl.training.build import DataDims, build_classifier
from i2dl.training.loops import fit_estimator, subsample_indices
from models import CalibratedSVC, SklearnClassifier
from models.sklearn_backends import features


def _rf(n_classes: int = 3, **kw) -> SklearnClassifier:
    from sklearn.ensemble import RandomForestClassifier

    return SklearnClassifier(RandomForestClassifier(n_estimators=20, random_state=0), n_classes,
                             name="rf", **kw)


def _svm(n_classes: int = 3, **kw) -> SklearnClassifier:
    return SklearnClassifier(CalibratedSVC(random_state=0), n_classes, standardize=True,
                             name="svm", **kw)


def _et(n_classes: int = 3) -> SklearnClassifier:
    from sklearn.ensemble import ExtraTreesClassifier

    return SklearnClassifier(ExtraTreesClassifier(random_state=0), n_classes, name="et")


def _reference_features(x: np.ndarray, days: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """numpy.interp gap-filling per pixel and channel, flattened date-major."""
    b, t, c = x.shape
    out = np.zeros((b, t, c), dtype=np.float64)
    for i in range(b):
        valid = mask[i]
        if not valid.any():
            continue
        for ch in range(c):
            out[i, :, ch] = np.interp(days[i], days[i][valid], x[i, valid, ch])
    return out.reshape(b, t * c)


@pytest.fixture
def store(make_cfg, tiny_dataset) -> Path:
    return Path(prepare(make_cfg(*tiny_dataset["overrides"])))


def _split(store: Path, split: int) -> dict[str, torch.Tensor]:
    batches = list(StoreBlockDataset(store, split, batch_size=100000))
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def test_features_match_numpy_interp() -> None:
    rng = np.random.default_rng(1)
    b, t, c = 40, 7, 3  # T differs from the tiny store's 6
    x = rng.normal(size=(b, t, c)).astype(np.float32)
    days = np.sort(rng.choice(300, size=(b, t), replace=False), axis=1).astype(np.int64)
    mask = rng.random((b, t)) > 0.4
    mask[0] = False  # no valid date -> zeros
    mask[1] = False
    mask[1, 3] = True  # one valid date -> constant
    mask[2] = True  # all valid -> unchanged
    x_in = np.where(mask[..., None], x, 0.0).astype(np.float32)
    expected = _reference_features(x_in, days, mask)
    got_np = features(x_in, days, mask)
    got_t = features(torch.from_numpy(x_in), torch.from_numpy(days), torch.from_numpy(mask))
    assert got_np.dtype == np.float32 and got_np.shape == (b, t * c)
    np.testing.assert_allclose(got_np, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_np, got_t)
    np.testing.assert_array_equal(got_np[0], 0.0)
    np.testing.assert_array_equal(got_np[2], x_in[2].reshape(-1))  # date-major t*C + c


@pytest.mark.parametrize("make", [_rf, _svm])
def test_fit_store_separable(store: Path, make, tmp_path: Path, caplog) -> None:
    clf = make()
    with caplog.at_level(logging.INFO, logger="models.sklearn_backends"):
        path = fit_estimator(clf, store, tmp_path, region=None, seed=0)
    assert path == tmp_path / "checkpoints" / "model.joblib" and path.is_file()
    assert "fitted" in caplog.text and "samples" in caplog.text
    val = _split(store, 1)
    proba = clf.predict_proba(val["x"], val["days"], val["mask"])
    assert isinstance(proba, torch.Tensor) and proba.dtype == torch.float32
    assert proba.shape == (len(val["y"]), 3)
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(len(proba)), atol=1e-5, rtol=0)
    acc = (proba.argmax(dim=1) == val["y"]).float().mean().item()
    assert acc > 0.9


def test_save_load_roundtrip(store: Path, tmp_path: Path) -> None:
    clf = _svm()
    path = fit_estimator(clf, store, tmp_path, region=None, seed=0)
    assert [p.name for p in path.parent.iterdir()] == ["model.joblib"]  # no temp file
    loaded = _svm()
    with pytest.raises(Exception, match="not fitted"):
        loaded.predict_proba(torch.zeros(1, 6, 1), torch.zeros(1, 6, dtype=torch.long),
                             torch.ones(1, 6, dtype=torch.bool))
    loaded.load_weights(path)
    assert loaded.n_classes == 3 and loaded.standardize
    val = _split(store, 1)
    args = (val["x"], val["days"], val["mask"])
    assert torch.equal(loaded.predict_proba(*args), clf.predict_proba(*args))
    with pytest.raises(Exception, match="fitted for 3 classes"):
        _svm(n_classes=4).load_weights(path)


def test_load_other_sklearn_version_warns(store: Path, tmp_path: Path, caplog) -> None:
    import joblib

    path = fit_estimator(_rf(), store, tmp_path, region=None, seed=0)
    payload = joblib.load(path)
    payload["sklearn_version"] = "0.1.0"
    joblib.dump(payload, path)
    with caplog.at_level(logging.WARNING, logger="models.sklearn_backends"):
        _rf().load_weights(path)
    assert "0.1.0" in caplog.text


def test_missing_class_gets_zero_column() -> None:
    rng = np.random.default_rng(0)
    b, t, c = 60, 5, 2
    y = np.repeat([0, 2], b // 2)  # class 1 never seen
    x = (y[:, None, None] + rng.normal(0, 0.1, (b, t, c))).astype(np.float32)
    days = np.tile(np.arange(t) * 10, (b, 1))
    mask = np.ones((b, t), dtype=bool)
    args = (torch.from_numpy(x), torch.from_numpy(days), torch.from_numpy(mask))
    for make in (_rf, _svm, _et):
        clf = make().fit(*args, torch.from_numpy(y))
        proba = clf.predict_proba(*args)
        assert proba.shape == (b, 3)
        assert torch.all(proba[:, 1] == 0)
        torch.testing.assert_close(proba.sum(dim=1), torch.ones(b), atol=1e-5, rtol=0)
        assert torch.equal(proba.argmax(dim=1), torch.from_numpy(y))


def test_subsample_keeps_every_class_and_count() -> None:
    y = np.array([0] * 1000 + [1] * 50 + [2] * 3 + [3] * 1)
    for n in (10, 100, 333):
        idx = subsample_indices(y, n, seed=3)
        assert len(idx) == n and len(np.unique(idx)) == n
        assert set(y[idx]) == {0, 1, 2, 3}
        np.testing.assert_array_equal(idx, subsample_indices(y, n, seed=3))  # seeded
    assert len(subsample_indices(y, 2, seed=0)) == 4  # one per class beats the cap
    assert len(subsample_indices(y, None)) == len(y)
    assert len(subsample_indices(y, 10**6)) == len(y)


def test_fit_store_max_samples(store: Path, tmp_path: Path, caplog) -> None:
    # scikit-learn models select nothing: they fit on learn + selection
    n_learn = _split(store, 0)["y"].shape[0] + _split(store, 2)["y"].shape[0]
    clf = _rf(max_samples=12)
    with caplog.at_level(logging.INFO, logger="i2dl.training.loops"):
        fit_estimator(clf, store, tmp_path, region=None, seed=1)
    assert n_learn > 12
    assert clf.meta["n_samples"] == 12
    assert clf.meta["classes_present"] == [0, 1, 2]
    assert f"12 of {n_learn}" in caplog.text


@pytest.mark.parametrize("name", ["rf", "svm", "extra_trees"])
def test_configs_build_through_the_one_build_path(make_cfg, store: Path, name: str) -> None:
    cfg = make_cfg(f"+experiment={name}", "seed=7")
    assert cfg.experiment_name == name
    clf = build_classifier(cfg.model, DataDims.of(read_info(store)))
    assert isinstance(clf, SklearnClassifier) and clf.name == name and clf.n_classes == 3
    assert clf._classifier.random_state == 7


def test_estimator_without_predict_proba_is_refused() -> None:
    from sklearn.svm import LinearSVC

    with pytest.raises(ValueError, match="predict_proba"):
        SklearnClassifier(LinearSVC(), 3)


def test_svm_single_sample_class_falls_back(caplog) -> None:
    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [1] * 20 + [2])  # class 2: one sample, no calibration fold
    feats = (y[:, None] + rng.normal(0, 0.1, (len(y), 4))).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="models.sklearn_backends"):
        est = CalibratedSVC(random_state=0).fit(feats, y)
    assert "single learn sample" in caplog.text
    proba = est.predict_proba(feats)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert (proba.argmax(axis=1)[:40] == y[:40]).all()
