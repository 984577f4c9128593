"""Conventional classifiers (scikit-learn) on the same samples as the deep models.

iota2 keeps its conventional classifiers (OTB, scikit-learn) beside its deep-learning
workflow and feeds them the gap-filled series flattened into one feature vector per pixel
(``sensors_data_interpolation``, then one feature per date and band). i2dl does the same:

* :func:`features` gap-fills (:func:`i2dl.features.gapfill.linear_gapfill`) and flattens
  the normalised series date-major; it is the one place features are made, for training
  and for inference, so both see exactly the same numbers;
* :class:`SklearnClassifier` wraps an unfitted estimator (optionally behind a
  ``StandardScaler`` in a ``Pipeline``, saved with the model) behind the same
  ``predict_proba(x, days, mask) -> (B, K)`` protocol as the deep models; the configs
  ``configs/model/{rf,svm,extra_trees}.yaml`` name the estimator in an ``estimator:`` node;
* :class:`CalibratedSVC`: an RBF SVM with Platt-calibrated probabilities.

Class columns are class **indices** 0..K-1 (position of the code in
``StoreInfo.class_codes``), as for the deep models. Reading a store is not done here:
:mod:`i2dl.training.loops` reads the learn split and calls :meth:`SklearnClassifier.fit`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from i2dl.errors import ConfigError, StoreError
from i2dl.features.gapfill import linear_gapfill
from i2dl.io.files import atomic_path

log = logging.getLogger(__name__)

#: ``format`` entry of a saved backend file.
BACKEND_FORMAT = "i2dl-sklearn-backend"
#: Version of the saved backend file layout.
BACKEND_VERSION = 1

ArrayLike = torch.Tensor | np.ndarray


def _as_cpu_tensor(a: ArrayLike) -> torch.Tensor:
    """A torch tensor on the CPU (numpy arrays are wrapped, copied only if read-only)."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    a = np.asarray(a)
    if not a.flags.writeable or not a.flags.c_contiguous:
        a = np.array(a, copy=True, order="C")
    return torch.from_numpy(a)


def features(
    x: ArrayLike, days: ArrayLike, mask: ArrayLike, static_channels: Sequence[int] = ()
) -> np.ndarray:
    """Gap-filled, flattened features of pixel series (iota2's conventional-classifier input).

    Invalid observations are replaced by linear interpolation in time between the nearest
    valid ones (:func:`i2dl.features.gapfill.linear_gapfill`; the first/last valid value is
    repeated at the ends, a series with no valid date becomes zeros), then each series is
    flattened date-major: feature ``t * C' + c`` is dated channel ``c`` at date ``t``.
    Static channels (user / external features, the same value at every date) follow, once
    each (their value at the first date after gap-filling), as iota2 appends a
    date-independent feature once to the feature vector. Computed on the CPU whatever the
    input device, so training and inference features are identical.

    Args:
        x: (B, T, C) float, series normalised by the store statistics (torch tensor on any
            device, or numpy array); values at invalid dates are ignored.
        days: (B, T) int64, days since the reference date.
        mask: (B, T) bool, True = valid observation.
        static_channels: indices of the S static channels among the C.

    Returns:
        (B, T * (C - S) + S) float32 numpy array.

    Raises:
        ValueError: shapes differ (``days`` and ``mask`` must be ``x.shape[:2]``).
    """
    xt = _as_cpu_tensor(x).float()
    dt = _as_cpu_tensor(days)
    mt = _as_cpu_tensor(mask).bool()
    filled = linear_gapfill(xt, dt, mt)
    b, t, c = filled.shape
    if not static_channels:
        return filled.reshape(b, t * c).numpy().astype(np.float32, copy=False)
    static = sorted({int(i) for i in static_channels})
    dated = [i for i in range(c) if i not in static]
    flat = filled[:, :, dated].reshape(b, t * len(dated))
    return torch.cat([flat, filled[:, 0, static]], dim=1).numpy().astype(np.float32, copy=False)


class SklearnClassifier:
    """A scikit-learn estimator behind i2dl's :class:`~models.base.Classifier` protocol.

    Built, like the deep models, by ``hydra.utils.instantiate`` of the model config
    (``configs/model/rf.yaml``: ``_target_: models.SklearnClassifier`` with an
    ``estimator:`` node naming any scikit-learn classifier that has ``predict_proba``).
    The fitting stage (:func:`i2dl.training.loops.fit_estimator`) reads the learn split and calls
    :meth:`fit`; evaluation and inference call :meth:`predict_proba`.

    Args:
        estimator: an unfitted scikit-learn classifier with ``predict_proba``.
        n_classes: K, the number of class columns of the outputs (class indices 0..K-1).
        standardize: put a ``StandardScaler`` in front (``Pipeline([("scaler", ...),
            ("clf", estimator)])``), so the scaling is fitted and saved with the model.
        max_samples: cap on the learn samples used for fitting (a per-class proportional
            draw, every class kept; iota2 holds the conventional classifiers' training set
            in memory and RBF SVMs cost O(n^2)); None = all.
        name: model name, for logs and the saved file.
        static_channels: indices of the date-independent input channels (user / external
            features): each becomes one feature, not one per date (:func:`features`).

    Attributes:
        estimator: the estimator or the scaler + estimator pipeline.
        meta: fit information (samples, features, time), saved with the model.

    Raises:
        ConfigError: ``estimator`` has no ``fit``/``predict_proba``, ``n_classes`` < 1 or
            ``max_samples`` < 1.
    """

    def __init__(
        self,
        estimator: BaseEstimator,
        n_classes: int,
        standardize: bool = False,
        max_samples: int | None = None,
        name: str = "",
        static_channels: Sequence[int] | None = None,
    ) -> None:
        if not hasattr(estimator, "fit") or not hasattr(estimator, "predict_proba"):
            raise ConfigError(
                f"model.estimator must be a scikit-learn classifier with fit and "
                f"predict_proba, got {estimator!r}"
            )
        if isinstance(n_classes, bool) or int(n_classes) < 1:
            raise ConfigError(f"SklearnClassifier: n_classes must be >= 1, got {n_classes!r}")
        if max_samples is not None and int(max_samples) < 1:
            raise ConfigError(
                f"model.max_samples must be null (all samples) or >= 1, got {max_samples}"
            )
        self.standardize = bool(standardize)
        self.static_channels = sorted({int(c) for c in static_channels or []})
        self.name = name
        self.n_classes = int(n_classes)
        self.max_samples = None if max_samples is None else int(max_samples)
        self.estimator: BaseEstimator = (
            Pipeline([("scaler", StandardScaler()), ("clf", estimator)])
            if standardize
            else estimator
        )
        self.fitted = False
        self.meta: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (
            f"SklearnClassifier(name={self.name!r}, n_classes={self.n_classes}, "
            f"estimator={self.estimator!r})"
        )

    def to(self, device: Any) -> SklearnClassifier:
        """No-op: the estimator always runs on the CPU; returns self."""
        return self

    # ------------------------------------------------------------ fitting

    def fit(
        self, x: ArrayLike, days: ArrayLike, mask: ArrayLike, y: ArrayLike
    ) -> SklearnClassifier:
        """Fit on pixel series (gap-filled and flattened by :func:`features`).

        Args:
            x: (N, T, C) float32, series normalised by the store statistics.
            days: (N, T) int64, days since the reference date.
            mask: (N, T) bool, True = valid observation.
            y: (N,) int class indices in 0..K-1.

        Returns:
            self.

        Raises:
            ConfigError: no sample, or a class index outside 0..K-1.
        """
        feats = features(x, days, mask, self.static_channels)
        labels = _as_cpu_tensor(y).numpy().astype(np.int64, copy=False)
        k = self.n_classes
        if len(labels) == 0 or len(feats) != len(labels):
            raise ConfigError(
                f"cannot fit {self.name or 'model'}: {len(feats)} series, {len(labels)} labels"
            )
        if labels.min() < 0 or labels.max() >= k:
            raise ConfigError(
                f"class indices must lie in 0..{k - 1}, got {labels.min()}..{labels.max()}"
            )
        start = time.perf_counter()
        self.estimator.fit(feats, labels)
        elapsed = time.perf_counter() - start
        self.fitted = True
        present = np.unique(labels)
        self.meta.update(
            n_samples=int(len(labels)),
            n_features=int(feats.shape[1]),
            fit_seconds=round(elapsed, 3),
            classes_present=present.tolist(),
        )
        if len(present) < k:
            log.warning(
                "%s: classes %s have no learn sample; their probability is 0",
                self.name or "model",
                sorted(set(range(k)) - set(present.tolist())),
            )
        log.info(
            "fitted %s on %d samples x %d features (%d classes) in %.1f s",
            self.name or type(self._classifier).__name__,
            len(labels),
            feats.shape[1],
            k,
            elapsed,
        )
        return self

    # ------------------------------------------------------------ prediction

    @property
    def _classifier(self) -> BaseEstimator:
        return (
            self.estimator.steps[-1][1] if isinstance(self.estimator, Pipeline) else self.estimator
        )

    def predict_proba(self, x: ArrayLike, days: ArrayLike, mask: ArrayLike) -> torch.Tensor:
        """Class probabilities (the :class:`~models.base.Classifier` protocol).

        Args:
            x: (B, T, C) float32, series normalised by the store statistics, any device.
            days: (B, T) int64, days since the reference date.
            mask: (B, T) bool, True = valid observation.

        Returns:
            (B, K) float32 CPU tensor, column i = class index i; a class the estimator
            never saw has probability 0.

        Raises:
            StoreError: the estimator is not fitted.
            ValueError: shapes differ, or T * C differs from the fitted feature count.
        """
        if not self.fitted:
            raise StoreError(f"{self.name or 'model'} is not fitted: fit it or load_weights")
        feats = features(x, days, mask, self.static_channels)
        n_feat = self.meta.get("n_features")
        if n_feat is not None and feats.shape[1] != n_feat:
            raise ValueError(
                f"{self.name or 'model'} was fitted on {n_feat} features (dates x channels), "
                f"got {feats.shape[1]}: use a raster with the store's dates and bands"
            )
        out = np.zeros((len(feats), self.n_classes), dtype=np.float32)
        if len(feats):
            proba = self.estimator.predict_proba(feats)
            cols = np.asarray(self.estimator.classes_, dtype=np.int64)
            out[:, cols] = proba
        return torch.from_numpy(out)

    # ------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Save the fitted estimator, class count and metadata with joblib, atomically.

        Returns:
            ``path``.
        """
        payload = {
            "format": BACKEND_FORMAT,
            "version": BACKEND_VERSION,
            "name": self.name,
            "standardize": self.standardize,
            "n_classes": self.n_classes,
            "estimator": self.estimator,
            "meta": dict(self.meta),
            "sklearn_version": sklearn.__version__,
        }
        with atomic_path(Path(path)) as tmp:
            joblib.dump(payload, tmp)
        log.info("saved %s to %s", self.name or "scikit-learn model", path)
        return Path(path)

    def load_weights(self, path: str | Path) -> None:
        """Restore the fitted estimator written by :meth:`save`.

        Only load files you trust: joblib files are pickles and run code when loaded.
        A file saved with another scikit-learn major.minor version loads with a warning
        (scikit-learn does not guarantee models across versions).

        Raises:
            StoreError: no file at ``path``, a truncated or damaged file, not a saved
                model, or a model with another number of classes.
        """
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"no scikit-learn model at {path}; run `python -m i2dl fit` first")
        try:
            payload = joblib.load(path)
        except Exception as exc:  # truncated or garbled: EOFError, UnpicklingError, zlib...
            raise StoreError(
                f"cannot load the scikit-learn model {path}: it is truncated or damaged "
                f"({type(exc).__name__}: {exc}); refit it with `python -m i2dl fit` (same "
                "overrides, hydra.run.dir=<this run folder>)"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != BACKEND_FORMAT:
            raise StoreError(f"{path} is not an i2dl scikit-learn model (format {BACKEND_FORMAT})")
        if int(payload["n_classes"]) != self.n_classes:
            raise StoreError(
                f"{path} was fitted for {payload['n_classes']} classes, the model config has "
                f"{self.n_classes}; fit again with `python -m i2dl fit`"
            )
        saved = str(payload.get("sklearn_version", "?"))
        if saved.split(".")[:2] != sklearn.__version__.split(".")[:2]:
            log.warning(
                "%s was saved with scikit-learn %s and is loaded with %s: predictions may "
                "differ or fail; refit the model with this version if they do",
                path,
                saved,
                sklearn.__version__,
            )
        self.standardize = bool(payload["standardize"])
        self.estimator = payload["estimator"]
        self.meta = dict(payload.get("meta", {}))
        self.fitted = True


class CalibratedSVC(ClassifierMixin, BaseEstimator):
    """RBF ``SVC`` with sigmoid (Platt) probabilities calibrated by cross-validation.

    What ``SVC(probability=True)`` did (Platt 1999; deprecated in scikit-learn 1.9, removed
    in 1.11), written as scikit-learn recommends: ``CalibratedClassifierCV(SVC(),
    method="sigmoid", ensemble=False)`` -- the calibrators are fitted on out-of-fold
    decision values, the SVC on all samples. The number of folds is lowered to the size
    of the smallest class (a subsample may hold very few samples of a class); with a
    class of a single sample no fold can be made, and the probabilities fall back to a
    softmax of the one-vs-rest decision values (a warning says so).

    Args:
        C: regularisation.
        gamma: RBF kernel coefficient.
        class_weight: None, ``"balanced"`` or {class: weight}.
        random_state: seed of the (shuffled, stratified) calibration folds.
        n_splits: calibration folds at most.
    """

    def __init__(
        self,
        C: float = 1.0,  # noqa: N803 (scikit-learn's name)
        gamma: str | float = "scale",
        class_weight: str | dict | None = None,
        random_state: int | None = None,
        n_splits: int = 5,
    ) -> None:
        self.C = C
        self.gamma = gamma
        self.class_weight = class_weight
        self.random_state = random_state
        self.n_splits = n_splits

    def fit(self, X: np.ndarray, y: np.ndarray) -> CalibratedSVC:  # noqa: N803
        """Fit the SVC and its calibration.

        Raises:
            ValueError: fewer than 2 classes in ``y``.
        """
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2:
            raise ValueError(f"an SVM needs at least 2 classes, got {classes.tolist()}")
        svc = SVC(C=self.C, kernel="rbf", gamma=self.gamma, class_weight=self.class_weight)
        folds = int(min(self.n_splits, counts.min()))
        if folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            self.model_ = CalibratedClassifierCV(svc, method="sigmoid", cv=cv, ensemble=False).fit(
                X, y
            )
        else:
            log.warning(
                "SVM: a class has a single learn sample, probabilities cannot be calibrated "
                "by cross-validation; using a softmax of the decision values"
            )
            self.model_ = svc.fit(X, y)
        self.calibrated_ = folds >= 2
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """(N, n_classes_seen) probabilities, columns in ``classes_`` order."""
        if self.calibrated_:
            return self.model_.predict_proba(X)
        d = self.model_.decision_function(X)
        if d.ndim == 1:  # binary: decision value of classes_[1]
            d = np.stack([-d, d], axis=1)
        e = np.exp(d - d.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """Class of highest probability."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
