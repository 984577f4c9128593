"""One self-contained HTML page per run and per multi-run (issue 24): ``report/index.html``.

Everything a run already wrote, on one page that opens offline (pictures embedded as
``data:`` URIs, no script, no external file): the command and the composed config, the
data and split sizes, OA / Cohen's kappa / macro F1 with the per-class table, the
confusion matrix (picture and counts), the learning curves, the map preview with its
legend, the area-adjusted accuracy table, the ensemble's members, and the wall time of
each stage. A multi-run (``runs=N``, ``kfold``) or a comparison (``python -m i2dl
report``) gets ``index.html`` in its folder: mean ± std of each metric, one row per run
(linking to the run's own page) and the summed confusion matrix.

Sources, all optional except ``summary.json`` / ``results.json``: ``summary.json``,
``report/metrics.json``, ``report/confusion_matrix.png``, ``report/learning_curves.png``,
``report/area_adjusted.csv``, ``maps/classif_preview.png``, ``maps/classif_table.csv``,
``logs/run_informations.txt`` or ``.hydra/{overrides,config}.yaml``.
"""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from i2dl.io.files import write_text_atomic

#: the page's file name, in ``<run>/report/`` (one run) or the multi-run folder
INDEX_HTML = "index.html"

_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:2px 8px;
text-align:right}th{background:#eee}td.l,th.l{text-align:left}img{max-width:100%}
.kpi{display:inline-block;margin:0 2em 1em 0;font-size:1.4em}pre{background:#f6f6f6;
padding:.5em;overflow-x:auto;font-size:.85em}"""


def _read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def _img(path: Path, alt: str) -> str:
    """An ``<img>`` with the PNG embedded, or a note that the picture is missing."""
    if not path.is_file():
        return f"<p><em>{escape(alt)}: not written by this run</em></p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _num(value: Any, spec: str = ".4f") -> str:
    if value is None or value == "":
        return ""
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return escape(str(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], table_id: str = "") -> str:
    """A table: first column left-aligned (names), the others numbers or text as given."""
    attr = f' id="{table_id}"' if table_id else ""
    head = "".join(f'<th class="{"l" if i == 0 else ""}">{escape(str(h))}</th>'
                   for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i == 0 else ""}">{c}</td>'
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table{attr}><tr>{head}</tr>{body}</table>"


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _page(title: str, sections: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{escape(title)}</h1>" + "\n".join(sections) + "</body></html>\n")


def _kpis(metrics: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (("oa", "OA"), ("kappa", "Cohen's kappa"), ("f1_macro", "macro F1")):
        parts.append(f'<span class="kpi">{label} <b id="{key}" data-value="'
                     f'{escape(str(metrics.get(key)))}">{_num(metrics.get(key))}</b></span>')
    return "<div>" + "".join(parts) + "</div>"


def _config_section(run: Path) -> str:
    info = run / "logs" / "run_informations.txt"
    if info.is_file():
        return f"<h2>Command and config</h2><pre>{escape(info.read_text())}</pre>"
    parts = []
    for name in ("overrides.yaml", "config.yaml"):
        path = run / ".hydra" / name
        if path.is_file():
            parts.append(f"<h3>{escape(name)}</h3><pre>{escape(path.read_text())}</pre>")
    return "<h2>Command and config</h2>" + ("".join(parts) or "<p><em>not recorded</em></p>")


def _metrics_sections(run: Path, metrics: Mapping[str, Any]) -> list[str]:
    classes = metrics.get("classes") or []
    per_class = _table(
        ["class", "code", "precision", "recall", "F1", "val pixels"],
        ([escape(str(c.get("name"))), escape(str(c.get("code"))), _num(c.get("precision")),
          _num(c.get("recall")), _num(c.get("f1")), escape(str(c.get("support")))]
         for c in classes), "per_class")
    cm = metrics.get("confusion_matrix") or []
    names = [str(c.get("name")) for c in classes]
    cm_table = _table(["reference \\ predicted", *names],
                      ([escape(n), *(escape(str(v)) for v in row)]
                       for n, row in zip(names, cm, strict=False)), "confusion")
    out = [f"<h2>Accuracy on the val polygons ({escape(str(metrics.get('n_samples')))} "
           f"pixels)</h2>{_kpis(metrics)}{per_class}",
           "<h2>Confusion matrix</h2>" + _img(run / "report" / "confusion_matrix.png",
                                              "confusion matrix") + cm_table]
    members = metrics.get("members") or []
    if members:
        out.append("<h2>Ensemble members</h2>" + _table(
            ["member", "OA", "kappa", "macro F1"],
            ([escape(str(m.get("member", i))), _num(m.get("oa")), _num(m.get("kappa")),
              _num(m.get("f1_macro"))] for i, m in enumerate(members)), "members"))
    return out


def write_run_html(run: str | Path) -> Path:
    """Write ``<run>/report/index.html`` from what the run wrote (module docstring).

    Args:
        run: a run folder with ``summary.json``.

    Returns:
        The page's path (written atomically).

    Raises:
        FileNotFoundError: the run has no ``summary.json`` (train has not finished).
    """
    run = Path(run)
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} not found: run `python -m i2dl train` first")
    summary = _read_json(summary_path)
    metrics = _read_json(run / "report" / "metrics.json") or summary
    title = f"i2dl run {run.name}: {summary.get('experiment')}, seed {summary.get('seed')}"
    sizes = _table(["split", "pixels"], [
        ["learn", escape(str(summary.get("n_learn")))],
        ["selection (chooses the epoch)", escape(str(summary.get("n_selection")))],
        ["val (scored here)", escape(str(summary.get("n_val")))],
    ], "splits")
    legend = _csv_rows(run / "maps" / "classif_table.csv")
    legend_html = _table(list(legend[0]), ([escape(v) for v in r.values()] for r in legend),
                         "legend") if legend else ""
    area = _csv_rows(run / "report" / "area_adjusted.csv")
    area_cols = ["class", "map_area", "area", "area_ci95", "users_accuracy",
                 "producers_accuracy", "area_unit"]
    area_html = ("<h2>Area-adjusted accuracy (Olofsson et al. 2014)</h2>" + _table(
        area_cols, ([escape(r.get("class", "")), *(_num(r.get(k)) for k in area_cols[1:-1]),
                     escape(r.get("area_unit", ""))] for r in area), "area")) if area else ""
    timings = summary.get("timings_s") or {}
    sections = [
        f"<h2>Data</h2><p>{escape(str(summary.get('n_classes')))} classes; "
        f"store {escape(str(summary.get('store')))}</p>{sizes}",
        *_metrics_sections(run, metrics),
        "<h2>Learning curves</h2>" + _img(run / "report" / "learning_curves.png",
                                          "learning curves"),
        "<h2>Map preview</h2>" + _img(run / "maps" / "classif_preview.png", "map preview")
        + legend_html,
        area_html,
        "<h2>Wall time per stage (s)</h2>" + _table(
            ["stage", "seconds"], ([escape(k), _num(v, ".1f")] for k, v in timings.items()),
            "timings"),
        _config_section(run),
    ]
    return write_text_atomic(run / "report" / INDEX_HTML, _page(title, sections))


def write_multirun_html(out: str | Path, agg: Mapping[str, Any]) -> Path:
    """Write ``<out>/index.html`` for a multi-run or comparison aggregate.

    Args:
        out: the folder of ``results.json``.
        agg: the aggregate (:func:`i2dl.evaluation.aggregate.aggregate`).

    Returns:
        The page's path (written atomically).
    """
    out = Path(out)
    stats = agg.get("metrics") or {}
    head = _table(
        ["metric", "mean", "std", "runs"],
        ([label, f'<span id="{key}_mean">{_num((stats.get(key) or {}).get("mean"))}</span>',
          _num((stats.get(key) or {}).get("std")), escape(str((stats.get(key) or {}).get("n")))]
         for key, label in (("oa", "OA"), ("kappa", "Cohen's kappa"), ("f1_macro", "macro F1"))),
        "summary")
    rows = []
    for r in agg.get("runs") or []:
        path = Path(str(r.get("path", "")))
        page = path / "report" / INDEX_HTML
        name = escape(path.name or "?")
        link = f'<a href="{escape(str(page.relative_to(out)))}">{name}</a>' if (
            page.is_file() and page.is_relative_to(out)) else name
        rows.append([link, escape(str(r.get("experiment"))), escape(str(r.get("seed"))),
                     _num(r.get("oa")), _num(r.get("kappa")), _num(r.get("f1_macro")),
                     escape(str(r.get("n_val")))])
    runs = _table(["run", "experiment", "seed", "OA", "kappa", "macro F1", "val pixels"],
                  rows, "runs")
    title = f"i2dl results: {', '.join(map(str, agg.get('experiments') or []))}"
    sections = [f"<h2>{escape(str(agg.get('n_runs')))} runs</h2>{head}{runs}",
                "<h2>Confusion matrix, summed over the runs</h2>"
                + _img(out / "confusion_matrix_sum.png", "summed confusion matrix"),
                "<h2>F1 per class</h2>" + _img(out / "f1_per_class.png", "F1 per class")]
    warnings = agg.get("warnings") or []
    if warnings:
        sections.append("<h2>Warnings</h2><ul>" + "".join(
            f"<li>{escape(str(w))}</li>" for w in warnings) + "</ul>")
    return write_text_atomic(out / INDEX_HTML, _page(title, sections))


#: the comparison page of ``python -m i2dl report DIR1 DIR2 ...``
COMPARISON_HTML = "comparison.html"
#: picture of the paired OA differences (``write_comparison``), shown in comparison.html
PAIRED_PNG = "paired_oa.png"


def write_comparison_html(out: str | Path, groups: Sequence[Mapping[str, Any]],
                          labels: Sequence[str]) -> Path:
    """Write ``<out>/comparison.html``: one row per experiment (mean ± std of each metric).

    Args:
        out: output folder.
        groups: multi-run aggregates (:func:`i2dl.evaluation.aggregate.aggregate`).
        labels: one label per group.

    Returns:
        The page's path (written atomically).
    """
    out = Path(out)
    rows = []
    for label, g in zip(labels, groups, strict=True):
        page = Path(str(g.get("root", ""))) / INDEX_HTML
        name = escape(label)
        if page.is_file():
            name = f'<a href="{escape(page.resolve().as_uri())}">{name}</a>'
        cells = []
        for key in ("oa", "kappa", "f1_macro"):
            st = (g.get("metrics") or {}).get(key) or {}
            std = f" ± {_num(st.get('std'))}" if st.get("std") is not None else ""
            cells.append(f"{_num(st.get('mean'))}{std}")
        rows.append([name, escape(str(g.get("n_runs"))), *cells])
    table = _table(["experiment", "runs", "OA", "Cohen's kappa", "macro F1"], rows,
                   "comparison")
    sections = [table]
    if (out / PAIRED_PNG).is_file():  # written before this page by write_comparison
        sections.append("<h2>Paired by split</h2>"
                        + _img(out / PAIRED_PNG, "OA differences per split"))
    return write_text_atomic(out / COMPARISON_HTML, _page("i2dl comparison", sections))
