"""Reading the windows of a raster ahead of the classifier, in reader threads."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from rasterio.windows import Window

from i2dl.errors import ConfigError
from i2dl.io.raster import read_series_window
from i2dl.io.sensors.base import TimeSeriesSource


def read_windows(
    series: TimeSeriesSource,
    windows: list[Window],
    todo: list[int],
    reader_threads: int = 1,
    read_ahead: int = 2,
    open_reader: Callable[[], TimeSeriesSource] | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Read the windows ``todo`` in order, ``read_ahead`` of them ahead of the consumer.

    With ``read_ahead = 0`` each window is read when asked for, in the calling thread.
    Otherwise ``reader_threads`` threads read the next windows while the caller computes;
    with more than one thread each thread reads through its own handle opened by
    ``open_reader`` (rasterio datasets must not be shared between threads), closed at the
    end. Memory held by the windows read ahead: ``read_ahead`` windows of
    ``chunk_size² x T x C x 4`` bytes (plus the masks), whatever the raster's size.

    Yields:
        ``(i, x, valid)``: the window index, (h, w, T, C) float32 and (h, w, T) bool.

    Raises:
        ConfigError: ``reader_threads > 1`` without ``open_reader``, or bad counts.
        InputDataError: a window cannot be read (the file and window are named).
    """
    if reader_threads < 1 or read_ahead < 0:
        raise ConfigError(
            f"infer.reader_threads must be >= 1 and infer.read_ahead >= 0, got "
            f"{reader_threads} and {read_ahead}"
        )
    if read_ahead == 0:
        for i in todo:
            yield (i, *read_series_window(series, windows[i]))
        return
    if reader_threads > 1 and open_reader is None:
        raise ConfigError(
            f"{reader_threads} reader threads need a way to open one reader per thread "
            "(open_reader); use infer.reader_threads=1"
        )
    local = threading.local()
    opened: list[TimeSeriesSource] = []
    lock = threading.Lock()

    def read(i: int) -> tuple[np.ndarray, np.ndarray]:
        if reader_threads == 1:
            return read_series_window(series, windows[i])
        src = getattr(local, "src", None)
        if src is None:
            assert open_reader is not None  # checked above
            src = local.src = open_reader()
            with lock:
                opened.append(src)
        return read_series_window(src, windows[i])

    pending: deque[tuple[int, Future[tuple[np.ndarray, np.ndarray]]]] = deque()
    queue = iter(todo)
    try:
        with ThreadPoolExecutor(max_workers=reader_threads,
                                thread_name_prefix="i2dl-read") as pool:
            try:
                for i in itertools.islice(queue, read_ahead + 1):
                    pending.append((i, pool.submit(read, i)))
                while pending:
                    i, future = pending.popleft()
                    x, valid = future.result()
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.append((nxt, pool.submit(read, nxt)))
                    yield i, x, valid
            finally:
                for _, future in pending:
                    future.cancel()
    finally:
        for src in opened:
            src.close()


