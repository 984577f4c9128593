"""Linear gap-filling of masked observations along time (torch, any device).

iota2 gap-fills every series onto its date grid before conventional classifiers and its
MLP see it (``sensors_data_interpolation``): an invalid observation takes the value
linearly interpolated, in time, between the nearest valid observations before and after
it; before the first (after the last) valid observation the first (last) valid value is
repeated. A series with no valid observation becomes zeros. Fully vectorised (cummax /
cummin over date indices, no Python loop), so it runs inside a network's forward on CPU or
CUDA and gives the same result as ``numpy.interp`` per pixel.
"""

from __future__ import annotations

import torch


def linear_gapfill(x: torch.Tensor, days: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fill invalid observations by linear interpolation in time.

    Args:
        x: (B, T, C) float, the series (values at invalid dates are ignored).
        days: (B, T) int or float, days since the reference date, non-decreasing along T.
        mask: (B, T) bool, True = valid observation.

    Returns:
        (B, T, C) tensor of ``x``'s dtype: valid observations unchanged, invalid ones
        interpolated; all-invalid series are zeros.

    Raises:
        ValueError: shapes differ (``days``/``mask`` must be ``x.shape[:2]``).
    """
    if x.ndim != 3 or days.shape != x.shape[:2] or mask.shape != x.shape[:2]:
        raise ValueError(
            f"linear_gapfill expects x (B,T,C), days and mask (B,T); got x {tuple(x.shape)}, "
            f"days {tuple(days.shape)}, mask {tuple(mask.shape)}"
        )
    b, t, c = x.shape
    mask = mask.bool()
    idx = torch.arange(t, device=x.device).expand(b, t)
    prev = torch.where(mask, idx, torch.full_like(idx, -1)).cummax(dim=1).values
    nxt = torch.where(mask, idx, torch.full_like(idx, t)).flip(1).cummin(dim=1).values.flip(1)
    has_prev, has_next = prev >= 0, nxt < t
    p, n = prev.clamp(min=0), nxt.clamp(max=t - 1)
    xp = x.gather(1, p.unsqueeze(-1).expand(b, t, c))
    xn = x.gather(1, n.unsqueeze(-1).expand(b, t, c))
    d = days.to(torch.float64)
    dp, dn = d.gather(1, p), d.gather(1, n)
    span = dn - dp
    w = torch.where(span > 0, (d - dp) / torch.where(span > 0, span, 1.0), 0.0)
    interp = xp + w.to(x.dtype).unsqueeze(-1) * (xn - xp)
    both = (has_prev & has_next).unsqueeze(-1)
    out = torch.where(both, interp, torch.where(has_prev.unsqueeze(-1), xp, xn))
    none = ~(has_prev | has_next)
    return out.masked_fill(none.unsqueeze(-1), 0.0)
