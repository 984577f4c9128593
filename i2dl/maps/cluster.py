"""Map inference over a Dask cluster: the windows of a tile are tasks on ``dask.distributed``.

``infer.engine=dask`` sends every window of a tile to the cluster's workers as a named task
of the run's :class:`TaskRunner` (:func:`dask_engine`): each task reads its window,
classifies it and returns the arrays of the maps; this process writes them
(:func:`i2dl.maps.engine.write_maps`: same files, resume and checks as the local engine, so
the maps are identical to the serial path). A worker opens the raster and loads the model
once per job (cached, one raster handle per worker thread). The cluster is the run's
``dask`` group (:func:`infer_settings`: ``infer.dask.*`` default to the ``dask.*`` keys):
without an address a :class:`distributed.LocalCluster` is started on this machine
(``n_workers`` processes of ``threads_per_worker`` threads); with an address
(``tcp://host:8786``) the run joins that cluster, whose workers must see the run folder and
the rasters at the same paths (a shared file system) and have i2dl installed. Each window
logs to ``<run>/logs/infer/classify_<tile>_window_<i>.log``, is retried ``dask.retries``
times, then stops the stage with an error naming the tile, the window and its log; no map
is renamed into place, and the finished windows are kept for ``infer.resume``.

The local cluster serves no dashboard and no HTTP port: ``distributed`` starts an HTTP
server on the scheduler (``:8787``) and on every worker even with
``dashboard_address=None``, so they are stopped once the cluster is up
(:func:`_stop_http_servers`); only the cluster's own loopback ports listen. Inside a task
joblib runs sequentially (scikit-learn's ``n_jobs`` is 1): the cluster's workers x threads
are the parallelism, and joblib would otherwise warn in every window that a daemonic Dask
worker cannot start processes.

The per-tile stages (``prepare``'s sample extraction, ``features-map``, the tiler, infer)
run on the same clusters through :class:`TaskRunner`, set by the run's ``dask`` config group
(``configs/dask/default.yaml``): each named task (tile, chunk) writes its own log file,
a failed task is run again up to ``dask.retries`` times (iota2 ``task_retry_limits``),
then the stage stops with an error naming the task and its log.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from rasterio.windows import Window

from i2dl.errors import ConfigError, I2dlError
from i2dl.features.feature_maps import close_worker_sources, window_span
from i2dl.io.layout import LOGS_DIR
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
#: per worker process: job key -> classifier; (job key, thread id) -> open series, and
#: those a task is reading now (closed by that task when released meanwhile)
_CLASSIFIERS: dict[str, WindowClassifier] = {}
_SERIES: dict[tuple[str, int], TimeSeriesSource] = {}
_BUSY: set[tuple[str, int]] = set()


def _worker_state(job: WindowJob) -> tuple[TimeSeriesSource, WindowClassifier]:
    """This worker thread's open series (marked busy) and the worker's classifier for ``job``."""
    thread = threading.get_ident()
    with _LOCK:
        _BUSY.add((job.key, thread))
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

    scikit-learn models run with one job per task (:func:`_sequential_joblib`). A failed
    attempt closes this thread's raster handle, so that a retry reads through a new one.
    Its handle is never closed under it (:func:`release`).

    Returns:
        ``(i, arrays)`` as :meth:`i2dl.maps.engine.WindowClassifier.__call__`.
    """
    mine, failed = (job.key, threading.get_ident()), True
    try:
        series, classify = _worker_state(job)
        x, valid = read_series_window(series, window)
        with _sequential_joblib():
            arrays = classify(window, x, valid)
        failed = False
        return i, arrays
    finally:
        with _LOCK:
            _BUSY.discard(mine)
            # a failed read gets a new handle; a released job's stays closed
            stale = _SERIES.pop(mine, None) if failed or job.key not in _CLASSIFIERS else None
        if stale is not None:
            stale.close()


def release(job_key: str) -> None:
    """Close the rasters and drop the model a worker holds for a job (run on every worker).

    A raster a task is reading (a task left running after a failure cancelled the
    others) is closed by that task when it ends.
    """
    with _LOCK:
        _CLASSIFIERS.pop(job_key, None)
        idle = [_SERIES.pop(k) for k in list(_SERIES) if k[0] == job_key and k not in _BUSY]
    for series in idle:
        series.close()


def dask_engine(runner: TaskRunner, job: WindowJob, tile: str) -> WindowEngine:
    """An engine for :func:`i2dl.maps.engine.write_maps` that runs windows on Dask.

    Every window is a named task of ``runner``, ``tile <tile>, window <i> (rows r0-r1,
    cols c0-c1)`` (as the chunks of ``features-map``), logged to
    ``classify_<tile>_window_<i>.log`` in the runner's folder, retried ``dask.retries``
    times. At most ``runner.max_in_flight`` windows (twice the cluster's threads) are
    submitted and not yet written back: the memory of this process is bounded whatever the
    tile size.

    Args:
        runner: the stage's :class:`TaskRunner` (:func:`infer_runner`).
        job: the tile's job (picklable: sent to the workers).
        tile: the tile's name in task names and log files.

    Returns:
        ``engine(windows, todo)`` yielding ``(i, arrays)`` as tasks finish (any order);
        it raises :class:`~i2dl.errors.I2dlError` (or the window's own i2dl error class)
        naming the tile, the window and its log when a window failed its last attempt.
    """

    def run(windows: list[Window], todo: list[int]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        if not todo:  # every window resumed: no cluster to start
            return
        try:
            yield from runner(((f"tile {tile}, window {i} ({window_span(windows[i])})",
                                f"classify_{tile}_window_{i}", classify_window,
                                (job, i, windows[i])) for i in todo), ordered=False)
        finally:
            runner.client.run(release, job.key)

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
    key: str = "infer.dask",
) -> Iterator[Any]:
    """A :class:`distributed.Client`: joined to ``address`` or to a new local cluster.

    Args:
        address: scheduler address (``tcp://host:8786``); None = a
            :class:`distributed.LocalCluster` on this machine, closed at the end, with no
            dashboard and no HTTP port (see the module's docstring).
        n_workers: worker processes of the local cluster.
        threads_per_worker: threads of each local worker.
        processes: False = workers are threads of this process (no pickling; tests).
        key: the config node of these settings, named in errors (``infer.dask``, ``dask``).

    Raises:
        ConfigError: the scheduler cannot be reached, or a bad cluster shape.
    """
    from distributed import Client, LocalCluster

    if n_workers < 1 or threads_per_worker < 1:
        raise ConfigError(
            f"{key}.n_workers and {key}.threads_per_worker must be >= 1, got "
            f"{n_workers} and {threads_per_worker}"
        )
    if address:
        try:
            client = Client(address, timeout="30s")
        except OSError as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler {key}.address={address!r} ({exc}); "
                f"start one (dask scheduler) or leave {key}.address null for a local "
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
                 "models run one job per task)", n_workers, threads_per_worker)
        yield client


# --- per-tile stages as named Dask tasks (the run's ``dask`` config group) ---------------

#: ``dask.engine`` choices: ``local`` runs the tasks in this process, in turn.
ENGINES = ("local", "dask")


@dataclass(frozen=True)
class DaskSettings:
    """The run's ``dask`` config group (``configs/dask/default.yaml``), checked.

    Attributes:
        address: scheduler address, None = a local cluster (:func:`dask_client`).
        n_workers, threads_per_worker, processes: the local cluster's shape.
        retries: times a failed task is run again (iota2 ``task_retry_limits``).
    """

    address: str | None = None
    n_workers: int = 2
    threads_per_worker: int = 1
    processes: bool = True
    retries: int = 0


#: the keys of a ``dask`` node, as :class:`DaskSettings`' fields (and ``engine``)
_KEYS = ("engine", "address", "n_workers", "threads_per_worker", "processes", "retries")


def _checked(node: Mapping[str, Any], names: Mapping[str, str]) -> DaskSettings | None:
    """``node`` (``engine`` and the cluster keys) as :class:`DaskSettings`, None if local.

    Args:
        node: the values by key (:data:`_KEYS`); absent keys take the defaults.
        names: the config name of each key, for errors (``dask.n_workers``).

    Raises:
        ConfigError: an unknown engine, or a bad value, named by ``names``.
    """
    engine = str(node.get("engine", "local"))
    if engine not in ENGINES:
        raise ConfigError(f"{names['engine']}={engine!r}: use local (this process) or dask (a "
                          f"dask.distributed cluster); e.g. {names['engine']}=dask")
    if engine == "local":
        return None
    values = {k: node.get(k, DaskSettings.__dataclass_fields__[k].default)
              for k in ("n_workers", "threads_per_worker", "retries")}
    for k, v in values.items():
        low = 0 if k == "retries" else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"{names[k]}={v!r}: expected an integer >= {low}; e.g. "
                              f"{names[k]}={max(low, 2) if k != 'retries' else 1}")
    return DaskSettings(address=node.get("address") or None,
                        processes=bool(node.get("processes", True)), **values)


def dask_settings(cfg: Mapping[str, Any]) -> DaskSettings | None:
    """The Dask settings of a run, or None when ``dask.engine`` is ``local`` (or unset).

    Args:
        cfg: a config with (or without) a ``dask`` node: the stages' composed config, or
            the tiler's.

    Raises:
        ConfigError: an unknown ``dask.engine``, a negative ``dask.retries``, or
            ``dask.n_workers`` / ``dask.threads_per_worker`` below 1.
    """
    return _checked(cfg.get("dask") or {}, {k: f"dask.{k}" for k in _KEYS})


def _select(cfg: Any, key: str) -> Any:
    """``key`` of ``cfg`` resolved; None when absent or unresolvable (no ``dask`` group)."""
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)


def infer_settings(cfg: Any) -> DaskSettings | None:
    """The Dask settings of ``infer``: the run's ``dask`` group, or None for a local run.

    ``infer.engine`` and ``infer.dask.{address,n_workers,threads_per_worker,processes}``
    (the keys of the former infer-only cluster, kept) default to the ``dask`` keys
    (``configs/infer/default.yaml``); one set on its own applies to infer only (logged).
    ``dask.retries`` applies to infer too (``infer.dask.retries`` overrides it).

    Args:
        cfg: the composed config (``infer``, ``dask``).

    Raises:
        ConfigError: an unknown ``infer.engine``, or a bad value (named ``infer.dask.<key>``
            when set there, else ``dask.<key>``).
    """
    node: dict[str, Any] = {}
    names = {k: f"dask.{k}" for k in _KEYS}
    own = []
    for k in _KEYS:
        value, run = _select(cfg, f"infer.{k}" if k == "engine" else f"infer.dask.{k}"), \
            _select(cfg, f"dask.{k}")
        if value is not None or run is not None:
            node[k] = run if value is None else value
        if value is not None and value != run:
            names[k] = "infer.engine" if k == "engine" else f"infer.dask.{k}"
            own.append(f"{names[k]}={value!r}")
    settings = _checked(node, names)
    if settings is not None and own:
        log.info("infer overrides the run's dask group with %s", ", ".join(own))
    return settings


class Task(NamedTuple):
    """One task of a stage: ``fn(*args)`` run on a worker (``fn`` and ``args`` picklable).

    The stages build plain ``(name, log, fn, args)`` tuples: the lower packages
    (features, samples) do not import this module.

    Attributes:
        name: what the task does, for messages (``tile T31TCJ, chunk 3``).
        log: the stem of its log file (``write_features_T31TCJ_chunk_3``).
        fn: a module-level function.
        args: its arguments.
    """

    name: str
    log: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]


class _ThreadFilter(logging.Filter):
    """Only the records of one thread: a worker's other threads run other tasks."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except ValueError:  # not in a worker
        return "this process"


def run_task(name: str, log_path: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one task on a worker, its ``i2dl`` log records (INFO and above) in ``log_path``.

    Every attempt appends to the file (a retried task shows each attempt), and a failure
    is logged there with its traceback before it is raised again (Dask then retries it or
    reports it). scikit-learn runs one job per task (:func:`_sequential_joblib`).

    Returns:
        ``fn(*args)``.
    """
    handler = logging.FileHandler(log_path, mode="a")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handler.setLevel(logging.INFO)
    handler.addFilter(_ThreadFilter(threading.get_ident()))
    package = logging.getLogger("i2dl")
    if package.getEffectiveLevel() > logging.INFO:  # a worker process configures no logging
        package.setLevel(logging.INFO)
    package.addHandler(handler)
    try:
        log.info("%s: started on %s", name, _worker_name())
        with _sequential_joblib():
            result = fn(*args)
        log.info("%s: done", name)
        return result
    except Exception:
        log.exception("%s: failed", name)
        raise
    finally:
        package.removeHandler(handler)
        handler.close()


def task_failure(task: Task, log_path: Path, retries: int, exc: BaseException) -> I2dlError:
    """The error raised when a task failed its last attempt: task, attempts, log, fix.

    An i2dl error keeps its class (an :class:`~i2dl.errors.InputDataError` stays one, so
    the CLI prints it without a traceback); any other exception becomes an
    :class:`~i2dl.errors.I2dlError` chained to it.
    """
    cause = f"{type(exc).__name__}: {exc}"
    fix = "fix the cause and run the stage again"
    if type(exc).__name__ == "KilledWorker":
        fix = ("its workers died (out of memory?): give them more memory, fewer "
               "dask.threads_per_worker or smaller chunks, and run the stage again")
    elif not retries:
        fix += " (or set dask.retries=N for transient failures: shared file systems)"
    msg = (f"{task.name} failed {retries + 1} time(s) on the Dask cluster (dask.retries="
           f"{retries}, iota2 task_retry_limits): {cause}. Its log: {log_path}; {fix}")
    if isinstance(exc, I2dlError):
        try:
            return type(exc)(msg)
        except TypeError:  # a subclass with another constructor
            pass
    return I2dlError(msg)


class TaskRunner:
    """Runs the named tasks of a stage on a Dask cluster and yields their results in order.

    The cluster starts at the first call (a stage that has nothing to compute, such as a
    ``prepare`` that reuses its store, starts none) and stops with :meth:`close`; each
    task logs to ``<log_dir>/<task.log>.log``. At most ``max_in_flight`` tasks are
    submitted and not yet consumed, so memory stays bounded whatever the number of
    tasks; results come back in the order of the tasks, so the outputs the stage writes
    from them are those of the serial run (or as they finish, ``ordered=False``, for a
    stage that places each result itself: infer's windows).

    Args:
        settings: the run's ``dask`` group (:func:`dask_settings`).
        log_dir: the folder of the task logs (created).
        max_in_flight: None = twice the cluster's threads.
    """

    def __init__(self, settings: DaskSettings, log_dir: Path,
                 max_in_flight: int | None = None) -> None:
        self.settings = settings
        self.log_dir = Path(log_dir)
        self.max_in_flight = max_in_flight
        self._stack = ExitStack()
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The connected :class:`distributed.Client` (the cluster starts on first use)."""
        if self._client is None:
            s = self.settings
            self._client = self._stack.enter_context(dask_client(
                s.address, s.n_workers, s.threads_per_worker, s.processes, key="dask"))
        return self._client

    def __call__(self, tasks: Iterable[tuple[str, str, Callable[..., Any], tuple[Any, ...]]],
                 ordered: bool = True) -> Iterator[Any]:
        """``fn(*args)`` of every task, run on the cluster, yielded in the tasks' order.

        Each task logs to ``<log_dir>/<task.log>.log`` and is submitted with
        ``retries=dask.retries`` (:func:`run_task`).

        Args:
            tasks: ``(name, log, fn, args)`` tuples (:class:`Task`), consumed lazily.
            ordered: False = yield the results as the tasks finish (any order).

        Raises:
            I2dlError: (or the task's own i2dl error class) a task failed
                ``dask.retries + 1`` times; the message names it and its log
                (:func:`task_failure`). The tasks not finished are cancelled.
        """
        from distributed import as_completed

        client = self.client
        limit = self.max_in_flight or max(2, 2 * sum(client.nthreads().values()))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        queue = (Task(*t) for t in tasks)
        in_flight: dict[Any, tuple[Task, Path]] = {}  # future -> task, in submission order
        finished = None if ordered else as_completed()

        def submit(task: Task) -> None:
            path = self.log_dir / f"{task.log}.log"
            path.unlink(missing_ok=True)  # a rerun's log starts afresh
            future = client.submit(
                run_task, task.name, str(path), task.fn, *task.args, pure=False,
                retries=self.settings.retries, key=f"{task.log}-{uuid.uuid4().hex[:8]}")
            in_flight[future] = (task, path)
            if finished is not None:
                finished.add(future)

        try:
            for task in islice(queue, limit):
                submit(task)
            while in_flight:
                future = next(iter(in_flight)) if finished is None else next(finished)
                task, path = in_flight.pop(future)
                try:
                    result = future.result()
                except Exception as exc:
                    raise task_failure(task, path, self.settings.retries, exc) from exc
                future.release()
                nxt = next(queue, None)
                if nxt is not None:
                    submit(nxt)
                yield result
        finally:
            client.cancel(list(in_flight))

    def close(self) -> None:
        """Close the rasters the workers hold open, and stop (or leave) the cluster."""
        if self._client is not None:
            try:
                self._client.run(close_worker_sources)
            finally:
                self._client = None
                self._stack.close()


@contextmanager
def task_runner(settings: DaskSettings | None, log_dir: Path) -> Iterator[TaskRunner | None]:
    """A :class:`TaskRunner` for ``settings``, closed at the end; None for ``dask.engine=local``.

    Source: iota2 runs each step of each tile as a task of a Dask scheduler (a
    ``LocalCluster`` or an existing one), with ``task_retry_limits`` and a log per task.
    """
    if settings is None:
        yield None
        return
    runner = TaskRunner(settings, log_dir)
    try:
        yield runner
    finally:
        runner.close()


def infer_runner(cfg: Any, run: Path) -> AbstractContextManager[TaskRunner | None]:
    """The :class:`TaskRunner` of ``infer`` (:func:`infer_settings`), None for a local run.

    Its tasks (the windows, :func:`dask_engine`) log to ``<run>/logs/infer/``.

    Raises:
        ConfigError: bad ``infer.engine`` / ``infer.dask`` / ``dask`` settings.
    """
    return task_runner(infer_settings(cfg), Path(run) / LOGS_DIR / "infer")
