"""One HTML report per run and per multi-run (issue 24), checked against metrics.json."""

from __future__ import annotations

import json
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from i2dl.evaluation.html_report import write_multirun_html, write_run_html
from tests.conftest import FAST


class _Page(HTMLParser):
    """Element texts by id, table cells by table id, image sources."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.links: list[str] = []
        self._open: list[str | None] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(str(a.get("src")))
        elif tag == "a":
            self.links.append(str(a.get("href")))
        if tag not in ("img", "meta"):
            self._open.append(a.get("id"))
            if a.get("id"):
                self.by_id[str(a["id"])] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        if self._open and tag not in ("img", "meta"):
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for i in self._open:
            if i:
                self.by_id[i] += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def test_run_and_multirun_pages_show_the_metrics_json_figures(make_cfg, tiny_dataset,
                                                              tmp_path: Path) -> None:
    from i2dl.stages.train import run as run_train

    cfg = make_cfg("+experiment=rf", *FAST, *tiny_dataset["overrides"], "runs=2",
                   "model.estimator.n_estimators=10", "infer.chunk_size=16")
    run_train(cfg)
    out = Path(cfg.paths.output_dir)
    assert (out / "index.html").is_file()  # written by the multi-run report
    for seed in (0, 1):
        run = out / f"seed_{seed}"
        assert (run / "report" / "index.html").is_file()  # written by train
        # iota2's task status and logs archive, written by train as well
        status = json.loads((run / "logs" / "tasks_status.json").read_text())
        assert [(t["name"], t["state"]) for t in status["tasks"]] == [
            ("prepare", "done"), ("fit", "done"), ("evaluate", "done"), ("infer", "done")]
        with zipfile.ZipFile(run / "logs" / "logs.zip") as zf:
            assert {"logs/train.log", "logs/run_informations.txt"} <= set(zf.namelist())
        page = _parse(write_run_html(run))
        metrics = json.loads((run / "report" / "metrics.json").read_text())
        for key in ("oa", "kappa", "f1_macro"):
            assert float(page.by_id[key]) == pytest.approx(metrics[key], abs=5e-5)
        rows = page.tables["per_class"][1:]
        assert [r[1] for r in rows] == [str(c["code"]) for c in metrics["classes"]]
        assert [float(r[4]) for r in rows] == pytest.approx(
            [c["f1"] for c in metrics["classes"]], abs=5e-5)
        cm = [[int(v) for v in r[1:]] for r in page.tables["confusion"][1:]]
        assert cm == metrics["confusion_matrix"]
        summary = json.loads((run / "summary.json").read_text())
        splits = dict((r[0].split()[0], int(r[1])) for r in page.tables["splits"][1:])
        assert splits == {"learn": summary["n_learn"], "selection": summary["n_selection"],
                          "val": summary["n_val"]}
        # self-contained: every picture is embedded
        assert page.images and all(s.startswith("data:image/png;base64,") for s in page.images)
        assert "http" not in (run / "report" / "index.html").read_text().replace(
            "http://www.w3.org", "")
    results = json.loads((out / "results.json").read_text())
    page = _parse(write_multirun_html(out, results))
    assert float(page.by_id["oa_mean"]) == pytest.approx(results["metrics"]["oa"]["mean"],
                                                         abs=5e-5)
    assert [float(r[3]) for r in page.tables["runs"][1:]] == pytest.approx(
        results["metrics"]["oa"]["values"], abs=5e-5)
    assert sorted(page.links) == ["seed_0/report/index.html", "seed_1/report/index.html"]
    # the comparison page of `python -m i2dl report A B`
    from i2dl.evaluation.results_files import write_comparison

    written = write_comparison(tmp_path / "cmp", [results, results])
    page = _parse(written["comparison.html"])
    rows = page.tables["comparison"][1:]
    assert len(rows) == 2 and rows[0][2].startswith(f"{results['metrics']['oa']['mean']:.4f}")


def test_a_run_without_summary_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="summary.json"):
        write_run_html(tmp_path)
