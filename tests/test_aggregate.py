"""Tests of i2dl.evaluation.aggregate (multi-run report, iota2 RESULTS.txt style).

Run folders are written by hand with known numbers; expected statistics are computed
in the tests with numpy / scipy / scikit-learn, never with the code under test.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score

from i2dl.errors import InputDataError, InputFileNotFoundError
from i2dl.evaluation.aggregate import aggregate, describe, find_runs, t_critical
from i2dl.evaluation.results_files import compare, comparison_csv, write_results
from i2dl.stages.report import main

scipy_stats = pytest.importorskip("scipy.stats")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOL = 1e-6

NAMES = {1: "wheat", 2: "forest", 3: "urban", 5: "water"}

# Three runs of "ltae". Runs 0 and 1 have classes 1, 2, 3; run 2 has 2, 3, 5.
RUNS = [
    {
        "seed": 0, "oa": 0.8, "kappa": 0.7, "f1_macro": 0.75,
        "codes": [1, 2, 3],
        "cm": [[5, 1, 0], [0, 4, 1], [1, 0, 3]],
        "f1": [0.8, 0.75, 0.7],
        "timings": {"prepare": 1.0, "fit": 10.0, "evaluate": 0.5},
    },
    {
        "seed": 1, "oa": 0.9, "kappa": 0.8, "f1_macro": 0.85,
        "codes": [1, 2, 3],
        "cm": [[6, 0, 0], [1, 5, 0], [0, 1, 2]],
        "f1": [0.9, None, 0.8],
        "timings": {"prepare": 2.0, "fit": 20.0, "evaluate": 0.5},
    },
    {
        "seed": 2, "oa": 0.7, "kappa": 0.6, "f1_macro": 0.65,
        "codes": [2, 3, 5],
        "cm": [[3, 1, 2], [0, 4, 0], [1, 1, 7]],
        "f1": [0.6, 0.5, 0.4],
        "timings": {"prepare": 3.0, "fit": 30.0},
    },
]  # fmt: skip


def approx(x):
    return pytest.approx(float(x), abs=TOL)


def write_run(folder: Path, spec: dict, experiment: str = "ltae") -> Path:
    """Write summary.json and report/metrics.json of a fake run folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report").mkdir(exist_ok=True)
    cm = np.asarray(spec["cm"])
    classes = [
        {"code": c, "name": NAMES[c], "precision": None, "recall": None, "f1": f,
         "support": int(cm[i].sum())}
        for i, (c, f) in enumerate(zip(spec["codes"], spec["f1"], strict=True))
    ]  # fmt: skip
    metrics = {
        "n_samples": int(cm.sum()),
        "oa": spec["oa"],
        "kappa": spec["kappa"],
        "precision_macro": None,
        "recall_macro": None,
        "f1_macro": spec["f1_macro"],
        "confusion_matrix": spec["cm"],
        "classes": classes,
    }
    summary = {
        "experiment": experiment,
        "seed": spec["seed"],
        "oa": spec["oa"],
        "kappa": spec["kappa"],
        "f1_macro": spec["f1_macro"],
        "n_learn": 100,
        "n_val": int(cm.sum()),
        "n_classes": len(spec["codes"]),
        "classes": [{"code": c, "name": NAMES[c]} for c in spec["codes"]],
        "timings_s": spec["timings"],
        "versions": {"i2dl": "0.1.0"},
    }
    (folder / "report" / "metrics.json").write_text(json.dumps(metrics))
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    """A Hydra-like multirun dir: <dir>/<job>/ run folders plus multirun.yaml."""
    root = tmp_path / "multirun" / "ltae"
    for i, spec in enumerate(RUNS):
        write_run(root / str(i), spec)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def expected_stats(values):
    v = np.asarray([x for x in values if x is not None], float)
    n = v.size
    mean = v.mean()
    std = v.std(ddof=1) if n > 1 else 0.0
    half = scipy_stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else None
    return n, mean, std, half


# ----------------------------------------------------------------------- find_runs


def test_find_runs_single_and_multirun(tmp_path: Path, multirun: Path):
    assert find_runs(multirun / "1") == [multirun / "1"]
    assert find_runs(multirun / "1" / "summary.json") == [multirun / "1"]
    assert find_runs(multirun) == [multirun / "0", multirun / "1", multirun / "2"]
    # depth 2 (a folder of multirun dirs); numeric order: job 2 before job 10
    write_run(multirun / "10", RUNS[0])
    found = find_runs(tmp_path / "multirun")
    assert [p.name for p in found] == ["0", "1", "2", "10"]


def test_find_runs_errors(tmp_path: Path):
    empty = tmp_path / "empty"
    (empty / "a" / "b" / "c").mkdir(parents=True)
    write_run(empty / "a" / "b" / "c", RUNS[0])  # depth 3: not searched
    with pytest.raises(InputDataError, match="no run folder found") as exc:
        find_runs(empty)
    assert str(empty) in str(exc.value)
    with pytest.raises(InputFileNotFoundError, match="missing_dir"):
        find_runs(tmp_path / "missing_dir")


# ------------------------------------------------------------------------ statistics


def test_t_critical_matches_known_quantiles():
    # t_{0.975, df} from statistical tables
    for df, t in ((1, 12.7062), (2, 4.3027), (5, 2.5706), (30, 2.0423)):
        assert t_critical(df) == pytest.approx(t, abs=1e-4)
    with pytest.raises(ValueError):
        t_critical(0)


def test_describe_single_and_missing():
    one = describe([0.8])
    assert one["n"] == 1 and one["mean"] == approx(0.8) and one["std"] == 0.0
    assert one["ci_low"] is None and one["ci_high"] is None
    none = describe([None, None])
    assert none["n"] == 0 and none["mean"] is None and none["std"] is None


def test_aggregate_metric_stats(multirun: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="i2dl.evaluation.aggregate"):
        agg = aggregate(find_runs(multirun))
    assert agg["n_runs"] == 3
    assert agg["experiment"] == "ltae" and agg["experiments"] == ["ltae"]
    assert agg["seeds"] == [0, 1, 2]
    for key in ("oa", "kappa", "f1_macro"):
        values = [r[key] for r in RUNS]
        n, mean, std, half = expected_stats(values)
        st = agg["metrics"][key]
        assert st["values"] == [approx(v) for v in values]
        assert st["n"] == 3
        assert st["mean"] == approx(mean)
        assert st["std"] == approx(std)
        # the t interval, clipped to the metric's range ([-1, 1] for kappa)
        lo, hi = (-1.0, 1.0) if key == "kappa" else (0.0, 1.0)
        assert st["ci_low"] == approx(max(mean - half, lo))
        assert st["ci_high"] == approx(min(mean + half, hi))
        assert st["ci_clipped"] == (mean - half < lo or mean + half > hi)
        assert st["ci_note"] is None  # 3 runs
    # OA 0.8, 0.9, 0.7 by hand: mean 0.8, std 0.1, half width 4.3027 * 0.1 / sqrt(3)
    assert agg["metrics"]["oa"]["std"] == approx(0.1)
    assert agg["metrics"]["oa"]["ci_half_width"] == pytest.approx(
        4.302653 * 0.1 / math.sqrt(3), abs=1e-5
    )
    # mean time per stage; "evaluate" only in two runs
    assert agg["timings_s"]["fit"]["mean"] == approx(20.0)
    assert agg["timings_s"]["evaluate"]["mean"] == approx(0.5)
    assert agg["timings_s"]["evaluate"]["values"] == [0.5, 0.5, None]
    # different class sets: warned
    assert any("different class sets" in w for w in agg["warnings"])
    assert "different class sets" in caplog.text


def test_aggregate_summed_confusion_aligned_by_code(multirun: Path):
    agg = aggregate(find_runs(multirun))
    cms = agg["confusion_matrix_sum"]
    assert cms["codes"] == [1, 2, 3, 5]
    assert cms["names"] == ["wheat", "forest", "urban", "water"]
    expected = np.zeros((4, 4), int)
    pos = {1: 0, 2: 1, 3: 2, 5: 3}
    for spec in RUNS:
        for i, ci in enumerate(spec["codes"]):
            for j, cj in enumerate(spec["codes"]):
                expected[pos[ci], pos[cj]] += spec["cm"][i][j]
    assert np.array_equal(np.asarray(cms["matrix"]), expected)
    assert cms["n_samples"] == expected.sum()
    # OA / kappa of the summed matrix, independently with scikit-learn
    codes = np.array(cms["codes"])
    rows, cols = np.nonzero(expected)
    counts = expected[rows, cols]
    y_true = np.repeat(codes[rows], counts)
    y_pred = np.repeat(codes[cols], counts)
    assert cms["oa"] == approx(accuracy_score(y_true, y_pred))
    assert cms["kappa"] == approx(cohen_kappa_score(y_true, y_pred))


def test_aggregate_per_class_f1(multirun: Path):
    agg = aggregate(find_runs(multirun))
    by_code = {c["code"]: c for c in agg["classes"]}
    assert sorted(by_code) == [1, 2, 3, 5]
    assert by_code[5]["name"] == "water"
    per_run = {  # F1 per run, None where the run lacks the class or F1 is null
        1: [0.8, 0.9, None],
        2: [0.75, None, 0.6],
        3: [0.7, 0.8, 0.5],
        5: [None, None, 0.4],
    }
    for code, values in per_run.items():
        st = by_code[code]["f1"]
        assert st["values"] == [None if v is None else approx(v) for v in values]
        n, mean, std, half = expected_stats(values)
        assert st["n"] == n
        assert st["mean"] == approx(mean)
        assert st["std"] == approx(std)
        if half is None:
            assert st["ci_low"] is None
        else:  # clipped to [0, 1]
            assert st["ci_low"] == approx(max(mean - half, 0.0))
            assert st["ci_high"] == approx(min(mean + half, 1.0))
            assert (st["ci_note"] is not None) == (n < 3)
    assert by_code[1]["n_runs"] == 2 and by_code[5]["n_runs"] == 1
    assert by_code[2]["support"] == [5, 6, 6]


def test_aggregate_warns_mixed_experiments(tmp_path: Path):
    a = write_run(tmp_path / "a", RUNS[0], experiment="ltae")
    b = write_run(tmp_path / "b", RUNS[1], experiment="tempcnn")
    agg = aggregate([a, b])
    assert agg["experiments"] == ["ltae", "tempcnn"]
    assert any("different experiments" in w for w in agg["warnings"])


def test_aggregate_missing_metrics(tmp_path: Path):
    run = write_run(tmp_path / "r", RUNS[0])
    (run / "report" / "metrics.json").unlink()
    with pytest.raises(InputFileNotFoundError, match="metrics.json"):
        aggregate([run])
    with pytest.raises(InputDataError):
        aggregate([])


# -------------------------------------------------------------------------- outputs


def test_write_results(tmp_path: Path, multirun: Path):
    agg = aggregate(find_runs(multirun))
    out = tmp_path / "out"
    written = write_results(out, agg)
    assert set(written) == {
        "RESULTS.txt", "results.json", "confusion_matrix_sum.csv",
        "confusion_matrix_sum.png", "f1_per_class.png", "index.html",
    }  # fmt: skip
    for path in written.values():
        assert path.is_file() and path.parent == out
    for name in ("confusion_matrix_sum.png", "f1_per_class.png"):
        assert written[name].read_bytes()[:8] == PNG_SIGNATURE
    assert json.loads(written["results.json"].read_text()) == json.loads(json.dumps(agg))
    with open(written["confusion_matrix_sum.csv"], newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["reference/predicted", "1 wheat", "2 forest", "3 urban", "5 water"]
    matrix = [[int(v) for v in r[1:]] for r in rows[1:]]
    assert matrix == agg["confusion_matrix_sum"]["matrix"]
    text = written["RESULTS.txt"].read_text(encoding="utf-8")
    assert "experiment : ltae" in text
    assert "seeds 0, 1, 2" in text
    half = scipy_stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert (f"OA: 0.8000 +- 0.1000 (95% CI {0.8 - half:.4f}\u20131.0000, clipped to the "
            "metric's range)") in text
    assert "water" in text
    assert not list(out.glob(".*.tmp"))


def test_main_single_dir(multirun: Path, capsys):
    assert main([str(multirun)]) == 0
    outp = capsys.readouterr().out
    assert "OA: 0.8000 +- 0.1000" in outp
    assert (multirun / "RESULTS.txt").is_file()
    assert (multirun / "f1_per_class.png").read_bytes()[:8] == PNG_SIGNATURE


def test_main_single_run_out(tmp_path: Path, multirun: Path, capsys):
    out = tmp_path / "single"
    assert main([str(multirun / "0"), "--out", str(out)]) == 0
    outp = capsys.readouterr().out
    assert "OA: 0.8000 +- 0.0000 (95% CI n/a, n = 1)" in outp
    assert (out / "results.json").is_file()


def test_main_compare_two_groups(tmp_path: Path, capsys):
    g1 = tmp_path / "exp" / "ltae"
    g2 = tmp_path / "exp" / "tempcnn"
    for i, spec in enumerate(RUNS):
        write_run(g1 / str(i), spec, "ltae")
    shifted = [dict(s, oa=s["oa"] - 0.1) for s in RUNS[:2]]  # OA 0.7, 0.8
    for i, spec in enumerate(shifted):
        write_run(g2 / str(i), spec, "tempcnn")
    assert main([str(g1), str(g2)]) == 0
    outp = capsys.readouterr().out
    assert "ltae" in outp and "tempcnn" in outp
    assert "0.8000 ± 0.1000" in outp  # ltae OA
    std2 = np.std([0.7, 0.8], ddof=1)
    assert f"0.7500 ± {std2:.4f}" in outp  # tempcnn OA
    # per-group reports in each DIR, comparison in their common parent
    assert (g1 / "RESULTS.txt").is_file() and (g2 / "RESULTS.txt").is_file()
    md = (tmp_path / "exp" / "comparison.md").read_text(encoding="utf-8")
    assert "| ltae | 3 |" in md and "| tempcnn | 2 |" in md
    with open(tmp_path / "exp" / "comparison.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["experiment"] for r in rows] == ["ltae", "tempcnn"]
    assert float(rows[0]["oa_mean"]) == approx(0.8)
    assert float(rows[1]["oa_mean"]) == approx(0.75)
    assert float(rows[0]["fit_time_mean_s"]) == approx(20.0)
    assert rows[1]["f1_5_mean"] == ""  # tempcnn runs lack class 5


def test_compare_same_experiment_names(tmp_path: Path):
    g1 = aggregate([write_run(tmp_path / "a" / "0", RUNS[0])])
    g2 = aggregate([write_run(tmp_path / "b" / "0", RUNS[1])])
    text = compare([g1, g2])
    assert "ltae (a)" in text and "ltae (b)" in text
    assert "ltae (a)" in comparison_csv([g1, g2])


def test_main_errors(tmp_path: Path, capsys):
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert main([str(empty)]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "no run folder" in err
    assert main([str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main([]) == 2  # argparse usage error


# ------------------------------------------------------------------ paired comparison


def test_corrected_t_is_the_paired_t_test_without_correction_and_shrinks_with_it():
    from i2dl.evaluation.paired import corrected_t

    a = np.array([0.80, 0.85, 0.78, 0.90, 0.82])
    b = np.array([0.78, 0.86, 0.74, 0.85, 0.80])
    plain = scipy_stats.ttest_rel(a, b)
    t0, p0 = corrected_t(a - b, 0.0)
    assert t0 == approx(plain.statistic) and p0 == approx(plain.pvalue)
    # n_val / n_train = 0.25 with J = 5: variance factor 1/5 + 0.25 instead of 1/5
    t1, p1 = corrected_t(a - b, 0.25)
    assert t1 == approx(plain.statistic * math.sqrt(0.2 / 0.45))
    assert p1 > p0
    assert corrected_t([0.01], 0.1) is None  # one split: no spread
    assert corrected_t([0.02, 0.02, 0.02], 0.1) is None  # no spread to test
    with pytest.raises(ValueError, match="test_train_ratio"):
        corrected_t(a - b, -1.0)


def test_paired_differences_match_runs_on_the_same_split(tmp_path: Path):
    from i2dl.evaluation.paired import paired_differences

    ref = aggregate([write_run(tmp_path / "rf" / str(i), s, "rf") for i, s in enumerate(RUNS)])
    other_specs = [dict(RUNS[0], oa=0.85), dict(RUNS[1], oa=0.9), dict(RUNS[2], seed=7)]
    other = aggregate([write_run(tmp_path / "ltae" / str(i), s) for i, s in enumerate(other_specs)])
    d = paired_differences(ref, other)
    # seed 7 has no forest run on its split: two pairs, seeds 0 and 1
    assert d["n"] == 2 and d["seeds"] == [0, 1]
    assert d["oa"]["diffs"] == [approx(0.05), approx(0.0)]
    assert d["oa"]["n_not_below"] == 2  # a tie is not below
    assert d["oa"]["std"] == approx(np.std([0.05, 0.0], ddof=1))
    assert d["kappa"]["mean"] == approx(0.0)
    # val pixels / (learn + selection) of the forest's runs: 15 / 100 for both
    assert d["ratio"] == approx(0.15)
    # the same seed with another val pixel count is another split (other data): not paired
    moved = dict(RUNS[0], cm=[[6, 1, 0], [0, 4, 1], [1, 0, 3]])
    elsewhere = aggregate([write_run(tmp_path / "other" / "0", moved)])
    assert paired_differences(ref, elsewhere) is None


def test_compare_pairs_each_group_with_the_first(tmp_path: Path):
    ref = aggregate([write_run(tmp_path / "rf" / str(i), s, "rf") for i, s in enumerate(RUNS)])
    better = [dict(s, oa=s["oa"] + d) for s, d in zip(RUNS, (0.02, 0.04, 0.03), strict=True)]
    other = aggregate([write_run(tmp_path / "ltae" / str(i), s) for i, s in enumerate(better)])
    text = compare([ref, other])
    assert "## Paired by split, against rf" in text
    paired = text.split("## Paired by split")[1]
    row = next(line for line in paired.splitlines() if line.startswith("| ltae | 3 |"))
    assert f"+0.0300 ± {np.std([0.02, 0.04, 0.03], ddof=1):.4f}" in row
    assert "3 of 3" in row
    # one group alone: nothing to pair
    assert "Paired" not in compare([ref])


def test_write_comparison_draws_the_paired_differences(tmp_path: Path):
    from i2dl.evaluation.results_files import write_comparison

    ref = aggregate([write_run(tmp_path / "rf" / str(i), s, "rf") for i, s in enumerate(RUNS)])
    other = aggregate([write_run(tmp_path / "ltae" / str(i), dict(s, oa=s["oa"] - 0.01))
                       for i, s in enumerate(RUNS)])
    written = write_comparison(tmp_path / "cmp", [ref, other])
    png = written["paired_oa.png"].read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    assert "Paired by split" in written["comparison.html"].read_text(encoding="utf-8")
    # no split in common (seeds 10..12): no picture, and the page says nothing of it
    apart = aggregate([write_run(tmp_path / "far" / str(i), dict(s, seed=10 + i))
                       for i, s in enumerate(RUNS)])
    written = write_comparison(tmp_path / "cmp", [ref, apart])  # the same folder again
    assert "paired_oa.png" not in written and not (tmp_path / "cmp" / "paired_oa.png").exists()
    assert "Paired by split" not in written["comparison.html"].read_text(encoding="utf-8")
