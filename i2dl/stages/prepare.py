"""Stage ``prepare``: build or reuse the sample store of the config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from i2dl.io.files import explain_disk_full, write_bytes_atomic
from i2dl.io.layout import CLASS_STATISTICS, LOGS_DIR, run_dir, stage_logging
from i2dl.maps.cluster import dask_settings, task_runner
from i2dl.samples.extract import class_statistics_path, prepare


def run(cfg: DictConfig) -> Path:
    """Build (or reuse when up to date) the Zarr sample store; copy its class statistics.

    With ``dask.engine=dask`` the sample extraction from rasters runs as Dask tasks, one
    per row of blocks of a tile, each logged to ``<run>/logs/prepare/`` (the cluster
    starts only when a store is built).

    Args:
        cfg: composed config (``data``, ``sampling``, ``store``, ``paths``, ``dask``).

    Returns:
        The store path. ``<run>/class_statistics.csv`` is iota2's per class, region, run
        and split report of polygons, available and selected pixels.

    Raises:
        i2dl.errors.I2dlError: bad reference data, rasters or configuration (see
            :func:`i2dl.samples.extract.prepare`).
        i2dl.io.files.DiskFullError: no space left, quota or file size limit reached while
            writing the store (the message names the file and the free space; a rerun
            after freeing space builds the store).
        ConfigError: bad ``dask`` settings.
    """
    out = run_dir(cfg)
    with stage_logging(out, "prepare"), explain_disk_full([Path(cfg.store.dir), out]), \
            task_runner(dask_settings(cfg), out / LOGS_DIR / "prepare") as run_tasks:
        store = prepare(cfg, run_tasks)
        stats = class_statistics_path(store)
        if stats.is_file():
            write_bytes_atomic(out / CLASS_STATISTICS, stats.read_bytes())
        return store
