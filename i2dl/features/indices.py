"""Spectral indices appended to the bands, as iota2's default features.

iota2 computes, for every (gap-filled) date, three features after the spectral bands:
NDVI, NDWI and Brightness (``GlobChain.features`` default ``["NDVI", "NDWI",
"Brightness"]``; OTB application ``iota2FeatureExtraction``, header
``include/iota2FeatureExtraction.h``). Their definitions there:

* ``normalized_index(a, b) = (a - b) / (a + b)``, and 0 when ``|a + b| < 1e-5``;
* NDVI = ``normalized_index(NIR, Red)`` = (NIR - Red) / (NIR + Red);
* NDWI = ``normalized_index(SWIR, NIR)`` = (SWIR - NIR) / (SWIR + NIR). Note the sign:
  iota2's NDWI is Gao's (1996) NIR/SWIR water index with the **opposite** sign of the
  usual (NIR - SWIR) / (NIR + SWIR), and not McFeeters' green/NIR index;
* Brightness = sqrt(sum of the squares of **all** the date's bands) (every band of the
  stack, e.g. the 10 Sentinel-2 bands B2..B12).

iota2 multiplies NDVI and NDWI by ``indfact`` (default 1000) because it writes int16
stacks; i2dl works in float and uses ``index_factor=1`` unless told otherwise.

Band roles come from iota2's sensor classes: Sentinel-2 red B4, NIR B8, SWIR B11;
Landsat 8 red B4, NIR B5, SWIR B6; Landsat 5 red B3, NIR B4, SWIR B5.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import numpy as np

from i2dl.errors import ConfigError, InputDataError
from i2dl.features.backend import array_module

log = logging.getLogger(__name__)

#: Band name of each role, per sensor (iota2's band numbering). Override per call with
#: ``roles={"red": "...", ...}``; Sen2Cor names (``B04``, ``B08``) match ``B4``, ``B8``.
SENSOR_ROLES: dict[str, dict[str, str]] = {
    "sentinel2": {"blue": "B2", "green": "B3", "red": "B4", "nir": "B8", "swir": "B11"},
    "landsat8": {"blue": "B2", "green": "B3", "red": "B4", "nir": "B5", "swir": "B6"},
    "landsat5": {"blue": "B1", "green": "B2", "red": "B3", "nir": "B4", "swir": "B5"},
}

#: The indices i2dl knows, with the roles they need (``None``: every raw band).
INDEX_ROLES: dict[str, tuple[str, ...] | None] = {
    "NDVI": ("nir", "red"),
    "NDWI": ("swir", "nir"),
    "Brightness": None,
}

#: Denominators smaller than this (in absolute value) give an index of 0 (iota2's
#: ``normalized_index`` epsilon).
EPSILON = 1e-5

_BAND_RE = re.compile(r"^B0*(\d+A?)$", re.IGNORECASE)


def _normalise_band(name: str) -> str:
    """``B04`` -> ``B4``, ``b8a`` -> ``B8A``; other names unchanged but upper-cased."""
    text = str(name).strip()
    match = _BAND_RE.match(text)
    return f"B{match.group(1).upper()}" if match else text.upper()


def normalized_index(a: np.ndarray, b: np.ndarray, epsilon: float = EPSILON) -> np.ndarray:
    """``(a - b) / (a + b)``, 0 where ``|a + b| < epsilon`` (iota2's ``normalized_index``).

    Args:
        a: float32 reflectances (the first band of the difference), a NumPy or CuPy
            array (computed with its own module, :mod:`i2dl.features.backend`).
        b: float32 reflectances, same shape and module as ``a``.
        epsilon: smallest denominator kept.

    Returns:
        float32 array of the same shape.
    """
    xp = array_module(a)
    a = a.astype(np.float32, copy=False)
    b = b.astype(np.float32, copy=False)
    den = a + b
    small = xp.abs(den) < epsilon
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (a - b) / xp.where(small, np.float32(1), den)
    return xp.where(small, np.float32(0), out).astype(np.float32, copy=False)


def compute_indices(
    x: np.ndarray,
    band_names: Sequence[str],
    indices: Sequence[str] = ("NDVI", "NDWI", "Brightness"),
    keep_bands: bool = True,
    sensor: str = "sentinel2",
    roles: Mapping[str, str] | None = None,
    index_factor: float = 1.0,
) -> tuple[np.ndarray, list[str]]:
    """Append spectral indices to the bands along the last axis.

    Args:
        x: (..., C) float32, reflectances of the C bands named ``band_names`` (e.g.
            (H, W, T, C) for a time series chunk, or (N, T, C)); a NumPy array, or a CuPy
            array to compute on the GPU (the result is of the same module).
        band_names: the C band names (``["B2", "B3", "B4", "B8", "B11"]``; Sen2Cor
            ``B02``/``B08`` spellings match too).
        indices: index names, out of ``"NDVI"``, ``"NDWI"``, ``"Brightness"``
            (case-insensitive); iota2's default is all three, in this order.
        keep_bands: True keeps the raw bands before the indices (iota2
            ``iota2FeatureExtraction.copyinput``, default True); False outputs only the
            indices.
        sensor: role table to use, a key of :data:`SENSOR_ROLES`.
        roles: role -> band name overrides (``{"red": "B4", "nir": "B8", "swir":
            "B11"}``), applied over the sensor's table.
        index_factor: multiplies NDVI and NDWI (iota2's ``indfact`` is 1000 for int16
            output; 1 keeps them in [-1, 1]).

    Returns:
        ``y`` (..., C') float32 with C' = (C if ``keep_bands``) + len(indices), and the
        C' channel names (band names as given, then the canonical index names).
        NDVI/NDWI are 0 where their denominator is (nearly) zero (``|a + b| < 1e-5``,
        as iota2); Brightness is sqrt of the sum of squares of all C input bands.

    Raises:
        ConfigError: unknown sensor or index, nothing to output, or a band needed by an
            index is missing (the message names the index, the role and the band).
        InputDataError: ``x``'s last axis is not ``len(band_names)``.
    """
    names = [str(b) for b in band_names]
    xp = array_module(x)
    x = xp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != len(names):
        raise InputDataError(
            f"compute_indices: x has shape {x.shape} but band_names gives {len(names)} "
            f"bands {names}; the last axis of x must hold the bands"
        )
    key = str(sensor).lower().replace("-", "").replace("_", "")
    if key not in SENSOR_ROLES:
        raise ConfigError(
            f"compute_indices: unknown sensor {sensor!r}; choose one of "
            f"{sorted(SENSOR_ROLES)} or pass roles={{'red': ..., 'nir': ..., 'swir': ...}}"
        )
    role_bands = {**SENSOR_ROLES[key], **(dict(roles) if roles else {})}
    canonical = {k.lower(): k for k in INDEX_ROLES}
    wanted: list[str] = []
    for idx in indices:
        if str(idx).lower() not in canonical:
            raise ConfigError(
                f"compute_indices: unknown index {idx!r}; available: {list(INDEX_ROLES)}"
            )
        wanted.append(canonical[str(idx).lower()])
    if not wanted and not keep_bands:
        raise ConfigError("compute_indices: no index asked and keep_bands=False: nothing to output")
    position = {_normalise_band(n): i for i, n in enumerate(names)}
    xf = x.astype(np.float32, copy=False)

    def band(index: str, role: str) -> np.ndarray:
        wanted_band = role_bands.get(role)
        if wanted_band is None or _normalise_band(wanted_band) not in position:
            raise ConfigError(
                f"index {index} needs the {role} band {wanted_band!r} (sensor {sensor}), "
                f"but the bands are {names}; add that band or map the role with "
                f"roles={{'{role}': '<band name>'}}"
            )
        return xf[..., position[_normalise_band(wanted_band)]]

    out: list[np.ndarray] = [xf] if keep_bands else []
    out_names = list(names) if keep_bands else []
    for idx in wanted:
        needed = INDEX_ROLES[idx]
        if needed is None:  # Brightness
            value = xp.sqrt(xp.sum(xp.square(xf, dtype=np.float32), axis=-1, dtype=np.float32))
        else:
            value = normalized_index(band(idx, needed[0]), band(idx, needed[1]))
            if index_factor != 1:
                value = value * np.float32(index_factor)
        out.append(value[..., None].astype(np.float32, copy=False))
        out_names.append(idx)
    return xp.concatenate(out, axis=-1), out_names
