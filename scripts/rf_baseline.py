"""Random-forest baseline on the same sample store (same learn/val split) as a deep run.

Usage: python scripts/rf_baseline.py <store.zarr> [--trees 500] [--seed 0]

Gap-fills each series linearly over its valid dates (nearest valid value at the ends),
flattens it (T*C features), fits scikit-learn's RandomForestClassifier on the learn split
and prints OA, kappa and macro F1 on the val split (i2dl.report.compute_metrics), to compare
with `summary.json` of a train run on the same store.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import zarr
from sklearn.ensemble import RandomForestClassifier

from i2dl.report import compute_metrics


def gapfill(x: np.ndarray, valid: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Linear interpolation of invalid dates: x (N,T,C), valid (N,T), days (T,) -> (N,T,C)."""
    out = x.copy()
    for i in range(len(x)):
        v = valid[i]
        if v.all() or not v.any():
            continue
        for c in range(x.shape[2]):
            out[i, :, c] = np.interp(days, days[v], x[i, v, c])
    return out


def main() -> None:
    """Fit and score the baseline."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--trees", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    g = zarr.open_group(args.store, mode="r")
    days = np.asarray(g.attrs["days"], dtype=float)
    x = gapfill(g["X"][:], g["mask"][:], days).reshape(g["X"].shape[0], -1)
    y, split = g["y"][:], g["split"][:]
    rf = RandomForestClassifier(n_estimators=args.trees, random_state=args.seed, n_jobs=-1)
    rf.fit(x[split == 0], y[split == 0])
    codes = [c["code"] for c in g.attrs["classes"]]
    m = compute_metrics(y[split == 1], rf.predict(x[split == 1]), codes)
    print(json.dumps({k: m[k] for k in ("oa", "kappa", "f1_macro", "n_samples")}))


if __name__ == "__main__":
    main()
