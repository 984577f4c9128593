"""Benchmark: part of a Sentinel-2 tile through the per-tile stages, time and peak memory.

Writes a synthetic Sentinel-2-like stack (``--size`` pixels a side, ``--dates`` x
``--bands`` int16, date-major, tiled 256 x 256, DEFLATE, nodata -10000 at ~20 % of the
observations, dates in the band descriptions and a dates file: the plain ``stack`` input
of ``configs/data/``) and ``--labelled`` labelled pixels as square reference polygons of
``--poly`` pixels spread on a lattice over the whole grid (GeoPackage, integer field
``code``, ``--classes`` classes). The values are class-dependent (a per-class temporal
profile per band, plus noise), so a model learns something.

Then it runs ``python -m i2dl <stage>`` as subprocesses and reports the wall time and
peak RSS of each: the largest process (``/usr/bin/time -v``, else psutil) and the sum of
the process tree (psutil, sampled every 0.2 s: Dask worker processes included).

- ``prepare``: the sample store (``store.rebuild=true``: always built);
- ``fit``: a small LTAE (``--model``), ``--epochs`` epochs, on the CPU (``resume=never``:
  a fit already in the run folder is not reused);
- ``infer``: the map of that model (``infer.device=cpu``);
- ``features-map``: the features of the stack (``<run>/final/features_map.tif``);
- ``tiler``: two synthetic rasters of another CRS (a 30 m DEM-like float32, a 20 m
  class raster) onto a 2 x 2 grid of tiles (``--tiler-tile`` px a side, default half of
  ``--size``: the stack's area).

``--engines local,dask`` runs prepare, features-map and tiler once per engine
(``dask.engine=dask``: a LocalCluster of ``--workers`` worker processes, one thread each);
fit and infer run once, locally. The stack is kept under ``--work`` with ``--keep`` and
reused on the next run (same size, dates, bands, labelled pixels, polygon side).

Usage: python scripts/bench/bench_tile.py [--size 1372 2745] [--dates 70] [--bands 10]
    [--labelled 1000000] [--poly 25] [--stages prepare,fit,infer] [--engines local]
    [--threads 1] [--work $TMPDIR/i2dl_bench_tile] [--keep] [--json results.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import psutil
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import box

ROOT = Path(__file__).resolve().parents[2]
NODATA = -10000
FULL_TILE = 10980
BLOCK = 256
CRS = "EPSG:32631"
ORIGIN = (300000.0, 5000000.0)
#: a small LTAE: the per-tile stages are measured, not the accuracy
SMALL_LTAE = ("model.encoder.d_model=64,model.encoder.n_head=8,model.encoder.d_k=8,"
              "model.encoder.mlp=[64,32],model.encoder.temporal_conv=[],"
              "model.head.hidden=[32]")
TIME_V = "/usr/bin/time"


# ---------------------------------------------------------------------------- the data


def lattice(size: int, labelled: int, side: int) -> tuple[int, int]:
    """(polygons a row, lattice step) of ``labelled`` px in squares of ``side`` px.

    Raises:
        SystemExit: the squares do not fit in the grid.
    """
    n = max(1, round(labelled / side**2))
    per_row = int(np.ceil(np.sqrt(n)))
    step = size // per_row
    if step <= side:
        raise SystemExit(f"--labelled {labelled} in squares of --poly {side} px does not fit "
                         f"a {size}^2 grid: lower --labelled or --poly")
    return per_row, step


def polygon_codes(n: int, n_classes: int) -> np.ndarray:
    """Class code (1..n_classes) of polygon i, shuffled over the lattice."""
    return 1 + np.random.default_rng(1).permutation(n) % n_classes


def class_map(size: int, labelled: int, side: int, n_classes: int) -> np.ndarray:
    """(size, size) uint8 class of each pixel (0 = unlabelled background)."""
    per_row, step = lattice(size, labelled, side)
    n = max(1, round(labelled / side**2))
    codes = polygon_codes(n, n_classes)
    out = np.zeros((size, size), np.uint8)
    for i in range(n):
        r0, c0 = (i // per_row) * step + 2, (i % per_row) * step + 2
        out[r0:r0 + side, c0:c0 + side] = codes[i]
    return out


def write_polygons(path: Path, size: int, labelled: int, side: int, n_classes: int) -> int:
    """The reference polygons (GeoPackage, field ``code``); returns the labelled pixels."""
    per_row, step = lattice(size, labelled, side)
    n = max(1, round(labelled / side**2))
    codes = polygon_codes(n, n_classes)
    transform = from_origin(*ORIGIN, 10.0, 10.0)
    geoms = []
    for i in range(n):
        r0, c0 = (i // per_row) * step + 2, (i % per_row) * step + 2
        x0, y1 = transform * (c0, r0)
        x1, y0 = transform * (c0 + side, r0 + side)
        geoms.append(box(x0, y0, x1, y1))
    gpd.GeoDataFrame({"code": codes.astype(np.int32)}, geometry=geoms, crs=CRS).to_file(
        path, driver="GPKG")
    return n * side**2


def profiles(n_dates: int, n_bands: int, n_classes: int) -> np.ndarray:
    """(T * C, K + 1) int16 mean value of band (t, c) for class k (0 = background).

    Each class has its own phenology: a seasonal curve of its own amplitude, phase and
    level per band, close enough between classes that the noise and clouds matter.
    """
    rng = np.random.default_rng(2)
    t = np.arange(n_dates)[:, None, None] / max(1, n_dates)  # (T, 1, 1)
    c = np.arange(n_bands)[None, :, None]  # (1, C, 1)
    level = rng.uniform(800, 2500, (1, n_bands, n_classes + 1))
    amp = rng.uniform(200, 900, (1, 1, n_classes + 1)) * (1 + 0.1 * c)
    phase = rng.uniform(0, 2 * np.pi, (1, 1, n_classes + 1))
    x = level + amp * np.sin(2 * np.pi * t + phase)  # (T, C, K+1)
    return np.clip(x, 1, 9000).astype(np.int16).reshape(n_dates * n_bands, n_classes + 1)


def write_stack(path: Path, size: int, n_dates: int, n_bands: int, classes: np.ndarray,
                n_classes: int, noise: int = 60) -> list[dt.date]:
    """The int16 stack, written block by block (all bands of a 256^2 block at once)."""
    dates = [dt.date(2022, 1, 3) + dt.timedelta(days=5 * i) for i in range(n_dates)]
    n = n_dates * n_bands
    profile = {"driver": "GTiff", "width": size, "height": size, "count": n,
               "dtype": "int16", "nodata": NODATA, "crs": CRS, "tiled": True,
               "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate",
               "num_threads": "all_cpus", "bigtiff": "yes",
               "transform": from_origin(*ORIGIN, 10.0, 10.0)}
    prof = profiles(n_dates, n_bands, n_classes)
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, BLOCK):
            for c0 in range(0, size, BLOCK):
                h, w = min(BLOCK, size - r0), min(BLOCK, size - c0)
                cls = classes[r0:r0 + h, c0:c0 + w]
                data = prof[:, cls]  # (T * C, h, w)
                data += rng.integers(-noise, noise, data.shape, dtype=np.int16)
                cloud = rng.random((n_dates, 1, h, w), dtype=np.float32) < 0.2
                data.reshape(n_dates, n_bands, h, w)[np.broadcast_to(
                    cloud, (n_dates, n_bands, h, w))] = NODATA
                dst.write(data, window=Window(c0, r0, w, h))
        for t in range(n_dates):
            dst.set_band_description(t * n_bands + 1, dates[t].isoformat())
    return dates


def write_tiler_inputs(folder: Path, half: int) -> tuple[Path, Path]:
    """A 2 x 2 raster grid of ``half`` px tiles and two features from the next UTM zone."""
    grid, feats = folder / "grid", folder / "features"
    grid.mkdir(parents=True, exist_ok=True)
    feats.mkdir(parents=True, exist_ok=True)
    size = 2 * half
    for i in range(2):
        for j in range(2):
            t = from_origin(ORIGIN[0] + 10.0 * half * j, ORIGIN[1] - 10.0 * half * i, 10, 10)
            with rasterio.open(grid / f"T{i}{j}.tif", "w", driver="GTiff", width=half,
                               height=half, count=1, dtype="uint8", crs=CRS,
                               transform=t, tiled=True, compress="deflate") as dst:
                dst.write(np.zeros((1, half, half), np.uint8))
    # the grid's area in EPSG:32630 (the zone to the west), with a margin
    from rasterio.warp import transform_bounds
    b = transform_bounds(CRS, "EPSG:32630", ORIGIN[0], ORIGIN[1] - 10.0 * size,
                         ORIGIN[0] + 10.0 * size, ORIGIN[1])
    rng = np.random.default_rng(3)
    for name, res, dtype in (("dem", 30.0, "float32"), ("landcover", 20.0, "uint8")):
        w = int((b[2] - b[0]) / res) + 20
        h = int((b[3] - b[1]) / res) + 20
        t = from_origin(b[0] - 10 * res, b[3] + 10 * res, res, res)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        if name == "dem":
            data = 500 + 300 * np.sin(xx / 200) * np.cos(yy / 150) + rng.normal(0, 5, (h, w))
        else:
            data = 1 + ((xx // 40 + yy // 60) % 9)
        with rasterio.open(feats / f"{name}.tif", "w", driver="GTiff", width=w, height=h,
                           count=1, dtype=dtype, crs="EPSG:32630", transform=t, tiled=True,
                           compress="deflate") as dst:
            dst.write(data.astype(dtype)[None])
    return grid, feats


def make_data(work: Path, args: argparse.Namespace, size: int) -> dict[str, object]:
    """Write (or reuse, when its description matches) the stack and polygons of ``size``."""
    folder = work / f"tile_{size}"
    desc = {"size": size, "dates": args.dates, "bands": args.bands,
            "labelled": args.labelled, "poly": args.poly, "classes": args.classes, "v": 1}
    meta = folder / "meta.json"
    stack, dates_file, ref = folder / "stack.tif", folder / "dates.txt", folder / "ref.gpkg"
    if meta.is_file() and json.loads(meta.read_text()).get("desc") == desc and stack.is_file():
        info = json.loads(meta.read_text())
        print(f"# reusing {stack}", file=sys.stderr)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        t0 = time.perf_counter()
        classes = class_map(size, args.labelled, args.poly, args.classes)
        dates = write_stack(stack, size, args.dates, args.bands, classes, args.classes)
        dates_file.write_text("".join(f"{d.isoformat()}\n" for d in dates))
        n = write_polygons(ref, size, args.labelled, args.poly, args.classes)
        info = {"desc": desc, "labelled_px": n, "write_s": round(time.perf_counter() - t0, 1),
                "gb_on_disk": round(stack.stat().st_size / 2**30, 2),
                "gb_uncompressed": round(size**2 * args.dates * args.bands * 2 / 2**30, 2)}
        meta.write_text(json.dumps(info))
    print(json.dumps({"step": "write_stack", **info}))
    return {"folder": folder, "stack": stack, "dates": dates_file, "ref": ref, **info}


# ------------------------------------------------------------------------- measuring


def split_overrides(text: str) -> list[str]:
    """Hydra overrides separated by commas outside brackets."""
    return [o for o in re.split(r",(?![^\[]*\])", text) if o]


class TreeRss:
    """Peak of the summed RSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.peak = 0
        self.peak_anon = 0  # without file-backed pages (memory maps, shared libraries)
        self._stop = threading.Event()
        self._proc = psutil.Process(pid)
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            try:
                procs = [self._proc, *self._proc.children(recursive=True)]
                total = anon = 0
                for p in procs:
                    try:
                        mem = p.memory_info()
                    except psutil.Error:
                        continue
                    total += mem.rss
                    anon += mem.rss - getattr(mem, "shared", 0)
                self.peak = max(self.peak, total)
                self.peak_anon = max(self.peak_anon, anon)
            except psutil.Error:
                return
            self._stop.wait(every)

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak


def run_stage(argv: list[str], log: Path, env: dict[str, str]) -> dict[str, float]:
    """Run one command; wall seconds, peak RSS of its largest process and of its tree (MB).

    ``tree_peak_anon_mb``: the tree's peak of RSS less its file-backed pages (psutil's
    ``shared``): what a memory-mapped file read adds to RSS is not counted there.

    Raises:
        SystemExit: the command failed (its log named).
    """
    timing = log.with_suffix(".time")
    use_time = Path(TIME_V).is_file()
    cmd = [TIME_V, "-v", "-o", str(timing), *argv] if use_time else argv
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        tree = TreeRss(proc.pid)
        rc = proc.wait()
    wall = time.perf_counter() - t0
    tree_peak = tree.stop()
    if rc != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed ({rc}): see {log}")
    max_rss = tree_peak
    if use_time:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing.read_text())
        if m:
            max_rss = int(m.group(1)) * 1024
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(max_rss / 2**20),
            "tree_peak_rss_mb": round(tree_peak / 2**20),
            "tree_peak_anon_mb": round(tree.peak_anon / 2**20)}


def main() -> None:
    """Write the data, run the stages, print JSON lines and a Markdown table."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--size", type=int, nargs="+", default=[2745], help="pixels a side")
    ap.add_argument("--dates", type=int, default=70)
    ap.add_argument("--bands", type=int, default=10)
    ap.add_argument("--labelled", type=int, default=1_000_000, help="labelled pixels")
    ap.add_argument("--poly", type=int, default=25, help="polygon side, pixels")
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--stages", default="prepare,fit,infer",
                    help="comma-separated, in order: prepare, fit, infer, features-map, tiler")
    ap.add_argument("--engines", default="local",
                    help="local and/or dask: prepare, features-map and tiler run once each")
    ap.add_argument("--tiler-tile", type=int, default=None,
                    help="side of the tiler's 4 grid tiles, px (default: --size / 2)")
    ap.add_argument("--workers", type=int, default=2, help="dask.n_workers (processes)")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS and cpu_threads of every stage")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--model", default=SMALL_LTAE, help="comma-separated model overrides")
    ap.add_argument("--extra", default="", help="comma-separated overrides for every stage")
    ap.add_argument("--work", type=Path, default=None,
                    help="data and runs folder (default: $TMPDIR/i2dl_bench_tile)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the stacks (reused by the next run with the same shape)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    engines = [e for e in args.engines.split(",") if e]
    bad = set(stages) - {"prepare", "fit", "infer", "features-map", "tiler"}
    if bad or set(engines) - {"local", "dask"}:
        ap.error(f"unknown stage or engine: {sorted(bad) or engines}")
    work = args.work or Path(tempfile.gettempdir()) / "i2dl_bench_tile"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HYDRA_FULL_ERROR": "1"}
    machine = {"cpus": psutil.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30),
               "cpu": platform.processor() or platform.machine(), "threads": args.threads}
    print(json.dumps({"step": "machine", **machine, "load": os.getloadavg()}))
    results = []
    try:
        for size in args.size:
            data = make_data(work, args, size) if set(stages) - {"tiler"} else {}
            if "tiler" in stages:
                shutil.rmtree(work / f"tiler_{args.tiler_tile or size // 2}",
                              ignore_errors=True)
            bands = ",".join(f"B{i + 1}" for i in range(args.bands))
            for stage in stages:
                for engine in (engines if stage in ("prepare", "features-map", "tiler")
                               else ["local"]):
                    run = work / f"run_{size}"
                    common = [f"hydra.run.dir={run}", f"cpu_threads={args.threads}", "seed=0",
                              f"dask.engine={engine}", f"dask.n_workers={args.workers}",
                              "dask.threads_per_worker=1"]
                    if stage == "tiler":
                        tile_px = args.tiler_tile or size // 2
                        grid, feats = write_tiler_inputs(work / f"tiler_{tile_px}", tile_px)
                        out = work / f"tiler_{tile_px}" / f"out_{engine}"
                        shutil.rmtree(out, ignore_errors=True)
                        overrides = [f"rasters_grid_path={grid}", f"features_path={feats}",
                                     f"output_path={out}", "resampling.landcover=nearest",
                                     f"dask.engine={engine}", f"dask.n_workers={args.workers}",
                                     "dask.threads_per_worker=1"]
                    else:
                        stores = work / f"stores_{size}" / engine
                        local = work / f"stores_{size}" / "local"
                        overrides = [
                            *common, f"data.name=bench_tile_{size}",
                            f"data.raster={data['stack']}", f"data.dates_file={data['dates']}",
                            f"data.band_names=[{bands}]", "data.masks=[]",
                            f"data.reference={data['ref']}", "data.data_field=code",
                            "data.nomenclature=null",
                            f"paths.store_dir={stores if stage == 'prepare' else local}",
                            *split_overrides(args.model),
                        ]
                        if stage == "prepare":
                            overrides += ["store.rebuild=true"]
                        elif stage == "fit":
                            overrides += [f"trainer.max_epochs={args.epochs}", "resume=never",
                                          "trainer.accelerator=cpu",
                                          "trainer.enable_progress_bar=false"]
                        elif stage == "infer":
                            overrides += ["infer.device=cpu"]
                        elif stage == "features-map":
                            overrides[0] = f"hydra.run.dir={run}_features_{engine}"
                    overrides += split_overrides(args.extra)
                    argv = [sys.executable, "-m", "i2dl", stage, *overrides]
                    logs = work / "logs"
                    logs.mkdir(exist_ok=True)
                    load0 = os.getloadavg()[0]
                    res = run_stage(argv, logs / f"{stage}_{size}_{engine}.log", env)
                    row = {"step": stage, "engine": engine, "size": size,
                           "pixels": size * size, "labelled_px": data.get("labelled_px"),
                           **res, "load_before": round(load0, 2),
                           "load_after": round(os.getloadavg()[0], 2),
                           "command": "python -m i2dl " + " ".join([stage, *overrides])}
                    print(json.dumps(row), flush=True)
                    results.append(row)
                    if stage == "features-map":
                        shutil.rmtree(f"{run}_features_{engine}", ignore_errors=True)
            if not args.keep:
                shutil.rmtree(work / f"tile_{size}", ignore_errors=True)
            shutil.rmtree(work / f"stores_{size}", ignore_errors=True)
    finally:
        if args.json:
            args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    print("\n| stage | engine | size | wall time | peak RSS (largest process) | "
          "peak RSS (process tree) | of it anonymous | load before/after |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['step']} | {r['engine']} | {r['size']}² | {r['wall_s']} s | "
              f"{r['peak_rss_mb']} MB | {r['tree_peak_rss_mb']} MB | "
              f"{r['tree_peak_anon_mb']} MB | {r['load_before']} / {r['load_after']} |")
    for r in results:
        if r["step"] == "infer" and r["engine"] == "local":
            full = r["wall_s"] * FULL_TILE**2 / r["pixels"]
            print(f"# infer extrapolated to a full tile ({FULL_TILE}^2 px) from {r['size']}^2: "
                  f"{full / 3600:.2f} h")


if __name__ == "__main__":
    main()
