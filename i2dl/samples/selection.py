"""Pixel selection inside the learn polygons (iota2 ``arg_train.sampleSelection``).

iota2 first splits the reference polygons into learn/val (:mod:`i2dl.samples.split`), then
keeps only a subset of the learn pixels for training, with OTB's ``SampleSelection``
application. This module reproduces that second step on pixel arrays. Two choices are
made independently:

**Strategy** (how many pixels of each class; OTB ``-strategy``), for a class with ``m``
candidate pixels:

- ``all``: every pixel (``m``).
- ``constant``: the same number ``n`` for every class (OTB ``strategy.constant.nb``).
- ``byclass``: a number per class read from a ``class,n`` CSV file (OTB
  ``strategy.byclass.in``). As in OTB, a class missing from the file gets 0 pixels (a
  warning names it).
- ``percent``: a fraction ``p`` in (0, 1] of every class (OTB ``strategy.percent.p``),
  rounded half up as OTB's ``SamplingRateCalculator::SetPercentageOfSamples`` does:
  ``floor(0.5 + p * m)``.
- ``total``: ``N`` pixels in all, shared between the classes in proportion to their sizes
  (OTB ``strategy.total.v``). OTB rounds each share half up on its own, so its counts may
  miss ``N`` by a few; here the shares ``N * m / M`` (``M`` = all candidates) are rounded by
  the **largest remainder** method: every class gets ``floor(N * m / M)``, and the pixels
  still missing go one each to the classes with the largest fractional parts (ties: the
  smaller class code first). The counts then sum to ``N`` exactly whenever ``N <= M``.
- ``smallest``: as many pixels per class as the smallest class has, so that class is fully
  sampled (OTB's default strategy).

A count larger than what a class holds is clipped to it (OTB's ``SamplerBase`` clamps the
same way) and a :class:`SampleSelectionWarning` names the class.

**Sampler** (which pixels; OTB ``-sampler``):

- ``random``: ``n`` of the ``m`` candidates drawn uniformly without replacement, with
  ``numpy.random.default_rng(seed)`` (iota2 ``rand``; OTB ``-rand``); classes are drawn in
  ascending code order from one generator, so a seed gives one selection.
- ``periodic``: evenly spaced candidates, in the order the pixels are given (for a store,
  the extraction order: raster blocks, rows within a block). The ``i``-th selected pixel
  (``i = 0..n-1``) is candidate ``floor(i * m / n)``, which is what OTB's
  ``PeriodicSampler`` takes with no offset and no jitter (it keeps candidate ``j``, 1-based,
  as soon as ``j * n / m`` exceeds the number already kept). The seed is not used.

With ``groups`` (iota2 regions: one model per region), each group is selected on its own,
exactly as if :func:`select_samples` were called on that group's pixels alone, so
``constant``/``total``/``smallest`` counts are per region.

The report of a selection, iota2's ``class_statistics.csv``, is
:mod:`i2dl.samples.class_statistics`.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError

log = logging.getLogger(__name__)

#: Sampling strategies (OTB SampleSelection ``-strategy``).
STRATEGIES = ("all", "constant", "byclass", "percent", "total", "smallest")
#: Samplers (OTB SampleSelection ``-sampler``).
SAMPLERS = ("random", "periodic")
#: Config key -> iota2/OTB name, for messages.
_IOTA2_NAMES = {
    "strategy": "strategy",
    "sampler": "sampler",
    "selection_seed": "rand",
    "per_class": "strategy.constant.nb",
    "percent": "strategy.percent.p",
    "total": "strategy.total.v",
    "byclass_csv": "strategy.byclass.in",
}
#: The parameter each strategy needs: (select_samples argument, config key).
_NEEDS = {
    "constant": ("n", "per_class"),
    "percent": ("p", "percent"),
    "total": ("total", "total"),
    "byclass": ("byclass", "byclass_csv"),
}


class SampleSelectionWarning(UserWarning):
    """A class gets fewer pixels than the strategy asks for (clipped, or absent from byclass)."""


# --------------------------------------------------------------------------- selection


def largest_remainder(counts: np.ndarray, target: int, minimum: int = 0) -> np.ndarray:
    """Share ``target`` items between classes in proportion to their sizes (largest remainder).

    Every class first gets ``min(counts_k, minimum)`` (so with ``minimum=1`` no class
    present is dropped); the ``r`` items still to share go in proportion to what each class
    has left, ``room_k = counts_k - floor_k``: class k gets ``floor(r * room_k / R)``
    (``R = sum(room)``), and the items still missing go one each to the classes with the
    largest fractional parts, ties to the first class (the smaller code when ``counts`` is
    in ascending code order). Integer arithmetic throughout, so the result is exact.

    Used by the ``total`` sampling strategy (``minimum=0``, OTB ``strategy.total.v``) and
    by the scikit-learn subsampling (``minimum=1``, ``model.max_samples``).

    Args:
        counts: (K,) int, items available per class, >= 0.
        target: total wanted, >= 0.
        minimum: items every class gets first (fewer if it holds fewer), >= 0.

    Returns:
        (K,) int64 shares. They sum to ``target`` when ``sum(min(counts, minimum)) <=
        target <= sum(counts)``; to ``sum(min(counts, minimum))`` when that exceeds
        ``target``. With ``target > sum(counts)`` the proportional shares exceed
        ``counts`` and are returned unclipped (the ``total`` strategy clips them and warns).

    Raises:
        ValueError: ``counts`` not 1-D or negative, or ``target`` or ``minimum`` negative.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any() or target < 0 or minimum < 0:
        raise ValueError(
            f"largest_remainder needs 1-D counts >= 0 and target, minimum >= 0; got counts "
            f"of shape {counts.shape} (min {counts.min(initial=0)}), target={target}, "
            f"minimum={minimum}"
        )
    floor = np.minimum(counts, int(minimum))
    remaining = int(target) - int(floor.sum())
    room = counts - floor
    grand = int(room.sum())
    if remaining <= 0 or grand == 0:
        return floor
    scaled = remaining * room
    share, rest = scaled // grand, scaled % grand
    missing = min(remaining, grand) - int(np.minimum(share, room).sum())
    if missing > 0:
        # largest fractional part first; stable sort: ties go to the first class
        order = np.argsort(-rest, kind="stable")
        share[order[:missing]] += 1
    return floor + share


def periodic_indices(m: int, n: int) -> np.ndarray:
    """Indices of ``n`` evenly spaced items among ``m`` (OTB ``PeriodicSampler``, no jitter).

    Args:
        m: number of candidates, >= 0.
        n: number wanted, 0 <= n <= m.

    Returns:
        (n,) int64, ``floor(i * m / n)`` for ``i = 0..n-1``: strictly increasing, first 0.

    Raises:
        ValueError: ``n`` outside [0, m].
    """
    if not 0 <= n <= m:
        raise ValueError(f"periodic sampling needs 0 <= n <= m, got n={n}, m={m}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return (np.arange(n, dtype=np.int64) * int(m)) // int(n)


def target_counts(
    codes: np.ndarray,
    available: np.ndarray,
    strategy: str,
    n: int | None = None,
    p: float | None = None,
    total: int | None = None,
    byclass: Mapping[int, int] | None = None,
) -> np.ndarray:
    """Pixels per class asked for by a strategy, before clipping to what is available.

    Args:
        codes: (K,) int, the class codes present, ascending.
        available: (K,) int64, candidate pixels of each class (all > 0).
        strategy: one of :data:`STRATEGIES`.
        n: pixels per class for ``constant``.
        p: fraction in (0, 1] for ``percent``.
        total: total pixels for ``total``.
        byclass: class code -> pixels for ``byclass``.

    Returns:
        (K,) int64, the requested count of each class (may exceed ``available``).

    Raises:
        ConfigError: unknown strategy, or its parameter missing or out of range.
    """
    _check_strategy_args(strategy, n, p, total, byclass)
    available = np.asarray(available, dtype=np.int64)
    if strategy == "all":
        return available.copy()
    if strategy == "constant":
        return np.full(len(available), int(n), dtype=np.int64)  # type: ignore[arg-type]
    if strategy == "smallest":
        smallest = int(available.min()) if len(available) else 0
        return np.full(len(available), smallest, dtype=np.int64)
    if strategy == "percent":
        # OTB SamplingRateCalculator::SetPercentageOfSamples: floor(0.5 + p * tot)
        return np.floor(0.5 + float(p) * available).astype(np.int64)  # type: ignore[arg-type]
    if strategy == "byclass":
        return np.array([int(byclass.get(int(c), 0)) for c in codes], dtype=np.int64)  # type: ignore[union-attr]
    # total: largest remainder, ties to the smaller code (codes ascending)
    return largest_remainder(available, int(total))  # type: ignore[arg-type]


def select_samples(
    y: np.ndarray,
    strategy: str,
    sampler: str = "random",
    seed: int = 0,
    n: int | None = None,
    p: float | None = None,
    total: int | None = None,
    byclass: Mapping[int, int] | None = None,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Select training pixels among candidates, class by class (OTB ``SampleSelection``).

    The caller passes the candidates of one selection, in iota2 the **learn** pixels of one
    run (and, with ``groups``, of every region at once); validation pixels are not selected
    from, iota2 keeps them all. See the module docstring for each strategy's count and
    rounding and each sampler's rule.

    Args:
        y: (N,) int, class code of each candidate pixel.
        strategy: ``all``, ``constant``, ``byclass``, ``percent``, ``total`` or ``smallest``
            (iota2/OTB ``strategy``).
        sampler: ``random`` or ``periodic`` (iota2/OTB ``sampler``).
        seed: seed of ``numpy.random.default_rng`` for the random sampler (iota2 ``rand``),
            int >= 0.
        n: pixels per class, for ``constant`` (OTB ``strategy.constant.nb``), >= 1.
        p: fraction of each class, for ``percent`` (OTB ``strategy.percent.p``), in (0, 1].
        total: pixels in all, for ``total`` (OTB ``strategy.total.v``), >= 1; per group when
            ``groups`` is given.
        byclass: class code -> pixels, for ``byclass`` (see :func:`read_byclass_csv`).
        groups: (N,) int, optional group of each pixel (iota2 region); each group is
            selected independently, as if called on its pixels alone.

    Returns:
        (N,) bool, True = selected.

    Raises:
        ConfigError: unknown strategy or sampler; the strategy's parameter missing or out
            of range; bad seed.
        InputDataError: ``y`` not 1-D, or ``groups`` not the shape of ``y``.

    Warns:
        SampleSelectionWarning: a class holds fewer pixels than asked for (all are taken),
        or, with ``byclass``, a class is absent from the table (none is taken).
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise InputDataError(f"y must be 1-D (N,), got shape {y.shape}")
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    _check_strategy_args(strategy, n, p, total, byclass)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"the selection seed must be an integer >= 0, got {seed!r}")
    if groups is None:
        return _select_group(y, strategy, sampler, int(seed), n, p, total, byclass, "")
    groups = np.asarray(groups)
    if groups.shape != y.shape:
        raise InputDataError(
            f"groups has shape {groups.shape} but y has shape {y.shape}: give one group "
            "(region) per pixel"
        )
    mask = np.zeros(len(y), dtype=bool)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        where = f" in region {g.item()}"
        mask[idx] = _select_group(y[idx], strategy, sampler, int(seed), n, p, total, byclass, where)
    return mask


def _select_group(
    y: np.ndarray,
    strategy: str,
    sampler: str,
    seed: int,
    n: int | None,
    p: float | None,
    total: int | None,
    byclass: Mapping[int, int] | None,
    where: str,
) -> np.ndarray:
    """Selection on one group's candidates; ``where`` qualifies warnings."""
    mask = np.zeros(len(y), dtype=bool)
    if len(y) == 0:
        return mask
    if strategy == "all":
        mask[:] = True
        return mask
    codes, inverse, available = np.unique(y, return_inverse=True, return_counts=True)
    wanted = target_counts(codes, available, strategy, n, p, total, byclass)
    _warn_shortfalls(codes, available, wanted, strategy, byclass, where)
    counts = np.minimum(wanted, available)
    # candidates of each class, in the given order
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(available)])
    rng = np.random.default_rng(seed)
    for k in range(len(codes)):
        cand = order[starts[k] : starts[k + 1]]
        m, c = len(cand), int(counts[k])
        if c == 0:
            continue
        if c == m:
            mask[cand] = True
        elif sampler == "random":
            mask[cand[rng.choice(m, size=c, replace=False)]] = True
        else:
            mask[cand[periodic_indices(m, c)]] = True
    log.debug(
        "selection %s/%s%s: %s",
        strategy,
        sampler,
        where,
        ", ".join(
            f"{int(a)}: {int(b)}/{int(m)}" for a, b, m in zip(codes, counts, available, strict=True)
        ),
    )
    return mask


def _warn_shortfalls(
    codes: np.ndarray,
    available: np.ndarray,
    wanted: np.ndarray,
    strategy: str,
    byclass: Mapping[int, int] | None,
    where: str,
) -> None:
    short = np.flatnonzero(wanted > available)
    if len(short):
        detail = "; ".join(
            f"class {int(codes[k])}: {int(wanted[k])} asked, {int(available[k])} available"
            for k in short
        )
        warnings.warn(
            f"strategy {strategy!r} asks for more pixels than some classes hold{where} "
            f"({detail}): all their pixels are taken",
            SampleSelectionWarning,
            stacklevel=4,
        )
    if strategy == "byclass":
        absent = [int(c) for c in codes if int(c) not in byclass]  # type: ignore[operator]
        if absent:
            warnings.warn(
                f"classes {absent} have candidate pixels{where} but no line in the byclass "
                "table: none of their pixels is selected (as in OTB). Add a 'class,n' line "
                "for each class to train on",
                SampleSelectionWarning,
                stacklevel=4,
            )


def _check_strategy_args(
    strategy: str,
    n: Any,
    p: Any,
    total: Any,
    byclass: Any,
    keys: Mapping[str, str] | None = None,
) -> None:
    """Check a strategy and its parameter; ``keys`` maps argument -> name used in messages."""
    name = (keys or {}).get
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if strategy not in _NEEDS:
        return
    arg, key = _NEEDS[strategy]
    label = name(arg, arg)
    value = {"n": n, "p": p, "total": total, "byclass": byclass}[arg]
    otb = _IOTA2_NAMES[key]
    if value is None:
        raise ConfigError(f"strategy {strategy!r} needs {label} (iota2/OTB {otb}), got none")
    if arg in ("n", "total"):
        if not _is_integral(value) or int(value) < 1:
            raise ConfigError(f"{label} (iota2/OTB {otb}) must be an integer >= 1, got {value!r}")
    elif arg == "p":
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise ConfigError(f"{label} (iota2/OTB {otb}) must be a number, got {value!r}")
        if not 0.0 < float(value) <= 1.0:
            raise ConfigError(
                f"{label} (iota2/OTB {otb}) is a fraction in (0, 1] (0.5 = 50%), got {value!r}"
            )
    elif not isinstance(byclass, Mapping):
        raise ConfigError(f"{label} must map class codes to pixel counts, got {type(byclass)}")


def _is_integral(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | np.integer):
        return True
    return isinstance(value, float | np.floating) and float(value).is_integer()


# --------------------------------------------------------------------------- byclass CSV

_SEP = re.compile(r"\s*[,;\t]\s*|\s+")


def read_byclass_csv(
    path: str | Path, class_names: Mapping[int, str] | None = None
) -> dict[int, int]:
    """Read the pixels wanted per class for the ``byclass`` strategy.

    One ``class,n`` pair a line (OTB ``strategy.byclass.in``: class in the first column,
    count in the second). The separator may be ``,``, ``;``, a tab or spaces; empty lines
    and lines starting with ``#`` are skipped; the first line may be a header (e.g.
    ``class,n``).

    Args:
        path: the CSV file.
        class_names: optional code -> label (string labels, see
            :class:`i2dl.io.vector.ReferenceData`); lets the first column hold a label
            instead of a code.

    Returns:
        class code -> pixels wanted (>= 0).

    Raises:
        InputFileNotFoundError: ``path`` does not exist.
        InputDataError: a line without exactly two fields, a class that is not an integer
            (nor a known label), a count that is not an integer >= 0, a class given twice,
            or no line at all; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(
            f"byclass CSV {str(path)!r} does not exist: give a 'class,n' file "
            "(sampling.byclass_csv)"
        )
    by_name = {str(v): int(k) for k, v in (class_names or {}).items()}
    out: dict[int, int] = {}
    seen_at: dict[int, int] = {}
    first = True
    text = path.read_text(encoding="utf-8-sig")
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {lineno}"
        fields = _SEP.split(line)
        if len(fields) != 2:
            raise InputDataError(
                f"{where}: expected 'class,n' (two fields), got {len(fields)} in {raw!r}"
            )
        cls_text, n_text = fields
        code = _parse_int(cls_text)
        if code is None:
            code = by_name.get(cls_text.strip("\"'"))
        count = _parse_int(n_text)
        if first and code is None and count is None:
            first = False  # header line
            continue
        first = False
        if code is None:
            raise InputDataError(
                f"{where}: class {cls_text!r} is not an integer class code"
                + (" nor a known label" if by_name else "")
            )
        if count is None or count < 0:
            raise InputDataError(
                f"{where}: the pixel count {n_text!r} of class {code} must be an integer >= 0"
            )
        if code in out:
            raise InputDataError(
                f"{where}: class {code} is already given on line {seen_at[code]}; give each "
                "class once"
            )
        out[code] = count
        seen_at[code] = lineno
    if not out:
        raise InputDataError(f"{path}: no 'class,n' line found")
    return out


def _parse_int(text: str) -> int | None:
    text = text.strip().strip("\"'")
    try:
        return int(text)
    except ValueError:
        return None


# --------------------------------------------------------------------------- config


def selection_from_config(
    sampling_cfg: Mapping[str, Any], class_names: Mapping[int, str] | None = None
) -> dict[str, Any]:
    """Keyword arguments of :func:`select_samples` from the ``sampling`` config group.

    Keys (iota2 ``arg_train.sampleSelection`` names in brackets): ``strategy``
    [``strategy``], ``sampler`` [``sampler``], ``selection_seed`` [``rand``], ``per_class``
    [``strategy.constant.nb``], ``percent`` [``strategy.percent.p``], ``total``
    [``strategy.total.v``], ``byclass_csv`` [``strategy.byclass.in``]. Missing keys take
    the defaults of ``configs/sampling/default.yaml`` (strategy ``all``); a missing
    ``selection_seed`` falls back to ``random_seed``.

    Args:
        sampling_cfg: the ``sampling`` node (DictConfig or mapping).
        class_names: code -> label, passed to :func:`read_byclass_csv`.

    Returns:
        ``strategy``, ``sampler``, ``seed``, ``n``, ``p``, ``total`` and ``byclass``
        (the CSV read into a dict, or None), ready for ``select_samples(y, **kwargs)``.

    Raises:
        ConfigError: unknown strategy or sampler, the strategy's key missing (named, e.g.
            ``sampling.per_class``) or out of range, or a random sampler without a seed.
        InputFileNotFoundError, InputDataError: unreadable ``byclass_csv``.

    Warns:
        UserWarning: a parameter is set but the strategy ignores it.
    """
    get = sampling_cfg.get
    strategy = str(get("strategy", "all") or "all")
    sampler = str(get("sampler", "random") or "random")
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"sampling.strategy={strategy!r} is unknown: use one of {', '.join(STRATEGIES)}"
        )
    if sampler not in SAMPLERS:
        raise ConfigError(
            f"sampling.sampler={sampler!r} is unknown: use one of {', '.join(SAMPLERS)}"
        )
    params = {k: get(k, None) for k in ("per_class", "percent", "total", "byclass_csv")}
    for key, value in params.items():
        if value is not None and _NEEDS.get(strategy, (None, None))[1] != key:
            warnings.warn(
                f"sampling.{key}={value!r} is ignored by sampling.strategy={strategy!r}",
                UserWarning,
                stacklevel=2,
            )
    seed = get("selection_seed", get("random_seed", 0))
    if seed is None:
        if sampler == "random" and strategy != "all":
            raise ConfigError(
                "sampling.selection_seed (iota2 rand) is null but the random sampler needs "
                "a seed: set sampling.selection_seed (or the top-level seed)"
            )
        seed = 0
    if not _is_integral(seed) or int(seed) < 0:
        raise ConfigError(
            f"sampling.selection_seed (iota2 rand) must be an integer >= 0, got {seed!r}"
        )
    keys = {
        "n": "sampling.per_class",
        "p": "sampling.percent",
        "total": "sampling.total",
        "byclass": "sampling.byclass_csv",
    }
    byclass_path = params["byclass_csv"] if strategy == "byclass" else None
    # check presence/range first, with the config key names
    _check_strategy_args(
        strategy,
        params["per_class"],
        params["percent"],
        params["total"],
        {} if byclass_path is not None else None,
        keys,
    )
    byclass = read_byclass_csv(str(byclass_path), class_names) if byclass_path else None
    return {
        "strategy": strategy,
        "sampler": sampler,
        "seed": int(seed),
        "n": int(params["per_class"]) if strategy == "constant" else None,
        "p": float(params["percent"]) if strategy == "percent" else None,
        "total": int(params["total"]) if strategy == "total" else None,
        "byclass": byclass,
    }
