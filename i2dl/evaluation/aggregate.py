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
  The interval is not clipped to [0, 1]. It is undefined (null) with fewer than 2
  values;
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

import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import t as student_t

from i2dl.errors import InputDataError, InputFileNotFoundError
from i2dl.evaluation.metrics import scores
from i2dl.evaluation.run_report import confusion_csv, confusion_png
from i2dl.io.files import write_bytes_atomic
from i2dl.io.layout import METRICS_JSON, REPORT_DIR, SUMMARY_JSON

log = logging.getLogger(__name__)

METRICS_REL = Path(REPORT_DIR) / METRICS_JSON

RESULTS_TXT = "RESULTS.txt"
RESULTS_JSON = "results.json"
CONFUSION_SUM_CSV = "confusion_matrix_sum.csv"
CONFUSION_SUM_PNG = "confusion_matrix_sum.png"
F1_PNG = "f1_per_class.png"
COMPARISON_MD = "comparison.md"
COMPARISON_CSV = "comparison.csv"

#: Run metrics aggregated (keys of metrics.json / summary.json) and their labels.
METRICS = {"oa": "OA", "kappa": "Kappa", "f1_macro": "Macro F1"}
#: Confidence level of the intervals.
CI_LEVEL = 0.95
#: Decimals kept in results.json (metrics.json holds 6 decimals).
DECIMALS = 6
#: Depth below the given folder searched for run folders.
MAX_DEPTH = 2

CI_METHOD = "Student t, scipy.stats.t.ppf(0.975, n - 1)"


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


def describe(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation and 95 % Student t CI of per-run values.

    Source: CI of a mean with unknown variance, ``mean +- t_{0.975, n-1} s / sqrt(n)``
    (Student 1908); iota2's RESULTS.txt reports mean +- deviation over runs.

    Args:
        values: one value per run (e.g. OA, unitless in [0, 1]); None = undefined
            for that run, left out of the statistics.

    Returns:
        ``{"values": list as given (floats or None), "n": number of defined values,
        "mean", "std" (ddof=1, 0.0 when n == 1), "ci_low", "ci_high",
        "ci_half_width"}``; mean/std None when n == 0, CI None when n < 2.
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
    }
    if n == 0:
        return out
    mean = float(defined.mean())
    std = float(defined.std(ddof=1)) if n > 1 else 0.0
    out["mean"] = _rnd(mean)
    out["std"] = _rnd(std)
    if n > 1:
        half = t_critical(n - 1) * std / math.sqrt(n)
        out["ci_low"] = _rnd(mean - half)
        out["ci_high"] = _rnd(mean + half)
        out["ci_half_width"] = _rnd(half)
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
        * ``runs``: per run ``{path, experiment, seed, oa, kappa, f1_macro, n_val,
          n_learn, n_classes}``;
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

    # classes: union by code, names from the first run that has the class
    names: dict[int, str] = {}
    for r in loaded:
        for code, name in zip(r["codes"], r["names"], strict=True):
            if code not in names:
                names[code] = name
            elif names[code] != name:
                msg = f"class {code} is named {names[code]!r} and {name!r} in different runs"
                if msg not in warn:
                    warn.append(msg)
    codes = sorted(names)
    sets = {tuple(sorted(r["codes"])) for r in loaded}
    if len(sets) > 1:
        detail = "; ".join(f"{r['path'].name}: {sorted(r['codes'])}" for r in loaded)
        warn.append(
            f"runs have different class sets ({detail}); missing classes count as "
            "zeros in the summed confusion matrix and are left out of their per-class "
            "statistics"
        )

    # summed confusion matrix, aligned by code
    index = {c: i for i, c in enumerate(codes)}
    total = np.zeros((len(codes), len(codes)), dtype=np.int64)
    for r in loaded:
        idx = [index[c] for c in r["codes"]]
        total[np.ix_(idx, idx)] += r["cm"]
    pooled = _matrix_scores(total)

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

    metric_stats = {
        key: describe([_number(r["metrics"].get(key, r["summary"].get(key))) for r in loaded])
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
        "seeds": seeds,
        "root": root,
        "ci_level": CI_LEVEL,
        "ci_method": CI_METHOD,
        "runs": [
            {
                "path": str(p),
                "experiment": r["summary"].get("experiment"),
                "seed": r["summary"].get("seed"),
                **{k: metric_stats[k]["values"][i] for k in METRICS},
                "n_val": r["summary"].get("n_val", r["metrics"].get("n_samples")),
                "n_learn": r["summary"].get("n_learn"),
                "n_classes": len(r["codes"]),
            }
            for i, (p, r) in enumerate(zip(paths, loaded, strict=True))
        ],
        "metrics": metric_stats,
        "classes": classes,
        "confusion_matrix_sum": {
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
        },
        "timings_s": timings,
        "warnings": warn,
    }


# -------------------------------------------------------------------------- writing


def _f(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _label(code: int, name: str) -> str:
    return str(code) if str(name) == str(code) else f"{code} {name}"


def _ci_text(st: Mapping[str, Any]) -> str:
    if st["ci_low"] is None:
        return f"{int(CI_LEVEL * 100)}% CI n/a, n = {st['n']}"
    return f"{int(CI_LEVEL * 100)}% CI {_f(st['ci_low'])}\u2013{_f(st['ci_high'])}"


def stat_line(label: str, st: Mapping[str, Any]) -> str:
    """One RESULTS.txt line, e.g. ``OA: 0.8000 +- 0.1000 (95% CI 0.5516–1.0484)``."""
    return f"{label}: {_f(st['mean'])} +- {_f(st['std'])} ({_ci_text(st)})"


def _pm(st: Mapping[str, Any], spec: str = ".4f") -> str:
    return "n/a" if st["mean"] is None else f"{st['mean']:{spec}} \u00b1 {st['std']:{spec}}"


def format_results(agg: Mapping[str, Any]) -> str:
    """Text of RESULTS.txt (iota2-like multi-run report).

    Args:
        agg: dict from :func:`aggregate`.

    Returns:
        Header (experiment, runs, seeds, statistics used), one ``stat_line`` per
        metric, the per-run values, the per-class table (F1 mean +- std, 95 % CI,
        precision and recall means, runs having the class), the summed confusion
        matrix with its OA/kappa, mean wall time per stage and the warnings.
    """
    seeds = ", ".join(str(s) for s in agg["seeds"])
    lines = [
        "i2dl multi-run accuracy report (iota2 RESULTS.txt style)",
        f"experiment : {agg['experiment']}",
        f"runs       : {agg['n_runs']} (seeds {seeds})",
        f"folder     : {agg['root']}",
        "statistics : mean +- sample standard deviation over runs (ddof=1); "
        f"{int(agg['ci_level'] * 100)}% CI of the mean = mean +- t * std / sqrt(n), "
        f"{agg['ci_method']}",
        "",
    ]
    lines += [stat_line(label, agg["metrics"][key]) for key, label in METRICS.items()]

    lines += ["", "Per run:"]
    rw = max(3, *(len(Path(r["path"]).name) for r in agg["runs"]))
    lines.append(f"  {'run':<{rw}} {'seed':>6} {'OA':>8} {'kappa':>8} {'macro F1':>9} {'n_val':>8}")
    for r in agg["runs"]:
        lines.append(
            f"  {Path(r['path']).name:<{rw}} {r['seed']!s:>6} {_f(r['oa']):>8} "
            f"{_f(r['kappa']):>8} {_f(r['f1_macro']):>9} {r['n_val']!s:>8}"
        )

    nw = min(30, max(4, *(len(c["name"]) for c in agg["classes"])))
    lines += [
        "",
        "Per-class F1 over runs (mean +- std over the n runs where it is defined; "
        "runs = runs having the class):",
        f"  {'code':>6}  {'name':<{nw}} {'F1 mean':>8} {'+- std':>8}  "
        f"{'95% CI':<17} {'P mean':>8} {'R mean':>8} {'n':>3} {'runs':>5}",
    ]
    for c in agg["classes"]:
        f1 = c["f1"]
        ci = "n/a" if f1["ci_low"] is None else f"{f1['ci_low']:.4f}\u2013{f1['ci_high']:.4f}"
        name = c["name"] if len(c["name"]) <= nw else c["name"][: nw - 1] + "\u2026"
        lines.append(
            f"  {c['code']:>6}  {name:<{nw}} {_f(f1['mean']):>8} {_f(f1['std']):>8}  "
            f"{ci:<17} {_f(c['precision']['mean']):>8} {_f(c['recall']['mean']):>8} "
            f"{c['n_runs']:>5}"
        )

    cms = agg["confusion_matrix_sum"]
    labels = [str(c) for c in cms["codes"]]
    width = max(6, *(len(f"{v}") for row in cms["matrix"] for v in row), *map(len, labels))
    lines += [
        "",
        f"Confusion matrix summed over {_runs(agg['n_runs'])} (rows = reference, "
        f"columns = predicted, by class code; N = {cms['n_samples']}):",
        f"  OA {_f(cms['oa'])}  kappa {_f(cms['kappa'])}  macro F1 {_f(cms['f1_macro'])} "
        "(of the summed matrix)",
        "  " + " " * 8 + " ".join(f"{lab:>{width}}" for lab in labels),
    ]
    for lab, row in zip(labels, cms["matrix"], strict=True):
        lines.append(f"  {lab:>8}" + " ".join(f"{v:>{width}}" for v in row))

    if agg["timings_s"]:
        lines += [
            "",
            "Mean wall time per stage (s): "
            + ", ".join(f"{s} {_f(t['mean'], '.1f')}" for s, t in agg["timings_s"].items()),
        ]
    if agg["warnings"]:
        lines += ["", "Warnings:"] + [f"  - {w}" for w in agg["warnings"]]
    return "\n".join(lines) + "\n"


def _f1_png(agg: Mapping[str, Any]) -> bytes:
    """Horizontal bar chart of the mean per-class F1, std error bars, runs as dots.

    matplotlib object API with the Agg canvas (no pyplot), as
    :func:`i2dl.evaluation.run_report.confusion_png`.
    """
    classes = agg["classes"]
    k = len(classes)
    labels = [
        (lambda s: s if len(s) <= 28 else s[:27] + "\u2026")(_label(c["code"], c["name"]))
        for c in classes
    ]
    means = [c["f1"]["mean"] if c["f1"]["mean"] is not None else 0.0 for c in classes]
    stds = [c["f1"]["std"] or 0.0 for c in classes]
    fig = Figure(figsize=(8.0, min(max(2.5, 0.45 * k + 1.6), 24.0)), dpi=100,
                 layout="constrained")  # fmt: skip
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(k)
    ax.barh(y, means, xerr=stds, color="#4c72b0", alpha=0.85, capsize=4,
            error_kw={"elinewidth": 1.2, "ecolor": "black"})  # fmt: skip
    for i, c in enumerate(classes):
        pts = [v for v in c["f1"]["values"] if v is not None]
        ax.scatter(pts, [i] * len(pts), s=14, color="#dd8452", zorder=3,
                   label="runs" if i == 0 else None)  # fmt: skip
        text = "n/a" if c["f1"]["mean"] is None else f"{c['f1']['mean']:.3f}"
        ax.text(1.01, i, text, va="center", fontsize=8, transform=ax.get_yaxis_transform())
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("F1 (mean over runs, bar = \u00b1 1 std, dots = runs)")
    ax.grid(axis="x", color="#dddddd")
    ax.set_axisbelow(True)
    m = agg["metrics"]
    ax.set_title(
        f"{agg['experiment']}: per-class F1 over {_runs(agg['n_runs'])}\n"
        f"OA {_pm(m['oa'], '.3f')}   kappa {_pm(m['kappa'], '.3f')}   "
        f"macro F1 {_pm(m['f1_macro'], '.3f')}"
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _cm_metrics(agg: Mapping[str, Any]) -> dict[str, Any]:
    """metrics-like dict of the summed matrix for the i2dl.evaluation.run_report drawing helpers."""
    cms = agg["confusion_matrix_sum"]
    return {
        "confusion_matrix": cms["matrix"],
        "classes": cms["classes"],
        "oa": cms["oa"],
        "kappa": cms["kappa"],
        "f1_macro": cms["f1_macro"],
        "n_samples": cms["n_samples"],
    }


def write_results(out_dir: str | Path, agg: Mapping[str, Any]) -> dict[str, Path]:
    """Write the multi-run report files, each atomically.

    All contents are built before the first write. Files in ``out_dir`` (created if
    needed):

    * ``RESULTS.txt``: :func:`format_results`;
    * ``results.json``: ``agg`` (strict JSON, indent 2);
    * ``confusion_matrix_sum.csv``: summed counts, header row / first column
      ``"code name"``, rows = reference (format of i2dl.evaluation.run_report's CSV);
    * ``confusion_matrix_sum.png``: heatmap of the summed matrix, row-normalised
      (:func:`i2dl.evaluation.run_report.confusion_png`);
    * ``f1_per_class.png``: bar chart of the mean per-class F1, std error bars.

    Args:
        out_dir: output folder.
        agg: dict from :func:`aggregate`.

    Returns:
        File name -> path written, for the five files above.

    Raises:
        OSError: ``out_dir`` cannot be created or written.
    """
    title = f"{agg['experiment']}: confusion matrix summed over {_runs(agg['n_runs'])}"
    contents = {
        RESULTS_TXT: format_results(agg).encode("utf-8"),
        RESULTS_JSON: (json.dumps(agg, indent=2, allow_nan=False) + "\n").encode("utf-8"),
        CONFUSION_SUM_CSV: confusion_csv(_cm_metrics(agg)),
        CONFUSION_SUM_PNG: confusion_png(_cm_metrics(agg), title),
        F1_PNG: _f1_png(agg),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, data in contents.items():
        write_bytes_atomic(out / name, data)
        written[name] = out / name
    log.info("multi-run report written to %s", out)
    return written


# ----------------------------------------------------------------------- comparison


def _group_labels(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """Experiment name per group; repeated names get their folder name appended."""
    names = [str(g.get("label") or g["experiment"]) for g in groups]
    return [
        f"{n} ({Path(g['root']).name})" if names.count(n) > 1 else n
        for n, g in zip(names, groups, strict=True)
    ]


def _fit_time(g: Mapping[str, Any]) -> float | None:
    return (g.get("timings_s") or {}).get("fit", {}).get("mean")


def _all_codes(groups: Sequence[Mapping[str, Any]]) -> list[tuple[int, str]]:
    names: dict[int, str] = {}
    for g in groups:
        for c in g["classes"]:
            names.setdefault(c["code"], c["name"])
    return sorted(names.items())


def _class_f1(g: Mapping[str, Any], code: int) -> Mapping[str, Any] | None:
    return next((c["f1"] for c in g["classes"] if c["code"] == code), None)


def compare(groups: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of several experiments side by side (``comparison.md``).

    Args:
        groups: dicts from :func:`aggregate`, one per experiment group.

    Returns:
        Markdown: one row per group (experiment, runs, OA / kappa / macro F1 as
        mean ± sample std, mean fit time in s, folder), then a per-class F1 table
        (mean ± std over runs) with one column per group ("–" where the group lacks
        the class).

    Raises:
        InputDataError: ``groups`` is empty.
    """
    if not groups:
        raise InputDataError("no experiment group to compare")
    labels = _group_labels(groups)
    lines = [
        "# Experiment comparison",
        "",
        "Mean ± sample standard deviation (ddof=1) over the runs of each group.",
        "",
        "| experiment | runs | OA | kappa | macro F1 | fit time (s) | folder |",
        "|---|---:|---|---|---|---:|---|",
    ]
    for lab, g in zip(labels, groups, strict=True):
        m = g["metrics"]
        lines.append(
            f"| {lab} | {g['n_runs']} | {_pm(m['oa'])} | {_pm(m['kappa'])} | "
            f"{_pm(m['f1_macro'])} | {_f(_fit_time(g), '.1f')} | {g['root']} |"
        )
    lines += [
        "",
        "## Per-class F1 (mean ± std over runs)",
        "",
        "| code | class | " + " | ".join(labels) + " |",
        "|---:|---|" + "---|" * len(labels),
    ]
    for code, name in _all_codes(groups):
        cells = []
        for g in groups:
            st = _class_f1(g, code)
            cells.append("\u2013" if st is None else _pm(st))
        lines.append(f"| {code} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_csv(groups: Sequence[Mapping[str, Any]]) -> str:
    """CSV of the comparison (``comparison.csv``), one row per group.

    Columns: ``experiment, n_runs, folder``, then for ``oa``, ``kappa``,
    ``f1_macro``: ``<m>_mean, <m>_std, <m>_ci_low, <m>_ci_high``, then
    ``fit_time_mean_s``, then per class code ``f1_<code>_mean, f1_<code>_std``
    (empty cells = undefined).

    Raises:
        InputDataError: ``groups`` is empty.
    """
    if not groups:
        raise InputDataError("no experiment group to compare")
    codes = [c for c, _ in _all_codes(groups)]
    header = ["experiment", "n_runs", "folder"]
    for key in METRICS:
        header += [f"{key}_mean", f"{key}_std", f"{key}_ci_low", f"{key}_ci_high"]
    header.append("fit_time_mean_s")
    for c in codes:
        header += [f"f1_{c}_mean", f"f1_{c}_std"]

    def cell(x: Any) -> Any:
        return "" if x is None else x

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for lab, g in zip(_group_labels(groups), groups, strict=True):
        row: list[Any] = [lab, g["n_runs"], g["root"]]
        for key in METRICS:
            st = g["metrics"][key]
            row += [cell(st[k]) for k in ("mean", "std", "ci_low", "ci_high")]
        row.append(cell(_fit_time(g)))
        for c in codes:
            st = _class_f1(g, c)
            row += ["", ""] if st is None else [cell(st["mean"]), cell(st["std"])]
        writer.writerow(row)
    return buf.getvalue()


def write_comparison(out_dir: str | Path, groups: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """Write ``comparison.md`` (:func:`compare`) and ``comparison.csv`` atomically.

    Returns:
        File name -> path written.

    Raises:
        InputDataError: ``groups`` is empty.
        OSError: ``out_dir`` cannot be created or written.
    """
    contents = {
        COMPARISON_MD: compare(groups).encode("utf-8"),
        COMPARISON_CSV: comparison_csv(groups).encode("utf-8"),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, data in contents.items():
        write_bytes_atomic(out / name, data)
        written[name] = out / name
    return written
