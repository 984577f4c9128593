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

The pipeline (``obia.enabled=true``, iota2 ``builders_class_name: ["i2_obia"]``), at the
end of this module: the segmentation (:func:`segmentation_for`: a raster as given, a
vector file rasterised by windows, or SLIC), a sample store whose rows are the labelled
segments (:func:`segment_samples`, written by ``prepare`` with the usual polygon-grouped
learn/val split and sample selection), so every model of the zoo and the scikit-learn
backends train and are evaluated on segments unchanged (the report counts segments), and
the maps (:func:`classify_segments`): ``classif.tif`` / ``confidence.tif`` with one class
per segment and ``segments.gpkg`` (segment polygons with class, class name, confidence,
pixel count). One tile, no eco-regions.
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


# ---------------------------------------------------------------- the OBIA pipeline
#
# With ``obia.enabled=true`` (iota2 ``builders_class_name: ["i2_obia"]``) the main job's
# samples are segments: ``prepare`` writes a store whose rows are the labelled segments
# (:func:`segment_samples`), so ``fit`` and ``evaluate`` run unchanged for every model of
# the zoo and the scikit-learn backends, and ``infer`` classifies every segment
# (:func:`classify_segments`).

#: suffixes read as vector segmentations (anything else is read as a raster)
VECTOR_SUFFIXES = (".gpkg", ".shp", ".geojson", ".json", ".sqlite", ".fgb")


def obia_settings(cfg: Any) -> dict[str, Any] | None:
    """The ``obia`` config node as a plain dict when ``obia.enabled``, else None."""
    node = cfg.get("obia") if hasattr(cfg, "get") else None
    if not node or not node.get("enabled", False):
        return None
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else node
    return dict(plain)  # type: ignore[arg-type]


def segmentation_for(series: Any, settings: dict[str, Any], out_path: Path,
                     chunk_size: int = 1024) -> Path:
    """The segment-id raster of an OBIA run, on the series' grid.

    ``obia.segmentation_path`` (iota2 ``obia_segmentation_path``) is used as it is when it
    is a raster (ids > 0, 0 or nodata = none; the grid is checked when read); a vector file
    is rasterised by windows (pixel-centre rule, feature ``i`` gets id ``i + 1``, a later
    feature wins where they overlap) to ``out_path``; with no path, SLIC segments are
    computed (:func:`compute_segments`, ``obia.n_segments``, ``obia.compactness``) to
    ``out_path``.

    Returns:
        The raster path.

    Raises:
        InputFileNotFoundError: the segmentation file does not exist.
        InputDataError: a vector segmentation with no feature on the grid.
    """
    from i2dl.errors import InputFileNotFoundError

    given = settings.get("segmentation_path")
    if not given:
        return compute_segments(series, out_path, int(settings.get("n_segments", 1000)),
                                float(settings.get("compactness", 0.1)))
    path = Path(given)
    if not path.exists():
        raise InputFileNotFoundError(
            f"obia.segmentation_path {path} does not exist; give a raster of segment ids or "
            "a vector file of segments, or null to compute SLIC segments")
    if path.suffix.lower() not in VECTOR_SUFFIXES:
        return path
    import geopandas as gpd

    polygons = gpd.read_file(path)
    if series.crs is not None and polygons.crs is not None:
        polygons = polygons.to_crs(series.crs)
    polygons = polygons[polygons.geometry.notna() & ~polygons.geometry.is_empty]
    polygons = polygons.reset_index(drop=True)
    if not len(polygons):
        raise InputDataError(f"obia.segmentation_path {path} holds no segment polygon")
    values = np.arange(1, len(polygons) + 1)
    profile = geotiff_profile(series.width, series.height, 1, "uint32", series.crs,
                              series.transform, 0)
    found = False
    with atomic_path(out_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for win in block_windows(series.width, series.height, chunk_size, "chunk_size"):
            burnt = burn_window(polygons, values, series.transform, win)
            found |= bool((burnt > 0).any())
            dst.write(np.maximum(burnt, 0).astype(np.uint32)[None], window=win)
    if not found:
        Path(out_path).unlink(missing_ok=True)
        raise InputDataError(
            f"no segment of {path} covers a pixel centre of {series.path}: is it the same area "
            "and CRS?")
    return Path(out_path)


def segment_anchors(segments_path: str | Path, ids: np.ndarray,
                    chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each segment's first pixel in raster order (one windowed pass).

    Returns:
        ``rows``, ``cols`` (S,) int64: a pixel of each segment of ``ids``, so that a
        segment sample has a position in the tile like a pixel sample.
    """
    with rasterio.open(segments_path) as src:
        first = np.full(len(ids), np.iinfo(np.int64).max, dtype=np.int64)
        for win in block_windows(src.width, src.height, chunk_size, "chunk_size"):
            s = src.read(1, window=win).astype(np.int64)
            if src.nodata is not None:
                s[s == int(src.nodata)] = 0
            r, c = np.nonzero(s)
            flat = (r + int(win.row_off)) * src.width + (c + int(win.col_off))
            np.minimum.at(first, np.searchsorted(ids, s[r, c]), flat)
        return first // src.width, first % src.width


def segment_samples(
    series: Any, segments_path: Path, polygons: Any, stats: Sequence[str],
    min_fraction: float = 0.5, chunk_size: int = 512,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The store arrays of the labelled segments of a tile.

    Statistics by :func:`segment_statistics`, labels by :func:`label_segments`.

    Args:
        series: the opened time series.
        segments_path: the segment-id raster (:func:`segmentation_for`).
        polygons: reference polygons (GeoDataFrame in the series' CRS, with ``code`` and
            ``polygon_id``).
        stats: ``obia.stats_used``.
        min_fraction: least share of a segment its majority polygon must cover.
        chunk_size: window side, pixels.

    Returns:
        ``X`` (S, T, F) float32 (0 where invalid), ``mask`` (S, T), ``code``,
        ``polygon_id`` (S,) int64, ``row``, ``col`` (S,) int32 (the segment's first
        pixel); and the F feature names.

    Raises:
        ConfigError: no segment is labelled (polygons smaller than ``min_fraction`` of
            every segment they touch).
    """
    feats = segment_statistics(series, segments_path, stats, chunk_size)
    codes, pids, _ = label_segments(
        segments_path, feats.ids, polygons, polygons["code"].to_numpy(),
        polygons["polygon_id"].to_numpy(), min_fraction, chunk_size,
    )
    labelled = (codes != 0) & feats.valid.any(axis=1)
    if not labelled.any():
        raise ConfigError(
            f"no segment of {segments_path} is covered at least {min_fraction:.0%} by one "
            "reference polygon: lower obia.min_fraction or use smaller segments")
    rows, cols = segment_anchors(segments_path, feats.ids[labelled])
    x = np.where(feats.valid[labelled][..., None], feats.x[labelled], 0.0).astype(np.float32)
    return {
        "X": x,
        "mask": feats.valid[labelled],
        "code": codes[labelled].astype(np.int64),
        "polygon_id": pids[labelled].astype(np.int64),
        "row": rows.astype(np.int32),
        "col": cols.astype(np.int32),
    }, feats.names


def _segment_proba(feats: Any, info: Any, predict_proba: Any, batch_size: int) -> np.ndarray:
    """(S, K) float32 class probabilities of the segments, ``batch_size`` at a time.

    The segment features are normalised with the store's statistics (NaN read as 0 at
    invalid dates) and classified with the store's days.
    """
    import torch

    x = info.normalise(np.nan_to_num(feats.x, nan=0.0), feats.valid)
    days = np.broadcast_to(info.days, feats.valid.shape)
    k = len(info.class_codes)
    proba = np.zeros((len(feats.ids), k), np.float32)
    for i in range(0, len(feats.ids), batch_size):
        sl = slice(i, i + batch_size)
        out = predict_proba(torch.from_numpy(np.ascontiguousarray(x[sl])),
                            torch.from_numpy(np.ascontiguousarray(days[sl])),
                            torch.from_numpy(np.ascontiguousarray(feats.valid[sl])))
        proba[sl] = np.asarray(out.cpu() if hasattr(out, "cpu") else out)
    return proba


def classify_segments(
    series: Any, segments_path: Path, stats: Sequence[str], info: Any,
    predict_proba: Any, maps_dir: Path, codes_names: Sequence[str],
    chunk_size: int = 1024, batch_size: int = 8192,
) -> Any:
    """Classify every segment and write the maps (iota2 OBIA outputs).

    Every segment's statistics are computed in one windowed pass
    (:func:`segment_statistics`), normalised with the store's statistics and classified
    by ``predict_proba``; then, by windows, each pixel takes its segment's class.

    Writes (atomically) ``<maps_dir>/classif.tif`` (uint16 class codes, 0 = no segment
    or no valid date), ``confidence.tif`` (float32, the winning probability) and
    ``segments.gpkg``: one polygon per segment (pieces of a segment cut by windows are
    dissolved) with ``segment_id``, ``class`` (code), ``class_name``, ``confidence`` and
    ``n_pixels``.

    Args:
        series: the opened time series (the data the store was built from).
        segments_path: the segment-id raster on the series' grid.
        stats: ``obia.stats_used`` (the store's features).
        info: the store's :class:`~i2dl.samples.store.StoreInfo`.
        predict_proba: ``(x (B,T,F), days (B,T), mask (B,T)) -> (B,K)`` probabilities.
        maps_dir: output folder.
        codes_names: the K class names.
        chunk_size: window side, pixels.
        batch_size: segments per ``predict_proba`` call.

    Returns:
        An :class:`i2dl.maps.engine.InferenceResult` (``n_pixels`` = pixels mapped).

    Raises:
        InputDataError: the segment features do not match the store's channels.
    """
    import geopandas as gpd
    from rasterio.features import shapes
    from rasterio.windows import transform as window_transform
    from shapely.geometry import shape

    from i2dl.maps.engine import InferenceResult

    feats = segment_statistics(series, segments_path, stats, chunk_size)
    if feats.names != list(info.band_names):
        raise InputDataError(
            f"segment features {feats.names} differ from the store's {info.band_names}: "
            "prepare the store again with the same obia.stats_used")
    ok = feats.valid.any(axis=1)
    proba = _segment_proba(feats, info, predict_proba, batch_size)
    codes = np.asarray(info.class_codes, np.int64)
    seg_code = np.where(ok, codes[proba.argmax(axis=1)], 0)
    seg_conf = np.where(ok, proba.max(axis=1), 0.0).astype(np.float32)
    maps_dir.mkdir(parents=True, exist_ok=True)
    classif, confidence = maps_dir / "classif.tif", maps_dir / "confidence.tif"
    pieces: list[tuple[Any, int]] = []
    n_mapped = 0
    with rasterio.open(segments_path) as src:
        cprof = geotiff_profile(src.width, src.height, 1, "uint16", src.crs, src.transform, 0)
        fprof = geotiff_profile(src.width, src.height, 1, "float32", src.crs, src.transform,
                                None)
        with atomic_path(classif) as tmp_c, atomic_path(confidence) as tmp_f, \
                rasterio.open(tmp_c, "w", **cprof) as dc, rasterio.open(tmp_f, "w", **fprof) as df:
            for win in block_windows(src.width, src.height, chunk_size, "chunk_size"):
                s = src.read(1, window=win).astype(np.int64)
                if src.nodata is not None:
                    s[s == int(src.nodata)] = 0
                inside = s != 0
                idx = np.searchsorted(feats.ids, np.where(inside, s, feats.ids[0]))
                cmap = np.where(inside, seg_code[idx], 0)
                n_mapped += int((cmap != 0).sum())
                dc.write(cmap.astype(np.uint16)[None], window=win)
                df.write(np.where(inside, seg_conf[idx], 0.0).astype(np.float32)[None],
                         window=win)
                wt = window_transform(win, src.transform)
                for geom, value in shapes(s.astype(np.int32), mask=inside, transform=wt):
                    pieces.append((shape(geom), int(value)))
            crs = src.crs
    names = dict(zip(codes.tolist(), codes_names, strict=True))
    frame = gpd.GeoDataFrame({"segment_id": [p[1] for p in pieces]},
                             geometry=[p[0] for p in pieces], crs=crs)
    frame = frame.dissolve(by="segment_id", as_index=False)
    k_of = np.searchsorted(feats.ids, frame["segment_id"].to_numpy())
    frame["class"] = seg_code[k_of]
    frame["class_name"] = [names.get(int(c), "") for c in seg_code[k_of]]
    frame["confidence"] = seg_conf[k_of]
    frame["n_pixels"] = feats.n_pixels[k_of]
    gpkg = maps_dir / "segments.gpkg"
    with atomic_path(gpkg) as tmp:
        frame.to_file(tmp, driver="GPKG", layer="segments")
    total = int(series.width) * int(series.height)
    return InferenceResult(classif=classif, confidence=confidence, proba=None,
                           n_pixels=n_mapped, n_nodata=total - n_mapped, device="cpu")
