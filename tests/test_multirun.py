"""Multi-run: iota2's `runs=N`, Hydra multirun over seeds, and `python -m i2dl report`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

from i2dl.config import ROOT_DIR
from tests.conftest import FAST, SMALL_LTAE


def test_runs_shortcut_resplits_and_aggregates(make_cfg, tiny_dataset, tmp_path: Path) -> None:
    from i2dl.stages.train import run as run_train

    cfg = make_cfg(*tiny_dataset["overrides"], *FAST, *SMALL_LTAE, "runs=2", "seed=4")
    agg = run_train(cfg)
    run = tmp_path / "run"
    summaries = [json.loads((run / f"seed_{i}" / "summary.json").read_text()) for i in (0, 1)]
    assert [s["seed"] for s in summaries] == [4, 5]
    splits = [zarr.open_group(s["store"], mode="r")["split"][:] for s in summaries]
    assert summaries[0]["store"] != summaries[1]["store"]
    assert not np.array_equal(splits[0], splits[1])  # each run has its own polygon split
    text = (run / "RESULTS.txt").read_text()
    assert "OA" in text and "+-" in text
    oas = [s["oa"] for s in summaries]
    assert agg["n_runs"] == 2 and agg["seeds"] == [4, 5]
    results = json.loads((run / "results.json").read_text())
    assert np.isclose(results["metrics"]["oa"]["mean"], np.mean(oas), atol=1e-6)


def test_hydra_multirun_and_report_cli(tiny_dataset, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "i2dl", "train", "-m", "+experiment=ltae", "seed=0,1",
        f"hydra.sweep.dir={sweep}", f"paths.store_dir={tmp_path / 'stores'}",
        *tiny_dataset["overrides"], *FAST, *SMALL_LTAE,
    ]
    proc = subprocess.run(cmd, cwd=ROOT_DIR, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seeds = [json.loads((sweep / str(i) / "summary.json").read_text())["seed"] for i in (0, 1)]
    assert seeds == [0, 1]
    rep = subprocess.run([sys.executable, "-m", "i2dl", "report", str(sweep)], cwd=ROOT_DIR,
                         capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "OA" in rep.stdout
    for name in ("RESULTS.txt", "results.json", "confusion_matrix_sum.csv", "f1_per_class.png"):
        assert (sweep / name).is_file(), name
