"""Benchmark: reading THEIA products + gap-filling + indices, per megapixel x date.

Writes a synthetic THEIA Sentinel-2 tile (10 bands, 10 m and 20 m, CLM masks) of
``--size`` pixels a side and ``--dates`` acquisitions in a temporary folder, then times,
on whole-tile chunks of ``--chunk`` pixels:

- ``read``: Sentinel2Theia.read (10 m bands, 20 m -> 10 m bilinear, masks);
- ``gapfill``: linear gap-filling onto a 10-day grid, torch on the CPU, and on CUDA when
  available;
- ``indices``: NDVI, NDWI, Brightness;
- ``stack``: the whole FeatureStack (read + indices + gap-filling).

Usage: python scripts/bench/bench_features.py [--size 1024] [--dates 24] [--chunk 512]
Prints one JSON line per measurement: seconds and seconds per megapixel x date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from i2dl.features.gapfill import gapfill, regular_grid
from i2dl.features.indices import compute_indices
from i2dl.features.source import open_feature_stack
from i2dl.io.geotiff import block_windows
from i2dl.io.raster import days_since
from i2dl.io.sensors.theia import Sentinel2Theia

B10 = ("B2", "B3", "B4", "B8")
B20 = ("B5", "B6", "B7", "B8A", "B11", "B12")


def write_tile(root: Path, size: int, n_dates: int, tile: str = "T31TCJ") -> list[dt.date]:
    """A synthetic THEIA tile: int16 reflectance x 10000, CLM with random clouds."""
    rng = np.random.default_rng(0)
    t10 = from_origin(300000.0, 5000000.0, 10.0, 10.0)
    t20 = from_origin(300000.0, 5000000.0, 20.0, 20.0)
    dates = [dt.date(2022, 1, 5) + dt.timedelta(days=5 * i) for i in range(n_dates)]
    common = {"driver": "GTiff", "count": 1, "crs": "EPSG:32631", "tiled": True,
              "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    for day in dates:
        name = f"SENTINEL2A_{day:%Y%m%d}-105000-000_L2A_{tile}_C_V1-0"
        folder = root / tile / name
        (folder / "MASKS").mkdir(parents=True)
        for band, side, tr in [(b, size, t10) for b in B10] + [(b, size // 2, t20) for b in B20]:
            data = rng.integers(200, 4000, (1, side, side), dtype=np.int16)
            with rasterio.open(folder / f"{name}_FRE_{band}.tif", "w", width=side, height=side,
                               dtype="int16", nodata=-10000, transform=tr, **common) as dst:
                dst.write(data)
        for mask in ("CLM", "SAT", "EDG"):
            data = (rng.random((1, size, size)) < (0.3 if mask == "CLM" else 0.0)).astype("uint8")
            with rasterio.open(folder / "MASKS" / f"{name}_{mask}_R1.tif", "w", width=size,
                               height=size, dtype="uint8", transform=t10, **common) as dst:
                dst.write(data)
    return dates


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    """Run the benchmark and print JSON lines."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--chunk", type=int, default=512)
    args = ap.parse_args()
    machine = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dates = write_tile(root, args.size, args.dates)
        mpx_dates = args.size * args.size / 1e6 * args.dates

        def report(step: str, seconds: float, **extra: object) -> None:
            print(json.dumps({"step": step, "seconds": round(seconds, 3),
                              "s_per_mpx_date": round(seconds / mpx_dates, 4),
                              "size": args.size, "dates": args.dates, **extra, **machine}))

        windows = block_windows(args.size, args.size, args.chunk)
        with Sentinel2Theia(root, "T31TCJ") as src:
            chunks = []
            report("read", timed(lambda: chunks.extend(src.read(w) for w in windows)))
            names = src.band_names
        days = days_since(dates, dates[0])
        target = days_since(regular_grid(dates, 10), dates[0])
        report("indices", timed(lambda: [compute_indices(x, names) for x, _ in chunks]))
        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
        for device in devices:
            run = lambda d=device: [gapfill(x, v, days, target, device=d) for x, v in chunks]  # noqa: E731
            report("gapfill", timed(run, repeat=2), backend="torch", device=device)
        data = {"name": "bench", "tile": "T31TCJ",
                "sensors": {"sentinel2_theia": {"root": str(root)}},
                "gapfilling": {"enabled": True, "temporal_resolution": 10},
                "indices": ["NDVI", "NDWI", "Brightness"]}
        with open_feature_stack(data) as stack:
            report("stack", timed(lambda: [stack.read(w) for w in windows]),
                   channels=stack.n_channels, grid_dates=stack.n_dates)


if __name__ == "__main__":
    main()
