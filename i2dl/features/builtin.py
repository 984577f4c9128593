"""Built-in external-feature functions, usable by name (iota2's ``external_code.py``).

When ``external_features.module`` is not given, iota2 looks the functions up in its own
module, whose examples the labwork uses (``get_soi``, ``get_ndvi``, ``get_ndsi``,
``get_cari``, ``get_cumulative_productivity``, ...). i2dl offers the same names here; a
function of the same name in the user's module wins. Each takes the chunk
(:class:`i2dl.features.external.ChunkData`) and returns ``(array, names)`` like any
user function, so they run on NumPy or CuPy alike (``data.xp``).

Per-date indices return one feature per date, ``(H, W, T)`` named ``<INDEX>_<YYYYMMDD>``
(iota2 writes one band per date); the productivity features summarise NDVI over the
dates into one feature. Bands are found by name: Sentinel-2's (``B3`` green, ``B4`` red,
``B5`` red edge 705 nm, ``B8`` NIR, ``B11`` SWIR) by default, also when prefixed by a
sensor name (``sentinel2_theia_B4``); every function takes the band names as keyword
arguments (``{get_soi: {nir: B5, swir: B6}}`` for Landsat-8). Normalised differences
are 0 where the denominator is (nearly) 0, as iota2's ``normalized_index``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from i2dl.errors import ConfigError

#: denominators smaller than this give 0 (iota2's epsilon)
EPSILON = 1e-5


def _band(data: Any, name: str) -> Any:
    """``data.get(name)``, or the one channel named ``<sensor>_<name>``."""
    lower = name.lower()
    for b in data.band_names:
        if b.lower() == lower:
            return data.get(b)
    matches = [b for b in data.band_names if b.lower().endswith("_" + lower)]
    if len(matches) == 1:
        return data.get(matches[0])
    raise ConfigError(
        f"built-in external feature: no single band {name!r} in {data.band_names}; pass the "
        "band name as a keyword argument, e.g. {get_soi: {nir: B5, swir: B6}}")


def _normalized(data: Any, a: Any, b: Any) -> Any:
    xp = data.xp
    den = a + b
    small = xp.abs(den) < EPSILON
    return xp.where(small, 0.0, (a - b) / xp.where(small, 1.0, den)).astype(np.float32)


def _per_date(data: Any, values: Any, name: str) -> tuple[Any, list[str]]:
    stamps = [d.strftime("%Y%m%d") for d in data.dates] or [
        f"t{i}" for i in range(values.shape[-1])]
    return values, [f"{name}_{s}" for s in stamps]


def get_ndvi(data: Any, red: str = "B4", nir: str = "B8") -> tuple[Any, list[str]]:
    """NDVI = (NIR - red) / (NIR + red) per date: (H, W, T) float32."""
    return _per_date(data, _normalized(data, _band(data, nir), _band(data, red)), "NDVI")


def get_soi(data: Any, nir: str = "B8", swir: str = "B11") -> tuple[Any, list[str]]:
    """Soil composition index, (SWIR - NIR) / (SWIR + NIR) per date: (H, W, T) float32.

    iota2's ``get_soi`` of its external-features examples (labwork §5.1).
    """
    return _per_date(data, _normalized(data, _band(data, swir), _band(data, nir)), "SOI")


def get_ndsi(data: Any, green: str = "B3", swir: str = "B11") -> tuple[Any, list[str]]:
    """Normalised difference snow index, (green - SWIR) / (green + SWIR) per date.

    Hall et al. 1995; (H, W, T) float32.
    """
    return _per_date(data, _normalized(data, _band(data, green), _band(data, swir)), "NDSI")


def get_cari(data: Any, green: str = "B3", red: str = "B4",
             red_edge: str = "B5") -> tuple[Any, list[str]]:
    """Chlorophyll absorption ratio index per date (Kim et al. 1994): (H, W, T) float32.

    With R550, R670, R700 the green, red and red-edge reflectances (Sentinel-2 B3 at
    560 nm, B4 at 665 nm, B5 at 705 nm stand for them): the line through (550, R550) and
    (700, R700) has slope ``a = (R700 - R550) / 150`` and intercept ``b = R550 - 550 a``;
    CARI = ``(R700 / R670) * |670 a + R670 + b| / sqrt(a^2 + 1)``, 0 where R670 is 0.
    """
    xp = data.xp
    g, r, e = _band(data, green), _band(data, red), _band(data, red_edge)
    a = (e - g) / 150.0
    b = g - 550.0 * a
    small = xp.abs(r) < EPSILON
    ratio = xp.where(small, 0.0, e / xp.where(small, 1.0, r))
    cari = ratio * xp.abs(670.0 * a + r + b) / xp.sqrt(a * a + 1.0)
    return _per_date(data, cari.astype(np.float32), "CARI")


def _ndvi(data: Any, red: str, nir: str) -> Any:
    return _normalized(data, _band(data, nir), _band(data, red))


def get_cumulative_productivity(data: Any, red: str = "B4",
                                nir: str = "B8") -> tuple[Any, list[str]]:
    """Sum of NDVI over the dates: (H, W) float32 (iota2 example)."""
    return _ndvi(data, red, nir).sum(axis=-1).astype(np.float32), ["cumulative_productivity"]


def get_minimum_productivity(data: Any, red: str = "B4",
                             nir: str = "B8") -> tuple[Any, list[str]]:
    """Minimum of NDVI over the dates: (H, W) float32 (iota2 example)."""
    return _ndvi(data, red, nir).min(axis=-1).astype(np.float32), ["minimum_productivity"]


def get_maximum_productivity(data: Any, red: str = "B4",
                             nir: str = "B8") -> tuple[Any, list[str]]:
    """Maximum of NDVI over the dates: (H, W) float32."""
    return _ndvi(data, red, nir).max(axis=-1).astype(np.float32), ["maximum_productivity"]


def get_seasonal_variation(data: Any, red: str = "B4",
                           nir: str = "B8") -> tuple[Any, list[str]]:
    """Coefficient of variation of NDVI over the dates, std / mean: (H, W) float32.

    iota2 example; 0 where the mean NDVI is (nearly) 0.
    """
    xp = data.xp
    ndvi = _ndvi(data, red, nir)
    mean = ndvi.mean(axis=-1)
    small = xp.abs(mean) < EPSILON
    cv = xp.where(small, 0.0, ndvi.std(axis=-1) / xp.where(small, 1.0, mean))
    return cv.astype(np.float32), ["seasonal_variation"]


#: name -> function, the built-ins that ``external_features.functions`` may name
BUILTINS: dict[str, Callable[..., tuple[Any, list[str]]]] = {
    f.__name__: f for f in (get_ndvi, get_soi, get_ndsi, get_cari,
                            get_cumulative_productivity, get_minimum_productivity,
                            get_maximum_productivity, get_seasonal_variation)
}
