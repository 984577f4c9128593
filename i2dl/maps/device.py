"""Where map inference runs and how many pixels go in one forward pass.

``infer.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) and ``infer.batch_size``
(``auto`` or pixels), resolved once per tile by the window classifier's builder
(:class:`i2dl.maps.run_maps.TileJob`) or by :func:`i2dl.maps.engine.classify_raster`;
:func:`batch_slice` selects a batch's pixels without copying them.
"""

from __future__ import annotations

import numpy as np
import torch

from i2dl.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cpu``/``cuda``/``cuda:N`` as given.

    Raises:
        ConfigError: CUDA requested but not available, or an unknown name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"infer.device={name!r} is not a device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("infer.device=cuda but no CUDA device is available; use auto or cpu")
    return device


#: ``infer.batch_size: auto`` on the CPU: pixels per forward pass and torch thread such
#: that one float32 ``(B, T, width)`` activation would fill about this many bytes: 8192
#: pixels per thread at T = 24, 2048 at T = 70 (measured with
#: scripts/bench/bench_infer.py, docs/benchmarks.md)
CPU_BATCH_BYTES = 256 * 2**20
#: bounds of ``auto`` on the CPU, pixels
CPU_BATCH_RANGE = (1024, 32768)
#: bounds of ``auto`` on CUDA, pixels; within them, a quarter of the free device memory
#: for about 8 live ``(B, T, width)`` float32 activations
CUDA_BATCH_RANGE = (4096, 65536)
#: ``infer.batch_size: auto`` for scikit-learn models: pixels per ``predict_proba`` call.
#: Each call starts ``n_jobs`` workers over the trees, so small batches spend their time
#: starting them (scripts/bench/bench_sklearn_infer.py, docs/benchmarks.md); the features
#: of 2^18 pixels x 240 dates-bands are 240 MB of float32.
SKLEARN_BATCH_SIZE = 2**18


def resolve_batch_size(
    value: int | str,
    device: torch.device,
    n_dates: int,
    width: int = 256,
    threads: int | None = None,
) -> int:
    """Pixels per forward pass: ``infer.batch_size`` as given, or chosen per device.

    ``auto`` on the CPU: the power of two nearest below ``threads * CPU_BATCH_BYTES / (4 *
    n_dates * width)``, clipped to ``CPU_BATCH_RANGE`` (a few thousand pixels per thread:
    with tens of thousands every activation is hundreds of MB and the time goes to page
    faults; with a few hundred, to per-call and thread-synchronisation overheads). ``auto``
    on CUDA:
    the power of two below a quarter of the free device memory
    (:func:`torch.cuda.mem_get_info`) over 8 activations of ``4 * n_dates * width`` bytes
    per pixel, clipped to ``CUDA_BATCH_RANGE``. Other devices: the upper CUDA bound.

    Args:
        value: ``auto`` or a positive int (pixels).
        device: where the model runs.
        n_dates: ``T``, dates per series.
        width: widest per-date activation of the model, channels (LTAE ``d_model``).
        threads: torch intra-op threads on the CPU; None = :func:`torch.get_num_threads`.

    Returns:
        The batch size, pixels, >= 1.

    Raises:
        ConfigError: ``value`` is neither ``auto`` nor an int >= 1.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        per_pixel = 4 * max(1, n_dates) * max(1, width)  # bytes of one (T, width) activation
        if device.type == "cpu":
            lo, hi = CPU_BATCH_RANGE
            n_threads = torch.get_num_threads() if threads is None else max(1, threads)
            target = n_threads * CPU_BATCH_BYTES // per_pixel
        else:
            lo, hi = CUDA_BATCH_RANGE
            target = hi
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                target = free // 4 // (8 * per_pixel)
        return min(hi, max(lo, 1 << max(0, int(target).bit_length() - 1)))
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(
            f"infer.batch_size must be auto or an int >= 1 (pixels per forward pass), got {value!r}"
        )
    return int(value)


def batch_slice(sel: np.ndarray) -> np.ndarray | slice:
    """The pixels of one batch, as a slice when they are consecutive.

    Indexing a window's ``(h * w, T, C)`` values with the slice gives a view, not a copy:
    a window whose pixels all have data (the usual case) is classified without copying
    its values.

    Args:
        sel: (n,) int, increasing pixel indices (``np.flatnonzero`` of the pixels with data).

    Returns:
        ``slice(sel[0], sel[-1] + 1)`` when ``sel`` is a run of consecutive indices, else
        ``sel`` itself.
    """
    if len(sel) and int(sel[-1]) - int(sel[0]) == len(sel) - 1:
        return slice(int(sel[0]), int(sel[-1]) + 1)
    return sel
