"""The Zarr v3 sample store: extracted pixel time series and their metadata.

Layout (DESIGN.md), first axis = samples N, chunked along N:

- ``X`` (N, T, C) float32: the series, unscaled (normalisation happens when reading);
- ``mask`` (N, T) bool: True = valid observation;
- ``code`` (N,) int64 class code (nomenclature code; batches turn it into the class index
  ``y`` in [0, K)); ``polygon_id`` (N,) int64 feature id in the reference file;
- ``region`` (N,) int32; ``tile`` (N,) int32; ``split`` (N,) int8 (:data:`LEARN` = 0,
  :data:`VAL` = 1);
- ``row``, ``col`` (N,) int32: pixel position in the tile raster.

Attributes: see :class:`StoreInfo`. A store is written under a temporary name and renamed
when complete (:func:`i2dl.io.files.atomic_path`), so a store that exists was complete.
The last file written is ``manifest.json``: the SHA-256 of every other file of the store,
chunks and ``zarr.json`` metadata (attributes: normalisation statistics, class codes and
names, dates) alike. :func:`verify_store` checks that the store is still what was written
(every array and chunk present, shapes, per-split counts, and every file against the
manifest) before it is reused; :func:`store_digest` (the manifest's hash) identifies its
content, and is recorded by ``fit`` so that a model is only used with its own store.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import mmap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from i2dl.errors import StoreError
from i2dl.io.files import atomic_path
from i2dl.io.layout import file_sha256

log = logging.getLogger(__name__)

STORE_FORMAT = "i2dl-sample-store"
#: Layout version: 2 names the class code array ``code`` (version 1 called it ``y``); 3
#: writes every chunk (all-fill ones included) with Zstd content checksums, so that
#: :func:`verify_store` can tell a deleted or garbled chunk from data; 4 ends every store
#: with ``manifest.json`` (:data:`MANIFEST`), the hashes of its chunks and metadata; 5 adds
#: the ``fusion`` split value (:data:`FUSION`).
STORE_VERSION = 5
#: File of a store listing the SHA-256 of every other file; written last.
MANIFEST = "manifest.json"
#: ``format`` field of :data:`MANIFEST`.
MANIFEST_FORMAT = "i2dl-store-manifest"

#: Values of the ``split`` array. ``LEARN``: fits the weights; ``SELECTION``: carved from
#: the learn polygons of each class, chooses the checkpoint, drives early stopping and LR
#: schedules; ``VAL``: iota2's validation polygons (``1 - sampling.ratio``), scored by the
#: report and never seen by training or model selection; ``FUSION``: polygons held apart
#: from every run of a fused multi-run to score the fused map (``fusion_validation_ratio``).
LEARN = 0
VAL = 1
SELECTION = 2
FUSION = 3
#: Name of each split value, as in ``class_statistics.csv``, logs and docs.
SPLIT_NAMES = {LEARN: "learn", SELECTION: "selection", VAL: "val", FUSION: "fusion"}

#: Arrays of a store and their dtypes; ``X`` and ``mask`` have extra axes.
ARRAY_DTYPES: dict[str, str] = {
    "X": "float32",
    "mask": "bool",
    "code": "int64",
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
        offset, scale: (C,) float32, what :meth:`normalise` uses: mean and std, or the 2 %
            quantile and the 2-98 % range (``store.normalization``, attribute
            ``norm.method``).
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
    offset: np.ndarray
    scale: np.ndarray
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
    def static_channels(self) -> tuple[int, ...]:
        """Indices (in ``band_names``) of the date-independent channels.

        From the attribute ``static_channels`` (user and external features, the same
        value at every date); empty for stores written before it existed.
        """
        names = list(self.attrs.get("static_channels") or [])
        return tuple(self.band_names.index(n) for n in names if n in self.band_names)

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
            (..., T, C) float32 ``(x - offset) / scale`` per channel (``(x - mean) / std``
            by default), 0 at invalid observations.
        """
        out = (x - self.offset) / self.scale
        out[~valid] = 0.0
        return out.astype(np.float32, copy=False)


#: bytes of one array written at a time by :func:`write_store`
WRITE_BYTES = 64 * 2**20


def write_store(
    path: str | Path,
    arrays: Mapping[str, Any],
    attrs: Mapping[str, Any],
    samples_per_chunk: int = 4096,
) -> Path:
    """Write a sample store atomically (temporary folder, then rename).

    Args:
        path: destination folder (``*.zarr``); an existing store there is replaced.
        arrays: every array of :data:`ARRAY_DTYPES`, same first dimension N: numpy
            arrays, or array-likes with ``shape``, ``len`` and slicing along N (e.g.
            :class:`RowsView` of a spool on disk), written by slices.
        attrs: JSON-serialisable attributes.
        samples_per_chunk: samples per Zarr chunk along N (config
            ``store.samples_per_chunk``), >= 1.

    Returns:
        The store path.

    Raises:
        StoreError: an array is missing or has another length than ``X``, or
            ``samples_per_chunk`` < 1.
    """
    path = Path(path)
    missing = set(ARRAY_DTYPES) - set(arrays)
    if missing:
        raise StoreError(f"cannot write store {path}: arrays {sorted(missing)} missing")
    n = len(arrays["X"])
    for name, arr in arrays.items():
        if len(arr) != n:
            raise StoreError(f"store array {name} has {len(arr)} rows, X has {n}")
    if samples_per_chunk < 1:
        raise StoreError(
            f"store.samples_per_chunk must be >= 1 sample, got {samples_per_chunk}"
        )
    with atomic_path(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for name, dtype in ARRAY_DTYPES.items():
            data = arrays[name]
            shape = (n, *data.shape[1:])
            chunk = max(1, min(samples_per_chunk, n))
            zarray = group.create_array(
                name, shape=shape, dtype=dtype, chunks=(chunk, *shape[1:]),
                compressors=ZstdCodec(level=0, checksum=True),
                config={"write_empty_chunks": True},  # a missing chunk is then damage
            )
            # whole chunks of about WRITE_BYTES at a time: an array on disk (memmap, rows
            # of a spool) is never loaded whole
            row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize)
            step = chunk * max(1, WRITE_BYTES // (chunk * row_bytes))
            for s0 in range(0, n, step):
                zarray[s0 : s0 + step] = np.ascontiguousarray(data[s0 : s0 + step], dtype=dtype)
        group.attrs.update(
            {"format": STORE_FORMAT, "version": STORE_VERSION, "n_samples": n, **attrs}
        )
        write_manifest(tmp)  # last: it covers every chunk and the attributes above
    log.info("wrote sample store %s (%d samples)", path, n)
    return path


def _store_files(root: Path) -> dict[str, Path]:
    """Every file of a store folder but the manifest (hidden files left out), by relative path."""
    return {
        p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }


def write_manifest(root: str | Path) -> Path:
    """Write ``<root>/manifest.json``: the SHA-256 of every file of the store.

    Called last by :func:`write_store`, on the complete temporary folder.

    Returns:
        The manifest path.
    """
    root = Path(root)
    files = {rel: file_sha256(p) for rel, p in _store_files(root).items()}
    manifest = {"format": MANIFEST_FORMAT, "algorithm": "sha256", "files": files}
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path


def read_manifest(path: str | Path) -> dict[str, str]:
    """The ``{relative path: sha256}`` of a store's manifest.

    Raises:
        StoreError: no manifest, or not a readable one.
    """
    file = Path(path) / MANIFEST
    try:
        manifest = json.loads(file.read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}")
    except FileNotFoundError:
        raise StoreError(
            f"sample store {path} has no {MANIFEST} (the hashes of its content, written "
            "last): it was written by an older i2dl or its writing did not finish"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(f"sample store {path} is damaged: {MANIFEST} is unreadable ({exc})") \
            from None
    return {str(k): str(v) for k, v in files.items()}


def store_digest(path: str | Path) -> str:
    """Identity of a store's content: the SHA-256 of its manifest (16 hexadecimal characters).

    Two stores have the same digest only if every chunk and every attribute is the same;
    ``fit`` records it in ``fit_state.json`` and ``model.yaml``.

    Raises:
        StoreError: the store has no readable manifest (:func:`read_manifest`).
    """
    read_manifest(path)
    return hashlib.sha256((Path(path) / MANIFEST).read_bytes()).hexdigest()[:16]


def check_manifest(path: str | Path, data: bool = True) -> None:
    """Check a store's files against its manifest (:func:`write_manifest`).

    Args:
        path: the store folder.
        data: True = every file (chunks included: the whole store is read); False = the
            ``zarr.json`` metadata only (attributes, shapes, codecs), which is quick.

    Raises:
        StoreError: no manifest, a listed file missing, a file that is not listed, or a
            file whose content changed (an edited attribute such as a normalisation
            statistic or a class name, a rewritten or garbled chunk); the message names
            the store, the file and both hashes.
    """
    path = Path(path)
    expected = read_manifest(path)
    found = _store_files(path)
    for rel, want in expected.items():
        if not data and not rel.endswith("zarr.json"):
            continue
        if rel not in found:
            raise StoreError(f"sample store {path} is damaged: {rel} is missing")
        got = file_sha256(found[rel])
        if got != want:
            what = ("its attributes or metadata were edited" if rel.endswith("zarr.json")
                    else "the chunk was rewritten or damaged")
            raise StoreError(
                f"sample store {path} is not the store that was written: {rel} has sha256 "
                f"{got[:16]}..., its {MANIFEST} records {want[:16]}... ({what})"
            )
    extra = sorted(set(found) - set(expected))
    if data and extra:
        raise StoreError(
            f"sample store {path} is damaged: {extra[:5]} were not written with it"
        )


def open_store(path: str | Path) -> zarr.Group:
    """Open a sample store read-only.

    A store of an older layout version opens too (its attributes, hence
    :func:`read_info`, are unchanged, so a model trained on it can still map); reading
    an array that version lacks raises (see :func:`store_array`).

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
        raise StoreError(
            f"sample store {path} cannot be opened: damaged, or not a Zarr store ({exc})"
        ) from None
    if group.attrs.get("format") != STORE_FORMAT:
        raise StoreError(f"{path} is a Zarr group but not an i2dl sample store")
    return group


def store_array(group: zarr.Group, name: str) -> zarr.Array:
    """One array of an opened store (see :data:`ARRAY_DTYPES`), typed.

    Args:
        group: a store opened with :func:`open_store`.
        name: the array name (``"X"``, ``"mask"``, ``"code"``, ``"split"``...).

    Returns:
        The Zarr array (not read).

    Raises:
        StoreError: the store has no array ``name`` (e.g. ``code`` in a store of layout
            version 1, which called it ``y``).
    """
    try:
        arr = group[name]
    except KeyError:
        version = group.attrs.get("version")
        why = (
            f"it has layout version {version}, this i2dl reads version {STORE_VERSION}"
            if version != STORE_VERSION else f"its arrays are {sorted(ARRAY_DTYPES)}"
        )
        raise StoreError(
            f"sample store {group.store} has no array {name!r}: {why}. Write a new store "
            "with `python -m i2dl prepare` (then train again with `python -m i2dl fit`)"
        ) from None
    if not isinstance(arr, zarr.Array):
        raise StoreError(f"{name!r} in sample store {group.store} is a group, not an array")
    return arr


def read_array(group: zarr.Group, name: str, rows: slice = slice(None)) -> np.ndarray:
    """Read rows of one store array into memory.

    Args:
        group: a store opened with :func:`open_store`.
        name: the array name (see :data:`ARRAY_DTYPES` for dtypes and shapes).
        rows: the samples to read along N (default: all).

    Returns:
        ``(n, ...)`` array of the array's dtype (``X``: (n, T, C) float32; ``mask``:
        (n, T) bool; ``code``: (n,) int64 class codes; ``split``: (n,) int8...).

    Raises:
        StoreError: see :func:`store_array`.
    """
    return np.asarray(store_array(group, name)[rows])


def read_info(path: str | Path) -> StoreInfo:
    """Read a store's attributes as a :class:`StoreInfo`.

    Raises:
        StoreError: see :func:`open_store`.
    """
    group = open_store(path)
    attrs: dict[str, Any] = dict(group.attrs)
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
        # stores written before store.normalization have mean/std only
        offset=np.asarray(attrs["norm"].get("offset", attrs["norm"]["mean"]), dtype=np.float32),
        scale=np.asarray(attrs["norm"].get("scale", attrs["norm"]["std"]), dtype=np.float32),
        crs=attrs.get("crs") or "",
        transform=tuple(attrs["transform"]),
        width=int(attrs["width"]),
        height=int(attrs["height"]),
        attrs=attrs,
    )


def verify_store(path: str | Path) -> StoreInfo:
    """Check that a store is intact, not just present: the check made before reusing one.

    Checked: the store opens and has the current layout version and its attributes; every
    array of :data:`ARRAY_DTYPES` exists with its dtype and N rows (``X`` (N, T, C),
    ``mask`` (N, T) with T, C of the attributes); every chunk exists (a deleted chunk would
    read as zeros); every file, chunks and ``zarr.json`` metadata with the attributes
    (normalisation statistics, class codes and names), has the SHA-256 recorded in the
    store's manifest when it was written (:func:`check_manifest`; the whole store is read);
    the pixels per split and per class equal the ``counts`` recorded when the store was
    written (a deleted ``split`` chunk would turn val pixels into learn ones).

    Args:
        path: the store folder.

    Returns:
        The store's attributes (:func:`read_info`).

    Raises:
        StoreError: the store is absent, of another layout version or damaged; the
            message names the store and what is wrong.
    """
    path = Path(path)
    group = open_store(path)
    version = group.attrs.get("version")
    if version != STORE_VERSION:
        raise StoreError(
            f"sample store {path} has layout version {version}, this i2dl writes "
            f"version {STORE_VERSION}"
        )
    try:
        info = read_info(path)
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"sample store {path} has damaged attributes ({exc!r})") from None
    n, t, c = info.n_samples, info.n_dates, info.n_channels
    shapes = {"X": (n, t, c), "mask": (n, t)}
    values: dict[str, np.ndarray] = {}
    for name, dtype in ARRAY_DTYPES.items():
        try:
            if name not in group:
                raise StoreError(f"sample store {path} is damaged: array {name!r} is missing")
            arr = store_array(group, name)
        except StoreError:
            raise
        except Exception as exc:  # a truncated zarr.json: JSON or metadata errors
            raise StoreError(
                f"sample store {path} is damaged: array {name!r} cannot be opened ({exc})"
            ) from None
        want = shapes.get(name, (n,))
        if arr.shape != want or arr.dtype != np.dtype(dtype):
            raise StoreError(
                f"sample store {path} is damaged: array {name!r} is {arr.shape} "
                f"{arr.dtype}, its attributes say {want} {dtype}"
            )
        if arr.nchunks_initialized != arr.nchunks:
            raise StoreError(
                f"sample store {path} is damaged: array {name!r} has "
                f"{arr.nchunks_initialized} of its {arr.nchunks} chunks"
            )
    # every byte as written: chunks (hence data and checksums) and attributes
    check_manifest(path, data=True)
    for name in ("code", "split"):
        arr = store_array(group, name)
        try:
            values[name] = np.asarray(arr[:])
        except Exception as exc:  # codec errors (checksum mismatch, truncated frame)
            raise StoreError(
                f"sample store {path} is damaged: array {name!r} cannot be decoded "
                f"({type(exc).__name__}: {exc})"
            ) from None
    counts = info.attrs.get("counts")
    if counts and n:
        split, code = values["split"], values["code"]
        found = {f"n_{nm}": int((split == v).sum()) for v, nm in SPLIT_NAMES.items()}
        for key, got in found.items():
            if counts.get(key) != got:
                raise StoreError(
                    f"sample store {path} is damaged: its split array has {got} {key[2:]} "
                    f"pixels, {counts.get(key)} were written"
                )
        for cls, entry in (counts.get("per_class") or {}).items():
            for v, nm in SPLIT_NAMES.items():
                got = int(((code == int(cls)) & (split == v)).sum())
                if entry.get(f"{nm}_pixels") != got:
                    raise StoreError(
                        f"sample store {path} is damaged: class {cls} has {got} {nm} pixels, "
                        f"{entry.get(f'{nm}_pixels')} were written"
                    )
    return info


class RowsView:
    """Rows ``rows`` of an (N, ...) array, gathered slice by slice (never all at once).

    Lets :func:`write_store` and the learn statistics read the selected samples of a
    spool on disk (:class:`numpy.memmap`) in bounded memory. The rows of a whole-file
    memmap are read from its file (runs of consecutive rows at a time), not through the
    map: pages read through a map stay in the process's resident set until the map is
    closed, so a 10^6-sample, 70-date spool (2.8 GB) read once would add 2.8 GB to the
    peak RSS of ``prepare`` (issue 23); read from the file they stay in the page cache
    only.

    Args:
        base: the (N, ...) array (a memmap).
        rows: (M,) int row indices into ``base``, increasing.
    """

    def __init__(self, base: Any, rows: np.ndarray) -> None:
        self.base = base
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), *base.shape[1:])
        self.dtype = base.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: slice) -> np.ndarray:
        """Rows ``key`` (a slice) as an in-memory array."""
        if not isinstance(key, slice):
            raise TypeError("RowsView is read by slices")
        rows = self.rows[key]
        base = self.base
        # a memmap of its own file (not a view of one: .base is then the mmap itself)
        if isinstance(base, np.memmap) and isinstance(base.base, mmap.mmap) and base.filename:
            return _read_file_rows(Path(base.filename), int(base.offset), base.shape,
                                   base.dtype, rows)
        return np.asarray(base[rows])


def _read_file_rows(path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype,
                    rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (increasing) of a C-ordered (N, ...) array at ``offset`` of ``path``.

    One ``readinto`` per run of consecutive rows.

    Raises:
        StoreError: the file ends before the last row.
    """
    out = np.empty((len(rows), *shape[1:]), dtype=dtype)
    if not len(rows):
        return out
    row_bytes = out[:1].nbytes
    flat = out.reshape(len(rows), -1).view(np.uint8)
    starts = np.flatnonzero(np.diff(rows, prepend=rows[0] - 2) != 1)  # run starts in rows
    ends = np.append(starts[1:], len(rows))
    with open(path, "rb", buffering=0) as fh:
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            fh.seek(offset + int(rows[a]) * row_bytes)
            view = flat[a:b].data.cast("B")
            got = 0
            while got < len(view):
                n = fh.readinto(view[got:])
                if not n:
                    raise StoreError(f"{path} ended before row {int(rows[b - 1])}: the spool "
                                     "was truncated while prepare read it")
                got += n
    return out
