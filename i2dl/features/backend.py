"""NumPy or CuPy: feature code written once against the NumPy API, run on CPU or GPU.

i2dl's feature functions (spectral indices :mod:`i2dl.features.indices`, the user's
external features :mod:`i2dl.features.external`) take the array module from their input
(:func:`array_module`): given a NumPy array they compute with NumPy, given a CuPy array
(``data.features_device=cuda`` with the ``gpu`` extra, ``pip install -e ".[gpu]"``) the same
code runs on the GPU. Spatial filters go through :func:`ndimage` (``scipy.ndimage`` or
``cupyx.scipy.ndimage``, same functions). Arrays cross to torch without a copy
(:func:`to_torch`: ``torch.from_numpy`` or DLPack). CuPy is imported only when asked
for: nothing here needs it on a CPU-only machine.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np
import scipy.ndimage
import torch

from i2dl.errors import ConfigError


def _cupy() -> ModuleType | None:
    """The cupy module, or None when it is not installed or has no usable CUDA device."""
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # noqa: BLE001 (no driver, no device: any CUDA runtime error)
        return None
    return cupy


def is_cupy(x: Any) -> bool:
    """Whether ``x`` is a CuPy array (without importing cupy)."""
    return type(x).__module__.split(".")[0] == "cupy"


def array_module(x: Any) -> ModuleType:
    """``cupy`` for a CuPy array, else ``numpy``: the module to compute ``x`` with."""
    if is_cupy(x):
        return importlib.import_module("cupy")
    return np


def ndimage(xp: ModuleType) -> ModuleType:
    """``scipy.ndimage`` for NumPy, ``cupyx.scipy.ndimage`` for CuPy (same API)."""
    if xp is np:
        return scipy.ndimage
    return importlib.import_module("cupyx.scipy.ndimage")


def device_module(device: str) -> ModuleType:
    """The array module of ``data.features_device``.

    Args:
        device: ``cpu`` (NumPy), ``cuda`` (CuPy, required) or ``auto`` (CuPy when it is
            installed and a CUDA device answers, else NumPy).

    Raises:
        ConfigError: ``cuda`` without CuPy or without a CUDA device, or another name.
    """
    name = str(device).lower()
    if name == "cpu":
        return np
    if name not in ("cuda", "auto"):
        raise ConfigError(f"data.features_device={device!r}: use cpu, cuda or auto")
    cupy = _cupy()
    if cupy is None and name == "cuda":
        raise ConfigError(
            "data.features_device=cuda needs CuPy and a CUDA device: pip install -e \".[gpu]\" "
            "on a machine with a GPU, or use data.features_device=cpu"
        )
    return cupy if cupy is not None else np


def to_module(x: Any, xp: ModuleType) -> Any:
    """``x`` as an array of module ``xp`` (a host-device copy only when they differ)."""
    if xp is np:
        return to_numpy(x)
    return xp.asarray(x)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array of ``x`` (copied from the GPU for a CuPy array)."""
    if is_cupy(x):
        return x.get()
    return np.asarray(x)


def to_torch(x: Any) -> torch.Tensor:
    """A tensor sharing ``x``'s memory: ``torch.from_numpy``, or DLPack for CuPy.

    Raises:
        TypeError: ``x`` is neither a NumPy nor a CuPy array.
    """
    if is_cupy(x):
        return torch.from_dlpack(x)
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise TypeError(f"to_torch takes a NumPy or CuPy array, got {type(x).__name__}")
