"""Benchmark: map inference of an LTAE against the raster read floor.

Writes a synthetic Sentinel-2-like stack in a temporary folder: ``--size`` pixels a side,
``--dates`` x ``--bands`` int16 bands (date-major), tiled 256 x 256, DEFLATE, nodata
-10000 at ~20 % of the observations (clouds). Then, in A/B pairs within one run
(``--repeat`` rounds, medians reported):

- ``read_floor``: every ``--chunk`` block window read with rasterio as int16, as
  inference reads it (the floor: decoding, no cast);
- ``read_i2dl``: the same windows through i2dl's reader (float32 values and validity);
- ``infer``: :func:`i2dl.maps.engine.classify_raster` on the CPU with the default LTAE
  config (``configs/model/ltae.yaml`` with the ``--set`` overrides, randomly initialised,
  10 classes), writing
  ``classif.tif`` and ``confidence.tif``, for each variant of ``--variants``:
  ``NAME:FORWARD:BATCH[:READERS[:THREADS]]`` with FORWARD ``lean`` (models/ltae.py and the
  engine as they are), ``train`` (the path before issue 23: the LTAE's training-mode
  kernels in eval mode, not :mod:`models.ltae_infer`, and the engine's former batches,
  fancy-indexed copies normalised by NumPy; copied below) or ``before`` (the forward
  before issue 11, copied below), BATCH ``auto`` or pixels, and READERS the reader
  threads (``infer.reader_threads``; 0 = serial: each window read in turn, no overlap;
  default 1: one thread reads ahead while the model computes) and THREADS torch's
  intra-op threads during that variant (default: ``--threads`` or torch's default);
- ``read_floor_threads``: with a variant of READERS > 1, the windows read by that many
  threads, each with its own dataset (the parallel read floor).

Each line of output is JSON: seconds, pixels per second, ``ratio`` = infer px/s over
read-floor px/s (issue 11 asks for >= 1/3 on the CPU), and the peak RSS of the step
(resource.getrusage, after resetting the high-water mark through /proc/self/clear_refs
where Linux allows it). The last lines print the command for a full Sentinel-2 tile.

Usage: python scripts/bench/bench_infer.py [--size 512] [--dates 24] [--bands 10]
    [--chunk 512] [--repeat 3] [--variants serial:lean:auto:0,after:lean:auto:1,...]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import platform
import resource
import statistics
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
import torch
from omegaconf import DictConfig, OmegaConf
from rasterio.transform import from_origin
from rasterio.windows import Window
from torch import Tensor

from i2dl.io.geotiff import block_windows
from i2dl.io.raster import open_time_series
from i2dl.maps import engine
from i2dl.maps.device import resolve_batch_size
from i2dl.maps.engine import classify_raster
from i2dl.samples.store import StoreInfo
from i2dl.training.build import DataDims, build_classifier
from models import ltae_infer
from models.ltae import LTAE

ROOT = Path(__file__).resolve().parents[2]
NODATA = -10000
FULL_TILE = 10980


def _former_encoding(days: Tensor, d_model: int, n_head: int, period: float) -> Tensor:
    """positional_encoding before the lean path: per pixel, float64, repeated."""
    d_h = d_model // n_head
    i = torch.arange(d_h, device=days.device, dtype=torch.float64)
    denom = torch.pow(torch.tensor(period, dtype=torch.float64, device=days.device),
                      2.0 * torch.div(i, 2, rounding_mode="floor") / d_h)
    angle = days.to(torch.float64).unsqueeze(-1) / denom
    table = torch.where(
        (torch.arange(d_h, device=days.device) % 2 == 0), torch.sin(angle), torch.cos(angle)
    )
    return table.to(torch.float32).repeat(1, 1, n_head)


def _former_forward(self: LTAE, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
    """LTAE.forward before the lean path (for the A/B pair; see tests/test_ltae_fast.py)."""
    B, T, _ = x.shape
    x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    days = torch.where(mask, days, torch.zeros((), dtype=days.dtype, device=days.device))
    z = self.in_out_norm(self.inconv(self.in_norm(x.float())))
    z = z + _former_encoding(days, self.d_model, self.n_head, self.period)
    k = self.key(z).view(B, T, self.n_head, self.d_k)
    scores = torch.einsum("hd,bthd->bht", self.query, k) / math.sqrt(self.d_k)
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    any_valid = mask.any(dim=1).view(B, 1, 1)
    scores = scores.masked_fill(~any_valid, 0.0)
    attn = torch.softmax(scores, dim=-1) * any_valid
    self.attention_weights = attn.detach()
    attn = self.attention_dropout(attn)
    v = z.view(B, T, self.n_head, self.d_model // self.n_head)
    out = torch.einsum("bht,bthc->bhc", attn, v).reshape(B, self.d_model)
    return self.out_norm(self.dropout(self.mlp(out)))


def _former_predict_batch(fn: Callable, info: StoreInfo, x: np.ndarray, valid: np.ndarray,
                          days: Tensor, device: torch.device, pin: bool, use_amp: bool
                          ) -> np.ndarray:
    """engine._predict_batch on the CPU before issue 23 (NumPy normalisation)."""
    xb, mb = torch.from_numpy(info.normalise(x, valid)), torch.from_numpy(valid)
    with torch.no_grad():
        return fn(xb, days.unsqueeze(0).expand(len(x), -1), mb).float().numpy()


@contextlib.contextmanager
def _former_path(forward: str) -> Iterator[None]:
    """With FORWARD ``train``: the eval kernels off and the engine's former batches."""
    if forward != "train":
        yield
        return
    saved = (ltae_infer.supports, engine._predict_batch, engine.batch_slice)
    ltae_infer.supports = lambda enc: False  # type: ignore[assignment]
    engine._predict_batch = _former_predict_batch  # type: ignore[assignment]
    engine.batch_slice = lambda sel: sel  # type: ignore[assignment]
    try:
        yield
    finally:
        ltae_infer.supports, engine._predict_batch, engine.batch_slice = saved


def write_stack(path: Path, size: int, n_dates: int, n_bands: int) -> list[dt.date]:
    """A synthetic int16 stack, date-major, tiled, DEFLATE; returns the dates."""
    rng = np.random.default_rng(0)
    dates = [dt.date(2022, 1, 3) + dt.timedelta(days=5 * i) for i in range(n_dates)]
    profile = {"driver": "GTiff", "width": size, "height": size, "count": n_dates * n_bands,
               "dtype": "int16", "nodata": NODATA, "crs": "EPSG:32631", "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate",
               "transform": from_origin(300000.0, 5000000.0, 10.0, 10.0)}
    # a smooth field of 'parcels' plus noise: compresses like real reflectances, not like noise
    rows = np.arange(size)[:, None] // 37
    cols = np.arange(size)[None, :] // 53
    parcel = (rows * 7919 + cols * 104729) % 97
    with rasterio.open(path, "w", **profile) as dst:
        for t in range(n_dates):
            cloud = rng.random((size, size)) < 0.2
            for c in range(n_bands):
                base = 300 + (parcel * (31 + 7 * c) + 50 * t) % 3500
                data = (base + rng.integers(-60, 60, (size, size))).astype(np.int16)
                data[cloud] = NODATA
                dst.write(data, t * n_bands + c + 1)
            dst.set_band_description(t * n_bands + 1, dates[t].isoformat())
    return dates


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one call."""
    _reset_peak_rss()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0, _peak_rss_mb()


def main() -> None:
    """Run the benchmark and print JSON lines."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="pixels a side")
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--bands", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=512, help="infer.chunk_size")
    ap.add_argument("--repeat", type=int, default=3, help="A/B rounds; medians reported")
    ap.add_argument("--variants", default="serial:lean:auto:0,after:lean:auto:1,"
                    "threads:lean:auto:2",
                    help="comma-separated NAME:FORWARD:BATCH[:READERS[:THREADS]], FORWARD in "
                    "{lean, train, before}")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--device", default="cpu", help="torch device of infer: cpu, cuda")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override of configs/model/ltae.yaml (OmegaConf dotlist, repeatable), "
                    "e.g. --set 'encoder.temporal_conv=[]' for the paper's projection")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [tuple(v.split(":")) for v in args.variants.split(",")]
    default_threads = str(torch.get_num_threads())
    variants = [(*v, "1", default_threads)[:5] if len(v) == 3 else (*v, default_threads)[:5]
                for v in variants]
    for v in variants:
        if len(v) != 5 or v[1] not in ("lean", "train", "before") or not v[3].isdigit() \
                or not v[4].isdigit() or int(v[4]) < 1:
            ap.error(f"--variants: {':'.join(v)!r} is not "
                     "NAME:lean|train|before:BATCH[:READERS[:THREADS]]")
    max_readers = max(int(v[3]) for v in variants)
    machine = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "size": args.size, "dates": args.dates,
               "bands": args.bands, "chunk": args.chunk, "model_set": args.set}
    n_px = args.size * args.size
    cpu = torch.device(args.device)
    machine["device"] = torch.cuda.get_device_name(cpu) if cpu.type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        stack = Path(tmp) / "stack.tif"
        t0 = time.perf_counter()
        dates = write_stack(stack, args.size, args.dates, args.bands)
        print(json.dumps({"step": "write_stack", "seconds": round(time.perf_counter() - t0, 1),
                          "mb_on_disk": round(stack.stat().st_size / 2**20, 1), **machine}))
        dates_file = Path(tmp) / "dates.txt"
        dates_file.write_text("".join(f"{d.isoformat()}\n" for d in dates))
        bands = [f"B{i + 1}" for i in range(args.bands)]
        k = 10
        info = StoreInfo(
            path=Path(tmp), n_samples=0, dates=dates,
            days=np.array([(d - dates[0]).days for d in dates], dtype=np.int64),
            band_names=bands, class_codes=list(range(1, k + 1)),
            class_names=[f"class{i}" for i in range(1, k + 1)],
            mean=np.full(args.bands, 2000.0, np.float32),
            std=np.full(args.bands, 1000.0, np.float32),
            offset=np.full(args.bands, 2000.0, np.float32),
            scale=np.full(args.bands, 1000.0, np.float32),
            crs="", transform=(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0),
            width=args.size, height=args.size, attrs={},
        )
        torch.manual_seed(0)
        model_cfg = OmegaConf.merge(OmegaConf.load(ROOT / "configs/model/ltae.yaml"),
                                    OmegaConf.from_dotlist(args.set))
        assert isinstance(model_cfg, DictConfig)
        model = build_classifier(model_cfg, DataDims(args.bands, args.dates, k)).to(cpu)
        encoder = model.encoder  # type: ignore[attr-defined]
        lean_forward = encoder.forward
        windows = block_windows(args.size, args.size, args.chunk)

        def read_floor() -> None:
            with rasterio.open(stack) as src:
                for w in windows:
                    src.read(window=w)

        def read_i2dl() -> None:
            with open_time_series(stack, dates_file, bands) as series:
                for w in windows:
                    series.read(w)

        def read_floor_threads() -> None:
            def read(part: list[Window]) -> None:
                with rasterio.open(stack) as src:
                    for w in part:
                        src.read(window=w)

            with ThreadPoolExecutor(max_readers) as pool:
                list(pool.map(read, [windows[i::max_readers] for i in range(max_readers)]))

        def infer(forward: str, batch: str, readers: int, threads: int) -> Callable[[], object]:
            def run() -> None:
                torch.set_num_threads(threads)
                encoder.forward = (lean_forward if forward != "before"
                                   else types.MethodType(_former_forward, encoder))
                with _former_path(forward), open_time_series(stack, dates_file,
                                                             bands) as series:
                    classify_raster(series, info, model.predict_proba, Path(tmp) / "maps", cpu,
                                    chunk_size=args.chunk,
                                    batch_size=batch if batch == "auto" else int(batch),
                                    progress=False, reader_threads=max(1, readers),
                                    read_ahead=0 if readers == 0 else 2,
                                    open_reader=lambda: open_time_series(
                                        stack, dates_file, bands))
                torch.set_num_threads(int(default_threads))
            return run

        steps: dict[str, Callable[[], object]] = {"read_floor": read_floor,
                                                  "read_i2dl": read_i2dl}
        if max_readers > 1:
            steps["read_floor_threads"] = read_floor_threads
        steps.update({name: infer(fwd, batch, int(readers), int(threads))
                      for name, fwd, batch, readers, threads in variants})
        times: dict[str, list[float]] = {s: [] for s in steps}
        rss: dict[str, list[float]] = {s: [] for s in steps}
        for _ in range(args.repeat):
            for name, fn in steps.items():
                sec, mb = _timed(fn)
                times[name].append(sec)
                rss[name].append(mb)
        floor = statistics.median(times["read_floor"])
        for name in steps:
            sec = statistics.median(times[name])
            extra: dict[str, object] = {}
            for vname, fwd, batch, readers, threads in variants:
                if vname == name:
                    extra = {"forward": fwd, "readers": int(readers),
                             "torch_threads": int(threads),
                             "batch_size": resolve_batch_size(
                                 batch if batch == "auto" else int(batch), cpu, args.dates,
                                 threads=int(threads))}
            print(json.dumps({
                "step": name, "seconds": round(sec, 3), "runs": [round(t, 2) for t in times[name]],
                "px_per_s": round(n_px / sec), "ratio_to_read_floor": round(floor / sec, 3),
                "peak_rss_mb": round(max(rss[name])), **extra, **machine}))
    names = [v[0] for v in variants]
    infer_name = "after" if "after" in names else names[-1]
    per_px = statistics.median(times[infer_name]) / n_px
    print(f"# extrapolated to a full tile ({FULL_TILE}^2 px, {args.dates} dates) with "
          f"'{infer_name}': {per_px * FULL_TILE**2 / 3600:.2f} h of infer on this machine")
    print(f"# full tile: python scripts/bench/bench_infer.py --size {FULL_TILE} --dates 70 "
          f"--bands 10 --chunk 1024 --repeat 1 --variants after:lean:auto:2  (stack "
          f"{FULL_TILE**2 * 70 * 10 * 2 / 2**30:.0f} GiB uncompressed in $TMPDIR)")


if __name__ == "__main__":
    main()
