"""Build the tables of docs/results.md from the outputs of scripts/results.sh.

Usage: python scripts/results_table.py [outputs/results]
Reads <root>/<dataset>/<experiment>/results.json (written by `python -m i2dl report`) and
<root>/walltimes.txt (seconds for the 5 runs of each experiment) and prints Markdown. The
column "OA vs rf" pairs each experiment's runs with the forest's runs on the same splits
(i2dl.evaluation.paired): mean difference ± std and the splits not below the forest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from i2dl.evaluation.paired import paired_differences

ORDER = ["rf", "extra_trees", "svm", "ann", "mlp", "ltae", "ssa", "tempcnn", "ltae_ensemble",
         "tempcnn_ensemble"]


def _cell(m: dict) -> str:
    """``mean ± std``, or the mean alone for a single run (no std)."""
    if m.get("std") is None:
        return f"{m['mean']:.3f}"
    return f"{m['mean']:.3f} ± {m['std']:.3f}"


def main() -> None:
    """Print one table per dataset."""
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/results")
    walls = {}
    for line in (root / "walltimes.txt").read_text().splitlines():
        ds, exp, sec = line.split()
        walls[(ds, exp)] = int(sec)
    for ds in sorted({d for d, _ in walls}):
        print(f"\n### {ds}\n")
        print("| experiment | runs | OA | kappa | macro F1 | OA vs rf, paired | "
              "wall time, all runs (s) |")
        print("|---|---:|---|---|---|---|---:|")
        rf_path = root / ds / "rf" / "results.json"
        forest = json.loads(rf_path.read_text()) if rf_path.is_file() else None
        for exp in ORDER:
            path = root / ds / exp / "results.json"
            if not path.is_file():
                continue
            res = json.loads(path.read_text())
            single = res.get("n_runs") == 1  # one run: no spread to show
            cells = [_cell({**res["metrics"][k], **({"std": None} if single else {})})
                     for k in ("oa", "kappa", "f1_macro")]
            paired = _vs_forest(forest, res, exp)
            print(f"| {exp} | {res['n_runs']} | {' | '.join(cells)} | {paired} "
                  f"| {walls.get((ds, exp), '')} |")


def _vs_forest(forest: dict | None, res: dict, exp: str) -> str:
    """``+0.012 ± 0.030 (4 of 5)``: OA minus the forest's over the shared splits."""
    d = None if forest is None or exp == "rf" else paired_differences(forest, res)
    if d is None:
        return ""
    oa = d["oa"]
    spread = "" if oa["std"] is None else f" ± {oa['std']:.3f}"
    return f"{oa['mean']:+.3f}{spread} ({oa['n_not_below']} of {len(oa['diffs'])})"


if __name__ == "__main__":
    main()
