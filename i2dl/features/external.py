"""User Python features computed chunk by chunk (iota2 "external features").

iota2 lets a user plug their own Python functions into the feature step: the
configuration names a module (``external_features.module``; iota2's own
``external_code.py`` when unset) and the functions to call
(``external_features.functions``, e.g. ``"get_soi"``, optionally with keyword
arguments), and iota2 calls each function on every chunk of a tile, with an object
giving access to the chunk's data (``self.get_interpolated_Sentinel2_NDVI()`` ...).
Each function returns ``(array, names)``; the arrays are concatenated into the feature
stack. Functions that look at neighbours (a Laplacian over the mean NDVI, in iota2's
labwork) see seams at chunk borders unless chunks are read with a margin: iota2 has
padding options for that, and here :func:`read_padded` reads the margin and gives the
slice that crops it off.

i2dl's calling convention is the same: ``f(data, **kwargs) -> (array, names)`` where
``data`` is a :class:`ChunkData`, ``array`` is (H, W, F) (or (H, W) for one feature, as
iota2's example returns) and ``names`` holds F strings.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.features.backend import array_module, ndimage

log = logging.getLogger(__name__)

FeatureFunction = Callable[..., tuple[np.ndarray, Sequence[str]]]

_IOTA2_GETTER = re.compile(r"^get_(?:interpolated|raw)_(?P<rest>.+)$")


class ChunkData:
    """What an external-feature function sees of one chunk.

    Attributes:
        array: (H, W, T, C) float32, the chunk (usually gap-filled, with indices).
        band_names: the C channel names.
        dates: the T dates of the array.
        valid: (H, W, T) bool validity, or None when not given (gap-filled data).
        xp: the array module of :attr:`array` (``numpy``, or ``cupy`` when the features
            are computed on the GPU): write functions with ``xp.`` instead of ``np.``
            and they run on both (:mod:`i2dl.features.backend`).
        ndimage: ``scipy.ndimage`` or ``cupyx.scipy.ndimage`` to match ``xp`` (spatial
            filters: ``data.ndimage.uniform_filter(...)``).

    Besides :meth:`get`, iota2-style getters work: ``data.get_interpolated_Sentinel2_B4()``
    and ``data.get_raw_Sentinel2_NDVI()`` return ``data.get("B4")`` and
    ``data.get("NDVI")`` (the sensor part of the name is ignored: a chunk holds one
    series), so most iota2 user functions run unchanged.
    """

    def __init__(
        self,
        array: np.ndarray,
        band_names: Sequence[str],
        dates: Sequence[dt.date],
        valid: np.ndarray | None = None,
    ) -> None:
        self.array = array
        self.band_names = [str(b) for b in band_names]
        self.dates = list(dates)
        self.valid = valid
        self.xp = array_module(array)
        self.ndimage = ndimage(self.xp)
        self._lower = {b.lower(): i for i, b in enumerate(self.band_names)}

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W), the chunk's size in pixels."""
        return self.array.shape[0], self.array.shape[1]

    def get(self, band_name: str) -> np.ndarray:
        """One channel over all dates.

        Args:
            band_name: a name of :attr:`band_names` (case-insensitive).

        Returns:
            (H, W, T) float32 view of :attr:`array`.

        Raises:
            ConfigError: no channel has that name (the message lists the channels).
        """
        i = self._lower.get(str(band_name).lower())
        if i is None:
            raise ConfigError(
                f"external features: no band {band_name!r} in the chunk; available bands: "
                f"{self.band_names}"
            )
        return self.array[..., i]

    def __getattr__(self, name: str) -> Callable[[], np.ndarray]:
        match = _IOTA2_GETTER.match(name)
        if match is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        rest = match.group("rest")  # "Sentinel2_NDVI", "NDVI", "Sentinel2_B8A"
        candidates = [rest] + [rest.split("_", k)[-1] for k in range(1, rest.count("_") + 1)]
        band = next((c for c in candidates if c.lower() in self._lower), candidates[-1])
        return lambda: self.get(band)


def load_functions(
    module: str | Path | None,
    functions: Sequence[str | Mapping[str, Any] | Sequence[Any]] | str,
) -> list[tuple[FeatureFunction, dict[str, Any]]]:
    """Import the user's feature functions (or i2dl's built-ins of the same names).

    Args:
        module: a Python file (``my_features.py``, relative to the working directory)
            or an importable module name (``scripts.examples.external_features``); None
            uses only the built-ins (:mod:`i2dl.features.builtin`), as iota2 uses its own
            module when none is given. A function missing from the module is looked up
            among the built-ins; the module's own function of a built-in's name wins.
        functions: the functions to call, in order. Each entry is a name, a one-key
            mapping ``{name: {kwarg: value}}``, or a pair ``[name, {kwargs}]``; a single
            string of names separated by spaces (iota2's ``functions: "get_soi
            get_ndvi"``) works too.

    Returns:
        ``(function, kwargs)`` pairs, in the order given.

    Raises:
        InputFileNotFoundError: ``module`` looks like a file path and does not exist.
        ConfigError: the module cannot be imported, a function is missing or not
            callable, an entry is malformed, or no function is given.
    """
    from i2dl.features.builtin import BUILTINS

    mod = _import_module(module) if module else None
    entries: Sequence[Any] = functions.split() if isinstance(functions, str) else functions
    if not entries:
        raise ConfigError(
            f"external_features.functions is empty; name at least one function of "
            f"{module or 'the built-ins ' + str(sorted(BUILTINS))}"
        )
    out: list[tuple[FeatureFunction, dict[str, Any]]] = []
    for entry in entries:
        name, kwargs = _parse_entry(entry)
        fn = getattr(mod, name, None) if mod is not None else None
        if fn is None:
            fn = BUILTINS.get(name)
        if fn is None:
            available = sorted(
                k for k, v in vars(mod).items() if callable(v) and not k.startswith("_")
            ) if mod is not None else []
            where = f"module {module} (functions there: {available}) nor in " if mod else ""
            raise ConfigError(
                f"external feature function {name!r} not found in {where}i2dl's built-ins "
                f"{sorted(BUILTINS)}"
            )
        if not callable(fn):
            raise ConfigError(f"{name!r} in module {module} is not a function")
        out.append((fn, kwargs))
    return out


def _import_module(module: str | Path) -> Any:
    text = str(module)
    path = Path(text)
    if isinstance(module, Path) or text.endswith(".py") or "/" in text or "\\" in text:
        if not path.is_file():
            raise InputFileNotFoundError(
                f"external features module {path} does not exist; set "
                "external_features.module to a Python file or an importable module name"
            )
        name = f"i2dl_external_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {path} as a Python module")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:
            sys.modules.pop(name, None)
            exc.add_note(f"while importing the external features module {path}")
            raise
        return mod
    try:
        return importlib.import_module(text)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"cannot import external features module {text!r}: {exc}. Give a path to a .py "
            "file or a module importable from the working directory"
        ) from None


def _parse_entry(entry: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, Mapping):
        if len(entry) != 1:
            raise ConfigError(
                f"external feature entry {dict(entry)!r} must have one key, the function "
                "name, mapped to its keyword arguments: {name: {arg: value}}"
            )
        ((name, kwargs),) = entry.items()
        kwargs = {} if kwargs is None else kwargs
    elif isinstance(entry, Sequence) and len(entry) == 2 and isinstance(entry[0], str):
        name, kwargs = entry
    else:
        raise ConfigError(
            f"external feature entry {entry!r} is neither a function name, {{name: kwargs}} "
            "nor [name, kwargs]"
        )
    if not isinstance(kwargs, Mapping):
        raise ConfigError(
            f"keyword arguments of external feature {name!r} must be a mapping, got {kwargs!r}"
        )
    return str(name), dict(kwargs)


def apply_external(
    x: np.ndarray,
    band_names: Sequence[str],
    dates: Sequence[dt.date],
    functions: Sequence[tuple[FeatureFunction, Mapping[str, Any]]],
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Call the user's functions on one chunk and stack their features.

    Args:
        x: (H, W, T, C) float32, the chunk: a NumPy array, or a CuPy array to run the
            functions on the GPU (the features are then CuPy too).
        band_names: the C channel names.
        dates: the T dates.
        functions: ``(function, kwargs)`` pairs from :func:`load_functions`; each is
            called as ``function(data, **kwargs)`` with ``data`` a :class:`ChunkData`.
        valid: optional (H, W, T) bool validity, exposed as ``data.valid``.

    Returns:
        ``features`` (H, W, F_total) float32, the functions' outputs concatenated in
        order, and the F_total names.

    Raises:
        InputDataError: ``x`` is not (H, W, T, C) with C = len(band_names) and
            T = len(dates), or a function's output is not ``(array (H, W, F) or (H, W),
            F names)`` (the message names the function).
    """
    xp = array_module(x)
    x = xp.asarray(x)
    if x.ndim != 4 or x.shape[3] != len(band_names) or x.shape[2] != len(dates):
        raise InputDataError(
            f"apply_external expects x (H, W, T, C) with T = {len(dates)} dates and "
            f"C = {len(band_names)} bands; got {x.shape}"
        )
    h, w = x.shape[:2]
    data = ChunkData(x, band_names, dates, valid)
    arrays: list[np.ndarray] = []
    names: list[str] = []
    for fn, kwargs in functions:
        label = getattr(fn, "__qualname__", repr(fn))
        result = fn(data, **dict(kwargs))
        if not (isinstance(result, tuple | list) and len(result) == 2):
            raise InputDataError(
                f"external feature function {label} must return (array, names), got "
                f"{type(result).__name__}"
            )
        arr, fnames = xp.asarray(result[0]), result[1]
        fnames = [fnames] if isinstance(fnames, str) else [str(n) for n in fnames]
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[:2] != (h, w) or arr.shape[2] != len(fnames):
            raise InputDataError(
                f"external feature function {label} returned an array of shape "
                f"{arr.shape} with {len(fnames)} names {fnames}; expected ({h}, {w}, F) "
                "with F names (the chunk's height and width first)"
            )
        arrays.append(arr.astype(np.float32, copy=False))
        names.extend(fnames)
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        log.warning("external features: several features are named %s", duplicated)
    if not arrays:
        return xp.zeros((h, w, 0), dtype=np.float32), []
    return xp.concatenate(arrays, axis=-1), names


def padded_window(
    window: Window, padding: int, width: int, height: int
) -> tuple[Window, tuple[slice, slice]]:
    """Enlarge a window by ``padding`` pixels on each side, clipped to the grid.

    Args:
        window: the chunk's pixel window.
        padding: margin in pixels (>= 0), e.g. the radius of a spatial filter.
        width: grid width in pixels.
        height: grid height in pixels.

    Returns:
        The enlarged window and ``(rows, cols)`` slices that crop an array read with it
        back to ``window``.

    Raises:
        ConfigError: ``padding`` < 0.
    """
    if int(padding) != padding or padding < 0:
        raise ConfigError(f"padding must be a whole number of pixels >= 0, got {padding!r}")
    col, row = int(window.col_off), int(window.row_off)
    w, h = int(window.width), int(window.height)
    c0, r0 = max(col - padding, 0), max(row - padding, 0)
    c1, r1 = min(col + w + padding, width), min(row + h + padding, height)
    inner = (slice(row - r0, row - r0 + h), slice(col - c0, col - c0 + w))
    return Window(c0, r0, c1 - c0, r1 - r0), inner


def read_padded(
    source: Any, window: Window, padding: int
) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """Read a window with a margin, so that neighbourhood features have no seams.

    Args:
        source: anything with ``read(window) -> (x, valid)``, ``width`` and ``height``
            (e.g. :class:`i2dl.io.raster.TimeSeriesRaster`).
        window: the chunk's pixel window.
        padding: margin in pixels on each side (clipped at the grid's edges).

    Returns:
        ``x`` and ``valid`` as ``source.read`` returns them for the enlarged window
        ((H', W', T, C) and (H', W', T)), and ``inner``, the ``(rows, cols)`` slices of
        the window inside them: ``features[inner]`` crops a result back to ``window``.

    Raises:
        ConfigError: ``padding`` < 0.
    """
    big, inner = padded_window(window, padding, int(source.width), int(source.height))
    x, valid = source.read(big)
    return x, valid, inner
