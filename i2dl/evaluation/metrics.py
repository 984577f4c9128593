"""Accuracy metrics of a classification, from its confusion matrix: one definition each.

Checkpoint selection (:class:`models.SITSClassifier`), the validation report
(:mod:`i2dl.evaluation.run_report`) and the multi-run aggregate
(:mod:`i2dl.evaluation.aggregate`) all compute their scores here, so that the number a
checkpoint was selected on is the number the user reads.

Conventions, as iota2's validation step (iota2 documentation, "Classification accuracy",
``RESULTS.txt``):

* ``cm[i, j]`` = samples of REFERENCE class index ``i`` PREDICTED as class index ``j``
  (rows = reference, columns = prediction), over the K classes of the model's nomenclature;
* OA = trace(cm) / N;
* Cohen's kappa (Cohen 1960, "A coefficient of agreement for nominal scales"):
  ``(OA - p_e) / (1 - p_e)`` with ``p_e = sum_k rows_k * cols_k / N**2``; undefined (None)
  when ``p_e = 1`` (reference and prediction are one and the same single class);
* per class k: precision (user's accuracy) = ``cm[k,k] / cols_k``, recall (producer's
  accuracy) = ``cm[k,k] / rows_k``, F1 = ``2 cm[k,k] / (rows_k + cols_k)``. A value whose
  denominator is zero is undefined (None), except the precision of a class that has
  reference samples but is never predicted, which is 0.0 (the class is entirely missed);
* macro averages (precision, recall, F1) are unweighted means over the classes of the
  nomenclature that OCCUR IN THE REFERENCE (``rows_k > 0``). A class that is only
  predicted (a false alarm of a class absent from the reference) does not enter the
  average; its wrong predictions still lower the recall of the reference classes. This
  differs from torchmetrics' ``MulticlassF1Score(average="macro")`` (classes present in the
  reference or the prediction) and from scikit-learn's default (every listed label).

Example: reference ``[0, 0, 1, 1]``, prediction ``[0, 2, 1, 1]`` (K = 3): F1 of class 0 is
2/3, of class 1 is 1, class 2 is absent from the reference: macro F1 = 5/6 ≈ 0.833.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Scores", "confusion_matrix", "scores"]


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """Confusion matrix of class indices.

    Args:
        y_true: (N,) int array-like, reference class indices in ``[0, n_classes)``.
        y_pred: (N,) int array-like, predicted class indices in ``[0, n_classes)``.
        n_classes: K, the number of classes of the nomenclature.

    Returns:
        (K, K) int64 array, rows = reference, columns = prediction.

    Raises:
        ValueError: ``y_true`` and ``y_pred`` differ in shape or are not 1-D, ``n_classes``
            < 1, or an index lies outside ``[0, n_classes)``.
    """
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.ndim != 1 or t.shape != p.shape:
        raise ValueError(
            f"confusion_matrix: y_true {t.shape} and y_pred {p.shape} must be two 1-D arrays "
            "of the same length"
        )
    if n_classes < 1:
        raise ValueError(f"confusion_matrix: n_classes must be >= 1, got {n_classes}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise ValueError(
                f"confusion_matrix: {name} holds class indices {a.min()}..{a.max()}, outside "
                f"0..{n_classes - 1}"
            )
    flat = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


@dataclass(frozen=True)
class Scores:
    """Scores of one confusion matrix (definitions in the module docstring).

    Attributes:
        n_samples: N, number of reference samples.
        oa: overall accuracy in [0, 1]; None when N = 0.
        kappa: Cohen's kappa in [-1, 1]; None when undefined.
        precision, recall, f1: K values in [0, 1] or None (undefined), per class index.
        support: K ints, reference samples per class (row sums).
        precision_macro, recall_macro, f1_macro: means over the classes occurring in the
            reference; None when N = 0.
    """

    n_samples: int
    oa: float | None
    kappa: float | None
    precision: list[float | None]
    recall: list[float | None]
    f1: list[float | None]
    support: list[int]
    precision_macro: float | None
    recall_macro: float | None
    f1_macro: float | None


def _macro(values: list[float | None], present: np.ndarray) -> float | None:
    kept = [v for v, p in zip(values, present, strict=True) if p and v is not None]
    return float(np.mean(kept)) if kept else None


def scores(cm: Any) -> Scores:
    """OA, kappa, per-class precision/recall/F1 and macro averages of a confusion matrix.

    Args:
        cm: (K, K) array-like of non-negative counts, rows = reference, columns =
            prediction (e.g. from :func:`confusion_matrix`, or summed over runs).

    Returns:
        :class:`Scores` with float64 arithmetic (Python floats).

    Raises:
        ValueError: ``cm`` is not square or holds negative or non-finite counts.
    """
    m = np.asarray(cm, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"scores: the confusion matrix must be (K, K), got {m.shape}")
    if not np.isfinite(m).all() or (m < 0).any():
        raise ValueError("scores: the confusion matrix must hold finite counts >= 0")
    k = m.shape[0]
    n = float(m.sum())
    rows, cols, tp = m.sum(axis=1), m.sum(axis=0), np.diag(m)
    if n <= 0:
        none: list[float | None] = [None] * k
        return Scores(0, None, None, none, list(none), list(none), [0] * k, None, None, None)
    oa = float(tp.sum() / n)
    pe = float((rows * cols).sum() / (n * n))
    kappa = (oa - pe) / (1.0 - pe) if pe < 1.0 else None
    precision: list[float | None] = []
    recall: list[float | None] = []
    f1: list[float | None] = []
    for i in range(k):
        has_ref, predicted = rows[i] > 0, cols[i] > 0
        precision.append(float(tp[i] / cols[i]) if predicted else (0.0 if has_ref else None))
        recall.append(float(tp[i] / rows[i]) if has_ref else None)
        f1.append(float(2 * tp[i] / (rows[i] + cols[i])) if has_ref or predicted else None)
    present = rows > 0
    if kappa is not None and not math.isfinite(kappa):
        kappa = None
    return Scores(
        n_samples=int(round(n)),
        oa=oa,
        kappa=kappa,
        precision=precision,
        recall=recall,
        f1=f1,
        support=[int(round(r)) for r in rows],
        precision_macro=_macro(precision, present),
        recall_macro=_macro(recall, present),
        f1_macro=_macro(f1, present),
    )
