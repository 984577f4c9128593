"""The Zarr v3 sample store: extracted pixel time series and their metadata.

Layout (DESIGN.md), first axis = samples N, chunked along N:

- ``X`` (N, T, C) float32: the series, unscaled (normalisation happens when reading);
- ``mask`` (N, T) bool: True = valid observation;
- ``y`` (N,) int64 class code; ``polygon_id`` (N,) int64 feature id in the reference file;
- ``region`` (N,) int32; ``tile`` (N,) int32; ``split`` (N,) int8 (0 learn, 1 val);
- ``row``, ``col`` (N,) int32: pixel position in the tile raster.

Attributes: see :class:`StoreInfo`. A store is written under a temporary name and renamed
when complete, so a store that exists is complete.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from i2dl.errors import StoreError

log = logging.getLogger(__name__)

STORE_FORMAT = "i2dl-sample-store"
STORE_VERSION = 1

#: Arrays of a store and their dtypes; ``X`` and ``mask`` have extra axes.
ARRAY_DTYPES: dict[str, str] = {
    "X": "float32",
    "mask": "bool",
    "y": "int64",
    "polygon_id": "int64",
    "region": "int32",
    "tile": "int32",
    "split": "int8",
    "row": "int32",
    "col": "int32",
}


@dataclass(frozen=True)
class StoreInfo:
    """The attributes of a sample store, typed.

    Attributes:
        path: the store folder.
        n_samples: N.
        dates: T acquisition dates (empty for a pixel table given with a date count).
        days: (T,) int64, days since ``reference_date`` (the first date).
        band_names: C channel names.
        class_codes: K class codes, sorted; the model's class index i is ``class_codes[i]``.
        class_names: K names (nomenclature, else the labels).
        mean, std: (C,) float32, per-channel statistics over the valid observations of the
            learn split.
        crs: WKT of the raster CRS (may be empty); transform: 6 affine coefficients.
        width, height: raster size in pixels.
        attrs: every attribute, raw.
    """

    path: Path
    n_samples: int
    dates: list[dt.date]
    days: np.ndarray
    band_names: list[str]
    class_codes: list[int]
    class_names: list[str]
    mean: np.ndarray
    std: np.ndarray
    crs: str
    transform: tuple[float, ...]
    width: int
    height: int
    attrs: dict[str, Any]

    @property
    def n_dates(self) -> int:
        """T (a pixel table given by a date count has day offsets but no dates)."""
        return len(self.days)

    @property
    def n_channels(self) -> int:
        """C."""
        return len(self.band_names)

    @property
    def n_classes(self) -> int:
        """K."""
        return len(self.class_codes)

    def normalise(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Normalise series exactly as for training.

        Args:
            x: (..., T, C) float32 unscaled values.
            valid: (..., T) bool, True = valid observation.

        Returns:
            (..., T, C) float32 ``(x - mean) / std`` per channel, 0 at invalid observations.
        """
        out = (x - self.mean) / self.std
        out[~valid] = 0.0
        return out.astype(np.float32, copy=False)


def write_store(
    path: str | Path,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    chunk_size: int = 4096,
) -> Path:
    """Write a sample store atomically (temporary folder, then rename).

    Args:
        path: destination folder (``*.zarr``); an existing store there is replaced.
        arrays: every array of :data:`ARRAY_DTYPES`, same first dimension N.
        attrs: JSON-serialisable attributes.
        chunk_size: samples per chunk along N.

    Returns:
        The store path.

    Raises:
        StoreError: an array is missing or has another length than ``X``.
    """
    path = Path(path)
    missing = set(ARRAY_DTYPES) - set(arrays)
    if missing:
        raise StoreError(f"cannot write store {path}: arrays {sorted(missing)} missing")
    n = len(arrays["X"])
    for name, arr in arrays.items():
        if len(arr) != n:
            raise StoreError(f"store array {name} has {len(arr)} rows, X has {n}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for name, dtype in ARRAY_DTYPES.items():
            data = np.ascontiguousarray(arrays[name], dtype=dtype)
            chunks = (max(1, min(chunk_size, n)),) + data.shape[1:]
            arr = group.create_array(name, shape=data.shape, dtype=dtype, chunks=chunks)
            if n:
                arr[...] = data
        group.attrs.update(
            {"format": STORE_FORMAT, "version": STORE_VERSION, "n_samples": n, **attrs}
        )
        _replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote sample store %s (%d samples)", path, n)
    return path


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing ``dst`` with no moment where it is partial."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def open_store(path: str | Path) -> zarr.Group:
    """Open a sample store read-only.

    Raises:
        StoreError: no store at ``path``, or a folder that is not an i2dl store.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(
            f"no sample store at {path}; run `python -m i2dl prepare` with the same config "
            "first (or `python -m i2dl train`, which runs it)"
        )
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several errors for a non-store folder
        raise StoreError(f"{path} is not a Zarr sample store: {exc}") from None
    if group.attrs.get("format") != STORE_FORMAT:
        raise StoreError(f"{path} is a Zarr group but not an i2dl sample store")
    return group


def read_info(path: str | Path) -> StoreInfo:
    """Read a store's attributes as a :class:`StoreInfo`.

    Raises:
        StoreError: see :func:`open_store`.
    """
    group = open_store(path)
    attrs = dict(group.attrs)
    dates = [dt.date.fromisoformat(d) for d in attrs["dates"]]
    return StoreInfo(
        path=Path(path),
        n_samples=int(attrs["n_samples"]),
        dates=dates,
        days=np.asarray(attrs["days"], dtype=np.int64),
        band_names=list(attrs["band_names"]),
        class_codes=[int(c["code"]) for c in attrs["classes"]],
        class_names=[str(c["name"]) for c in attrs["classes"]],
        mean=np.asarray(attrs["norm"]["mean"], dtype=np.float32),
        std=np.asarray(attrs["norm"]["std"], dtype=np.float32),
        crs=attrs.get("crs") or "",
        transform=tuple(attrs["transform"]),
        width=int(attrs["width"]),
        height=int(attrs["height"]),
        attrs=attrs,
    )
