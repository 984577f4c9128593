"""Object-based features (iota2 ``i2_obia``): segments, their statistics and their labels.

iota2's OBIA builder classifies segments instead of pixels: each segment gets statistics
(``stats_used``: mean, std, count, min, max) of every band at every date, a label from the
reference polygons, and a model trained on those. This module holds the core:

- :func:`compute_segments`: a segmentation when none is given (iota2
  ``obia_segmentation_path`` unset): scikit-image SLIC (Achanta et al. 2012) on a summary
  of the series, the temporal mean and standard deviation of every band over the valid
  dates, each standardised over the image. The summary of the whole grid is held in
  memory (H x W x 2C float32), so it suits a few thousand pixels a side; give a
  segmentation raster for a whole tile.
- :func:`segment_statistics`: the statistics of every segment in **one pass over the
  raster by windows**: per window, the valid observations of each segment are added to
  running sums, sums of squares, counts, minima and maxima (``numpy.add.at`` /
  ``minimum.at``), so a segment crossing windows gets exactly the statistics of a whole
  read, whatever the window size.
- :func:`label_segments`: each segment takes the reference polygon covering most of its
  pixels (pixel-centre rule), if that polygon covers at least ``min_fraction`` of the
  segment; otherwise it stays unlabelled (code 0). The segment keeps the polygon's id, so
  the learn/val split is polygon-grouped as for pixels.

Not yet built here: the training and map stages on segment features (the pipeline's
``obia`` option); see the README's status of issue 13.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from skimage.segmentation import slic

from i2dl.errors import ConfigError, InputDataError
from i2dl.io.files import atomic_path
from i2dl.io.geotiff import block_windows, geotiff_profile
from i2dl.io.raster import read_series_window
from i2dl.io.vector import burn_window

#: the statistics iota2's ``stats_used`` may list, in the order of the feature channels
STATS = ("mean", "std", "count", "min", "max")


@dataclass
class SegmentFeatures:
    """Statistics of S segments over T dates.

    Attributes:
        ids: (S,) int64 segment ids, increasing.
        x: (S, T, F) float32 features: for each channel c and statistic s of
            ``stats`` except ``count``, channel ``c * n + s``; then one ``count``
            channel (valid pixels of the segment at that date) when asked for.
        valid: (S, T) bool, the segment has at least one valid pixel at that date.
        names: the F feature names (``<band>_<stat>``, ``count``).
        n_pixels: (S,) pixels of each segment.
    """

    ids: np.ndarray
    x: np.ndarray
    valid: np.ndarray
    names: list[str]
    n_pixels: np.ndarray


def _check_stats(stats: Sequence[str]) -> list[str]:
    bad = [s for s in stats if s not in STATS]
    if bad or not stats:
        raise ConfigError(f"stats_used {list(stats)}: choose among {list(STATS)}")
    return [s for s in STATS if s in stats]


def segment_statistics(
    series: Any, segments: str | Path | np.ndarray, stats: Sequence[str] = STATS,
    chunk_size: int = 512,
) -> SegmentFeatures:
    """Per-segment statistics of a time series, in one windowed pass.

    Args:
        series: an opened time series (``read(window) -> (x (h, w, T, C), valid)``).
        segments: segment ids on the series' grid, a raster path or an (H, W) int array;
            0 (or the raster's nodata) = no segment.
        stats: the statistics (iota2 ``stats_used``), any of :data:`STATS`.
        chunk_size: window side, pixels.

    Returns:
        The :class:`SegmentFeatures` (NaN where a segment has no valid pixel at a date).

    Raises:
        ConfigError: unknown statistic. InputDataError: the segmentation is not on the
            series' grid or holds no segment.
    """
    wanted = _check_stats(stats)
    values = [s for s in wanted if s != "count"]
    opened = None
    if isinstance(segments, str | Path):
        opened = rasterio.open(segments)
        if (opened.width, opened.height) != (series.width, series.height) or \
                opened.transform != series.transform:
            opened.close()
            raise InputDataError(
                f"segmentation {segments} is {opened.width}x{opened.height} "
                f"({opened.transform}); the series is {series.width}x{series.height} "
                f"({series.transform}): rasterise the segments on the series' grid")
    elif segments.shape != (series.height, series.width):
        raise InputDataError(f"segments have shape {segments.shape}, the series "
                             f"{(series.height, series.width)}")
    windows = block_windows(series.width, series.height, chunk_size, "chunk_size")
    nodata = opened.nodata if opened is not None else None

    def seg(win: Any) -> np.ndarray:
        if opened is not None:
            s = opened.read(1, window=win).astype(np.int64)
        else:
            r0, c0 = int(win.row_off), int(win.col_off)
            s = np.asarray(segments)[r0 : r0 + int(win.height), c0 : c0 + int(win.width)]
            s = s.astype(np.int64)
        if nodata is not None:
            s = np.where(s == nodata, 0, s)
        return s

    try:
        ids = np.unique(np.concatenate([np.unique(seg(w)) for w in windows]))
        ids = ids[ids != 0]
        if not len(ids):
            raise InputDataError("the segmentation holds no segment (every id is 0/nodata)")
        n, t, c = len(ids), series.n_dates, series.n_channels
        count = np.zeros((n, t))
        total = np.zeros((n, t, c))
        squares = np.zeros((n, t, c))
        low = np.full((n, t, c), np.inf)
        high = np.full((n, t, c), -np.inf)
        n_pixels = np.zeros(n, dtype=np.int64)
        for win in windows:
            s = seg(win)
            inside = s != 0
            if not inside.any():
                continue
            x, valid = read_series_window(series, win)
            k = np.searchsorted(ids, s[inside])  # (m,) segment index of each pixel
            xv = x[inside].astype(np.float64)  # (m, T, C)
            vv = valid[inside]  # (m, T)
            np.add.at(n_pixels, k, 1)
            np.add.at(count, k, vv)
            xz = np.where(vv[..., None], xv, 0.0)
            np.add.at(total, k, xz)
            np.add.at(squares, k, xz * xz)
            np.minimum.at(low, k, np.where(vv[..., None], xv, np.inf))
            np.maximum.at(high, k, np.where(vv[..., None], xv, -np.inf))
    finally:
        if opened is not None:
            opened.close()
    has = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(has[..., None], total / np.maximum(count, 1)[..., None], np.nan)
        var = np.where(has[..., None], squares / np.maximum(count, 1)[..., None] - mean**2,
                       np.nan)
    table = {"mean": mean, "std": np.sqrt(np.maximum(var, 0)),
             "min": np.where(has[..., None], low, np.nan),
             "max": np.where(has[..., None], high, np.nan)}
    feats = [table[s][..., ch] for ch in range(c) for s in values]
    names = [f"{b}_{s}" for b in series.band_names for s in values]
    if "count" in wanted:
        feats.append(count)
        names.append("count")
    x_out = np.stack(feats, axis=-1).astype(np.float32)
    return SegmentFeatures(ids, x_out, has, names, n_pixels)


def compute_segments(
    series: Any, out_path: str | Path, n_segments: int = 1000, compactness: float = 0.1,
    chunk_size: int = 512,
) -> Path:
    """SLIC segments of a series' summary, written as a uint32 GeoTIFF (0 = none).

    Args:
        series: the opened time series.
        out_path: the segmentation raster (written atomically).
        n_segments: about how many segments (SLIC's ``n_segments``).
        compactness: SLIC's colour/space trade-off on the standardised summary; larger
            gives squarer segments.
        chunk_size: window side used to read the series, pixels.

    Returns:
        ``out_path``. Pixels with no valid date get 0.

    Raises:
        InputDataError: no pixel has a valid date.
    """
    h, w, c = series.height, series.width, series.n_channels
    summary = np.zeros((h, w, 2 * c), dtype=np.float32)
    any_valid = np.zeros((h, w), dtype=bool)
    for win in block_windows(w, h, chunk_size, "chunk_size"):
        x, valid = read_series_window(series, win)
        r0, c0 = int(win.row_off), int(win.col_off)
        n = valid.sum(axis=-1)[..., None]
        xz = np.where(valid[..., None], x, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = xz.sum(axis=2) / np.maximum(n, 1)
            std = np.sqrt(np.maximum((xz**2).sum(axis=2) / np.maximum(n, 1) - mean**2, 0))
        sl = (slice(r0, r0 + x.shape[0]), slice(c0, c0 + x.shape[1]))
        summary[sl] = np.concatenate([mean, std], axis=-1)
        any_valid[sl] = n[..., 0] > 0
    if not any_valid.any():
        raise InputDataError(f"no pixel of {series.path} has a valid date: nothing to segment")
    ok = summary[any_valid]
    summary = (summary - ok.mean(axis=0)) / np.where(ok.std(axis=0) > 0, ok.std(axis=0), 1)
    labels = slic(summary, n_segments=n_segments, compactness=compactness, channel_axis=-1,
                  start_label=1, mask=any_valid)
    labels = np.where(any_valid, labels, 0).astype(np.uint32)
    profile = geotiff_profile(w, h, 1, "uint32", series.crs, series.transform, 0)
    with atomic_path(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(labels[None])
    return Path(out_path)


def label_segments(
    segments_path: str | Path, ids: np.ndarray, polygons: Any, codes: np.ndarray,
    polygon_ids: np.ndarray, min_fraction: float = 0.5, chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label segments by majority overlap with reference polygons (see module docstring).

    Args:
        segments_path: segmentation raster.
        ids: (S,) the segment ids (from :func:`segment_statistics`).
        polygons: reference polygons in the raster's CRS (a GeoDataFrame).
        codes: (P,) class code of each polygon.
        polygon_ids: (P,) their ids.
        min_fraction: least share of the segment's pixels the majority polygon must cover.
        chunk_size: window side, pixels.

    Returns:
        ``code`` (S,) (0 = unlabelled), ``polygon_id`` (S,) (-1 = none) and ``fraction``
        (S,) float, the majority polygon's share of the segment.
    """
    if not 0 < min_fraction <= 1:
        raise ConfigError(f"obia min_fraction must be in (0, 1], got {min_fraction}")
    pairs: dict[tuple[int, int], int] = {}
    size = np.zeros(len(ids), dtype=np.int64)
    with rasterio.open(segments_path) as src:
        rows = np.arange(len(polygons))
        for win in block_windows(src.width, src.height, chunk_size, "chunk_size"):
            s = src.read(1, window=win).astype(np.int64)
            inside = s != 0
            k = np.searchsorted(ids, s[inside])
            np.add.at(size, k, 1)
            poly = burn_window(polygons, rows, src.transform, win)[inside]
            covered = poly >= 0
            key = k[covered] * (len(polygons) + 1) + poly[covered]
            uniq, cnt = np.unique(key, return_counts=True)
            for u, n in zip(uniq.tolist(), cnt.tolist(), strict=True):
                pair = divmod(u, len(polygons) + 1)
                pairs[pair] = pairs.get(pair, 0) + n
    best: dict[int, tuple[int, int]] = {}  # segment -> (pixels, polygon); ties: first polygon
    for (k_seg, p), n in sorted(pairs.items()):
        if k_seg not in best or n > best[k_seg][0]:
            best[k_seg] = (n, p)
    code = np.zeros(len(ids), dtype=np.int64)
    pid = np.full(len(ids), -1, dtype=np.int64)
    fraction = np.zeros(len(ids))
    for k_seg, (n, p) in best.items():
        fraction[k_seg] = n / max(size[k_seg], 1)
        if fraction[k_seg] >= min_fraction:
            code[k_seg] = codes[p]
            pid[k_seg] = polygon_ids[p]
    return code, pid, fraction
