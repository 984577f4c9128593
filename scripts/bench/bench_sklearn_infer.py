"""Benchmark: random-forest map inference through i2dl against plain scikit-learn.

Fits a :class:`sklearn.ensemble.RandomForestClassifier` (100 trees, ``n_jobs=-1`` as
``configs/model/rf.yaml``) on random samples of a synthetic stack (see ``bench_infer.write_stack``),
then times, on the same pixels:

- ``plain``: the whole raster read at once and one ``predict_proba`` call of scikit-learn
  (the floor: no chunking, no writing);
- ``i2dl``: the batch size of scikit-learn models under ``infer.batch_size=auto``
  (:data:`i2dl.maps.device.SKLEARN_BATCH_SIZE`) through
  :func:`i2dl.maps.engine.classify_raster`, maps written;
- ``i2dl_small``: the same with ``--small`` pixels per ``predict_proba`` (the former
  behaviour: the CPU batch of the deep models).

Prints JSON lines: seconds, pixels per second, ratio to ``plain``.

Usage: python scripts/bench/bench_sklearn_infer.py [--size 512] [--dates 24] [--bands 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import RandomForestClassifier

from i2dl.io.raster import open_time_series
from i2dl.maps.device import SKLEARN_BATCH_SIZE
from i2dl.maps.engine import classify_raster
from i2dl.samples.store import StoreInfo
from models.sklearn_backends import SklearnClassifier, features

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_infer import write_stack  # noqa: E402


def main() -> None:
    """Run the benchmark and print JSON lines."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--bands", type=int, default=10)
    ap.add_argument("--small", type=int, default=16384, help="former batch, pixels")
    args = ap.parse_args()
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        stack = Path(tmp) / "stack.tif"
        dates = write_stack(stack, args.size, args.dates, args.bands)
        dates_file = Path(tmp) / "dates.txt"
        dates_file.write_text("".join(f"{d.isoformat()}\n" for d in dates))
        bands = [f"B{i + 1}" for i in range(args.bands)]
        k = 10
        ones = np.ones(args.bands, np.float32)
        info = StoreInfo(
            path=Path(tmp), n_samples=0, dates=dates,
            days=np.array([(d - dates[0]).days for d in dates], dtype=np.int64),
            band_names=bands, class_codes=list(range(1, k + 1)),
            class_names=[f"class{i}" for i in range(1, k + 1)],
            mean=0 * ones, std=ones, offset=0 * ones, scale=ones,
            crs="", transform=(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0),
            width=args.size, height=args.size, attrs={}, )
        with open_time_series(stack, dates_file, bands) as series:
            x, valid = series.read()
        flat = x.reshape(-1, args.dates, args.bands)
        mask = valid.reshape(-1, args.dates)
        rng = np.random.default_rng(0)
        pick = rng.choice(len(flat), 5000, replace=False)
        days = torch.from_numpy(info.days).expand(len(flat), -1)
        model = SklearnClassifier(RandomForestClassifier(n_estimators=100, n_jobs=-1,
                                                         random_state=0), n_classes=k)
        feats = features(torch.from_numpy(flat[pick]), days[pick], torch.from_numpy(mask[pick]))
        model.estimator.fit(feats, rng.integers(0, k, len(pick)))
        model.fitted = True
        n_px = args.size**2
        t0 = time.perf_counter()
        all_feats = features(torch.from_numpy(flat), days, torch.from_numpy(mask))
        model.estimator.predict_proba(all_feats)
        plain = time.perf_counter() - t0
        rows = {"plain": plain}
        for name, batch in (("i2dl", SKLEARN_BATCH_SIZE), ("i2dl_small", args.small)):
            with open_time_series(stack, dates_file, bands) as series:
                t0 = time.perf_counter()
                classify_raster(series, info, model.predict_proba, Path(tmp) / name, cpu,
                                chunk_size=512, batch_size=batch, progress=False)
                rows[name] = time.perf_counter() - t0
        for name, sec in rows.items():
            print(json.dumps({"step": name, "seconds": round(sec, 2),
                              "px_per_s": round(n_px / sec),
                              "ratio_to_plain": round(plain / sec, 3), "size": args.size,
                              "dates": args.dates, "bands": args.bands}))


if __name__ == "__main__":
    main()
