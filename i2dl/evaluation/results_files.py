"""The files of a multi-run report, and the comparison of several experiments.

RESULTS.txt, results.json, the summed confusion matrix and the per-class F1 picture of one
group of runs; comparison.md / comparison.csv of several groups side by side.

Written from the dict of :func:`i2dl.evaluation.aggregate.aggregate` (see that module for
the statistics).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from i2dl.errors import InputDataError
from i2dl.evaluation.aggregate import CI_LEVEL, METRICS
from i2dl.evaluation.html_report import (
    COMPARISON_HTML,
    INDEX_HTML,
    PAIRED_PNG,
    write_comparison_html,
    write_multirun_html,
)
from i2dl.evaluation.paired import paired_differences
from i2dl.evaluation.run_report import confusion_csv, confusion_png
from i2dl.io.files import write_bytes_atomic

log = logging.getLogger(__name__)

RESULTS_TXT = "RESULTS.txt"
RESULTS_JSON = "results.json"
CONFUSION_SUM_CSV = "confusion_matrix_sum.csv"
CONFUSION_SUM_PNG = "confusion_matrix_sum.png"
F1_PNG = "f1_per_class.png"
COMPARISON_MD = "comparison.md"
COMPARISON_CSV = "comparison.csv"


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
    text = f"{int(CI_LEVEL * 100)}% CI {_f(st['ci_low'])}\u2013{_f(st['ci_high'])}"
    if st.get("ci_clipped"):
        text += ", clipped to the metric's range"
    if st.get("ci_note"):
        text += f"; not meaningful: {st['ci_note']}"
    return text


def _ci_cell(st: Mapping[str, Any]) -> str:
    """The per-class interval: ``low–high``, ``*`` when fewer than 3 runs define it."""
    if st["ci_low"] is None:
        return "n/a"
    return f"{st['ci_low']:.4f}\u2013{st['ci_high']:.4f}" + ("*" if st.get("ci_note") else "")


def stat_line(label: str, st: Mapping[str, Any]) -> str:
    """One RESULTS.txt line, e.g. ``OA: 0.8000 +- 0.1000 (95% CI 0.5516–1.0000, clipped...)``.

    The interval is followed by ", clipped to the metric's range" when it was clipped, and
    by why it is not meaningful with fewer than 3 runs (``ci_note`` of
    :func:`i2dl.evaluation.aggregate.describe`).
    """
    return f"{label}: {_f(st['mean'])} +- {_f(st['std'])} ({_ci_text(st)})"


def _pm(st: Mapping[str, Any], spec: str = ".4f") -> str:
    return "n/a" if st["mean"] is None else f"{st['mean']:{spec}} \u00b1 {st['std']:{spec}}"


def format_results(agg: Mapping[str, Any]) -> str:
    """Text of RESULTS.txt (iota2-like multi-run report).

    Args:
        agg: dict from :func:`i2dl.evaluation.aggregate.aggregate`.

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
        f"{agg['ci_method']}; not meaningful with fewer than 3 runs",
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
        ci = _ci_cell(f1)
        name = c["name"] if len(c["name"]) <= nw else c["name"][: nw - 1] + "\u2026"
        lines.append(
            f"  {c['code']:>6}  {name:<{nw}} {_f(f1['mean']):>8} {_f(f1['std']):>8}  "
            f"{ci:<17} {_f(c['precision']['mean']):>8} {_f(c['recall']['mean']):>8} "
            f"{c['n_runs']:>5}"
        )

    if any(c["f1"].get("ci_note") for c in agg["classes"]):
        lines.append(
            "  * fewer than 3 runs have the class: the interval is not meaningful "
            "(clipped to [0, 1])"
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

    lines += _fusion_lines(agg.get("fusion"))
    if agg["timings_s"]:
        lines += [
            "",
            "Mean wall time per stage (s): "
            + ", ".join(f"{s} {_f(t['mean'], '.1f')}" for s, t in agg["timings_s"].items()),
        ]
    if agg["warnings"]:
        lines += ["", "Warnings:"] + [f"  - {w}" for w in agg["warnings"]]
    return "\n".join(lines) + "\n"


def _fusion_lines(fusion: Mapping[str, Any] | None) -> list[str]:
    """The fusion's part of RESULTS.txt: its map, and its scores beside each run's."""
    if not fusion:
        return []
    lines = ["", f"Fusion of the runs ({fusion['method']}): {fusion['classif']}"]
    scores = fusion.get("scores")
    if not scores:
        return [*lines, "  not scored: no polygon was held apart from the runs "
                        "(fusion_validation_ratio)"]
    lines += [
        f"  scored on {scores['n_samples']} pixels of polygons held apart from every run "
        "(no run learnt, selected or validated on them):",
        f"  {'map':<12} {'OA':>8} {'kappa':>8} {'macro F1':>9}",
        f"  {'fusion':<12} {_f(scores['oa']):>8} {_f(scores['kappa']):>8} "
        f"{_f(scores['f1_macro']):>9}",
    ]
    for name, m in scores["runs"].items():
        lines.append(f"  {name:<12} {_f(m['oa']):>8} {_f(m['kappa']):>8} "
                     f"{_f(m['f1_macro']):>9}")
    return [*lines, f"  confusion matrix: {scores['report']}"]


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
    * ``f1_per_class.png``: bar chart of the mean per-class F1, std error bars;
    * ``index.html``: the page of :func:`i2dl.evaluation.html_report.write_multirun_html`.

    Args:
        out_dir: output folder.
        agg: dict from :func:`i2dl.evaluation.aggregate.aggregate`.

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
    written = _write_files(out_dir, contents)
    written[INDEX_HTML] = write_multirun_html(out_dir, agg)
    log.info("multi-run report written to %s (page %s)", out_dir, written[INDEX_HTML])
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
        groups: dicts from :func:`i2dl.evaluation.aggregate.aggregate`, one per experiment group.

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
    lines += _paired_lines(groups, labels)
    return "\n".join(lines) + "\n"


def _paired_lines(groups: Sequence[Mapping[str, Any]], labels: list[str]) -> list[str]:
    """The section of :func:`compare` pairing each group's runs with the first group's."""
    if len(groups) < 2:
        return []
    lines = [
        "",
        f"## Paired by split, against {labels[0]}",
        "",
        f"Differences (experiment \u2212 {labels[0]}) over the runs that share seed, fold "
        "and val pixel count, i.e. the same split; mean \u00b1 std over those splits. t, p: "
        "corrected resampled t-test of the mean OA difference (Nadeau & Bengio 2003; random "
        "splits share pixels, so the plain paired t-test is too confident).",
        "",
        "| experiment | splits | \u0394 OA | splits with OA not below | \u0394 kappa | "
        "\u0394 macro F1 | t (OA) | p (OA) |",
        "|---|---:|---|---:|---|---|---:|---:|",
    ]
    for lab, g in zip(labels[1:], groups[1:], strict=True):
        d = paired_differences(groups[0], g)
        if d is None:
            lines.append(f"| {lab} | 0 | no run on the same split | | | | | |")
            continue

        def pm(key: str, res: Mapping[str, Any] = d) -> str:
            st = res[key]
            if st["mean"] is None:
                return "\u2013"
            return f"{st['mean']:+.4f}" + ("" if st["std"] is None else f" \u00b1 {st['std']:.4f}")

        oa = d["oa"]
        lines.append(
            f"| {lab} | {d['n']} | {pm('oa')} | {oa['n_not_below']} of {len(oa['diffs'])} | "
            f"{pm('kappa')} | {pm('f1_macro')} | {_f(oa['t'], '.2f')} | {_f(oa['p'], '.3f')} |"
        )
    return lines


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


def _paired_png(groups: Sequence[Mapping[str, Any]], labels: list[str]) -> bytes | None:
    """Dot plot of each group's per-split OA difference with the first group, or None.

    One row per other group: a dot per split shared with the first group
    (:func:`i2dl.evaluation.paired.paired_differences`), a bar at their mean, a line at 0.
    None when fewer than two groups or no group shares a split with the first.
    """
    rows = [(lab, d) for lab, g in zip(labels[1:], groups[1:], strict=True)
            if (d := paired_differences(groups[0], g)) is not None and d["oa"]["diffs"]]
    if not rows:
        return None
    fig = Figure(figsize=(8.0, min(max(2.2, 0.6 * len(rows) + 1.6), 16.0)), dpi=100,
                 layout="constrained")  # fmt: skip
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (_, d) in enumerate(rows):
        diffs = d["oa"]["diffs"]
        ax.scatter(diffs, [i] * len(diffs), s=18, color="#4c72b0", alpha=0.7, zorder=3,
                   label="splits" if i == 0 else None)  # fmt: skip
        ax.plot([d["oa"]["mean"]] * 2, [i - 0.3, i + 0.3], color="#c44e52", lw=2.5,
                label="mean" if i == 0 else None)  # fmt: skip
        ax.text(1.01, i, f"{d['oa']['mean']:+.3f}, {d['oa']['n_not_below']}/{len(diffs)} "
                "not below", va="center", fontsize=8, transform=ax.get_yaxis_transform())
    ax.axvline(0.0, color="black", lw=1)
    ax.set_yticks(range(len(rows)), [lab for lab, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"OA \u2212 OA of {labels[0]} on the same split")
    ax.grid(axis="x", color="#dddddd")
    ax.set_axisbelow(True)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"Paired by split, against {labels[0]}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_comparison(out_dir: str | Path, groups: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """Write ``comparison.md`` (:func:`compare`), ``comparison.csv`` and ``comparison.html``.

    With runs paired with the first group's on the same splits, also ``paired_oa.png``
    (:func:`_paired_png`), shown in ``comparison.html``.

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
    paired = _paired_png(groups, _group_labels(groups))
    if paired is not None:
        contents[PAIRED_PNG] = paired
    else:  # a picture of an earlier comparison in this folder would mislead
        (Path(out_dir) / PAIRED_PNG).unlink(missing_ok=True)
    written = _write_files(out_dir, contents)
    written[COMPARISON_HTML] = write_comparison_html(out_dir, groups, _group_labels(groups))
    return written


def _write_files(out_dir: str | Path, contents: dict[str, bytes]) -> dict[str, Path]:
    """Write each ``name -> bytes`` atomically into ``out_dir`` (created); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        write_bytes_atomic(out / name, data)
    return {name: out / name for name in contents}
