"""Temporal gap-filling: linear interpolation of the valid observations, in torch.

iota2 does not feed raw acquisitions to its classifiers: every band of every pixel is
linearly interpolated in time, from its cloud-free observations, onto a regular grid of
output dates (one every ``temporal_resolution`` days, 10 by default for Sentinel-2 and 16
for Landsat in iota2's configuration defaults), with OTB's ``ImageTimeSeriesGapFilling``
(``it=linear``) (iota2 ``sensors_data_interpolation``). This module is the one
implementation of that step, in torch, vectorised (cumulative max/min of the valid date
indices, ``searchsorted``, gather; no Python loop), on the CPU or CUDA:

* :func:`interpolate`: tensors onto target days shared by every series (a date grid);
* :func:`gapfill`: the same on NumPy arrays with any leading dimensions, run on CUDA
  when available (the feature pipeline, :class:`i2dl.features.stack.FeatureStack`);
* :func:`linear_gapfill`: invalid observations replaced in place, each series on its own
  days (the networks that need every date, inside ``forward``, and the scikit-learn
  backends);
* :func:`regular_grid`: the output dates.

Behaviour, matching OTB's ``LinearGapFillingFunctor`` (temporal gap-filling module by
J. Inglada, https://zenodo.org/record/45572):

* at a target day, the value is the linear interpolation, in days, between the last
  valid observation on or before it and the first valid observation on or after it;
  a valid observation on the target day itself is returned unchanged;
* before the first (after the last) valid observation the first (last) valid value is
  repeated: constant extrapolation, as OTB does ("at the beginning (resp. the end) just
  replicate the first (resp. the last) valid pixel");
* a pixel with no valid observation at all gives zeros (OTB's
  ``invalid_pixel_return_value``), and i2dl also flags it invalid in ``y_valid``.

One difference, on purpose: OTB divides by zero when two valid acquisitions share a day
(two passes over a tile overlap). Here the two bounding observations are chosen in
acquisition order, the last valid one on or before the target day and the first valid
one on or after it; when both fall on the same day the earlier-bound one (the *later*
acquisition of that day) is used, so no division by zero can occur. :func:`linear_gapfill`
bounds by position instead (the target is the acquisition itself), so a valid observation
is always kept unchanged.

``tests/test_features.py`` holds a NumPy implementation of the same algorithm, the oracle
the torch one is compared against.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from i2dl.errors import ConfigError, InputDataError
from i2dl.io.raster import as_date

log = logging.getLogger(__name__)


def regular_grid(
    dates: Sequence[dt.date | str],
    temporal_resolution: int,
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
) -> list[dt.date]:
    """The regular output dates of the gap-filling.

    One date every ``temporal_resolution`` days from ``start`` (default: the first
    acquisition) up to ``end`` (default: the last acquisition), ``end`` included when it
    falls on the grid. iota2 writes the same list to
    ``<sensor>_<tile>_interpolation_dates.txt``; its ``dateInterval`` stops strictly before
    the end date, i2dl keeps it so that the last acquisition is covered.

    Args:
        dates: acquisition dates (``datetime.date`` or text that
            :func:`i2dl.io.raster.as_date` reads), any order.
        temporal_resolution: step of the grid in days (iota2 default: 10 for Sentinel-2,
            16 for Landsat 5/8).
        start: first grid date (iota2 ``start_date`` with ``auto_date: False``); None =
            first acquisition.
        end: last possible grid date (iota2 ``end_date``); None = last acquisition.

    Returns:
        The grid dates, increasing.

    Raises:
        ConfigError: ``temporal_resolution`` < 1, ``start`` after ``end``, no dates and
            no ``start``/``end``, or a text that holds no date.
    """
    if int(temporal_resolution) != temporal_resolution or temporal_resolution < 1:
        raise ConfigError(
            f"temporal_resolution must be a whole number of days >= 1, got "
            f"{temporal_resolution!r} (iota2 uses 10 for Sentinel-2, 16 for Landsat)"
        )
    parsed = [as_date(d, "regular_grid dates") for d in dates]
    if (start is None or end is None) and not parsed:
        raise ConfigError("regular_grid: no acquisition dates; give start and end dates")
    first = as_date(start, "start_date") if start is not None else min(parsed)
    last = as_date(end, "end_date") if end is not None else max(parsed)
    if first > last:
        raise ConfigError(
            f"regular_grid: start date {first} is after end date {last}; swap them or "
            "leave them unset to use the first and last acquisitions"
        )
    n = (last - first).days // int(temporal_resolution) + 1
    step = dt.timedelta(days=int(temporal_resolution))
    return [first + i * step for i in range(n)]


def _fill(
    x: Tensor, mask: Tensor, days: Tensor, target: Tensor, right: Tensor, left: Tensor
) -> Tensor:
    """Interpolate each series at K targets, between its bounding valid observations.

    Args:
        x: (N, T, C) float, the series; values at invalid observations are ignored.
        mask: (N, T) bool, True = valid observation.
        days: (T,) or (N, T) float64, day of each observation.
        target: (K,) or (N, K) float64, day of each target.
        right: (K,) int64, per target, the last observation index whose day is on or
            before it (-1: none); the search for a valid observation goes back from it.
        left: (K,) int64, the first observation index whose day is on or after it (T:
            none); the search for a valid observation goes forward from it.

    Returns:
        (N, K, C) tensor of ``x``'s dtype; zeros for series without a valid observation.
    """
    n, t, c = x.shape
    k = right.shape[0]
    idx = torch.arange(t, device=x.device).expand(n, t)
    # last valid index <= i and first valid index >= i, per series and observation index
    prev_src = torch.where(mask, idx, -1).cummax(dim=1).values
    next_src = torch.where(mask, idx, t).flip(1).cummin(dim=1).values.flip(1)
    prev = torch.where(right >= 0, prev_src[:, right.clamp(0, t - 1)], -1)  # (N, K)
    nxt = torch.where(left < t, next_src[:, left.clamp(0, t - 1)], t)
    has_prev, has_next = prev >= 0, nxt < t
    p, q = prev.clamp(0, t - 1), nxt.clamp(0, t - 1)
    xp = x.gather(1, p.unsqueeze(-1).expand(n, k, c))
    xn = x.gather(1, q.unsqueeze(-1).expand(n, k, c))
    d = days.expand(n, t)
    dp, dn = d.gather(1, p), d.gather(1, q)
    span = dn - dp
    w = torch.where(span > 0, (target - dp) / torch.where(span > 0, span, 1.0), 0.0)
    interp = xp + w.to(x.dtype).unsqueeze(-1) * (xn - xp)
    y = torch.where(
        (has_prev & has_next).unsqueeze(-1), interp, torch.where(has_prev.unsqueeze(-1), xp, xn)
    )
    return y.masked_fill(~(has_prev | has_next).unsqueeze(-1), 0.0)


def interpolate(
    x: Tensor, mask: Tensor, days: Tensor, target_days: Tensor
) -> tuple[Tensor, Tensor]:
    """Linearly interpolate the valid observations of each series onto target days.

    Args:
        x: (N, T, C) float, the series; values at invalid observations are ignored.
        mask: (N, T) bool, True = valid observation (not cloudy, not nodata).
        days: (T,) int or float, day of each acquisition (e.g. days since the first one,
            :func:`i2dl.io.raster.days_since`), non-decreasing; equal values (two
            acquisitions the same day) are allowed.
        target_days: (K,) int or float, the output days on the same origin, any order
            (usually from :func:`regular_grid`).

    Returns:
        ``y`` (N, K, C) of ``x``'s dtype, on ``x``'s device (see the module docstring for
        extrapolation and same-day acquisitions), and ``y_valid`` (N, K) bool, True where
        the series has at least one valid observation (its rows of ``y`` are zeros
        otherwise).

    Raises:
        InputDataError: shapes disagree or ``days`` decrease.
    """
    if x.ndim != 3 or mask.shape != x.shape[:2]:
        raise InputDataError(
            f"gap-filling expects x (N, T, C) and valid (N, T); got x {tuple(x.shape)}, "
            f"valid {tuple(mask.shape)}"
        )
    n, t, c = x.shape
    d = torch.as_tensor(days, device=x.device).to(torch.float64)
    tau = torch.as_tensor(target_days, device=x.device).to(torch.float64)
    if d.shape != (t,):
        raise InputDataError(
            f"gap-filling: days has shape {tuple(d.shape)} but x has T = {t} dates; give one "
            "day offset per acquisition"
        )
    if tau.ndim != 1:
        raise InputDataError(f"gap-filling: target_days must be 1-D, got shape {tuple(tau.shape)}")
    if t > 1 and bool((d.diff() < 0).any()):
        bad = int((d.diff() < 0).nonzero()[0, 0]) + 1
        raise InputDataError(
            f"gap-filling: days must be non-decreasing (acquisition order), but day {bad} "
            f"({d[bad].item():g}) follows {d[bad - 1].item():g}; sort the acquisitions by date"
        )
    k = tau.shape[0]
    if n == 0 or t == 0:
        y = torch.zeros((n, k, c), dtype=x.dtype, device=x.device)
        return y, torch.zeros((n, k), dtype=torch.bool, device=x.device)
    mask = mask.bool()
    right = torch.searchsorted(d, tau, right=True) - 1  # last index with day <= target
    left = torch.searchsorted(d, tau, right=False)  # first index with day >= target
    y = _fill(x, mask, d, tau, right, left)
    return y, mask.any(dim=1, keepdim=True).expand(n, k).contiguous()


def gapfill(
    x: np.ndarray,
    valid: np.ndarray,
    days: np.ndarray | Sequence[int],
    target_days: np.ndarray | Sequence[int],
    device: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gap-fill NumPy series onto target days (:func:`interpolate` on ``device``).

    Args:
        x: (..., T, C) float, the series (any leading dims, e.g. (N, T, C) or
            (H, W, T, C)); values at invalid observations are ignored.
        valid: (..., T) bool, True = valid observation (not cloudy, not nodata).
        days: (T,) int, day of each acquisition (e.g. days since the first one, see
            :func:`i2dl.io.raster.days_since`), non-decreasing; equal values (two
            acquisitions the same day) are allowed.
        target_days: (T',) int, the output days on the same origin, any order
            (usually from :func:`regular_grid`).
        device: torch device the computation runs on; None = ``"cuda"`` when available,
            else ``"cpu"`` (torch's threaded CPU kernels measured 4x faster than NumPy:
            docs/benchmarks.md).

    Returns:
        ``y`` (..., T', C) float32, the gap-filled series (see the module docstring for
        extrapolation and same-day acquisitions), and ``y_valid`` (..., T') bool, True
        where the pixel has at least one valid observation (its rows of ``y`` are zeros
        otherwise).

    Raises:
        InputDataError: shapes disagree or ``days`` decrease.
    """
    x = np.asarray(x)
    valid = np.asarray(valid)
    if x.ndim < 2 or valid.shape != x.shape[:-1]:
        raise InputDataError(
            f"gapfill expects x (..., T, C) and valid (..., T); got x {x.shape}, "
            f"valid {valid.shape}"
        )
    lead, (t, c) = x.shape[:-2], x.shape[-2:]
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    xf = np.ascontiguousarray(x.reshape(-1, t, c), dtype=np.float32)
    vf = np.ascontiguousarray(valid.reshape(-1, t), dtype=bool)
    with torch.no_grad():
        y, y_valid = interpolate(
            torch.from_numpy(xf).to(dev),
            torch.from_numpy(vf).to(dev),
            torch.as_tensor(np.asarray(days)),
            torch.as_tensor(np.asarray(target_days)),
        )
        k = y.shape[1]
        return y.cpu().numpy().reshape(*lead, k, c), y_valid.cpu().numpy().reshape(*lead, k)


def linear_gapfill(x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
    """Fill invalid observations by linear interpolation in time, each on its own day.

    Runs inside a network's ``forward`` (any device, autograd kept): iota2 gap-fills every
    series before its conventional classifiers and its MLP see it. Each series is
    interpolated at its own acquisition days, between the nearest valid observations
    before and after each position (positions, not days, bound the search, so ``days``
    may be padded and valid observations are kept unchanged).

    Args:
        x: (B, T, C) float, the series (values at invalid dates are ignored).
        days: (B, T) int or float, days since the reference date, non-decreasing along T.
        mask: (B, T) bool, True = valid observation.

    Returns:
        (B, T, C) tensor of ``x``'s dtype: valid observations unchanged, invalid ones
        interpolated; all-invalid series are zeros. When every series has the same days
        (``days`` of one row, or expanded: stride 0), a faster path of the same
        interpolation runs (equal up to float rounding; tests/test_features.py).

    Raises:
        ValueError: shapes differ (``days``/``mask`` must be ``x.shape[:2]``).
    """
    if x.ndim != 3 or days.shape != x.shape[:2] or mask.shape != x.shape[:2]:
        raise ValueError(
            f"linear_gapfill expects x (B,T,C), days and mask (B,T); got x {tuple(x.shape)}, "
            f"days {tuple(days.shape)}, mask {tuple(mask.shape)}"
        )
    t = x.shape[1]
    if x.shape[0] == 0 or t == 0:
        return x.clone()
    if days.shape[0] == 1 or days.stride(0) == 0:  # one date grid (e.g. a map window)
        return _fill_shared(x, days[0].to(torch.float64), mask.bool())
    idx = torch.arange(t, device=x.device)
    d = days.to(torch.float64)
    return _fill(x, mask.bool(), d, d, idx, idx)


def _fill_shared(x: Tensor, d: Tensor, mask: Tensor) -> Tensor:
    """:func:`linear_gapfill` of series that share the days ``d`` ``(T,)``, in 3 passes.

    Each date takes the values of its nearest valid dates before and after (one row
    gather each from the flat ``(B * T, C)`` series) and their linear interpolation at
    its day (one ``lerp``, weights from the float64 days); a date before the first or
    after the last valid one takes that one's values, valid dates keep theirs. Values at
    invalid dates are never read (NaN there is harmless); all-invalid series are zeros.
    """
    b, t, c = x.shape
    idx = torch.arange(t, device=x.device)
    prev = torch.where(mask, idx, -1).cummax(dim=1).values  # last valid date <= t
    nxt = torch.where(mask, idx, t).flip(1).cummin(dim=1).values.flip(1)  # first >= t
    p = torch.where(prev >= 0, prev, nxt).clamp_(0, t - 1)
    n = torch.where(nxt < t, nxt, p).clamp_(0, t - 1)
    dp = d[p]
    span = d[n] - dp
    w = torch.where(span > 0, (d - dp) / torch.where(span > 0, span, 1.0), 0.0)
    rows = (torch.arange(b, device=x.device) * t).unsqueeze(1)
    flat = x.reshape(b * t, c)
    xp = flat.index_select(0, (p + rows).view(-1)).view(b, t, c)
    xn = flat.index_select(0, (n + rows).view(-1)).view(b, t, c)
    y = torch.lerp(xp, xn, w.to(x.dtype).unsqueeze(-1))
    any_valid = mask.any(dim=1)
    if not bool(any_valid.all()):
        y = y.masked_fill(~any_valid.view(b, 1, 1), 0.0)
    return y
