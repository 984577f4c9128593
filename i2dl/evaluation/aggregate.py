"""Multi-run accuracy report: mean +- std and confidence intervals over runs.

iota2 repeats its whole chain for several random polygon splits ("runs", one seed
each) and writes a ``RESULTS.txt`` that gives, for OA, kappa and the per-class
precision / recall / F-score, the mean and the deviation over the runs, plus the
confusion matrix summed over the runs (iota2 documentation, "Classification
accuracy": ``final/RESULTS.txt``). This module does the same for i2dl run folders.

Inputs: run folders written by ``python -m i2dl train`` (``<run>/summary.json`` and
``<run>/report/metrics.json``, see :func:`i2dl.evaluation.run_report.compute_metrics` for the keys),
alone or below a folder such as a Hydra multirun directory
(``<multirun dir>/<job number>/``).

Statistics (decisions):

* mean and SAMPLE standard deviation over runs (``ddof=1``; 0 for a single run);
  undefined values (null in ``metrics.json``, or a class a run does not have) are
  left out, so ``n`` may be smaller than the number of runs;
* 95 % confidence interval of the mean with Student's t distribution:
  ``mean +- t_{0.975, n-1} * std / sqrt(n)`` (runs treated as independent draws).
  ``t`` comes from ``scipy.stats.t.ppf``; ``ci_method`` in the results says so.
  The interval is clipped to the range of the metric ([0, 1]; [-1, 1] for kappa), which
  ``ci_clipped`` records. It is undefined (null) with fewer than 2 values, and flagged as
  not meaningful with fewer than :data:`MIN_RUNS_CI` (``ci_note``): with 2 runs
  ``t = 12.7`` and the interval spans most of [0, 1] (before clipping, macro F1
  0.38 +- 0.09 gave -0.46 to 1.22);
* the summed confusion matrix aligns classes by CODE over the union of the runs'
  classes (sorted by code); a run lacking a class contributes zeros. Its OA, kappa
  and macro F1 (:mod:`i2dl.evaluation.metrics`: over the classes with reference samples) are
  computed on the summed counts ("pooled" estimates, weighted by n_val).

Runs of different experiments, with different class sets, with the same
(experiment, seed) twice or with class names that differ for one code are
aggregated anyway; each such case is logged as a warning and listed under
``warnings`` in the results.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from i2dl.errors import InputDataError, InputFileNotFoundError
from i2dl.evaluation.metrics import scores
from i2dl.io.layout import METRICS_JSON, REPORT_DIR, SUMMARY_JSON

log = logging.getLogger(__name__)

METRICS_REL = Path(REPORT_DIR) / METRICS_JSON

#: Run metrics aggregated (keys of metrics.json / summary.json) and their labels.
METRICS = {"oa": "OA", "kappa": "Kappa", "f1_macro": "Macro F1"}
#: Confidence level of the intervals.
CI_LEVEL = 0.95
#: Decimals kept in results.json (metrics.json holds 6 decimals).
DECIMALS = 6
#: Depth below the given folder searched for run folders.
MAX_DEPTH = 2

CI_METHOD = "Student t, scipy.stats.t.ppf(0.975, n - 1), clipped to the metric's range"
#: Fewest values for which the t interval is called meaningful.
MIN_RUNS_CI = 3
#: Range of each metric, to which its interval is clipped (OA, F1, precision, recall: [0, 1]).
BOUNDS = {"oa": (0.0, 1.0), "kappa": (-1.0, 1.0), "f1_macro": (0.0, 1.0)}


# --------------------------------------------------------------------- statistics


def t_critical(df: int) -> float:
    """Two-sided 95 % quantile of Student's t distribution, ``t_{0.975, df}``.

    Args:
        df: degrees of freedom (number of runs - 1), >= 1.

    Returns:
        ``scipy.stats.t.ppf(0.975, df)``.

    Raises:
        ValueError: df < 1.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(student_t.ppf(0.5 + CI_LEVEL / 2, df))


def _rnd(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), DECIMALS)


def describe(
    values: Sequence[float | None], bounds: tuple[float, float] | None = (0.0, 1.0)
) -> dict[str, Any]:
    """Mean, sample standard deviation and 95 % Student t CI of per-run values.

    Source: CI of a mean with unknown variance, ``mean +- t_{0.975, n-1} s / sqrt(n)``
    (Student 1908); iota2's RESULTS.txt reports mean +- deviation over runs.

    Args:
        values: one value per run (e.g. OA, unitless in [0, 1]); None = undefined
            for that run, left out of the statistics.
        bounds: (low, high) range of the metric, to which the interval is clipped
            ([0, 1] for OA, F1, precision and recall; [-1, 1] for kappa); None = no
            clipping.

    Returns:
        ``{"values": list as given (floats or None), "n": number of defined values,
        "mean", "std" (ddof=1, 0.0 when n == 1), "ci_low", "ci_high" (clipped to
        ``bounds``), "ci_half_width" (``t s / sqrt(n)``, before clipping), "ci_clipped"
        (bool), "ci_note"}``; mean/std None when n == 0, CI None when n < 2; ``ci_note``
        says why the interval is not meaningful when ``2 <= n <`` :data:`MIN_RUNS_CI`
        (else None).
    """
    vals = [None if v is None else float(v) for v in values]
    defined = np.array([v for v in vals if v is not None and math.isfinite(v)], float)
    n = int(defined.size)
    out: dict[str, Any] = {
        "values": vals,
        "n": n,
        "mean": None,
        "std": None,
        "ci_low": None,
        "ci_high": None,
        "ci_half_width": None,
        "ci_clipped": False,
        "ci_note": None,
    }
    if n == 0:
        return out
    mean = float(defined.mean())
    std = float(defined.std(ddof=1)) if n > 1 else 0.0
    out["mean"] = _rnd(mean)
    out["std"] = _rnd(std)
    if n > 1:
        t = t_critical(n - 1)
        half = t * std / math.sqrt(n)
        low, high = mean - half, mean + half
        if bounds is not None:
            out["ci_clipped"] = bool(low < bounds[0] or high > bounds[1])
            low, high = max(low, bounds[0]), min(high, bounds[1])
        out["ci_low"] = _rnd(low)
        out["ci_high"] = _rnd(high)
        out["ci_half_width"] = _rnd(half)
        if n < MIN_RUNS_CI:
            out["ci_note"] = (
                f"{n} runs are too few for a meaningful interval (t = {t:.1f}); "
                f"run at least {MIN_RUNS_CI} seeds"
            )
    return out


def _matrix_scores(cm: np.ndarray) -> dict[str, Any]:
    """OA, Cohen's kappa, per-class P/R/F1 and macro F1 of a (summed) confusion matrix.

    Computed by :func:`i2dl.evaluation.metrics.scores` (rows = reference; macro F1 over the classes
    with reference samples), rounded to :data:`DECIMALS`.
    """
    sc = scores(cm)
    return {
        "oa": _rnd(sc.oa),
        "kappa": _rnd(sc.kappa),
        "f1_macro": _rnd(sc.f1_macro),
        "precision": [_rnd(v) for v in sc.precision],
        "recall": [_rnd(v) for v in sc.recall],
        "f1": [_rnd(v) for v in sc.f1],
    }


# -------------------------------------------------------------------------- inputs


def _natural_key(path: Path) -> list[Any]:
    """Sort key in which digit runs compare as numbers (job 2 before job 10)."""
    parts = re.split(r"(\d+)", str(path))
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def find_runs(path: str | Path) -> list[Path]:
    """Run folders at or below ``path``.

    A run folder is a directory holding ``summary.json`` (written by
    ``python -m i2dl train`` at the end of a successful run). ``path`` may be a run
    folder itself (or its ``summary.json``), or a folder with run folders at most
    :data:`MAX_DEPTH` (2) levels below, e.g. a Hydra multirun directory
    ``<multirun dir>/<job>/`` or a folder of such directories. Folders below a run
    folder and hidden folders (``.hydra``) are not searched.

    Args:
        path: run folder or folder of run folders.

    Returns:
        The run folders, sorted by path with numbers compared numerically
        (``.../2`` before ``.../10``).

    Raises:
        InputFileNotFoundError: ``path`` does not exist.
        InputDataError: ``path`` is not a folder, or no run folder was found (the
            message names ``path``).
    """
    root = Path(path)
    if root.is_file() and root.name == SUMMARY_JSON:
        return [root.parent]
    if not root.exists():
        raise InputFileNotFoundError(f"run folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise InputDataError(
            f"{str(root)!r} is not a folder; give a run folder (holding "
            f"{SUMMARY_JSON}) or a folder of run folders (e.g. a multirun directory)"
        )
    if (root / SUMMARY_JSON).is_file():
        return [root]

    found: list[Path] = []
    level = [root]
    for _ in range(MAX_DEPTH):
        nxt: list[Path] = []
        for folder in level:
            try:
                children = [c for c in folder.iterdir() if c.is_dir()]
            except OSError as exc:  # unreadable sub-folder: skip it, say so
                log.warning("cannot list %s (%s); skipped", folder, exc)
                continue
            for child in children:
                if child.name.startswith("."):
                    continue
                if (child / SUMMARY_JSON).is_file():
                    found.append(child)
                else:
                    nxt.append(child)
        level = nxt
    if not found:
        raise InputDataError(
            f"no run folder found in {str(root)!r}: expected {SUMMARY_JSON} in it or "
            f"in sub-folders up to {MAX_DEPTH} levels below (e.g. <multirun dir>/<job>/"
            f"{SUMMARY_JSON}); {SUMMARY_JSON} is written by `python -m i2dl train` "
            "at the end of a successful run"
        )
    return sorted(found, key=_natural_key)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileNotFoundError(
            f"{what} {str(path)!r} is missing; the run folder is incomplete (rerun "
            "`python -m i2dl evaluate hydra.run.dir=<run folder>` to rewrite the report)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputDataError(f"cannot read {what} {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise InputDataError(f"{what} {str(path)!r} does not hold a JSON object")
    return data


def load_run(run: str | Path) -> dict[str, Any]:
    """Read and check the summary and the accuracy report of one run folder.

    Args:
        run: run folder holding ``summary.json`` and ``report/metrics.json``.

    Returns:
        ``{"path", "summary", "metrics", "codes" (K ints), "names" (K str),
        "cm" ((K, K) int64 array, rows = reference)}``.

    Raises:
        InputFileNotFoundError: a file is missing.
        InputDataError: unreadable JSON, or a ``metrics.json`` whose
            ``classes`` / ``confusion_matrix`` are missing or inconsistent.
    """
    run = Path(run)
    summary = _read_json(run / SUMMARY_JSON, "run summary")
    mpath = run / METRICS_REL
    metrics = _read_json(mpath, "accuracy report")
    classes: Any = metrics.get("classes")
    cm_list = metrics.get("confusion_matrix")
    try:
        codes = [int(c["code"]) for c in classes]
        names = [str(c.get("name", c["code"])) for c in classes]
        cm = np.asarray(cm_list, dtype=np.int64)
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise InputDataError(
            f"accuracy report {str(mpath)!r} lacks valid 'classes' (list of "
            f"{{code, name, ...}}) and 'confusion_matrix' (K x K counts): {exc!r}"
        ) from None
    k = len(codes)
    if cm.shape != (k, k) or len(set(codes)) != k:
        raise InputDataError(
            f"accuracy report {str(mpath)!r}: confusion_matrix of shape {cm.shape} "
            f"does not match its {k} classes {codes} (or codes repeat)"
        )
    return {"path": run, "summary": summary, "metrics": metrics, "codes": codes,
            "names": names, "cm": cm}  # fmt: skip


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


# ------------------------------------------------------------------------ aggregate


def aggregate(runs: Sequence[str | Path]) -> dict[str, Any]:
    """Statistics over several runs, as iota2's RESULTS.txt (see the module docstring).

    Args:
        runs: run folders (e.g. from :func:`find_runs`).

    Returns:
        JSON-serialisable dict (the content of ``results.json``):

        * ``experiment`` (names joined by "+"), ``experiments`` (distinct names in
          run order), ``n_runs``, ``seeds`` (per run), ``root`` (common parent folder
          of the runs), ``ci_level`` (0.95), ``ci_method``;
        * ``runs``: per run ``{path, experiment, seed, fold (k-fold runs, else null),
          oa, kappa, f1_macro, n_val, n_learn, n_selection, n_classes}``;
        * ``metrics``: for ``oa``, ``kappa``, ``f1_macro`` the dict of
          :func:`describe` (values per run, n, mean, std, ci_low, ci_high,
          ci_half_width; unitless);
        * ``classes``: per class code of the union over runs, sorted by code,
          ``{code, name, n_runs (runs having the class), support (reference
          samples per run, null where absent), f1, precision, recall (each a
          describe dict; values null where the run lacks the class or the value
          is undefined)}``;
        * ``confusion_matrix_sum``: ``{codes, names, matrix (rows = reference),
          n_samples, oa, kappa, f1_macro, classes: [{code, name, precision,
          recall, f1, support}]}`` of the matrix summed over runs;
        * ``timings_s``: per stage ``{values (s per run, null if absent), mean}``;
        * ``warnings``: list of messages (also logged).

    Raises:
        InputDataError: no run given, or a run folder's files are inconsistent.
        InputFileNotFoundError: a run folder lacks summary.json or metrics.json.
    """
    if not runs:
        raise InputDataError("no run folder to aggregate")
    loaded = [load_run(r) for r in runs]
    warn: list[str] = []
    distinct = _experiment_warnings(loaded, warn)
    names = _class_names(loaded, warn)
    codes = sorted(names)
    total = _summed_matrix(loaded, codes)
    metric_stats = {
        key: describe(
            [_number(r["metrics"].get(key, r["summary"].get(key))) for r in loaded], BOUNDS[key]
        )
        for key in METRICS
    }
    paths = [r["path"].resolve() for r in loaded]
    try:
        root = os.path.commonpath([str(p.parent) for p in paths])
    except ValueError:  # different drives (Windows)
        root = str(paths[0].parent)

    for msg in warn:
        log.warning("%s", msg)

    return {
        "experiment": "+".join(distinct),
        "experiments": distinct,
        "n_runs": len(loaded),
        "seeds": [r["summary"].get("seed") for r in loaded],
        "root": root,
        "ci_level": CI_LEVEL,
        "ci_method": CI_METHOD,
        "runs": [
            {
                "path": str(p),
                "experiment": r["summary"].get("experiment"),
                "seed": r["summary"].get("seed"),
                "fold": r["summary"].get("fold"),
                **{k: metric_stats[k]["values"][i] for k in METRICS},
                "n_val": r["summary"].get("n_val", r["metrics"].get("n_samples")),
                "n_learn": r["summary"].get("n_learn"),
                "n_selection": r["summary"].get("n_selection"),
                "n_classes": len(r["codes"]),
            }
            for i, (p, r) in enumerate(zip(paths, loaded, strict=True))
        ],
        "metrics": metric_stats,
        "classes": _class_stats(loaded, codes, names),
        "confusion_matrix_sum": _summed_entry(total, codes, names),
        "timings_s": _timings(loaded),
        "warnings": warn,
    }


def _experiment_warnings(loaded: list[dict[str, Any]], warn: list[str]) -> list[str]:
    """The distinct experiment names; warns of mixed experiments and repeated seeds."""
    experiments = [r["summary"].get("experiment") for r in loaded]
    seeds = [r["summary"].get("seed") for r in loaded]
    distinct = list(dict.fromkeys(str(e) for e in experiments))
    if len(distinct) > 1:
        warn.append(f"runs of different experiments are aggregated together: {distinct}")
    folds = [r["summary"].get("fold") for r in loaded]  # k-fold runs share their seed
    pairs = list(zip(experiments, seeds, folds, strict=True))
    dups = sorted(
        {f"{e} seed {s}" for e, s, f in pairs if s is not None and pairs.count((e, s, f)) > 1}
    )
    if dups:
        warn.append(
            f"several runs share experiment and seed ({', '.join(dups)}); they are "
            "not independent repetitions"
        )
    return distinct


def _class_names(loaded: list[dict[str, Any]], warn: list[str]) -> dict[int, str]:
    """Class code -> name over the union of the runs' classes (name of the first run).

    Warns of a code named differently in two runs and of runs with different class sets.
    """
    names: dict[int, str] = {}
    for r in loaded:
        for code, name in zip(r["codes"], r["names"], strict=True):
            if code not in names:
                names[code] = name
            elif names[code] != name:
                msg = f"class {code} is named {names[code]!r} and {name!r} in different runs"
                if msg not in warn:
                    warn.append(msg)
    sets = {tuple(sorted(r["codes"])) for r in loaded}
    if len(sets) > 1:
        detail = "; ".join(f"{r['path'].name}: {sorted(r['codes'])}" for r in loaded)
        warn.append(
            f"runs have different class sets ({detail}); missing classes count as "
            "zeros in the summed confusion matrix and are left out of their per-class "
            "statistics"
        )
    return names


def _summed_matrix(loaded: list[dict[str, Any]], codes: list[int]) -> np.ndarray:
    """(K, K) int64 confusion matrix summed over the runs, aligned by class code."""
    index = {c: i for i, c in enumerate(codes)}
    total = np.zeros((len(codes), len(codes)), dtype=np.int64)
    for r in loaded:
        idx = [index[c] for c in r["codes"]]
        total[np.ix_(idx, idx)] += r["cm"]
    return total


def _class_stats(
    loaded: list[dict[str, Any]], codes: list[int], names: Mapping[int, str],
) -> list[dict[str, Any]]:
    """Per class: runs having it, support per run, and F1 / precision / recall statistics."""
    classes = []
    for code in codes:
        per: dict[str, list[Any]] = {"f1": [], "precision": [], "recall": [], "support": []}
        for r in loaded:
            entry = next((c for c in r["metrics"]["classes"] if int(c["code"]) == code), None)
            for key in ("f1", "precision", "recall"):
                per[key].append(None if entry is None else _number(entry.get(key)))
            per["support"].append(
                None if entry is None else int(r["cm"][r["codes"].index(code)].sum())
            )
        classes.append(
            {
                "code": code,
                "name": names[code],
                "n_runs": sum(s is not None for s in per["support"]),
                "support": per["support"],
                "f1": describe(per["f1"]),
                "precision": describe(per["precision"]),
                "recall": describe(per["recall"]),
            }
        )
    return classes


def _timings(loaded: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stage: wall time of each run (s, null if absent) and their mean."""
    stages: list[str] = []
    for r in loaded:
        for s in r["summary"].get("timings_s") or {}:
            if s not in stages:
                stages.append(s)
    timings = {}
    for s in stages:
        vals = [_number((r["summary"].get("timings_s") or {}).get(s)) for r in loaded]
        defined = [v for v in vals if v is not None]
        timings[s] = {"values": vals, "mean": _rnd(float(np.mean(defined))) if defined else None}
    return timings


def _summed_entry(total: np.ndarray, codes: list[int], names: Mapping[int, str]) -> dict[str, Any]:
    """The ``confusion_matrix_sum`` entry: the summed matrix and its pooled scores."""
    pooled = _matrix_scores(total)
    return {
        "codes": codes,
        "names": [names[c] for c in codes],
        "matrix": total.tolist(),
        "n_samples": int(total.sum()),
        "oa": pooled["oa"],
        "kappa": pooled["kappa"],
        "f1_macro": pooled["f1_macro"],
        "classes": [
            {
                "code": c,
                "name": names[c],
                "precision": pooled["precision"][i],
                "recall": pooled["recall"][i],
                "f1": pooled["f1"][i],
                "support": int(total[i].sum()),
            }
            for i, c in enumerate(codes)
        ],
    }
