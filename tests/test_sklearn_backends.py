"""scikit-learn backends: features, fitting on a store, probabilities, persistence, configs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules.pixel_series import StoreBlockDataset
from i2dl.prepare import prepare
from models.sklearn_backends import (
    SklearnBackend,
    extra_trees,
    features,
    random_forest,
    subsample_indices,
    svm,
)

#: Keys of a model node that are not estimator parameters (the pipeline removes them).
META_KEYS = ("name", "backend", "max_samples", "model_selection_criterion", "class_weights")


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


@pytest.mark.parametrize("factory", [random_forest, svm])
def test_fit_store_separable(store: Path, factory, caplog) -> None:
    backend = factory(random_state=0) if factory is svm else factory(n_estimators=20)
    with caplog.at_level(logging.INFO, logger="models.sklearn_backends"):
        backend.fit_store(store)
    assert "fitted" in caplog.text and "samples" in caplog.text
    assert backend.n_classes == 3
    val = _split(store, 1)
    proba = backend.predict_proba(val["x"], val["days"], val["mask"])
    assert isinstance(proba, torch.Tensor) and proba.dtype == torch.float32
    assert proba.shape == (len(val["y"]), 3)
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(len(proba)), atol=1e-5, rtol=0)
    acc = (proba.argmax(dim=1) == val["y"]).float().mean().item()
    assert acc > 0.9
    # __call__ gives log-probabilities: same argmax, softmax gives the probabilities back
    logp = backend.eval().to("cpu")(val["x"], val["days"], val["mask"])
    torch.testing.assert_close(torch.softmax(logp, dim=1), proba, atol=1e-5, rtol=0)
    assert torch.equal(logp.argmax(dim=1), proba.argmax(dim=1))


def test_save_load_roundtrip(store: Path, tmp_path: Path) -> None:
    backend = svm().fit_store(store)
    path = tmp_path / "ckpt" / "model.joblib"
    assert backend.save(path) == path
    assert [p.name for p in path.parent.iterdir()] == ["model.joblib"]  # no temp file
    loaded = SklearnBackend.load(path)
    assert loaded.n_classes == 3 and loaded.name == "svm" and loaded.standardize
    val = _split(store, 1)
    args = (val["x"], val["days"], val["mask"])
    assert torch.equal(loaded.predict_proba(*args), backend.predict_proba(*args))
    assert torch.equal(loaded(*args), backend(*args))


def test_load_other_sklearn_version_warns(store: Path, tmp_path: Path, caplog) -> None:
    import joblib

    path = random_forest(n_estimators=5).fit_store(store).save(tmp_path / "m.joblib")
    payload = joblib.load(path)
    payload["sklearn_version"] = "0.1.0"
    joblib.dump(payload, path)
    with caplog.at_level(logging.WARNING, logger="models.sklearn_backends"):
        SklearnBackend.load(path)
    assert "0.1.0" in caplog.text


def test_missing_class_gets_zero_column() -> None:
    rng = np.random.default_rng(0)
    b, t, c = 60, 5, 2
    y = np.repeat([0, 2], b // 2)  # class 1 never seen
    x = (y[:, None, None] + rng.normal(0, 0.1, (b, t, c))).astype(np.float32)
    days = np.tile(np.arange(t) * 10, (b, 1))
    mask = np.ones((b, t), dtype=bool)
    args = (torch.from_numpy(x), torch.from_numpy(days), torch.from_numpy(mask))
    for factory in (random_forest, svm, extra_trees):
        backend = factory().fit(features(x, days, mask), y, n_classes=3)
        proba = backend.predict_proba(*args)
        assert proba.shape == (b, 3)
        assert torch.all(proba[:, 1] == 0)
        torch.testing.assert_close(proba.sum(dim=1), torch.ones(b), atol=1e-5, rtol=0)
        assert torch.equal(proba.argmax(dim=1), torch.from_numpy(y))
        assert torch.isneginf(backend(*args)[:, 1]).all()


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


def test_fit_store_max_samples(store: Path, caplog) -> None:
    n_learn = _split(store, 0)["y"].shape[0]
    with caplog.at_level(logging.INFO, logger="models.sklearn_backends"):
        backend = random_forest(n_estimators=5).fit_store(store, max_samples=12, seed=1)
    assert n_learn > 12
    assert backend.meta["n_samples"] == 12
    assert backend.meta["classes_present"] == [0, 1, 2]
    assert f"12 of {n_learn}" in caplog.text


@pytest.mark.parametrize("name", ["rf", "svm", "extra_trees"])
def test_configs_instantiate(make_cfg, name: str) -> None:
    cfg = make_cfg(f"+experiment={name}", "seed=7")
    assert cfg.model.backend == "sklearn" and cfg.experiment_name == name
    params = OmegaConf.to_container(cfg.model, resolve=True)
    for key in META_KEYS:
        params.pop(key, None)
    backend = instantiate(params, _convert_="all")
    assert isinstance(backend, SklearnBackend) and backend.name == name
    assert backend._classifier.random_state == 7


def test_svm_single_sample_class_falls_back(caplog) -> None:
    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [1] * 20 + [2])  # class 2: one sample, no calibration fold
    feats = (y[:, None] + rng.normal(0, 0.1, (len(y), 4))).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="models.sklearn_backends"):
        backend = svm().fit(feats, y, n_classes=3)
    assert "single learn sample" in caplog.text
    proba = backend.estimator.predict_proba(feats)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert (proba.argmax(axis=1)[:40] == y[:40]).all()
