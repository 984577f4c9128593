"""Chunked, batched inference: a time-series raster + a trained model -> GeoTIFF maps.

The raster is cut into square block windows (``chunk_size`` pixels a side). Each window is
read with its validity masks, normalised with the sample store's statistics (exactly as
the datamodule does for training), sent to the device in large batches (pinned memory and
bfloat16 autocast on CUDA) and written to tiled, DEFLATE-compressed GeoTIFF windows
(:func:`i2dl.io.geotiff.geotiff_profile`). Reading the next window overlaps computing the
current one (reader threads, ``infer.reader_threads`` and ``infer.read_ahead``) and a
writer thread writes finished windows while the next ones are computed; the windows can
also be computed on a Dask cluster (:mod:`i2dl.maps.cluster`). Outputs are written under
temporary names and renamed at the end (:func:`i2dl.io.files.atomic_path`): a map that
exists is complete. Tile maps are merged by :func:`i2dl.io.geotiff.mosaic`.

Resume (``resume_key``): each finished window is also saved to
``<out>/.infer-partial/w<i>.npz`` (atomically), with ``state.json`` holding the key of the
model, store, raster and settings. A run killed mid-map leaves that folder; the next run
with the same key reads the finished windows back instead of computing them, and computes
only the rest; another key starts over. The folder is removed once the maps are complete.

Products (iota2 names in brackets):
- ``classif.tif`` (Classif_Seed_0.tif): class codes, uint8 or uint16, nodata 0;
- ``confidence.tif`` (Confidence_Seed_0.tif): max class probability, float32, nodata 0;
- ``proba.tif`` (optional): one float32 band per class, in class-code order;
- ``PixelsValidity.tif`` (PixelsValidity.tif): number of valid acquisition dates of each
  pixel, uint16 (0 = no valid date: nodata in the other maps).
A pixel with no valid acquisition date is nodata in every product.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from rich.progress import Progress

from i2dl.errors import ConfigError, InputDataError
from i2dl.io.files import atomic_path, remove_orphans, target_lock, write_text_atomic
from i2dl.io.geotiff import block_windows, geotiff_profile
from i2dl.io.raster import read_series_window
from i2dl.io.sensors.base import TimeSeriesSource
from i2dl.io.vector import burn_window
from i2dl.samples.store import StoreInfo

log = logging.getLogger(__name__)

#: ``predict(x, days, mask) -> proba``: x (B,T,C) float32, days (B,T) int64, mask (B,T) bool
#: tensors on the device; returns (B,K) float32 probabilities.
PredictFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: Finished windows of an unfinished map, in the maps folder.
PARTIAL_DIR = ".infer-partial"


@dataclass
class InferenceResult:
    """Paths of the written maps and counts.

    Attributes:
        classif, confidence: map paths; proba: path or None.
        validity: ``PixelsValidity.tif``, valid dates per pixel (None for a mosaic of
            maps written before it existed).
        n_pixels: pixels classified (with at least one valid date).
        n_nodata: pixels left as nodata.
        device: the torch device used.
    """

    classif: Path
    confidence: Path
    proba: Path | None
    n_pixels: int
    n_nodata: int
    device: str
    validity: Path | None = None


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cpu``/``cuda``/``cuda:N`` as given.

    Raises:
        ConfigError: CUDA requested but not available, or an unknown name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"infer.device={name!r} is not a device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("infer.device=cuda but no CUDA device is available; use auto or cpu")
    return device


#: ``infer.batch_size: auto`` on the CPU: pixels per forward pass and torch thread such
#: that one float32 ``(B, T, width)`` activation would fill about this many bytes: 8192
#: pixels per thread at T = 24, 2048 at T = 70 (measured with
#: scripts/bench/bench_infer.py, docs/benchmarks.md)
CPU_BATCH_BYTES = 256 * 2**20
#: bounds of ``auto`` on the CPU, pixels
CPU_BATCH_RANGE = (1024, 32768)
#: bounds of ``auto`` on CUDA, pixels; within them, a quarter of the free device memory
#: for about 8 live ``(B, T, width)`` float32 activations
CUDA_BATCH_RANGE = (4096, 65536)
#: ``infer.batch_size: auto`` for scikit-learn models: pixels per ``predict_proba`` call.
#: Each call starts ``n_jobs`` workers over the trees, so small batches spend their time
#: starting them (scripts/bench/bench_sklearn_infer.py, docs/benchmarks.md); the features
#: of 2^18 pixels x 240 dates-bands are 240 MB of float32.
SKLEARN_BATCH_SIZE = 2**18


def resolve_batch_size(
    value: int | str,
    device: torch.device,
    n_dates: int,
    width: int = 256,
    threads: int | None = None,
) -> int:
    """Pixels per forward pass: ``infer.batch_size`` as given, or chosen per device.

    ``auto`` on the CPU: the power of two nearest below ``threads * CPU_BATCH_BYTES / (4 *
    n_dates * width)``, clipped to ``CPU_BATCH_RANGE`` (a few thousand pixels per thread:
    with tens of thousands every activation is hundreds of MB and the time goes to page
    faults; with a few hundred, to per-call and thread-synchronisation overheads). ``auto``
    on CUDA:
    the power of two below a quarter of the free device memory
    (:func:`torch.cuda.mem_get_info`) over 8 activations of ``4 * n_dates * width`` bytes
    per pixel, clipped to ``CUDA_BATCH_RANGE``. Other devices: the upper CUDA bound.

    Args:
        value: ``auto`` or a positive int (pixels).
        device: where the model runs.
        n_dates: ``T``, dates per series.
        width: widest per-date activation of the model, channels (LTAE ``d_model``).
        threads: torch intra-op threads on the CPU; None = :func:`torch.get_num_threads`.

    Returns:
        The batch size, pixels, >= 1.

    Raises:
        ConfigError: ``value`` is neither ``auto`` nor an int >= 1.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        per_pixel = 4 * max(1, n_dates) * max(1, width)  # bytes of one (T, width) activation
        if device.type == "cpu":
            lo, hi = CPU_BATCH_RANGE
            n_threads = torch.get_num_threads() if threads is None else max(1, threads)
            target = n_threads * CPU_BATCH_BYTES // per_pixel
        else:
            lo, hi = CUDA_BATCH_RANGE
            target = hi
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                target = free // 4 // (8 * per_pixel)
        return min(hi, max(lo, 1 << max(0, int(target).bit_length() - 1)))
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(
            f"infer.batch_size must be auto or an int >= 1 (pixels per forward pass), got {value!r}"
        )
    return int(value)


def _predict_batch(
    fn: PredictFn,
    info: StoreInfo,
    x: np.ndarray,
    valid: np.ndarray,
    days: torch.Tensor,
    device: torch.device,
    pin: bool,
    use_amp: bool,
) -> np.ndarray:
    """Normalise one batch, send it to the device, return (B, K) float32 probabilities.

    On the CPU the batch is normalised by :meth:`StoreInfo.normalise`. On an accelerator
    the raw values are copied (pinned) and normalised there with the same float32
    operations, ``(x - offset) / scale`` then 0 at invalid observations, which saves the
    host one pass over the batch.
    """
    mb = torch.from_numpy(valid)
    if device.type == "cpu":
        xb = torch.from_numpy(info.normalise(x, valid))
    else:
        xb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if pin:
        xb, mb = xb.pin_memory(), mb.pin_memory()
    xb = xb.to(device, non_blocking=True)
    mb = mb.to(device, non_blocking=True)
    if device.type != "cpu":
        offset = torch.as_tensor(info.offset, dtype=torch.float32, device=device)
        scale = torch.as_tensor(info.scale, dtype=torch.float32, device=device)
        xb = ((xb - offset) / scale).masked_fill_(~mb.unsqueeze(-1), 0.0)
    db = days.unsqueeze(0).expand(len(x), -1)
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                         enabled=use_amp):
        pb = fn(xb, db, mb)
    return pb.float().cpu().numpy()


def _open_partial(
    partial: Path, resume_key: str, windows: list[Window], names: Mapping[str, str], k: int,
    class_dtype: str,
) -> set[int]:
    """The finished windows of an interrupted map with the same key; else start afresh.

    Returns:
        Indices of the windows whose ``w<i>.npz`` exists under ``partial``.
    """
    layout = [(int(w.row_off), int(w.col_off), int(w.height), int(w.width)) for w in windows]
    payload = {"key": resume_key, "windows": layout, "maps": sorted(names), "k": k,
               "dtype": class_dtype}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    state_file = partial / "state.json"
    try:
        same = json.loads(state_file.read_text()).get("key") == key
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        if partial.exists():
            log.info("discarding the unfinished maps in %s (another model or settings)", partial)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        write_text_atomic(state_file, json.dumps({"key": key}))
        return set()
    return {
        int(f.name[1:-4]) for f in partial.glob("w*.npz")
        if f.name[1:-4].isdigit() and int(f.name[1:-4]) < len(windows)
    }


#: ``engine(windows, todo) -> iterator of (i, arrays)``: the maps of the windows ``todo``
#: (indices into ``windows``), in any order; ``arrays`` as :meth:`WindowClassifier.__call__`.
WindowEngine = Callable[[list[Window], list[int]], Iterator[tuple[int, dict[str, np.ndarray]]]]


def class_dtype(codes: np.ndarray) -> str:
    """``uint8`` when every class code fits, else ``uint16``."""
    return "uint8" if int(np.max(codes)) <= 255 else "uint16"


@dataclass
class WindowClassifier:
    """Classify the pixels of one window: what every engine (threads, Dask) runs per window.

    Attributes:
        info: the sample store's attributes (normalisation, days, class codes).
        predict: the model's probability function, or region id -> function.
        device: where the model runs.
        batch_size: pixels per forward pass (resolved, an int).
        amp: bfloat16 autocast on CUDA.
        write_proba: also return the (K, h, w) probabilities.
        region_index: (height, width) int region of every pixel (-1 = none), or a
            function ``window -> (h, w)`` regions of that window (e.g. a
            :func:`i2dl.io.vector.burn_window` of the eco-regions: no whole-grid array);
            required when ``predict`` is a mapping.
        boundary_weights: with eco-region models, a function ``window -> {region: (h, w)
            weights}`` (:func:`region_boundary_weights`): every region model with a
            positive weight at a pixel classifies it and the probabilities are averaged
            with those weights (fusion at region boundaries); None = each pixel by its own
            region's model.
    """

    info: StoreInfo
    predict: PredictFn | Mapping[int, PredictFn]
    device: torch.device
    batch_size: int
    amp: bool = True
    write_proba: bool = False
    region_index: np.ndarray | Callable[[Window], np.ndarray] | None = None
    boundary_weights: Callable[[Window], dict[int, np.ndarray]] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.predict, Mapping) and self.region_index is None:
            raise ConfigError(
                "one model per region needs the region of every pixel (region_index)"
            )
        self.codes = np.asarray(self.info.class_codes, dtype=np.int64)
        self.dtype = class_dtype(self.codes)
        self.days = torch.from_numpy(self.info.days).to(self.device)
        self.use_amp = self.amp and self.device.type == "cuda"
        self.pin = self.device.type == "cuda"

    def __call__(self, win: Window, x: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
        """Classify one window.

        Args:
            win: the window (its offsets select the region ids).
            x: (h, w, T, C) float32 values.
            valid: (h, w, T) bool, True = valid observation.

        Returns:
            ``classif`` (h, w) class codes (0 = nodata), ``confidence`` (h, w) float32,
            ``has_data`` (h, w) bool, ``validity`` (h, w) uint16 valid dates per pixel,
            and with ``write_proba`` ``proba`` (K, h, w) float32.
        """
        info, k = self.info, len(self.codes)
        h, w = x.shape[:2]
        flat_x = x.reshape(h * w, info.n_dates, info.n_channels)
        flat_valid = valid.reshape(h * w, info.n_dates)
        has_data = flat_valid.any(axis=1)
        if not isinstance(self.predict, Mapping):
            groups = [(self.predict, np.flatnonzero(has_data))]
        else:
            assert self.region_index is not None  # checked in __post_init__
            if callable(self.region_index):
                reg = self.region_index(win).reshape(-1)
            else:
                r0, c0 = int(win.row_off), int(win.col_off)
                reg = self.region_index[r0 : r0 + h, c0 : c0 + w].reshape(-1)
            has_data &= reg >= 0
            groups = [
                (self.predict[int(r)], np.flatnonzero(has_data & (reg == r)))
                for r in np.unique(reg[has_data]) if int(r) in self.predict
            ]
            has_data &= np.isin(reg, list(self.predict))
        proba = np.zeros((h * w, k), dtype=np.float32)
        weights = None
        if self.boundary_weights is not None and isinstance(self.predict, Mapping):
            # fusion at region boundaries: every region model weighing on a pixel votes
            weights = {r: wr.reshape(-1) for r, wr in self.boundary_weights(win).items()
                       if r in self.predict}
            total = np.zeros(h * w, dtype=np.float64)
            for wr in weights.values():
                total += wr
            groups = [(self.predict[r], np.flatnonzero(has_data & (wr > 0)))
                      for r, wr in weights.items()]
        for g, (fn, idx) in enumerate(groups):
            for b0 in range(0, len(idx), self.batch_size):
                sel = idx[b0 : b0 + self.batch_size]
                p = _predict_batch(
                    fn, info, flat_x[sel], flat_valid[sel], self.days, self.device, self.pin,
                    self.use_amp,
                )
                if weights is None:
                    proba[sel] = p
                else:
                    wr = list(weights.values())[g][sel]
                    proba[sel] += (p * (wr / total[sel])[:, None]).astype(np.float32)
        best = proba.argmax(axis=1)
        out: dict[str, np.ndarray] = {
            "classif": np.where(has_data, self.codes[best], 0).astype(self.dtype).reshape(h, w),
            "confidence": np.where(has_data, proba.max(axis=1), 0.0).astype(np.float32)
            .reshape(h, w),
            "has_data": has_data.reshape(h, w),
            "validity": valid.sum(axis=-1).astype(np.uint16),
        }
        if self.write_proba:
            out["proba"] = proba.T.reshape(k, h, w)
        return out


def region_boundary_weights(
    regions: Any, values: np.ndarray, transform: Any, width: int, height: int,
    buffer_px: float, window: Window,
) -> dict[int, np.ndarray]:
    """Weights of the eco-region models on the pixels of a window (fusion at boundaries).

    A region's weight at a pixel is ``max(0, 1 - d / buffer_px)``, with ``d`` the
    distance (pixels, Euclidean, between centres) from the pixel to the nearest pixel of
    that region: 1 inside the region, decreasing linearly to 0 at ``buffer_px`` pixels
    from it. So, within ``buffer_px`` of a boundary, the models of both sides classify the
    pixel and their probabilities are averaged with these weights; exactly on the
    boundary the two sides weigh almost alike, and beyond the buffer only the pixel's own
    region counts, as without fusion. (iota2 fuses neighbouring region models at region
    boundaries; this linear distance weighting is i2dl's documented rule.)

    The regions are burnt on the window enlarged by ``ceil(buffer_px)`` pixels (clipped to
    the grid), so the weights do not depend on the window cut.

    Args:
        regions: eco-region polygons in the grid's CRS.
        values: (P,) region id of each polygon.
        transform: affine transform of the grid.
        width: grid width, pixels.
        height: grid height, pixels.
        buffer_px: buffer width in pixels (> 0).
        window: the window.

    Returns:
        ``{region: (h, w) float64 weights}`` for the regions with a positive weight; pixels
        in no region get no weight from any region (they stay unclassified).
    """
    from scipy.ndimage import distance_transform_edt

    pad = int(np.ceil(buffer_px))
    r0 = max(int(window.row_off) - pad, 0)
    c0 = max(int(window.col_off) - pad, 0)
    r1 = min(int(window.row_off + window.height) + pad, height)
    c1 = min(int(window.col_off + window.width) + pad, width)
    big = burn_window(regions, values, transform, Window(c0, r0, c1 - c0, r1 - r0))
    ri, ci = int(window.row_off) - r0, int(window.col_off) - c0
    h, w = int(window.height), int(window.width)
    inner = big[ri : ri + h, ci : ci + w]
    out: dict[int, np.ndarray] = {}
    for r in np.unique(big[big >= 0]):
        d = distance_transform_edt(big != r)[ri : ri + h, ci : ci + w]
        wr = np.clip(1.0 - d / buffer_px, 0.0, 1.0) * (inner >= 0)
        if (wr > 0).any():
            out[int(r)] = wr
    return out


def read_windows(
    series: TimeSeriesSource,
    windows: list[Window],
    todo: list[int],
    reader_threads: int = 1,
    read_ahead: int = 2,
    open_reader: Callable[[], TimeSeriesSource] | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Read the windows ``todo`` in order, ``read_ahead`` of them ahead of the consumer.

    With ``read_ahead = 0`` each window is read when asked for, in the calling thread.
    Otherwise ``reader_threads`` threads read the next windows while the caller computes;
    with more than one thread each thread reads through its own handle opened by
    ``open_reader`` (rasterio datasets must not be shared between threads), closed at the
    end. Memory held by the windows read ahead: ``read_ahead`` windows of
    ``chunk_size² x T x C x 4`` bytes (plus the masks), whatever the raster's size.

    Yields:
        ``(i, x, valid)``: the window index, (h, w, T, C) float32 and (h, w, T) bool.

    Raises:
        ConfigError: ``reader_threads > 1`` without ``open_reader``, or bad counts.
        InputDataError: a window cannot be read (the file and window are named).
    """
    if reader_threads < 1 or read_ahead < 0:
        raise ConfigError(
            f"infer.reader_threads must be >= 1 and infer.read_ahead >= 0, got "
            f"{reader_threads} and {read_ahead}"
        )
    if read_ahead == 0:
        for i in todo:
            yield (i, *read_series_window(series, windows[i]))
        return
    if reader_threads > 1 and open_reader is None:
        raise ConfigError(
            f"{reader_threads} reader threads need a way to open one reader per thread "
            "(open_reader); use infer.reader_threads=1"
        )
    local = threading.local()
    opened: list[TimeSeriesSource] = []
    lock = threading.Lock()

    def read(i: int) -> tuple[np.ndarray, np.ndarray]:
        if reader_threads == 1:
            return read_series_window(series, windows[i])
        src = getattr(local, "src", None)
        if src is None:
            assert open_reader is not None  # checked above
            src = local.src = open_reader()
            with lock:
                opened.append(src)
        return read_series_window(src, windows[i])

    pending: deque[tuple[int, Future[tuple[np.ndarray, np.ndarray]]]] = deque()
    queue = iter(todo)
    try:
        with ThreadPoolExecutor(max_workers=reader_threads,
                                thread_name_prefix="i2dl-read") as pool:
            try:
                for i in itertools.islice(queue, read_ahead + 1):
                    pending.append((i, pool.submit(read, i)))
                while pending:
                    i, future = pending.popleft()
                    x, valid = future.result()
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.append((nxt, pool.submit(read, nxt)))
                    yield i, x, valid
            finally:
                for _, future in pending:
                    future.cancel()
    finally:
        for src in opened:
            src.close()


def local_engine(
    series: TimeSeriesSource,
    classify: WindowClassifier,
    reader_threads: int = 1,
    read_ahead: int = 2,
    open_reader: Callable[[], TimeSeriesSource] | None = None,
) -> WindowEngine:
    """Windows read ahead by threads (:func:`read_windows`), classified in this process."""

    def run(windows: list[Window], todo: list[int]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for i, x, valid in read_windows(series, windows, todo, reader_threads, read_ahead,
                                        open_reader):
            yield i, classify(windows[i], x, valid)

    return run


def classify_raster(
    series: TimeSeriesSource,
    info: StoreInfo,
    predict: PredictFn | Mapping[int, PredictFn],
    out_dir: str | Path,
    device: torch.device,
    chunk_size: int = 512,
    batch_size: int | str = "auto",
    amp: bool = True,
    write_proba: bool = False,
    progress: bool = True,
    region_index: np.ndarray | Callable[[Window], np.ndarray] | None = None,
    resume_key: str | None = None,
    reader_threads: int = 1,
    read_ahead: int = 2,
    open_reader: Callable[[], TimeSeriesSource] | None = None,
    engine: WindowEngine | None = None,
) -> InferenceResult:
    """Classify every pixel of a time series, chunk by chunk.

    Reading, computing and writing overlap: reader threads read the next windows
    (:func:`read_windows`), this thread classifies, a writer thread writes the finished
    windows to the GeoTIFFs (at most two windows wait for it). The maps do not depend on
    the threads, the read-ahead or the engine (tests compare them bit for bit).

    Args:
        series: the opened raster (same dates and channels as the store).
        info: the sample store's attributes (normalisation, days, class codes).
        predict: the model's probability function (see :data:`PredictFn`), or with
            eco-regions a mapping region id -> function of that region's model.
        out_dir: folder of the maps (created).
        device: where the model runs.
        chunk_size: window side, pixels.
        batch_size: pixels per forward pass, or ``auto`` (:func:`resolve_batch_size`).
        amp: bfloat16 autocast on CUDA.
        write_proba: also write ``proba.tif``.
        progress: show a progress bar of chunks done.
        region_index: (height, width) int region id of every pixel (-1 = no region:
            nodata), or a function of the window (see :class:`WindowClassifier`),
            required when ``predict`` is a mapping; each region's pixels are classified
            by its own model only.
        resume_key: what the maps depend on (model checkpoints, store, raster, device);
            None = no resume. With a key, finished windows are kept in
            ``<out_dir>/.infer-partial/`` and a run interrupted with the same key computes
            only the windows not done yet (see the module's docstring).
        reader_threads: threads reading windows ahead (:func:`read_windows`).
        read_ahead: windows read ahead of the one computed (0 = read in this thread).
        open_reader: opens another reader of the same series, one per reader thread
            (needed when ``reader_threads > 1``).
        engine: computes the windows elsewhere (e.g. :func:`i2dl.maps.cluster.dask_engine`);
            None = :func:`local_engine` in this process. ``predict`` and ``region_index``
            are then unused (the engine classifies).

    Returns:
        The written maps.

    Raises:
        ConfigError: the raster's dates or channels differ from the store's, or a bad
            ``batch_size``, ``chunk_size``, ``reader_threads`` or ``read_ahead``.
        InputDataError: a window of the raster cannot be read (damaged strips or tiles:
            the file and window are named), or no pixel has a valid observation (all NaN
            or nodata); no map is left under its final name.
    """
    if series.n_dates != info.n_dates or series.n_channels != info.n_channels:
        raise ConfigError(
            f"raster {series.path} has {series.n_dates} dates x {series.n_channels} channels "
            f"but the model was trained on {info.n_dates} x {info.n_channels}: infer needs the "
            "same acquisition dates and bands as the sample store"
        )
    if engine is None:
        classify = WindowClassifier(
            info, predict, device, resolve_batch_size(batch_size, device, info.n_dates), amp,
            write_proba, region_index,
        )
        engine = local_engine(series, classify, reader_threads, read_ahead, open_reader)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    codes = np.asarray(info.class_codes, dtype=np.int64)
    k = len(codes)
    dtype = class_dtype(codes)
    names = {"classif": "classif.tif", "confidence": "confidence.tif",
             "validity": "PixelsValidity.tif"}
    if write_proba:
        names["proba"] = "proba.tif"
    final = {key: out_dir / name for key, name in names.items()}
    grid = (series.width, series.height)
    profiles = {
        "classif": geotiff_profile(*grid, 1, dtype, series.crs, series.transform, 0),
        "confidence": geotiff_profile(*grid, 1, "float32", series.crs, series.transform, 0.0),
        "validity": geotiff_profile(*grid, 1, "uint16", series.crs, series.transform, None),
        "proba": geotiff_profile(*grid, k, "float32", series.crs, series.transform, 0.0),
    }
    windows = block_windows(series.width, series.height, chunk_size, "infer.chunk_size")
    n_pixels = n_nodata = 0
    partial = out_dir / PARTIAL_DIR
    with target_lock(final["classif"]):
        for path in final.values():  # temporaries of killed runs of the other maps
            remove_orphans(path)
        done = set()
        if resume_key is not None:
            done = _open_partial(partial, resume_key, windows, names, k, dtype)
            if done:
                log.info("resuming the maps in %s: %d of %d windows already done", out_dir,
                         len(done), len(windows))
        todo = [i for i in range(len(windows)) if i not in done]
        with ExitStack() as stack:
            # each map: temporary name, renamed when the stack closes without error (after
            # its dataset is closed: last in, first out)
            dsts = {
                key: stack.enter_context(
                    rasterio.open(stack.enter_context(atomic_path(path)), "w", **profiles[key])
                )
                for key, path in final.items()
            }

            def write(win: Window, arrays: Mapping[str, np.ndarray]) -> None:
                for key, dst in dsts.items():
                    data = arrays[key]
                    dst.write(data if data.ndim == 3 else data[None], window=win)

            def saved(i: int) -> dict[str, np.ndarray]:
                with np.load(partial / f"w{i}.npz") as npz:
                    return {name: npz[name] for name in npz.files}

            results = itertools.chain(((i, saved(i)) for i in sorted(done)),
                                      engine(windows, todo))
            writes: deque[Future[None]] = deque()
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="i2dl-write") as writer, \
                    Progress(disable=not progress) as bar:
                task = bar.add_task("classifying chunks", total=len(windows))
                try:
                    for i, arrays in results:
                        if resume_key is not None and i not in done:
                            # saved here, not by the writer: a window counted as done is on disk
                            with atomic_path(partial / f"w{i}.npz") as tmp, open(tmp, "xb") as fh:
                                np.savez(fh, **arrays)  # type: ignore[arg-type]
                        writes.append(writer.submit(write, windows[i], arrays))
                        while len(writes) > 2:
                            writes.popleft().result()
                        n_pixels += int(arrays["has_data"].sum())
                        n_nodata += int((~arrays["has_data"]).sum())
                        bar.advance(task)
                    while writes:
                        writes.popleft().result()
                finally:
                    for future in writes:
                        future.cancel()
            if write_proba:
                dsts["proba"].descriptions = tuple(
                    f"proba_{c}_{n}" for c, n in zip(codes, info.class_names, strict=True)
                )
            if n_pixels == 0:  # raised inside the stack: no map is renamed into place
                where = " inside an eco-region" if isinstance(predict, Mapping) else ""
                raise InputDataError(
                    f"no pixel of {series.path}{where} has a valid observation (every value "
                    "NaN, the nodata value or masked by data.masks): the map would be empty. "
                    "Check the raster (gdalinfo -stats) and the validity masks"
                )
        shutil.rmtree(partial, ignore_errors=True)
    log.info(
        "maps written to %s: %d pixels classified, %d nodata (device %s)",
        out_dir,
        n_pixels,
        n_nodata,
        device,
    )
    return InferenceResult(
        classif=final["classif"],
        confidence=final["confidence"],
        proba=final.get("proba"),
        n_pixels=n_pixels,
        n_nodata=n_nodata,
        device=str(device),
        validity=final["validity"],
    )
