"""Map quality: uncertainty maps and area-adjusted accuracy with confidence intervals.

Uncertainty (sits' ``sits_uncertainty``) from a probability map ``p`` (K classes per
pixel, summing to 1):

- ``entropy``: ``-sum_k p_k ln p_k`` (nats; 0 = certain, ``ln K`` = uniform);
- ``margin``: ``1 - (p_(1) - p_(2))``, one minus the gap between the two largest
  probabilities (0 = certain, 1 = a tie);
- ``least``: least confidence, ``1 - p_(1)`` (0 = certain, ``1 - 1/K`` = uniform).

Area-adjusted accuracy (Olofsson et al. 2014, "Good practices for estimating area and
assessing accuracy of land change", Remote Sensing of Environment 148:42-57, eq. 1-10;
sits ``sits_accuracy`` with a map): the map classes are the strata; with ``W_i`` the
mapped proportion of class ``i`` and ``n_ij`` the samples mapped ``i`` and labelled ``j``
in the reference, the estimated proportions are ``p_ij = W_i n_ij / n_i.``. From them:
area of each reference class ``A * p_.j`` with its standard error, user's and producer's
accuracies and overall accuracy with theirs, and 95 % intervals (± 1.96 SE). These
estimators assume the validation samples are a stratified random sample of the map; the
val polygons of a run are not, so the figures are indicative there (documented in the
report).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import scipy.ndimage
from rasterio.windows import Window

from i2dl.errors import ConfigError, InputDataError
from i2dl.io.files import atomic_path
from i2dl.io.geotiff import block_windows, geotiff_profile

#: the uncertainty measures, name -> what it is
UNCERTAINTY = {
    "entropy": "-sum p ln p (nats)",
    "margin": "1 - (largest - second largest probability)",
    "least": "1 - largest probability (least confidence)",
}
#: z of the two-sided 95 % interval
Z95 = 1.96


def uncertainty(proba: np.ndarray, kind: str) -> np.ndarray:
    """Per-pixel uncertainty of class probabilities.

    Args:
        proba: (K, ...) float probabilities, class axis first (as ``proba.tif`` bands).
        kind: ``entropy``, ``margin`` or ``least`` (:data:`UNCERTAINTY`).

    Returns:
        (...) float32, 0 for a certain pixel; higher is less certain.

    Raises:
        ConfigError: unknown ``kind``, or fewer than 2 classes for ``margin``.
    """
    p = np.asarray(proba, dtype=np.float64)
    if kind == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        return (-terms.sum(axis=0)).astype(np.float32)
    if kind == "least":
        return (1.0 - p.max(axis=0)).astype(np.float32)
    if kind == "margin":
        if p.shape[0] < 2:
            raise ConfigError("the margin uncertainty needs at least 2 classes")
        top2 = np.sort(p, axis=0)[-2:]
        return (1.0 - (top2[1] - top2[0])).astype(np.float32)
    raise ConfigError(f"unknown uncertainty {kind!r}; use one of {sorted(UNCERTAINTY)}")


def write_uncertainty(
    proba_path: str | Path, out_dir: str | Path, kinds: Sequence[str] = ("entropy",),
    chunk_size: int = 512,
) -> dict[str, Path]:
    """Uncertainty maps of a probability map, window by window.

    Args:
        proba_path: ``proba.tif`` (one float band per class; nodata 0 where every band is 0).
        out_dir: folder of ``uncertainty_<kind>.tif`` (float32, nodata -1 where the
            probability map has no data).
        kinds: measures of :data:`UNCERTAINTY`.
        chunk_size: window side, pixels.

    Returns:
        kind -> written path.

    Raises:
        ConfigError: unknown kind. InputDataError: the file is not readable.
    """
    for kind in kinds:
        if kind not in UNCERTAINTY:
            raise ConfigError(f"unknown uncertainty {kind!r}; use one of {sorted(UNCERTAINTY)}")
    out_dir = Path(out_dir)
    try:
        src = rasterio.open(proba_path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputDataError(f"cannot open the probability map {proba_path}: {exc}") from None
    paths = {kind: out_dir / f"uncertainty_{kind}.tif" for kind in kinds}
    with src, ExitStack() as stack:
        profile = geotiff_profile(src.width, src.height, 1, "float32", src.crs, src.transform,
                                  -1.0)
        dsts = {kind: stack.enter_context(rasterio.open(
                    stack.enter_context(atomic_path(path)), "w", **profile))
                for kind, path in paths.items()}
        for win in block_windows(src.width, src.height, chunk_size, "chunk_size"):
            p = src.read(window=win)  # read once for every kind
            empty = ~(p > 0).any(axis=0)
            for kind, dst in dsts.items():
                value = uncertainty(p, kind)
                value[empty] = -1.0
                dst.write(value[None], window=win)
        for kind, dst in dsts.items():
            dst.set_band_description(1, f"{kind}: {UNCERTAINTY[kind]}")
    written = paths
    return written


def area_adjusted_accuracy(
    counts: np.ndarray, map_pixels: np.ndarray, pixel_area: float = 1.0,
    labels: Sequence[Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Olofsson et al. (2014) stratified estimates of area and accuracy.

    Args:
        counts: (K, K) sample counts, rows = MAP class, columns = REFERENCE class (the
            paper's error matrix; note that i2dl's confusion matrices are the transpose:
            rows = reference).
        map_pixels: (K,) pixels mapped as each class (the strata sizes).
        pixel_area: area of one pixel (e.g. 0.01 ha for 10 m pixels); areas are in
            that unit.
        labels: K class labels for the table; default 0..K-1.

    Returns:
        A table with one row per class: ``map_area``, ``area`` (adjusted, of the
        reference class), ``area_se``, ``area_ci95``, ``users_accuracy``, ``users_se``,
        ``producers_accuracy``, ``producers_se``, ``n_samples`` (mapped as the class);
        and ``{"oa", "oa_se", "oa_ci95"}``.

    Raises:
        InputDataError: shapes differ, negative counts, or a mapped class with fewer than
            2 samples (its variance is undefined; sample more, or merge the class).
    """
    n = np.asarray(counts, dtype=np.float64)
    big_n = np.asarray(map_pixels, dtype=np.float64)
    k = len(big_n)
    if n.shape != (k, k) or (n < 0).any() or (big_n < 0).any():
        raise InputDataError(
            f"area-adjusted accuracy needs a ({k}, {k}) matrix of non-negative sample "
            f"counts and {k} mapped pixel counts; got {n.shape}"
        )
    n_i = n.sum(axis=1)  # samples per map class
    mapped = big_n > 0
    if (n_i[mapped] < 2).any():
        bad = [labels[int(i)] if labels else int(i) for i in np.flatnonzero(mapped & (n_i < 2))]
        raise InputDataError(
            f"map classes {bad} have fewer than 2 validation samples: their area and "
            "accuracy variances are undefined; collect more samples or merge the classes"
        )
    total = big_n.sum()
    w = big_n / total
    share = np.divide(n, n_i[:, None], out=np.zeros_like(n), where=n_i[:, None] > 0)
    p = w[:, None] * share  # estimated proportions p_ij
    p_ref = p.sum(axis=0)  # p_.j
    denom = np.maximum(n_i - 1, 1)[:, None]
    var_p_ref = (w[:, None] ** 2 * share * (1 - share) / denom).sum(axis=0)
    diag = np.diag(p)
    users = np.diag(share)
    producers = np.divide(diag, p_ref, out=np.full(k, np.nan), where=p_ref > 0)
    var_users = users * (1 - users) / np.maximum(n_i - 1, 1)
    # producer's accuracy variance, Olofsson et al. (2014) eq. 7, with N_i. = map pixels
    n_hat_ref = (big_n[:, None] * share).sum(axis=0)  # estimated reference pixels
    var_producers = np.full(k, np.nan)
    for j in range(k):
        if n_hat_ref[j] <= 0:
            continue
        own = big_n[j] ** 2 * (1 - producers[j]) ** 2 * var_users[j]
        others = sum(
            big_n[i] ** 2 * share[i, j] * (1 - share[i, j]) / max(n_i[i] - 1, 1)
            for i in range(k) if i != j
        )
        var_producers[j] = (own + producers[j] ** 2 * others) / n_hat_ref[j] ** 2
    oa = float(diag.sum())
    oa_se = float(np.sqrt((w**2 * var_users).sum()))
    area = p_ref * total * pixel_area
    area_se = np.sqrt(var_p_ref) * total * pixel_area
    table = pd.DataFrame({
        "class": list(labels) if labels is not None else list(range(k)),
        "map_area": big_n * pixel_area,
        "area": area,
        "area_se": area_se,
        "area_ci95": Z95 * area_se,
        "users_accuracy": users,
        "users_se": np.sqrt(var_users),
        "producers_accuracy": producers,
        "producers_se": np.sqrt(var_producers),
        "n_samples": n_i.astype(int),
    })
    return table, {"oa": oa, "oa_se": oa_se, "oa_ci95": Z95 * oa_se}


def map_class_pixels(classif_path: str | Path, codes: Sequence[int],
                     chunk_size: int = 1024) -> np.ndarray:
    """Pixels of each class code in a classification map, counted window by window.

    Args:
        classif_path: the classification map (class codes, nodata 0).
        codes: the K class codes, increasing.
        chunk_size: window side, pixels.

    Returns:
        (K,) int64 counts in ``codes`` order (nodata 0 and other codes not counted).
    """
    codes_arr = np.asarray(codes, dtype=np.int64)
    out = np.zeros(len(codes_arr), dtype=np.int64)
    with rasterio.open(classif_path) as src:
        for win in block_windows(src.width, src.height, chunk_size, "chunk_size"):
            values, counts = np.unique(src.read(1, window=win), return_counts=True)
            idx = np.searchsorted(codes_arr, values)
            ok = (idx < len(codes_arr)) & (codes_arr[np.minimum(idx, len(codes_arr) - 1)]
                                           == values)
            np.add.at(out, idx[ok], counts[ok])
    return out


#: probabilities are clipped to [EPS, 1 - EPS] before the logit of the smoothing
EPS = 1e-6


def bayes_smooth(proba: np.ndarray, window_size: int = 7, smoothness: float = 20.0,
                 valid: np.ndarray | None = None) -> np.ndarray:
    """Sits' Bayesian smoothing of class probabilities (Camara et al., sits ``sits_smooth``).

    For each class and pixel, the logit ``x = ln(p / (1 - p))`` is taken as the
    likelihood of a Gaussian whose prior is the pixel's neighbourhood: mean ``m`` and
    variance ``s2`` of the logits of the valid pixels in the ``window_size`` square
    around it (the pixel included). The posterior mean ``(s2 * x + smoothness * m) /
    (s2 + smoothness)`` replaces the logit: a pixel that agrees with its neighbours is
    unchanged (a constant cube is left as is), an isolated one is pulled towards them the
    more the larger ``smoothness`` (the prior variance of a pixel's logit). The
    posteriors go back through the logistic function and are renormalised to sum to 1.

    Args:
        proba: (K, H, W) probabilities.
        window_size: odd neighbourhood side, pixels (>= 3).
        smoothness: > 0, the pixel's variance in logit units; larger = smoother.
        valid: (H, W) bool, pixels with data; None = any probability > 0. Invalid pixels
            are left out of every neighbourhood and returned as zeros.

    Returns:
        (K, H, W) float32 smoothed probabilities.

    Raises:
        ConfigError: an even or too small window, or ``smoothness <= 0``.
    """
    if window_size < 3 or window_size % 2 == 0:
        raise ConfigError(f"smoothing window_size must be odd and >= 3, got {window_size}")
    if not smoothness > 0:
        raise ConfigError(f"smoothing smoothness must be > 0, got {smoothness}")
    p = np.asarray(proba, dtype=np.float64)
    ok = np.asarray((p > 0).any(axis=0) if valid is None else valid, dtype=bool)
    w = ok.astype(np.float64)
    kernel = np.ones((window_size, window_size))
    # direct sums over the window (correlate, not running sums): a pixel's result depends
    # only on its window, so windows with a halo give exactly the whole-map result
    count = scipy.ndimage.correlate(w, kernel, mode="constant", cval=0.0)
    x = np.log(np.clip(p, EPS, 1 - EPS) / (1 - np.clip(p, EPS, 1 - EPS))) * w
    out = np.zeros_like(p)
    safe = np.maximum(count, 1)
    for k in range(p.shape[0]):
        mean = scipy.ndimage.correlate(x[k], kernel, mode="constant", cval=0.0) / safe
        sq = scipy.ndimage.correlate(x[k] ** 2, kernel, mode="constant", cval=0.0) / safe
        var = np.maximum(sq - mean**2, 0.0)
        post = (var * x[k] + smoothness * mean) / (var + smoothness)
        out[k] = 1 / (1 + np.exp(-post))
    out /= np.maximum(out.sum(axis=0, keepdims=True), EPS)
    out[:, ~ok] = 0
    return out.astype(np.float32)


def write_smoothed(
    proba_path: str | Path, out_dir: str | Path, codes: Sequence[int], window_size: int = 7,
    smoothness: float = 20.0, chunk_size: int = 512,
) -> dict[str, Path]:
    """Smooth a probability map window by window (with a halo) and label it.

    Each window is read with ``window_size // 2`` pixels around it (clipped at the map's
    edges), smoothed (:func:`bayes_smooth`) and cropped: no seam between windows, the
    result equals smoothing the whole map at once.

    Args:
        proba_path: ``proba.tif`` (one band per class, in ``codes`` order).
        out_dir: folder of ``proba_smooth.tif`` and ``classif_smooth.tif`` (class of
            highest smoothed probability, nodata 0).
        codes: the K class codes.
        window_size: see :func:`bayes_smooth`.
        smoothness: see :func:`bayes_smooth`.
        chunk_size: window side, pixels.

    Returns:
        ``{"proba": path, "classif": path}``.
    """
    out_dir = Path(out_dir)
    codes_arr = np.asarray(codes, dtype=np.int64)
    dtype = "uint8" if codes_arr.max() <= 255 else "uint16"
    halo = window_size // 2
    paths = {"proba": out_dir / "proba_smooth.tif", "classif": out_dir / "classif_smooth.tif"}
    with rasterio.open(proba_path) as src:
        if src.count != len(codes_arr):
            raise InputDataError(
                f"{proba_path} has {src.count} bands but there are {len(codes_arr)} classes"
            )
        prof_p = geotiff_profile(src.width, src.height, src.count, "float32", src.crs,
                                 src.transform, 0.0)
        prof_c = geotiff_profile(src.width, src.height, 1, dtype, src.crs, src.transform, 0)
        with atomic_path(paths["proba"]) as tmp_p, atomic_path(paths["classif"]) as tmp_c, \
                rasterio.open(tmp_p, "w", **prof_p) as dp, \
                rasterio.open(tmp_c, "w", **prof_c) as dc:
            for win in block_windows(src.width, src.height, chunk_size, "chunk_size"):
                r0 = max(0, int(win.row_off) - halo)
                c0 = max(0, int(win.col_off) - halo)
                r1 = min(src.height, int(win.row_off + win.height) + halo)
                c1 = min(src.width, int(win.col_off + win.width) + halo)
                big = src.read(window=Window(c0, r0, c1 - c0, r1 - r0))
                sm = bayes_smooth(big, window_size, smoothness)
                ri, ci = int(win.row_off) - r0, int(win.col_off) - c0
                sm = sm[:, ri : ri + int(win.height), ci : ci + int(win.width)]
                has = (sm > 0).any(axis=0)
                labels = np.where(has, codes_arr[sm.argmax(axis=0)], 0).astype(dtype)
                dp.write(sm, window=win)
                dc.write(labels[None], window=win)
    return paths
