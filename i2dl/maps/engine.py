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

:func:`write_maps` is the window engine (windows, resume, writer) for any
:data:`WindowEngine`; :func:`classify_raster` is its in-process caller for models already
in memory; the infer stage's caller is :mod:`i2dl.maps.run_maps`.

Resume (``resume_key``): each finished window is also saved to
``<out>/.infer-partial/w<i>.npz`` (atomically), with ``state.json`` holding the key of the
model, store, raster and settings, and the size and modification time of the input files
(:func:`i2dl.io.files.input_stamps`). A run killed mid-map leaves that folder; the next run
with the same key reads the finished windows back instead of computing them, and computes
only the rest; another key, or a changed input file (warned), starts over. The folder is
removed once the maps are complete.

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
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from i2dl.io.files import (
    atomic_path,
    input_stamps,
    remove_orphans,
    target_lock,
    write_text_atomic,
)
from i2dl.io.geotiff import block_windows, geotiff_profile
from i2dl.io.sensors.base import TimeSeriesSource
from i2dl.maps.device import batch_slice, resolve_batch_size
from i2dl.maps.reading import read_windows
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

    The batch is normalised as :meth:`StoreInfo.normalise` does it, with the same float32
    operations, ``(x - offset) / scale`` then 0 at invalid observations, by torch on the
    device: on an accelerator after the raw values are copied (pinned), which saves the
    host one pass; on the CPU into one new tensor (``x`` is a view of the window, never
    modified) by torch's threaded kernels.
    """
    mb = torch.from_numpy(valid)
    xb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if pin:
        xb, mb = xb.pin_memory(), mb.pin_memory()
    xb = xb.to(device, non_blocking=True)
    mb = mb.to(device, non_blocking=True)
    offset = torch.as_tensor(info.offset, dtype=torch.float32, device=device)
    scale = torch.as_tensor(info.scale, dtype=torch.float32, device=device)
    xb = torch.sub(xb, offset).div_(scale).masked_fill_(~mb.unsqueeze(-1), 0.0)
    db = days.unsqueeze(0).expand(len(x), -1)
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                         enabled=use_amp):
        pb = fn(xb, db, mb)
    return pb.float().cpu().numpy()


def _open_partial(
    partial: Path, resume_key: str, windows: list[Window], names: Mapping[str, str], k: int,
    class_dtype: str, inputs: Mapping[str, list[int]],
) -> set[int]:
    """The finished windows of an interrupted map with the same key; else start afresh.

    ``inputs`` (:func:`i2dl.io.files.input_stamps` of the rasters) is part of the key: a
    changed input file discards the finished windows, with a warning naming it.

    Returns:
        Indices of the windows whose ``w<i>.npz`` exists under ``partial``.
    """
    layout = [(int(w.row_off), int(w.col_off), int(w.height), int(w.width)) for w in windows]
    payload = {"key": resume_key, "windows": layout, "maps": sorted(names), "k": k,
               "dtype": class_dtype, "inputs": inputs}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    state_file = partial / "state.json"
    try:
        state = json.loads(state_file.read_text())
        same, before = state.get("key") == key, dict(state.get("inputs") or {})
    except (OSError, ValueError, AttributeError, TypeError):
        same, before = False, {}
    if not same:
        changed = sorted(p for p in {*before, *inputs} if before and before.get(p) != inputs.get(p))
        if changed:
            log.warning("discarding the unfinished maps in %s: input file(s) changed since "
                        "they were started (size or modification time): %s; the maps start "
                        "afresh", partial, ", ".join(changed))
        elif partial.exists():
            log.info("discarding the unfinished maps in %s (another model or settings)", partial)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        write_text_atomic(state_file, json.dumps({"key": key, "inputs": inputs}))
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
                sel = batch_slice(idx[b0 : b0 + self.batch_size])
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


#: Map key -> file name of the maps of a tile (``proba`` only with ``write_proba``).
MAP_NAMES = {"classif": "classif.tif", "confidence": "confidence.tif",
             "validity": "PixelsValidity.tif", "proba": "proba.tif"}


def _check_grid(series: TimeSeriesSource, info: StoreInfo) -> None:
    """Refuse a raster whose dates or channels differ from the store's.

    Raises:
        ConfigError: another number of dates or channels than the sample store.
    """
    if series.n_dates != info.n_dates or series.n_channels != info.n_channels:
        raise ConfigError(
            f"raster {series.path} has {series.n_dates} dates x {series.n_channels} channels "
            f"but the model was trained on {info.n_dates} x {info.n_channels}: infer needs the "
            "same acquisition dates and bands as the sample store"
        )


def _map_profiles(series: TimeSeriesSource, k: int, dtype: str) -> dict[str, dict]:
    """The GeoTIFF profile of each map of the tile, on the raster's grid."""
    grid = (series.width, series.height)
    crs, transform = series.crs, series.transform
    return {
        "classif": geotiff_profile(*grid, 1, dtype, crs, transform, 0),
        "confidence": geotiff_profile(*grid, 1, "float32", crs, transform, 0.0),
        "validity": geotiff_profile(*grid, 1, "uint16", crs, transform, None),
        "proba": geotiff_profile(*grid, k, "float32", crs, transform, 0.0),
    }


def _write_results(
    results: Iterator[tuple[int, dict[str, np.ndarray]]],
    dsts: Mapping[str, Any],
    windows: list[Window],
    partial: Path | None,
    done: set[int],
    progress: bool,
) -> tuple[int, int]:
    """Write the windows' maps as they come, one writer thread at most two windows behind.

    Args:
        results: ``(i, arrays)`` of every window (saved ones first, then the engine's).
        dsts: map key -> open rasterio dataset (temporary name).
        windows: the tile's windows.
        partial: the resume folder, where each computed window is saved first; None = no
            resume.
        done: windows read back from ``partial`` (not saved again).
        progress: show a progress bar of the windows.

    Returns:
        ``(n_pixels, n_nodata)``: pixels classified and left as nodata.
    """

    def write(win: Window, arrays: Mapping[str, np.ndarray]) -> None:
        for key, dst in dsts.items():
            data = arrays[key]
            dst.write(data if data.ndim == 3 else data[None], window=win)

    n_pixels = n_nodata = 0
    writes: deque[Future[None]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="i2dl-write") as writer, \
            Progress(disable=not progress) as bar:
        task = bar.add_task("classifying chunks", total=len(windows))
        try:
            for i, arrays in results:
                if partial is not None and i not in done:
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
    return n_pixels, n_nodata


def _done_windows(
    partial: Path, resume_key: str | None, windows: list[Window], names: Mapping[str, str],
    k: int, dtype: str, inputs: Sequence[Any],
) -> set[int]:
    """The windows already saved by an interrupted run with the same key (none without key).

    ``inputs``: the input files (raster, masks, ...) whose identity is part of the key.
    """
    if resume_key is None:
        return set()
    done = _open_partial(partial, resume_key, windows, names, k, dtype, input_stamps(inputs))
    if done:
        log.info("resuming the maps in %s: %d of %d windows already done", partial.parent,
                 len(done), len(windows))
    return done


def _saved(partial: Path, i: int) -> dict[str, np.ndarray]:
    """The maps of window ``i`` saved by an interrupted run."""
    with np.load(partial / f"w{i}.npz") as npz:
        return {name: npz[name] for name in npz.files}


def write_maps(
    series: TimeSeriesSource,
    info: StoreInfo,
    engine: WindowEngine,
    out_dir: str | Path,
    device: str,
    chunk_size: int = 512,
    write_proba: bool = False,
    progress: bool = True,
    resume_key: str | None = None,
    by_region: bool = False,
    inputs: Sequence[Any] = (),
) -> InferenceResult:
    """The window engine: cut the raster into windows, ``engine`` classifies, write the maps.

    Reading, computing and writing overlap: the engine yields the finished windows (the
    local engine reads ahead in threads, the Dask engine computes on workers), a writer
    thread writes them to the GeoTIFFs (at most two windows wait for it). The maps do not
    depend on the threads, the read-ahead or the engine (tests compare them bit for bit).

    Args:
        series: the opened raster (same dates and channels as the store).
        info: the sample store's attributes (class codes and names).
        engine: classifies the windows (:func:`local_engine`,
            :func:`i2dl.maps.cluster.dask_engine`).
        out_dir: folder of the maps (created).
        device: where the engine's model runs, for the log and the result.
        chunk_size: window side, pixels.
        write_proba: also write ``proba.tif`` (the engine must return ``proba``).
        progress: show a progress bar of chunks done.
        resume_key: what the maps depend on (model checkpoints, store, raster, device);
            None = no resume. With a key, finished windows are kept in
            ``<out_dir>/.infer-partial/`` and a run interrupted with the same key computes
            only the windows not done yet (see the module's docstring).
        by_region: the engine classifies with eco-region models (named in the error of an
            empty map).
        inputs: with ``resume_key``, more input files or folders than ``series.path``
            (masks, dates file, sensor folders): a change in the size or modification time
            of any of them (or of ``series.path``) discards the finished windows.

    Returns:
        The written maps.

    Raises:
        ConfigError: the raster's dates or channels differ from the store's, or a bad
            ``chunk_size``.
        InputDataError: a window of the raster cannot be read (damaged strips or tiles:
            the file and window are named), or no pixel has a valid observation (all NaN
            or nodata); no map is left under its final name.
    """
    _check_grid(series, info)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    codes = np.asarray(info.class_codes, dtype=np.int64)
    dtype = class_dtype(codes)
    names = {key: name for key, name in MAP_NAMES.items() if write_proba or key != "proba"}
    final = {key: out_dir / name for key, name in names.items()}
    profiles = _map_profiles(series, len(codes), dtype)
    windows = block_windows(series.width, series.height, chunk_size, "infer.chunk_size")
    partial = out_dir / PARTIAL_DIR
    with target_lock(final["classif"]):
        for path in final.values():  # temporaries of killed runs of the other maps
            remove_orphans(path)
        done = _done_windows(partial, resume_key, windows, names, len(codes), dtype,
                             [series.path, *inputs])
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

            results = itertools.chain(((i, _saved(partial, i)) for i in sorted(done)),
                                      engine(windows, todo))
            n_pixels, n_nodata = _write_results(
                results, dsts, windows, partial if resume_key is not None else None, done,
                progress,
            )
            if write_proba:
                dsts["proba"].descriptions = tuple(
                    f"proba_{c}_{n}" for c, n in zip(codes, info.class_names, strict=True)
                )
            if n_pixels == 0:  # raised inside the stack: no map is renamed into place
                where = " inside an eco-region" if by_region else ""
                raise InputDataError(
                    f"no pixel of {series.path}{where} has a valid observation (every value "
                    "NaN, the nodata value or masked by data.masks): the map would be empty. "
                    "Check the raster (gdalinfo -stats) and the validity masks"
                )
        shutil.rmtree(partial, ignore_errors=True)
    log.info("maps written to %s: %d pixels classified, %d nodata (device %s)", out_dir,
             n_pixels, n_nodata, device)
    return InferenceResult(final["classif"], final["confidence"], final.get("proba"), n_pixels,
                           n_nodata, device, validity=final["validity"])


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
) -> InferenceResult:
    """Classify every pixel of a time series in this process, chunk by chunk.

    A :class:`WindowClassifier` of ``predict`` on the windows read ahead by threads
    (:func:`local_engine`), written by :func:`write_maps`. The infer stage builds its
    engine itself (:mod:`i2dl.maps.run_maps`: the same classifier, or Dask workers) and
    calls :func:`write_maps`; this is the same path for one model already in memory
    (benchmarks, tests, scripts).

    Args:
        series: the opened raster (same dates and channels as the store).
        info: the sample store's attributes (normalisation, days, class codes).
        predict: the model's probability function (see :data:`PredictFn`), or with
            eco-regions a mapping region id -> function of that region's model.
        out_dir: folder of the maps (created).
        device: where the model runs.
        chunk_size: window side, pixels.
        batch_size: pixels per forward pass, or ``auto``
            (:func:`i2dl.maps.device.resolve_batch_size`).
        amp: bfloat16 autocast on CUDA.
        write_proba: also write ``proba.tif``.
        progress: show a progress bar of chunks done.
        region_index: (height, width) int region id of every pixel (-1 = no region:
            nodata), or a function of the window (see :class:`WindowClassifier`),
            required when ``predict`` is a mapping; each region's pixels are classified
            by its own model only.
        resume_key: see :func:`write_maps`; None = no resume.
        reader_threads: threads reading windows ahead (:func:`read_windows`).
        read_ahead: windows read ahead of the one computed (0 = read in this thread).
        open_reader: opens another reader of the same series, one per reader thread
            (needed when ``reader_threads > 1``).

    Returns:
        The written maps.

    Raises:
        ConfigError: the raster's dates or channels differ from the store's, or a bad
            ``batch_size``, ``chunk_size``, ``reader_threads`` or ``read_ahead``.
        InputDataError: a window of the raster cannot be read (damaged strips or tiles:
            the file and window are named), or no pixel has a valid observation (all NaN
            or nodata); no map is left under its final name.
    """
    _check_grid(series, info)
    classify = WindowClassifier(
        info, predict, device, resolve_batch_size(batch_size, device, info.n_dates), amp,
        write_proba, region_index,
    )
    engine = local_engine(series, classify, reader_threads, read_ahead, open_reader)
    return write_maps(series, info, engine, out_dir, str(device), chunk_size, write_proba,
                      progress, resume_key, by_region=isinstance(predict, Mapping))
