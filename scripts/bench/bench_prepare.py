"""Benchmark: ``prepare`` (sample extraction into the Zarr store) against a plain read.

Writes the synthetic stack of ``bench_infer.write_stack`` (``--size`` pixels a side,
``--dates`` x ``--bands`` int16, tiled, DEFLATE) and ``--polygons`` square reference
polygons of ``--poly`` pixels a side, in two layouts with the same labelled pixels:

- ``compact``: the polygons packed in the top-left quarter of the grid;
- ``spread``: the same polygons spread over the whole grid (4x the area).

For each layout, in ``--repeat`` rounds (medians reported):

- ``baseline``: rasterio reads each polygon's bounding window, every band, in the file's
  dtype (the floor: the labelled pixels must be decoded);
- ``prepare``: :func:`i2dl.samples.extract.prepare` builds the store (burning, extraction, split,
  statistics, Zarr writing), from scratch each round.

Prints JSON lines (seconds, seconds per labelled pixel, ratio to the baseline, peak
RSS of this process so far: the stack is written by a child process) and
``spread_over_compact``: prepare's time with the polygons spread over 4x the area over
its time with them packed (issue 11: time proportional to the labelled pixels,
so about 1, not to the windows they touch).

Usage: python scripts/bench/bench_prepare.py [--size 2048] [--dates 24] [--bands 10]
    [--polygons 60] [--poly 24] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from rasterio.windows import Window
from shapely.geometry import box

from i2dl.config import CONFIG_DIR, CONFIG_NAME, register_resolvers
from i2dl.samples.extract import prepare

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_infer import _timed, write_stack  # noqa: E402


def polygons(size: int, n: int, side: int, spread: bool, transform) -> gpd.GeoDataFrame:
    """``n`` squares of ``side`` px on a regular lattice over the quarter or the whole grid."""
    extent = size if spread else size // 2
    per_row = int(np.ceil(np.sqrt(n)))
    step = extent // per_row
    if step <= side:
        raise SystemExit(f"{n} polygons of {side} px do not fit in {extent} px: lower --poly")
    geoms, codes, windows = [], [], []
    for i in range(n):
        r0, c0 = (i // per_row) * step + 2, (i % per_row) * step + 2
        x0, y1 = transform @ (c0, r0)
        x1, y0 = transform @ (c0 + side, r0 + side)
        geoms.append(box(x0, y0, x1, y1))
        codes.append(1 + i % 5)
        windows.append(Window(c0, r0, side, side))
    gdf = gpd.GeoDataFrame({"code": codes}, geometry=geoms, crs="EPSG:32631")
    gdf.attrs["windows"] = windows
    return gdf


def main() -> None:
    """Run the benchmark and print JSON lines."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--bands", type=int, default=10)
    ap.add_argument("--polygons", type=int, default=60)
    ap.add_argument("--poly", type=int, default=24, help="polygon side, pixels")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    register_resolvers()
    machine = {"size": args.size, "dates": args.dates, "bands": args.bands,
               "polygons": args.polygons, "poly_px": args.poly}
    with tempfile.TemporaryDirectory() as tmp:
        stack = Path(tmp) / "stack.tif"
        # in a child process, so that the peak RSS reported is the benchmark's own
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            dates = pool.submit(write_stack, stack, args.size, args.dates, args.bands).result()
        dates_file = Path(tmp) / "dates.txt"
        dates_file.write_text("".join(f"{d.isoformat()}\n" for d in dates))
        with rasterio.open(stack) as src:
            transform = src.transform
        times: dict[str, list[float]] = {}
        rss: dict[str, list[float]] = {}
        labelled = {}
        layouts = {}
        for layout in ("compact", "spread"):
            gdf = polygons(args.size, args.polygons, args.poly, layout == "spread", transform)
            ref = Path(tmp) / f"{layout}.gpkg"
            gdf.to_file(ref, driver="GPKG")
            layouts[layout] = (gdf.attrs["windows"], ref)
            labelled[layout] = args.polygons * args.poly**2
        for r in range(args.repeat):
            for layout, (windows, ref) in layouts.items():
                def baseline(windows=windows) -> None:
                    with rasterio.open(stack) as src:
                        for w in windows:
                            src.read(window=w)

                def run_prepare(ref=ref, layout=layout, r=r) -> None:
                    GlobalHydra.instance().clear()
                    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                        cfg = compose(config_name=CONFIG_NAME, overrides=[
                            f"paths.output_dir={tmp}/run", f"paths.store_dir={tmp}/stores_{r}",
                            f"data.name=bench_{layout}", f"data.raster={stack}",
                            f"data.dates_file={dates_file}",
                            "data.band_names=[" + ",".join(
                                f"B{i + 1}" for i in range(args.bands)) + "]",
                            "data.masks=[]", f"data.reference={ref}", "data.data_field=code",
                            "data.nomenclature=null", "seed=0",
                        ])
                    prepare(cfg)

                for name, fn in ((f"baseline_{layout}", baseline),
                                 (f"prepare_{layout}", run_prepare)):
                    sec, mb = _timed(fn)
                    times.setdefault(name, []).append(sec)
                    rss.setdefault(name, []).append(mb)
        med = {k: statistics.median(v) for k, v in times.items()}
        for name, sec in med.items():
            layout = name.split("_")[-1]
            print(json.dumps({
                "step": name, "seconds": round(sec, 3), "runs": [round(t, 2) for t in times[name]],
                "labelled_px": labelled[layout],
                "us_per_labelled_px": round(1e6 * sec / labelled[layout], 2),
                "ratio_to_baseline": round(sec / med[f"baseline_{layout}"], 2),
                "peak_rss_mb": round(max(rss[name])), **machine}))
        print(json.dumps({"spread_over_compact": round(
            med["prepare_spread"] / med["prepare_compact"], 3), **machine}))


if __name__ == "__main__":
    main()
