"""Paired comparison of two experiments run on the same splits (runs or folds).

Two experiments of ``scripts/results.sh`` (or two k-fold cross-validations) run on the
same polygon splits: seed ``i`` of one and seed ``i`` of the other learn and score on the
same pixels. Their difference per split is then far less noisy than the difference of
their means, whose standard deviations mostly measure how hard each split is. This is the
comparison ``comparison.md`` gives against its first experiment (``scripts/results.sh``
lists the random forest first).

Random splits of one table share pixels, so the per-split differences are not
independent and the plain paired t-test is too confident (Dietterich 1998, Neural
Computation 10(7)). The t statistic here is the corrected resampled t-test of Nadeau &
Bengio (2003, Machine Learning 52(3)): the variance of the mean difference is
``(1 / J + n_val / n_train) * s^2`` for ``J`` splits of ``n_train`` training and ``n_val``
test pixels, with ``J - 1`` degrees of freedom (Bouckaert & Frank 2004 use it for
repeated cross-validation too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import t as student_t

#: the metrics compared, keys of the run dicts of :func:`i2dl.evaluation.aggregate.aggregate`
PAIRED_METRICS = ("oa", "kappa", "f1_macro")


def _split_key(run: Mapping[str, Any]) -> tuple[Any, Any, Any] | None:
    """(seed, fold, n_val) of a run; None without a seed (its split cannot be matched)."""
    if run.get("seed") is None:
        return None
    return (run["seed"], run.get("fold"), run.get("n_val"))


def corrected_t(diffs: Sequence[float], test_train_ratio: float) -> tuple[float, float] | None:
    """Corrected resampled t-test of the mean of paired differences (Nadeau & Bengio 2003).

    Args:
        diffs: ``(J,)`` per-split differences of a metric (other - reference), J >= 2.
        test_train_ratio: ``n_val / n_train`` of the splits (mean over them), >= 0.

    Returns:
        ``(t, p)``: the statistic ``mean / sqrt((1/J + ratio) * var)`` (``var`` with ddof
        1) and its two-sided p-value under Student's t with ``J - 1`` degrees of freedom;
        None with fewer than 2 differences or when they are all equal (no spread to test).

    Raises:
        ValueError: ``test_train_ratio`` is negative or not finite.
    """
    if not math.isfinite(test_train_ratio) or test_train_ratio < 0:
        raise ValueError(f"test_train_ratio must be finite and >= 0, got {test_train_ratio}")
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return None
    var = float(d.var(ddof=1))
    if var <= 0.0:
        return None
    t = float(d.mean()) / math.sqrt((1.0 / d.size + test_train_ratio) * var)
    p = float(2.0 * student_t.sf(abs(t), d.size - 1))
    return t, p


def paired_differences(
    reference: Mapping[str, Any], other: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Differences ``other - reference`` over the runs of both that share a split.

    Args:
        reference: dict of :func:`i2dl.evaluation.aggregate.aggregate` (e.g. the forest).
        other: the same for the experiment compared with it. The runs of both are
            matched on (seed, fold, number of val pixels): the same seed of the same data
            and sampling config gives the same split, and a different val pixel count
            shows that it did not (other data or sampling), so such runs are left out.

    Returns:
        None when no run shares a split; else ``{"n": J, "seeds": [...], "ratio":
        n_val / n_train, <metric>: {"diffs", "mean", "std", "n_not_below", "t", "p"}}``
        for each of :data:`PAIRED_METRICS` (``t`` and ``p`` of :func:`corrected_t`, None
        where it gives none; ``std`` None for one pair; ``n_not_below``: splits where
        ``other`` is at least as good). ``n_train`` is learn + selection pixels of the
        reference's run, the pixels a forest or a refit network learns from.
    """
    ref_runs = {k: r for r in reference.get("runs", []) if (k := _split_key(r)) is not None}
    pairs = [(ref_runs[k], r) for r in other.get("runs", [])
             if (k := _split_key(r)) is not None and k in ref_runs]
    if not pairs:
        return None
    ratios = []
    for ref, _ in pairs:
        n_train = (ref.get("n_learn") or 0) + (ref.get("n_selection") or 0)
        if n_train > 0 and ref.get("n_val"):
            ratios.append(ref["n_val"] / n_train)
    ratio = float(np.mean(ratios)) if ratios else 0.0
    out: dict[str, Any] = {"n": len(pairs), "seeds": [o.get("seed") for _, o in pairs],
                           "folds": [o.get("fold") for _, o in pairs], "ratio": ratio}
    for key in PAIRED_METRICS:
        diffs = [o[key] - r[key] for r, o in pairs
                 if o.get(key) is not None and r.get(key) is not None]
        test = corrected_t(diffs, ratio) if diffs else None
        out[key] = {
            "diffs": diffs,
            "mean": float(np.mean(diffs)) if diffs else None,
            "std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None,
            "n_not_below": sum(d >= 0 for d in diffs),
            "t": None if test is None else test[0],
            "p": None if test is None else test[1],
        }
    return out
