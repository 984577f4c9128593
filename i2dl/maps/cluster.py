"""Map inference over a Dask cluster: the windows of a tile are tasks on ``dask.distributed``.

``infer.engine=dask`` sends every window of a tile to the cluster's workers: each task
reads its window, classifies it and returns the arrays of the maps; this process writes
them (:func:`i2dl.maps.engine.write_maps`: same files, resume and checks as the local
engine, so the maps are identical to the serial path). A worker opens the raster and loads
the model once per job (cached, one raster handle per worker thread). Without
``infer.dask.address`` a :class:`distributed.LocalCluster` is started on this machine
(``infer.dask.n_workers`` processes of ``infer.dask.threads_per_worker`` threads); with an
address (``tcp://host:8786``) the run joins that cluster, whose workers must see the run
folder and the rasters at the same paths (a shared file system) and have i2dl installed.

The local cluster serves no dashboard and no HTTP port: ``distributed`` starts an HTTP
server on the scheduler (``:8787``) and on every worker even with
``dashboard_address=None``, so they are stopped once the cluster is up
(:func:`_stop_http_servers`); only the cluster's own loopback ports listen. Inside a task
joblib runs sequentially (scikit-learn's ``n_jobs`` is 1): the cluster's workers x threads
are the parallelism, and joblib would otherwise warn in every window that a daemonic Dask
worker cannot start processes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

import numpy as np
from rasterio.windows import Window

from i2dl.errors import ConfigError
from i2dl.io.raster import read_series_window
from i2dl.io.sensors.base import TimeSeriesSource
from i2dl.maps.engine import WindowClassifier, WindowEngine

log = logging.getLogger(__name__)


class WindowJob(Protocol):
    """What a worker needs to classify the windows of one tile (picklable)."""

    @property
    def key(self) -> str:
        """Identifies the job (model, data, tile, settings): workers cache per key."""
        ...

    def open(self) -> TimeSeriesSource:
        """Open the tile's time series."""
        ...

    def classifier(self, series: TimeSeriesSource) -> WindowClassifier:
        """Load the model(s) and build the window classifier of the tile."""
        ...


_LOCK = threading.Lock()
#: per worker process: job key -> classifier; (job key, thread id) -> open series
_CLASSIFIERS: dict[str, WindowClassifier] = {}
_SERIES: dict[tuple[str, int], TimeSeriesSource] = {}


def _worker_state(job: WindowJob) -> tuple[TimeSeriesSource, WindowClassifier]:
    """This worker thread's open series and the worker's classifier for ``job``."""
    thread = threading.get_ident()
    with _LOCK:
        series = _SERIES.get((job.key, thread))
        if series is None:
            series = _SERIES[(job.key, thread)] = job.open()
        classify = _CLASSIFIERS.get(job.key)
        if classify is None:
            classify = _CLASSIFIERS[job.key] = job.classifier(series)
    return series, classify


def _sequential_joblib() -> AbstractContextManager[Any]:
    """The sequential joblib backend for this thread (scikit-learn ``n_jobs`` = 1), if any.

    A Dask worker process is daemonic: joblib cannot start processes there, sets
    ``n_jobs=1`` itself and warns at every ``predict_proba`` (once per window). Asking for
    the sequential backend gives the same computation without the warning; the backend is
    thread-local (joblib), so the worker's other threads are unaffected.
    """
    try:
        from joblib import parallel_config
    except ImportError:  # no scikit-learn model without joblib
        return nullcontext()
    return parallel_config(backend="sequential")


def classify_window(job: WindowJob, i: int, window: Window) -> tuple[int, dict[str, np.ndarray]]:
    """The task run by a worker: read window ``i`` and classify it.

    scikit-learn models run with one job per task (:func:`_sequential_joblib`).

    Returns:
        ``(i, arrays)`` as :meth:`i2dl.maps.engine.WindowClassifier.__call__`.
    """
    series, classify = _worker_state(job)
    x, valid = read_series_window(series, window)
    with _sequential_joblib():
        return i, classify(window, x, valid)


def release(job_key: str) -> None:
    """Close the rasters and drop the model a worker holds for a job (run on every worker)."""
    with _LOCK:
        for key in [k for k in _SERIES if k[0] == job_key]:
            _SERIES.pop(key).close()
        _CLASSIFIERS.pop(job_key, None)


def dask_engine(client: Any, job: WindowJob, max_in_flight: int | None = None) -> WindowEngine:
    """An engine for :func:`i2dl.maps.engine.write_maps` that runs windows on Dask.

    Args:
        client: a connected :class:`distributed.Client`.
        job: the tile's job (picklable: sent to the workers).
        max_in_flight: windows submitted and not yet written back; None = twice the
            cluster's threads. Bounds the memory of this process whatever the tile size.

    Returns:
        ``engine(windows, todo)`` yielding ``(i, arrays)`` as tasks finish (any order).
    """
    from distributed import as_completed

    def run(windows: list[Window], todo: list[int]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        limit = max_in_flight or max(2, 2 * sum(client.nthreads().values()))
        queue = iter(todo)
        futures = [client.submit(classify_window, job, i, windows[i], pure=False)
                   for i in (next(queue) for _ in range(min(limit, len(todo))))]
        done = as_completed(futures)
        try:
            for future in done:
                i, arrays = future.result()
                future.release()
                nxt = next(queue, None)
                if nxt is not None:
                    done.add(client.submit(classify_window, job, nxt, windows[nxt], pure=False))
                yield i, arrays
        finally:
            client.cancel(futures)
            client.run(release, job.key)

    return run


def _stop_http_server(node: Any) -> None:
    """Stop the HTTP server (dashboard, health and metrics routes) of a scheduler or worker."""
    server = getattr(node, "http_server", None)
    if server is not None:
        server.stop()
    node.services.pop("dashboard", None)


def _stop_scheduler_http(dask_scheduler: Any) -> None:
    """Run on the scheduler (its event loop): stop its HTTP server."""
    _stop_http_server(dask_scheduler)


def _stop_worker_http(dask_worker: Any) -> None:
    """Run on every worker (its event loop): stop its HTTP server."""
    _stop_http_server(dask_worker)


def _stop_http_servers(client: Any) -> None:
    """No HTTP port left open by a local cluster: its scheduler's and workers' servers stop.

    ``distributed`` (2024-2026) always starts them: the scheduler's on ``:8787`` even with
    ``dashboard_address=None`` (only the Bokeh pages are left out), each worker's on a
    random port. They are stopped from their own event loops (``run_on_scheduler``,
    ``run``).
    """
    client.run_on_scheduler(_stop_scheduler_http)
    client.run(_stop_worker_http)


@contextmanager
def dask_client(
    address: str | None = None,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    processes: bool = True,
) -> Iterator[Any]:
    """A :class:`distributed.Client`: joined to ``address`` or to a new local cluster.

    Args:
        address: scheduler address (``tcp://host:8786``); None = a
            :class:`distributed.LocalCluster` on this machine, closed at the end, with no
            dashboard and no HTTP port (see the module's docstring).
        n_workers: worker processes of the local cluster.
        threads_per_worker: threads of each local worker.
        processes: False = workers are threads of this process (no pickling; tests).

    Raises:
        ConfigError: the scheduler cannot be reached, or a bad cluster shape.
    """
    from distributed import Client, LocalCluster

    if n_workers < 1 or threads_per_worker < 1:
        raise ConfigError(
            f"infer.dask.n_workers and infer.dask.threads_per_worker must be >= 1, got "
            f"{n_workers} and {threads_per_worker}"
        )
    if address:
        try:
            client = Client(address, timeout="30s")
        except OSError as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler infer.dask.address={address!r} ({exc}); "
                "start one (dask scheduler) or leave infer.dask.address null for a local "
                "cluster"
            ) from None
        with client:
            log.info("joined the Dask cluster at %s: %s", address, client)
            yield client
        return
    # the scheduler's HTTP server (started in any case) on a free loopback port, not :8787
    # (no "port in use" warning beside another cluster); stopped once the cluster is up
    with LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                      processes=processes, dashboard_address=None,
                      scheduler_kwargs={"dashboard": False,
                                        "dashboard_address": "127.0.0.1:0"}) as cluster, \
            Client(cluster) as client:
        _stop_http_servers(client)
        log.info("local Dask cluster: %d workers x %d threads (no dashboard; scikit-learn "
                 "models run one job per window task)", n_workers, threads_per_worker)
        yield client
