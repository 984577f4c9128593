"""Conventional classifiers (scikit-learn) on the sample store, next to the deep models.

iota2 keeps its conventional classifiers (OTB, scikit-learn) beside its deep-learning
workflow and feeds them the gap-filled series flattened into one feature vector per pixel
(``sensors_data_interpolation``, then one feature per date and band). i2dl does the same:

* :func:`features` gap-fills (:func:`models.gapfill.linear_gapfill`) and flattens the
  normalised series date-major; it is the one place features are made, for training and
  for inference, so both see exactly the same numbers;
* :class:`SklearnBackend` wraps an unfitted estimator (optionally behind a
  ``StandardScaler`` in a ``Pipeline``, saved with the model), fits it on the learn split
  of a store, and behaves like a torch classifier where the pipeline needs it:
  ``backend(x, days, mask)`` gives (B, K) log-probabilities, ``predict_proba`` the
  probabilities, ``eval()``/``to()`` are no-ops;
* :func:`random_forest`, :func:`svm`, :func:`extra_trees` are the factories that the Hydra
  configs ``configs/model/{rf,svm,extra_trees}.yaml`` point at.

Class columns are class **indices** 0..K-1 (position of the code in
``StoreInfo.class_codes``), as for the deep models.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from i2dl.errors import ConfigError, StoreError
from models.gapfill import linear_gapfill

log = logging.getLogger(__name__)

#: ``format`` entry of a saved backend file.
BACKEND_FORMAT = "i2dl-sklearn-backend"
#: Version of the saved backend file layout.
BACKEND_VERSION = 1
#: Samples per batch when the learn split is read for fitting.
FIT_BATCH_SIZE = 65536

ArrayLike = torch.Tensor | np.ndarray


def _as_cpu_tensor(a: ArrayLike) -> torch.Tensor:
    """A torch tensor on the CPU (numpy arrays are wrapped, copied only if read-only)."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    a = np.asarray(a)
    if not a.flags.writeable or not a.flags.c_contiguous:
        a = np.array(a, copy=True, order="C")
    return torch.from_numpy(a)


def features(x: ArrayLike, days: ArrayLike, mask: ArrayLike) -> np.ndarray:
    """Gap-filled, flattened features of pixel series (iota2's conventional-classifier input).

    Invalid observations are replaced by linear interpolation in time between the nearest
    valid ones (:func:`models.gapfill.linear_gapfill`; the first/last valid value is
    repeated at the ends, a series with no valid date becomes zeros), then each series is
    flattened date-major: feature ``t * C + c`` is channel ``c`` at date ``t``. Computed on
    the CPU whatever the input device, so training and inference features are identical.

    Args:
        x: (B, T, C) float, series normalised by the store statistics (torch tensor on any
            device, or numpy array); values at invalid dates are ignored.
        days: (B, T) int64, days since the reference date.
        mask: (B, T) bool, True = valid observation.

    Returns:
        (B, T * C) float32 numpy array.

    Raises:
        ValueError: shapes differ (``days`` and ``mask`` must be ``x.shape[:2]``).
    """
    xt = _as_cpu_tensor(x).float()
    dt = _as_cpu_tensor(days)
    mt = _as_cpu_tensor(mask).bool()
    filled = linear_gapfill(xt, dt, mt)
    b, t, c = filled.shape
    return filled.reshape(b, t * c).numpy().astype(np.float32, copy=False)


def _allocate(counts: np.ndarray, target: int) -> np.ndarray:
    """Samples to keep per class: at least 1 per present class, the rest proportional.

    Args:
        counts: (K,) int, samples available per class.
        target: total wanted, ``< counts.sum()``.

    Returns:
        (K,) int64, each ``<= counts``; sums to ``max(target, present classes)``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    alloc = np.minimum(counts, 1)
    remaining = target - int(alloc.sum())
    if remaining <= 0:
        return alloc
    room = counts - alloc
    share = remaining * room / room.sum()  # remaining < room.sum(): share_k < room_k
    extra = np.floor(share).astype(np.int64)
    left = remaining - int(extra.sum())
    if left > 0:  # largest remainders first; stable order for ties
        order = np.argsort(-(share - extra), kind="stable")
        extra[order[:left]] += 1
    return alloc + extra


def subsample_indices(y: np.ndarray, max_samples: int | None, seed: int = 0) -> np.ndarray:
    """Rows to keep for fitting: all, or ``max_samples`` drawn per class.

    Per-class counts are proportional to the class sizes, with at least one sample of
    every class present (a class is never dropped; if ``max_samples`` is smaller than the
    number of classes present, one per class is kept and a warning logged). Rows are drawn
    without replacement by ``numpy.random.default_rng(seed)``.

    Args:
        y: (N,) int class indices.
        max_samples: cap on the number of rows; None keeps all.
        seed: RNG seed.

    Returns:
        Sorted (n,) int64 row positions into ``y``.

    Raises:
        ConfigError: ``max_samples`` < 1.
    """
    y = np.asarray(y)
    n = len(y)
    if max_samples is None or max_samples >= n:
        return np.arange(n, dtype=np.int64)
    if int(max_samples) < 1:
        raise ConfigError(
            f"model.max_samples must be null (all samples) or >= 1, got {max_samples}"
        )
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    if max_samples < len(classes):
        log.warning(
            "model.max_samples=%d is below the %d classes present: keeping 1 sample per class",
            max_samples,
            len(classes),
        )
    alloc = _allocate(counts, int(max_samples))
    rng = np.random.default_rng(seed)
    keep = [
        rng.choice(np.flatnonzero(inverse == k), size=int(a), replace=False)
        for k, a in enumerate(alloc)
    ]
    return np.sort(np.concatenate(keep)).astype(np.int64)


class SklearnBackend:
    """A scikit-learn classifier used like i2dl's torch classifiers.

    Args:
        estimator: an unfitted scikit-learn classifier with ``predict_proba``.
        standardize: put a ``StandardScaler`` in front (``Pipeline([("scaler", ...),
            ("clf", estimator)])``), so the scaling is fitted and saved with the model.
        name: model name, for logs and the saved file.

    Attributes:
        estimator: the estimator or the scaler + estimator pipeline.
        n_classes: K, the number of class columns of the outputs (None before fitting).
        meta: fit information (samples, features, time, store), saved with the model.
    """

    def __init__(self, estimator: BaseEstimator, standardize: bool = False, name: str = "") -> None:
        if not hasattr(estimator, "fit"):
            raise ConfigError(f"SklearnBackend needs a scikit-learn estimator, got {estimator!r}")
        self.standardize = bool(standardize)
        self.name = name
        self.estimator: BaseEstimator = (
            Pipeline([("scaler", StandardScaler()), ("clf", estimator)])
            if standardize
            else estimator
        )
        self.n_classes: int | None = None
        self.meta: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (
            f"SklearnBackend(name={self.name!r}, n_classes={self.n_classes}, "
            f"estimator={self.estimator!r})"
        )

    # ------------------------------------------------------------ torch-module look-alike

    def eval(self) -> SklearnBackend:
        """No-op (for code written for torch modules); returns self."""
        return self

    def train(self, mode: bool = True) -> SklearnBackend:
        """No-op (for code written for torch modules); returns self."""
        return self

    def to(self, *args: Any, **kwargs: Any) -> SklearnBackend:
        """No-op: the estimator always runs on the CPU; returns self."""
        return self

    # ------------------------------------------------------------ fitting

    def fit(self, feats: np.ndarray, y: np.ndarray, n_classes: int | None = None) -> SklearnBackend:
        """Fit on ready-made features.

        Args:
            feats: (N, F) float32, from :func:`features`.
            y: (N,) int class indices in 0..K-1.
            n_classes: K (classes absent from ``y`` get zero-probability columns); None:
                ``y.max() + 1``.

        Returns:
            self.

        Raises:
            ConfigError: no sample, or a class index outside 0..K-1.
        """
        feats = np.asarray(feats, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        if len(y) == 0 or len(feats) != len(y):
            raise ConfigError(
                f"cannot fit {self.name or 'model'}: {len(feats)} feature rows, {len(y)} labels"
            )
        k = int(y.max()) + 1 if n_classes is None else int(n_classes)
        if y.min() < 0 or y.max() >= k:
            raise ConfigError(f"class indices must lie in 0..{k - 1}, got {y.min()}..{y.max()}")
        start = time.perf_counter()
        self.estimator.fit(feats, y)
        elapsed = time.perf_counter() - start
        self.n_classes = k
        present = np.unique(y)
        self.meta.update(
            n_samples=int(len(y)),
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
            len(y),
            feats.shape[1],
            k,
            elapsed,
        )
        return self

    def fit_store(
        self,
        store_path: str | Path,
        max_samples: int | None = None,
        seed: int = 0,
        region: int | None = None,
    ) -> SklearnBackend:
        """Fit on the learn split (split 0) of a sample store.

        The learn rows are chosen first from the store's labels (all of them, or
        ``max_samples`` by :func:`subsample_indices`: RBF SVMs cost O(n^2) in memory and
        time), then streamed with :class:`~datamodules.pixel_series.StoreBlockDataset` and
        turned into :func:`features`; only the chosen rows are kept in memory (as iota2
        does for its conventional classifiers, the training set is held in memory).

        Args:
            store_path: the sample store.
            max_samples: cap on learn samples; None uses all.
            seed: RNG seed of the subsampling.
            region: fit on the learn samples of this region only (eco-regions).

        Returns:
            self.

        Raises:
            StoreError: no store at ``store_path``, or no learn sample in it.
            ConfigError: ``max_samples`` < 1.
        """
        from datamodules.pixel_series import StoreBlockDataset
        from i2dl.store import open_store, read_info

        info = read_info(store_path)
        group = open_store(store_path)
        split = np.asarray(group["split"][:])
        codes = np.asarray(group["y"][:])
        learn = split == 0
        if region is not None:
            learn &= np.asarray(group["region"][:]) == region
        learn_rows = np.flatnonzero(learn)
        if len(learn_rows) == 0:
            raise StoreError(
                f"store {store_path} has no learn sample to fit {self.name or 'model'}"
            )
        y_learn = np.searchsorted(np.asarray(info.class_codes), codes[learn_rows]).astype(np.int64)
        chosen = learn_rows[subsample_indices(y_learn, max_samples, seed)]
        if len(chosen) < len(learn_rows):
            log.info(
                "model.max_samples=%s: fitting on %d of %d learn samples (seed %d)",
                max_samples,
                len(chosen),
                len(learn_rows),
                seed,
            )
        keep = np.zeros(len(split), dtype=bool)
        keep[chosen] = True
        n_feat = info.n_dates * info.n_channels
        feats = np.empty((len(chosen), n_feat), dtype=np.float32)
        y = np.empty(len(chosen), dtype=np.int64)
        filled = 0
        dataset = StoreBlockDataset(store_path, 0, batch_size=FIT_BATCH_SIZE, shuffle=False)
        for batch in dataset:
            sel = keep[batch["index"].numpy()]
            if not sel.any():
                continue
            t_sel = torch.from_numpy(sel)
            f = features(batch["x"][t_sel], batch["days"][t_sel], batch["mask"][t_sel])
            feats[filled : filled + len(f)] = f
            y[filled : filled + len(f)] = batch["y"].numpy()[sel]
            filled += len(f)
        if filled != len(chosen):  # the store changed under us
            raise StoreError(
                f"store {store_path}: read {filled} learn samples, expected {len(chosen)}"
            )
        self.meta.update(store=str(store_path), class_codes=list(info.class_codes))
        return self.fit(feats, y, n_classes=info.n_classes)

    # ------------------------------------------------------------ prediction

    @property
    def _classifier(self) -> BaseEstimator:
        return (
            self.estimator.steps[-1][1] if isinstance(self.estimator, Pipeline) else self.estimator
        )

    def predict_proba(self, x: ArrayLike, days: ArrayLike, mask: ArrayLike) -> torch.Tensor:
        """Class probabilities (an :data:`i2dl.inference.PredictFn`).

        Args:
            x: (B, T, C) float32, series normalised by the store statistics, any device.
            days: (B, T) int64, days since the reference date.
            mask: (B, T) bool, True = valid observation.

        Returns:
            (B, K) float32 CPU tensor, column i = class index i; a class the estimator
            never saw has probability 0.

        Raises:
            StoreError: the backend is not fitted.
            ValueError: shapes differ, or T * C differs from the fitted feature count.
        """
        if self.n_classes is None:
            raise StoreError(f"{self.name or 'model'} is not fitted: call fit_store or load")
        feats = features(x, days, mask)
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

    def __call__(self, x: ArrayLike, days: ArrayLike, mask: ArrayLike) -> torch.Tensor:
        """Log-probabilities, so ``argmax`` / ``softmax`` code written for logits works.

        Args:
            x: (B, T, C) float32, series normalised by the store statistics, any device.
            days: (B, T) int64, days since the reference date.
            mask: (B, T) bool, True = valid observation.

        Returns:
            (B, K) float32 CPU tensor ``log(predict_proba)``; ``-inf`` for a class of
            probability 0 (``softmax`` of it gives the probabilities back).
        """
        return torch.log(self.predict_proba(x, days, mask))

    # ------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Save estimator, class count and metadata with joblib, atomically.

        Written to a temporary file next to ``path``, then renamed over it.

        Returns:
            ``path``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
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
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            joblib.dump(payload, tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        log.info("saved %s to %s", self.name or "scikit-learn model", path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SklearnBackend:
        """Load a backend written by :meth:`save`.

        Only load files you trust: joblib files are pickles and run code when loaded.
        A file saved with another scikit-learn major.minor version loads with a warning
        (scikit-learn does not guarantee models across versions).

        Raises:
            StoreError: no file at ``path``, or not a saved backend.
        """
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"no scikit-learn model at {path}; run `python -m i2dl fit` first")
        payload = joblib.load(path)
        if not isinstance(payload, dict) or payload.get("format") != BACKEND_FORMAT:
            raise StoreError(f"{path} is not an i2dl scikit-learn model (format {BACKEND_FORMAT})")
        saved = str(payload.get("sklearn_version", "?"))
        if saved.split(".")[:2] != sklearn.__version__.split(".")[:2]:
            log.warning(
                "%s was saved with scikit-learn %s and is loaded with %s: predictions may "
                "differ or fail; refit the model with this version if they do",
                path,
                saved,
                sklearn.__version__,
            )
        backend = cls.__new__(cls)
        backend.name = payload["name"]
        backend.standardize = bool(payload["standardize"])
        backend.estimator = payload["estimator"]
        backend.n_classes = payload["n_classes"]
        backend.meta = dict(payload.get("meta", {}))
        return backend


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


# ---------------------------------------------------------------- factories (Hydra targets)
#
# Signatures hold estimator parameters only: the pipeline removes the non-estimator keys
# of the model node (name, backend, max_samples, model_selection_criterion,
# class_weights) before instantiating, so an unknown key is an error, not silently ignored.


def random_forest(
    n_estimators: int = 100,
    max_depth: int | None = None,
    min_samples_split: int = 2,
    class_weight: str | dict | None = None,
    n_jobs: int = -1,
    random_state: int | None = 0,
) -> SklearnBackend:
    """Random forest (``sklearn.ensemble.RandomForestClassifier``) on gap-filled series.

    iota2 offers random forests among its conventional classifiers; the iota2
    documentation excerpts in ``shared/reference/iota2_docs`` ("use scikit-learn",
    ``003_a2369de09cbc1a56.txt``) state no default hyper-parameters, so scikit-learn's
    defaults are used (100 trees, unlimited depth, min_samples_split 2, sqrt features).

    Args:
        n_estimators: number of trees.
        max_depth: maximum tree depth; None grows trees until leaves are pure.
        min_samples_split: minimum samples to split a node.
        class_weight: None, ``"balanced"``, ``"balanced_subsample"`` or {class index: weight}.
        n_jobs: parallel jobs for fit and predict (-1: all cores).
        random_state: seed (the configs pass ``${seed}``).
    """
    est = RandomForestClassifier(
        n_estimators=n_estimators,
        max_depth=max_depth,
        min_samples_split=min_samples_split,
        class_weight=class_weight,
        n_jobs=n_jobs,
        random_state=random_state,
    )
    return SklearnBackend(est, standardize=False, name="rf")


def extra_trees(
    n_estimators: int = 100,
    max_depth: int | None = None,
    min_samples_split: int = 2,
    class_weight: str | dict | None = None,
    n_jobs: int = -1,
    random_state: int | None = 0,
) -> SklearnBackend:
    """Extremely randomised trees (``sklearn.ensemble.ExtraTreesClassifier``).

    Same parameters as :func:`random_forest` (scikit-learn defaults; no bootstrap).
    """
    est = ExtraTreesClassifier(
        n_estimators=n_estimators,
        max_depth=max_depth,
        min_samples_split=min_samples_split,
        class_weight=class_weight,
        n_jobs=n_jobs,
        random_state=random_state,
    )
    return SklearnBackend(est, standardize=False, name="extra_trees")


def svm(
    C: float = 1.0,  # noqa: N803 (scikit-learn's name)
    gamma: str | float = "scale",
    class_weight: str | dict | None = None,
    random_state: int | None = 0,
) -> SklearnBackend:
    """RBF support vector machine with Platt-scaled probabilities (:class:`CalibratedSVC`).

    Features are standardised per feature by a ``StandardScaler`` saved with the model.
    Fitting costs O(n^2) or more in the number of samples: cap the learn samples with
    ``model.max_samples``.

    Args:
        C: regularisation (larger = less regularised).
        gamma: RBF kernel coefficient, ``"scale"``, ``"auto"`` or a float.
        class_weight: None, ``"balanced"`` or {class index: weight}.
        random_state: seed of the calibration folds.
    """
    est = CalibratedSVC(C=C, gamma=gamma, class_weight=class_weight, random_state=random_state)
    return SklearnBackend(est, standardize=True, name="svm")
