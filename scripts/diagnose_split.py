"""Are the val polygons of a class like its learn polygons? (issue 20, Slovenia diagnosis)

Reads one sample store (``<run>/stores/*.zarr``), gap-fills every pixel's series linearly
on its own acquisition days (:func:`i2dl.features.gapfill.gapfill`, as iota2 gives its
classifiers), and prints:

- per polygon of the chosen classes: its split, pixel count, and the mean value of one
  band in winter (November to March) and in the rest of the year;
- for the val pixels of each class, how many pixels k-nearest-neighbour classifiers
  (k = 1, 5, 25: from a model that follows single learn pixels to a smooth one) and a
  random forest (100 trees), all fitted on learn + selection, give to each class.

A val polygon whose winter value lies outside the range of its class's learn polygons, and
that low-k neighbours label as another class, is a shift between the polygons of the split,
not a fault of one network: smoother models (larger k, a forest, an ensemble) resist it.

Usage: python scripts/diagnose_split.py STORE [--classes 2 4] [--band 0]
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.neighbors import KNeighborsClassifier

from i2dl.features.gapfill import gapfill
from i2dl.samples.store import LEARN, SPLIT_NAMES, VAL, open_store, read_array

WINTER = (11, 12, 1, 2, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store", help="a sample store (.zarr)")
    ap.add_argument("--classes", type=int, nargs="+", default=None,
                    help="class codes whose polygons are listed (default: all)")
    ap.add_argument("--band", type=int, default=0, help="channel index for the seasonal means")
    args = ap.parse_args()

    g = open_store(args.store)
    x, mask = read_array(g, "X"), read_array(g, "mask")
    split, code = read_array(g, "split"), read_array(g, "code")
    poly = read_array(g, "polygon_id")
    attrs = dict(g.attrs)
    days = np.asarray(attrs["days"])
    winter = np.array([int(str(d)[5:7]) in WINTER for d in list(attrs["dates"])])  # type: ignore[arg-type]
    filled, _ = gapfill(x, mask, days, days, device="cpu")
    series = filled[..., args.band]

    classes = args.classes or sorted(set(code.tolist()))
    print("| class | split | polygon | pixels | winter mean | rest of the year |")
    print("|---|---|---|---:|---:|---:|")
    for c in classes:
        for s in (LEARN, *[v for v in SPLIT_NAMES if v != LEARN]):
            for p in np.unique(poly[(code == c) & (split == s)]):
                rows = series[poly == p]
                print(f"| {c} | {SPLIT_NAMES[s]} | {p} | {len(rows)} | "
                      f"{rows[:, winter].mean():.3f} | {rows[:, ~winter].mean():.3f} |")

    flat = filled.reshape(len(filled), -1)
    fit, val = split != VAL, split == VAL
    models = {f"{k}-NN": KNeighborsClassifier(k) for k in (1, 5, 25)}
    models["random forest"] = RandomForestClassifier(100, random_state=0, n_jobs=1)
    print("\nval pixels of each class -> predicted classes (fitted on learn + selection)")
    for name, model in models.items():
        pred = model.fit(flat[fit], code[fit]).predict(flat[val])
        oa = float((pred == code[val]).mean())
        print(f"{name}: OA {oa:.3f}")
        for c in classes:
            got = Counter(pred[code[val] == c].tolist())
            print(f"  class {c}: " + ", ".join(f"{k}: {n}" for k, n in sorted(got.items())))


if __name__ == "__main__":
    main()
