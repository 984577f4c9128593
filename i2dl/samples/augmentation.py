"""Sample augmentation of the learn split (iota2 ``arg_train.sample_augmentation``).

iota2 runs OTB's SampleAugmentation on each class's learning samples before training,
for every model; i2dl does the same on the learn rows of the sample store, so that every
model (forest, SVM, networks) sees the same augmented learn split, and the selection and
val splits are never touched.

How many samples each class gets (``samples_strategy``, iota2's ``samples.strategy``):

- ``minNumber``: every class with fewer learn samples than ``min_number`` is raised to it;
- ``balance``: every class is raised to the count of the largest class;
- ``byClass``: the target count of each class code from a CSV file of ``code,count``
  lines (iota2's ``samples.strategy.byClass``); classes not in the file are left alone.

How new samples are made (``strategy``, as OTB SampleAugmentation; Chawla et al. 2002 for
SMOTE):

- ``replicate``: copies of existing samples, drawn in turn (every sample once before any
  twice);
- ``jitter``: a copy plus Gaussian noise of standard deviation ``std(feature) /
  std_factor`` per feature (date x channel), the standard deviation taken over the
  class's learn samples;
- ``smote``: ``a + u (b - a)`` for a random sample ``a`` of the class, one ``b`` of its
  ``neighbors`` nearest same-class samples (Euclidean, on the series with invalid dates
  zeroed) and ``u ~ U(0, 1)``; the new sample is valid where both ``a`` and ``b`` are.

A class is never reduced, and a class of a single sample can only be replicated or
jittered (SMOTE needs a neighbour: it falls back to jitter, with a warning).
"""

from __future__ import annotations

import csv
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from i2dl.errors import ConfigError

log = logging.getLogger(__name__)

#: ``strategy`` choices (OTB SampleAugmentation)
STRATEGIES = ("replicate", "jitter", "smote")
#: ``samples_strategy`` choices (iota2 ``samples.strategy``)
SAMPLES_STRATEGIES = ("minNumber", "balance", "byClass")


@dataclass(frozen=True)
class AugmentationConfig:
    """The settings of :func:`augment` (iota2 names in the module docstring).

    Raises:
        ConfigError: from :meth:`check`, on an unknown strategy, a non-positive
            ``min_number``, ``std_factor`` or ``neighbors``, or a missing ``by_class`` file.
    """

    strategy: str = "replicate"
    samples_strategy: str = "balance"
    min_number: int | None = None
    by_class: str | None = None
    std_factor: float = 10.0
    neighbors: int = 5
    seed: int = 0

    def check(self) -> AugmentationConfig:
        """Validate the settings and return them."""
        where = "sample_augmentation"
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"{where}.strategy={self.strategy!r}: use one of {STRATEGIES}")
        if self.samples_strategy not in SAMPLES_STRATEGIES:
            raise ConfigError(f"{where}.samples_strategy={self.samples_strategy!r}: use one "
                              f"of {SAMPLES_STRATEGIES}")
        if self.samples_strategy == "minNumber" and not (
                isinstance(self.min_number, int) and self.min_number > 0):
            raise ConfigError(f"{where}.min_number={self.min_number!r}: give a positive "
                              "int with samples_strategy=minNumber")
        if self.samples_strategy == "byClass" and not (
                self.by_class and Path(self.by_class).is_file()):
            raise ConfigError(f"{where}.by_class={self.by_class!r}: give an existing CSV of "
                              "`code,count` lines with samples_strategy=byClass")
        if not float(self.std_factor) > 0:
            raise ConfigError(f"{where}.std_factor={self.std_factor!r} must be > 0")
        if not (isinstance(self.neighbors, int) and self.neighbors > 0):
            raise ConfigError(f"{where}.neighbors={self.neighbors!r} must be a positive int")
        return self


def read_by_class(path: str | Path) -> dict[int, int]:
    """``{code: count}`` from a CSV of ``code,count`` lines (a header line is skipped).

    Raises:
        ConfigError: a line that is not two integers, or a negative count (names the line).
    """
    out: dict[int, int] = {}
    with Path(path).open(newline="") as f:
        for i, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            try:
                code, count = int(row[0]), int(row[1])
            except (ValueError, IndexError):
                if i == 1:
                    continue  # header
                raise ConfigError(f"{path}, line {i}: {row!r} is not `code,count`") from None
            if count < 0:
                raise ConfigError(f"{path}, line {i}: negative count {count}")
            out[code] = count
    return out


def target_counts(counts: dict[int, int], cfg: AugmentationConfig) -> dict[int, int]:
    """Samples to add per class code: ``{code: n_new >= 0}``.

    Args:
        counts: learn samples per class code.
        cfg: the settings (``samples_strategy``, ``min_number``, ``by_class``).
    """
    if cfg.samples_strategy == "balance":
        goal = dict.fromkeys(counts, max(counts.values(), default=0))
    elif cfg.samples_strategy == "minNumber":
        goal = dict.fromkeys(counts, int(cfg.min_number or 0))
    else:
        table = read_by_class(str(cfg.by_class))
        unknown = sorted(set(table) - set(counts))
        if unknown:
            log.warning("sample_augmentation.by_class %s names class codes %s that have no "
                        "learn sample: ignored", cfg.by_class, unknown)
        goal = {c: table.get(c, n) for c, n in counts.items()}
    return {c: max(0, goal[c] - n) for c, n in counts.items()}


def _new_rows(x: np.ndarray, mask: np.ndarray, n_new: int, cfg: AugmentationConfig,
              rng: np.random.Generator, code: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_new`` samples of one class: ``(x (n, T, C), mask (n, T), source row (n,))``."""
    n = len(x)
    strategy = cfg.strategy
    if strategy == "smote" and n < 2:
        warnings.warn(f"sample_augmentation: class {code} has one learn sample, SMOTE needs "
                      "a neighbour: jitter instead", UserWarning, stacklevel=3)
        strategy = "jitter"
    src = np.concatenate([rng.permutation(n) for _ in range(-(-n_new // n))])[:n_new]
    new_x, new_m = x[src].astype(np.float32), mask[src].copy()
    if strategy == "jitter":
        valid = mask[..., None]
        std = np.sqrt(np.sum(np.where(valid, (x - _mean(x, valid)) ** 2, 0), axis=0)
                      / np.maximum(valid.sum(axis=0), 1))  # (T, C) over the valid samples
        noise = rng.normal(size=new_x.shape) * (std / float(cfg.std_factor))
        new_x = np.where(new_m[..., None], new_x + noise, new_x).astype(np.float32)
    elif strategy == "smote":
        flat = np.where(mask[..., None], x, 0).reshape(n, -1).astype(np.float64)
        d2 = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d2, np.inf)
        k = min(int(cfg.neighbors), n - 1)
        near = np.argsort(d2, axis=1)[:, :k]  # (n, k) same-class neighbours
        other = near[src, rng.integers(0, k, size=n_new)]
        u = rng.random(size=(n_new, 1, 1)).astype(np.float32)
        new_x = (x[src] + u * (x[other] - x[src])).astype(np.float32)
        new_m = mask[src] & mask[other]
    return new_x, new_m, src


def _mean(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.sum(np.where(valid, x, 0), axis=0) / np.maximum(valid.sum(axis=0), 1)


def augment(
    x: np.ndarray, mask: np.ndarray, y: np.ndarray, cfg: AugmentationConfig,
    adds: dict[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """New learn samples for the classes below their target (module docstring).

    Args:
        x: ``(N, T, C)`` float learn series.
        mask: ``(N, T)`` bool, True = valid.
        y: ``(N,)`` int class codes.
        cfg: the settings (checked here).
        adds: samples to add per class code; default :func:`target_counts` of ``y``'s
            counts (give it when ``x`` holds only the classes to augment).

    Returns:
        ``(x_new (M, T, C) float32, mask_new (M, T) bool, y_new (M,) y's dtype,
        source (M,) int64)``: only the new samples, grouped by class code in increasing
        order; ``source`` is the row of ``x`` each was made from (for SMOTE, the first of
        the two). Empty arrays when no class needs samples. Reproducible for a given
        ``cfg.seed``.

    Raises:
        ConfigError: invalid settings (:meth:`AugmentationConfig.check`).
    """
    cfg.check()
    if adds is None:
        codes, counts = np.unique(y, return_counts=True)
        adds = target_counts({int(c): int(n) for c, n in zip(codes, counts, strict=True)},
                             cfg)
    rng = np.random.default_rng(cfg.seed)
    parts_x, parts_m, parts_y, parts_s = [], [], [], []
    for code in sorted(adds):
        rows = np.flatnonzero(y == code)
        if adds[code] == 0 or not len(rows):
            continue
        nx, nm, src = _new_rows(x[rows], mask[rows], adds[code], cfg, rng, code)
        parts_x.append(nx)
        parts_m.append(nm)
        parts_y.append(np.full(len(nx), code, dtype=y.dtype))
        parts_s.append(rows[src].astype(np.int64))
        log.info("sample augmentation (%s): class %d, %d -> %d learn samples", cfg.strategy,
                 code, len(rows), len(rows) + len(nx))
    if not parts_x:
        t, c = x.shape[1:]
        return (np.zeros((0, t, c), np.float32), np.zeros((0, t), bool),
                np.zeros(0, y.dtype), np.zeros(0, np.int64))
    return (np.concatenate(parts_x), np.concatenate(parts_m), np.concatenate(parts_y),
            np.concatenate(parts_s))


class StackedRows:
    """Two ``(N, ...)`` array-likes one after the other, read by slices (never all at once).

    The store's selected samples (an array, or a :class:`~i2dl.samples.store.RowsView`
    of a spool on disk) followed by the augmented ones, for
    :func:`~i2dl.samples.store.write_store`.
    """

    def __init__(self, first: Any, second: np.ndarray) -> None:
        self.first, self.second = first, second
        self.shape = (len(first) + len(second), *second.shape[1:])
        self.dtype = second.dtype

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, key: slice) -> np.ndarray:
        """Rows ``key`` (a slice, step 1) as an in-memory array."""
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise TypeError("StackedRows is read by contiguous slices")
        n1 = len(self.first)
        parts = []
        if start < n1:
            parts.append(np.asarray(self.first[start : min(stop, n1)], dtype=self.dtype))
        if stop > n1:
            parts.append(self.second[max(start - n1, 0) : stop - n1])
        return np.concatenate(parts) if parts else self.second[:0]


def _take(x: Any, rows: np.ndarray) -> np.ndarray:
    """Rows of an array or of a RowsView (by its base), in memory."""
    base_rows = getattr(x, "rows", None)
    if base_rows is not None:
        return np.asarray(x.base[base_rows[rows]])
    return np.asarray(x[rows])


def augment_arrays(
    arrays: dict[str, Any], settings: Any, seed: int, learn: int,
) -> tuple[dict[str, Any], dict[int, int]]:
    """Append augmented learn samples to a store's arrays (``sampling.augmentation``).

    Args:
        arrays: the store arrays (:data:`i2dl.samples.store.ARRAY_DTYPES`), ``X`` an array
            or a RowsView.
        settings: ``sampling.augmentation`` (``enabled``, ``strategy``, ...), or None.
        seed: the run's seed.
        learn: the ``split`` value of the learn split.

    Returns:
        ``(arrays, added)``: the arrays with the new rows last (``split`` = learn; their
        ``polygon_id``, ``region``, ``tile``, ``row``, ``col`` those of the sample each was
        made from, so that they stay in their polygon's group), and the number of samples
        added per class code (empty when off).

    Raises:
        ConfigError: invalid settings.
    """
    if not settings or not settings.get("enabled", False):
        return arrays, {}
    cfg = AugmentationConfig(
        strategy=str(settings.get("strategy", "replicate")),
        samples_strategy=str(settings.get("samples_strategy", "balance")),
        min_number=settings.get("min_number"), by_class=settings.get("by_class"),
        std_factor=float(settings.get("std_factor", 10.0)),
        neighbors=int(settings.get("neighbors", 5)), seed=int(seed)).check()
    in_learn = np.flatnonzero(np.asarray(arrays["split"]) == learn)
    codes = np.asarray(arrays["code"])[in_learn]
    values, counts = np.unique(codes, return_counts=True)
    adds = target_counts({int(c): int(n) for c, n in zip(values, counts, strict=True)}, cfg)
    rows = in_learn[np.isin(codes, [c for c, n in adds.items() if n > 0])]
    if not len(rows):
        return arrays, {}
    new_x, new_mask, new_y, source = augment(
        _take(arrays["X"], rows), np.asarray(arrays["mask"])[rows],
        np.asarray(arrays["code"])[rows], cfg, adds)
    src = rows[source]
    out = dict(arrays)
    for name in ("polygon_id", "region", "tile", "row", "col"):
        out[name] = np.concatenate([arrays[name], np.asarray(arrays[name])[src]])
    out["code"] = np.concatenate([arrays["code"], new_y])
    out["mask"] = np.concatenate([arrays["mask"], new_mask])
    split = np.asarray(arrays["split"])
    out["split"] = np.concatenate([split, np.full(len(src), learn, dtype=split.dtype)])
    x = arrays["X"]
    out["X"] = (np.concatenate([x, new_x.astype(x.dtype)]) if isinstance(x, np.ndarray)
                else StackedRows(x, new_x))
    return out, {c: n for c, n in adds.items() if n > 0}
