"""Streaming the Zarr sample store into Lightning: datasets and the datamodule.

The store is read in **chunk-aligned blocks** (a few Zarr chunks at a time along N), never
whole: chunk order is shuffled each epoch, rows are shuffled inside a block, and batches
are cut from the block with the remainder carried over, so memory stays bounded by
``block_chunks * store.samples_per_chunk`` samples whatever the store size.

A split small enough (``cache_mb``, on by default in :class:`PixelSeriesDataModule`) is
kept in memory after the first epoch, chunk by chunk, already normalised: later epochs
neither open the store nor decode nor normalise again, and yield exactly the batches the
streaming reader would (same chunk order, same row permutation, same batches for the same
seed), since only the source of each chunk changes.

The store's ``code`` array (class codes) becomes two batch keys: ``code``, the class code,
and ``y``, the class index in [0, K) (position of the code in ``StoreInfo.class_codes``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from i2dl.errors import ConfigError
from i2dl.samples.store import (
    LEARN,
    SELECTION,
    StoreInfo,
    open_store,
    read_array,
    read_info,
    store_array,
)

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


class StoreBlockDataset(IterableDataset):
    """Batches of one split of a sample store, read block by block.

    Each item is a whole batch (use ``DataLoader(batch_size=None)``):
    ``x`` (B, T, C) float32 normalised by the store's learn statistics, 0 at invalid
    observations; ``days`` (B, T) int64 days since the store's reference date;
    ``mask`` (B, T) bool, True = valid; ``y`` (B,) int64 class index (position of the code
    in ``StoreInfo.class_codes``); ``code`` (B,) int64 class code; ``index`` (B,) int64
    row of the sample in the store.

    Args:
        store_path: the sample store.
        split: ``LEARN`` (0), ``VAL`` (1) or ``SELECTION`` (2), see :mod:`i2dl.samples.store`.
        batch_size: samples per batch (the last batch of an epoch may be smaller).
        shuffle: shuffle chunk order and rows (each epoch differently, from torch's RNG,
            so ``seed_everything`` makes it reproducible).
        block_chunks: Zarr chunks read at once.
        region: only the samples of this region (eco-region models); None = all.
        cache_mb: keep the split in memory after its first epoch when its series take at
            most this many MiB (``n_samples * T * C * 4`` bytes); 0 = always stream
            (one-pass readers: evaluation, scikit-learn fits). Each DataLoader worker
            holds its own copy.

    Under DDP (``world_size > 1``) each rank reads the same chunk order and keeps every
    ``world_size``-th row of it (a disjoint share); the learn split is truncated to the
    same number of rows on every rank (at most ``world_size - 1`` rows left out per epoch
    and worker), so that every rank runs the same number of steps.

    Raises:
        ConfigError: batch_size or block_chunks < 1, cache_mb < 0.
    """

    def __init__(
        self,
        store_path: str | Path,
        split: int | tuple[int, ...],
        batch_size: int = 256,
        shuffle: bool = False,
        block_chunks: int = 8,
        region: int | None = None,
        cache_mb: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in 0..world_size-1 ({world_size})")
        if batch_size < 1 or block_chunks < 1:
            raise ConfigError(
                f"datamodule.batch_size ({batch_size}) and block_chunks ({block_chunks}) "
                "must be >= 1"
            )
        if not cache_mb >= 0:
            raise ConfigError(
                f"datamodule.cache_mb must be >= 0 (0 = no in-memory cache), got {cache_mb}"
            )
        self.store_path = Path(store_path)
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.block_chunks = block_chunks
        self.region = region
        self.info: StoreInfo = read_info(self.store_path)
        group = open_store(self.store_path)
        x = store_array(group, "X")
        self.chunk_len = int(x.chunks[0])
        self.n_total = int(x.shape[0])
        selected = self._selected(read_array(group, "split"), read_array(group, "region"))
        self.n_samples = int(selected.sum())
        n_chunks = -(-self.n_total // self.chunk_len)
        #: selected rows per store chunk
        self._chunk_rows = np.bincount(np.flatnonzero(selected) // self.chunk_len,
                                       minlength=n_chunks)
        self.rank, self.world_size = rank, world_size
        self._codes = np.asarray(self.info.class_codes, dtype=np.int64)  # sorted
        series_mb = self.n_samples * int(np.prod(x.shape[1:])) * 4 / 2**20
        # chunk id -> its selected rows, normalised (None: no selected row); None = no cache
        self._cache: dict[int, dict[str, np.ndarray] | None] | None = (
            {} if 0 < series_mb <= cache_mb else None
        )

    def __len__(self) -> int:
        """Number of batches in one epoch (one worker; this rank's share under DDP)."""
        n = self.n_samples
        if self.world_size > 1:
            n = n // self.world_size if self.shuffle else -(-n // self.world_size)
        return -(-n // self.batch_size)

    def _selected(self, split: np.ndarray, region: np.ndarray) -> np.ndarray:
        sel = np.isin(split, self.split)
        return sel if self.region is None else sel & (region == self.region)

    def _seed(self) -> int:
        worker = get_worker_info()
        if worker is not None:  # same base seed in every worker: same chunk order
            return int(worker.seed - worker.id) % 2**32
        return int(torch.randint(0, 2**31 - 1, (1,)).item())

    def transform(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Normalise a block: x (n, T, C) float32, valid (n, T) bool -> (n, T, C) float32.

        Subclasses (gap-filled, flattened inputs) override this.
        """
        return self.info.normalise(x, valid)

    @property
    def cached(self) -> bool:
        """Whether this split is kept in memory after its first epoch (``cache_mb``)."""
        return self._cache is not None

    def __iter__(self) -> Iterator[Batch]:
        n_chunks = -(-self.n_total // self.chunk_len)
        rng = np.random.default_rng(self._seed())
        order = rng.permutation(n_chunks) if self.shuffle else np.arange(n_chunks)
        worker = get_worker_info()
        if worker is not None:
            order = order[worker.id :: worker.num_workers]
        # several processes (DDP): every rank draws the same order and keeps the rows at
        # positions rank, rank + world, ... of its stream; training truncates every rank to
        # the same count so that all ranks run the same number of steps
        world, seen = self.world_size, 0
        limit = int(self._chunk_rows[order].sum()) // world if self.shuffle else None
        # the store is opened only when some chunk of this epoch is not in memory yet
        in_memory = self._cache is not None and all(int(c) in self._cache for c in order)
        group = None if in_memory else open_store(self.store_path)
        days = torch.from_numpy(self.info.days)
        carry: list[dict[str, np.ndarray]] = []
        for start in range(0, len(order), self.block_chunks):
            block = self._read_block(group, order[start : start + self.block_chunks])
            if block is None:
                continue
            if self.shuffle:
                perm = rng.permutation(len(block["y"]))
                block = {k: v[perm] for k, v in block.items()}
            if world > 1:
                pos = seen + np.arange(len(block["y"]))
                seen += len(block["y"])
                keep = pos % world == self.rank
                if limit is not None:
                    keep &= pos // world < limit
                block = {k: v[keep] for k, v in block.items()}
                if not len(block["y"]):
                    continue
            if carry:
                block = {k: np.concatenate([carry[0][k], block[k]]) for k in block}
                carry = []
            n_full = len(block["y"]) // self.batch_size * self.batch_size
            for b0 in range(0, n_full, self.batch_size):
                batch = {k: v[b0 : b0 + self.batch_size] for k, v in block.items()}
                yield self._to_batch(batch, days)
            if n_full < len(block["y"]):
                carry = [{k: v[n_full:] for k, v in block.items()}]
        # a training batch of one sample would break BatchNorm: drop it (it is a random
        # sample of a shuffled epoch, so nothing is lost systematically)
        if carry and not (self.shuffle and len(carry[0]["y"]) == 1):
            yield self._to_batch(carry[0], days)

    def _read_block(
        self, group: zarr.Group | None, chunk_ids: np.ndarray
    ) -> dict[str, np.ndarray] | None:
        """The selected rows of some chunks, in store order (always a fresh copy)."""
        parts = [p for cid in np.sort(chunk_ids) if (p := self._chunk(group, int(cid)))]
        if not parts:
            return None
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _chunk(self, group: zarr.Group | None, cid: int) -> dict[str, np.ndarray] | None:
        """The selected rows of chunk ``cid``, normalised; from memory when cached."""
        if self._cache is not None and cid in self._cache:
            return self._cache[cid]
        if group is None:  # not reached: __iter__ opens the store when a chunk is missing
            group = open_store(self.store_path)
        start = cid * self.chunk_len
        sl = slice(start, min(start + self.chunk_len, self.n_total))
        sel = self._selected(read_array(group, "split", sl), read_array(group, "region", sl))
        part = None
        if sel.any():
            valid = read_array(group, "mask", sl)[sel]
            codes = read_array(group, "code", sl)[sel]
            part = {
                "x": self.transform(read_array(group, "X", sl)[sel], valid),
                "mask": valid,
                "code": codes,
                "index": np.flatnonzero(sel) + sl.start,
                "y": np.searchsorted(self._codes, codes).astype(np.int64),
            }
        if self._cache is not None:
            self._cache[cid] = part
        return part

    @staticmethod
    def _to_batch(arrays: dict[str, np.ndarray], days: torch.Tensor) -> Batch:
        b = len(arrays["y"])
        return {
            "x": torch.from_numpy(np.ascontiguousarray(arrays["x"])),
            "days": days.unsqueeze(0).expand(b, -1).contiguous(),
            "mask": torch.from_numpy(np.ascontiguousarray(arrays["mask"])),
            "y": torch.from_numpy(arrays["y"]),
            "code": torch.from_numpy(arrays["code"].astype(np.int64)),
            "index": torch.from_numpy(arrays["index"].astype(np.int64)),
        }


#: ``datamodule.num_workers: auto`` on CUDA: DataLoader workers, at most this many (and
#: one core left to the training process)
AUTO_WORKERS_CUDA = 8


def loader_settings(
    num_workers: int | str, pin_memory: bool | str, on_cuda: bool, cpus: int | None = None
) -> tuple[int, bool]:
    """Resolve ``datamodule.num_workers`` and ``pin_memory`` for the device that trains.

    ``auto`` on CUDA: ``min(AUTO_WORKERS_CUDA, cpus - 1)`` workers (at least 1), kept
    alive between epochs (``persistent_workers``), and pinned host memory, so that the
    next batches are read and copied while the GPU computes; on the CPU: no worker (the
    store streams at a few % of an epoch, docs/benchmarks.md, and workers would take
    the cores that compute) and no pinning. Integers and booleans are used as given.

    Args:
        num_workers: an int >= 0 or ``auto``.
        pin_memory: a bool or ``auto``.
        on_cuda: the trainer's root device is CUDA.
        cpus: usable CPU cores; None = ``len(os.sched_getaffinity(0))``.

    Returns:
        ``(num_workers, pin_memory)``.

    Raises:
        ConfigError: a value that is neither ``auto`` nor of the right type.
    """
    if num_workers == "auto":
        if cpus is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
                os.cpu_count() or 1)
        workers = max(1, min(AUTO_WORKERS_CUDA, cpus - 1)) if on_cuda else 0
    elif isinstance(num_workers, int) and not isinstance(num_workers, bool) and num_workers >= 0:
        workers = num_workers
    else:
        raise ConfigError(
            f"datamodule.num_workers must be auto or an int >= 0, got {num_workers!r}"
        )
    if pin_memory == "auto":
        pin = on_cuda
    elif isinstance(pin_memory, bool):
        pin = pin_memory
    else:
        raise ConfigError(f"datamodule.pin_memory must be auto, true or false, got {pin_memory!r}")
    return workers, pin


class PixelSeriesDataModule(L.LightningDataModule):
    """Learn/val pixel series from a sample store (iota2's pixel-based deep learning input).

    Args:
        store_path: the sample store (the store that ``prepare`` wrote; set by ``fit``).
        batch_size: training and validation batch size.
        num_workers: DataLoader worker processes (0 = read in the main process), or
            ``auto``: :func:`loader_settings` (workers on CUDA, none on the CPU).
        block_chunks: Zarr chunks read at once per worker.
        pin_memory: pin host memory, or ``auto``: True when training on CUDA.
        region: train and validate on this region only (one model per eco-region).
        cache_mb: keep a split in memory after its first epoch when its series take at
            most this many MiB (per DataLoader worker); 0 = stream every epoch. Small
            stores (pixel tables, a few thousand pixels) then cost no store read per
            epoch; the batches are the same either way.

    Raises:
        StoreError: ``store_path`` is not a sample store (at ``setup``).
    """

    def __init__(
        self,
        store_path: str | Path | None = None,
        batch_size: int = 256,
        num_workers: int | str = 0,
        block_chunks: int = 8,
        pin_memory: bool | str = False,
        region: int | None = None,
        cache_mb: float = 512.0,
    ) -> None:
        super().__init__()
        self.store_path = store_path
        self.cache_mb = cache_mb
        self.region = region
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.block_chunks = block_chunks
        self.pin_memory = pin_memory
        self._info: StoreInfo | None = None
        #: the split(s) of the training batches: learn, or learn + selection for a refit
        self.train_splits: int | tuple[int, ...] = LEARN

    def _path(self) -> str | Path:
        """``store_path``, checked.

        Raises:
            ConfigError: ``store_path`` is not set.
        """
        if self.store_path is None:
            raise ConfigError("datamodule.store_path is not set; run prepare first")
        return self.store_path

    @property
    def info(self) -> StoreInfo:
        """The store's attributes (dates, bands, classes, statistics)."""
        if self._info is None:
            self._info = read_info(self._path())
        return self._info

    def dataset(self, split: int | tuple[int, ...], shuffle: bool = False) -> StoreBlockDataset:
        """The block dataset of one split (``LEARN``, ``SELECTION`` or ``VAL``), or several.

        The split codes are those of :mod:`i2dl.samples.store`; a tuple reads the rows of
        every split it names (``(LEARN, SELECTION)`` for a refit on all the labels).

        Raises:
            ConfigError: ``store_path`` is not set.
        """
        return StoreBlockDataset(
            self._path(),
            split,
            self.batch_size,
            shuffle=shuffle,
            block_chunks=self.block_chunks,
            region=self.region,
            cache_mb=self.cache_mb,
            **self._ranks(),
        )

    def _ranks(self) -> dict[str, int]:
        """This process's rank and the number of processes of the attached trainer."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {"rank": 0, "world_size": 1}
        return {"rank": int(trainer.global_rank), "world_size": int(trainer.world_size)}

    def _on_cuda(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def _loader(self, split: int | tuple[int, ...], shuffle: bool) -> DataLoader:
        workers, pin = loader_settings(self.num_workers, self.pin_memory, self._on_cuda())
        return DataLoader(
            self.dataset(split, shuffle),
            batch_size=None,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Learn split, shuffled (learn + selection after :meth:`use_all_labels`)."""
        return self._loader(self.train_splits, shuffle=True)

    def use_all_labels(self) -> None:
        """Train on learn + selection from now on, for a refit of a chosen epoch count.

        The normalisation statistics stay those of the learn split (the store's); the val
        split is never read.
        """
        self.train_splits = (LEARN, SELECTION)

    def val_dataloader(self) -> DataLoader:
        """Selection split, in store order (Lightning's validation loop).

        The checkpoint is chosen and training stopped on it; val is left to the report.
        """
        return self._loader(SELECTION, shuffle=False)

    def class_weights(self) -> np.ndarray:
        """Balanced class weights ``n / (K * n_k)`` over the learn split: (K,) float32.

        (scikit-learn's ``class_weight="balanced"``, counted on this datamodule's region; a
        class with no learn pixel gets 0.)

        Raises:
            ConfigError: ``store_path`` is not set.
        """
        group = open_store(self._path())
        sel = read_array(group, "split") == LEARN
        if self.region is not None:
            sel &= read_array(group, "region") == self.region
        codes = np.asarray(self.info.class_codes)
        indices = np.searchsorted(codes, read_array(group, "code")[sel])
        n_k = np.bincount(indices, minlength=len(codes))
        n_k = n_k.astype(np.float64)
        w = np.where(n_k > 0, n_k.sum() / (len(n_k) * np.maximum(n_k, 1)), 0.0)
        return w.astype(np.float32)
