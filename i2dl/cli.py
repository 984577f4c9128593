"""The command line: a table of stages, each run under Hydra with command-line overrides."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig

from i2dl.config import (
    CONFIG_DIR,
    CONFIG_NAME,
    check_config,
    check_output_folders,
    check_packages,
    register_resolvers,
    resolve_seed,
)
from i2dl.errors import I2dlError
from i2dl.training import ddp

log = logging.getLogger(__name__)

#: the stage being run, inherited by the processes Lightning's DDP launcher starts
STAGE_ENV = "I2DL_STAGE"


@dataclass(frozen=True)
class Stage:
    """One subcommand: ``python -m i2dl <name> ...``.

    Attributes:
        name: the subcommand.
        module: the module holding the stage (``run(cfg)`` for Hydra stages,
            ``main(argv)`` otherwise), imported when the stage runs.
        help: one line for the usage text.
        hydra: True = takes Hydra overrides and calls ``run(cfg)``; False = plain
            arguments, ``main(argv) -> exit status``.
    """

    name: str
    module: str
    help: str
    hydra: bool = True


#: Every subcommand, in the order of the usage text.
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("train", "i2dl.stages.train",
              "the main job: prepare -> fit -> evaluate -> infer "
              "(e.g. python -m i2dl train +experiment=ltae)"),
        Stage("prepare", "i2dl.stages.prepare",
              "rasters + reference polygons -> Zarr sample store"),
        Stage("fit", "i2dl.stages.fit", "train the model on the store"),
        Stage("evaluate", "i2dl.stages.evaluate", "best checkpoint on the val split -> report/"),
        Stage("infer", "i2dl.stages.infer", "chunked classification of the raster -> maps/"),
        Stage("features-map", "i2dl.stages.features_map",
              "feature time series (bands, indices, gap-filled dates, user and external "
              "features) per chunk, per tile, and their mosaic -> final/"),
        Stage("tiler", "i2dl.stages.tiler",
              "iota2's features tiler: rasters reprojected onto a tile grid (+ SRTM slope/"
              "aspect, WorldClim): python -m i2dl tiler [config=FILE] key=value ...",
              hydra=False),
        Stage("zonal-stats", "i2dl.stages.zonal_stats",
              "per-polygon class rates, majority, mean confidence and raster statistics of a "
              "map: python -m i2dl zonal-stats map=... zones=... out=...gpkg|.csv",
              hydra=False),
        Stage("report", "i2dl.stages.report",
              "aggregate runs (mean +- std, 95% interval, summed confusion matrix) and "
              "compare experiments: python -m i2dl report DIR [DIR ...] [--out DIR]",
              hydra=False),
    )
}


def usage() -> str:
    """The usage text: one line per stage."""
    width = max(len(n) for n in STAGES)
    lines = [
        "usage: python -m i2dl {" + "|".join(STAGES) + "} [hydra overrides]",
        *(f"  {s.name:<{width}}  {s.help}" for s in STAGES.values()),
        "A stage run alone on an existing run folder: add hydra.run.dir=<run folder>.",
    ]
    return "\n".join(lines)


def stage_function(name: str) -> Callable[..., Any]:
    """``run`` (Hydra stages) or ``main`` (plain stages) of a stage.

    Raises:
        ValueError: unknown stage.
    """
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    stage = STAGES[name]
    module = importlib.import_module(stage.module)
    fn: Callable[..., Any] = module.run if stage.hydra else module.main
    return fn


def run_stage(stage: str, argv: list[str] | None = None) -> Any:
    """Run a Hydra stage with command-line overrides.

    Args:
        stage: a Hydra stage of :data:`STAGES` (not ``report``).
        argv: Hydra overrides (``["+experiment=ltae", "seed=1"]``), ``-m`` for multirun;
            None reads them from ``sys.argv[1:]``.

    Returns:
        The stage's return value (single run).

    Before Hydra creates the run folder, a single run's config is composed and checked
    (:func:`i2dl.config.check_config`, writable run and store folders): a bad value stops
    the stage with nothing written. Multiruns are checked job by job. ``seed=null`` draws
    a seed, recorded in the run folder (:func:`i2dl.config.resolve_seed`).

    Raises:
        ValueError: unknown or non-Hydra stage.
        SystemExit: (status 2) an i2dl error (bad config value, read-only output folder,
            bad input data...), logged (or, before Hydra starts, printed) with its message.
    """
    register_resolvers()
    check_packages()
    if stage in STAGES and not STAGES[stage].hydra:
        raise ValueError(f"stage {stage!r} takes plain arguments: use main([{stage!r}, ...])")
    fn = stage_function(stage)
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a.startswith("task_name=") for a in args):
        args.append(f"task_name={stage}")
    if not any(a.startswith("-") for a in args):  # a single run, no Hydra flag
        try:
            precheck(args)
        except I2dlError as exc:
            print(f"i2dl {stage}: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    result: dict[str, Any] = {}

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=CONFIG_NAME)
    def _entry(cfg: DictConfig) -> Any:
        try:
            check_config(cfg)
            check_output_folders({"store.dir": cfg.store.dir})
            resolve_seed(cfg)
            if cfg.get("cpu_threads"):
                torch.set_num_threads(int(cfg.cpu_threads))
            result["value"] = fn(cfg)
        except I2dlError as exc:
            log.error("%s failed: %s", stage, exc)
            raise SystemExit(2) from None
        value = result["value"]
        # a sweeper (Optuna) maximises the float the task returns: see `objective`
        if cfg.get("objective") and isinstance(value, dict) and "objective" in value:
            return float(value["objective"])
        return value

    saved = sys.argv
    sys.argv = [f"i2dl {stage}", *args]
    # Lightning's DDP launcher re-runs `python -m i2dl <sys.argv[1:]>` in its child
    # processes: they find the stage here (see main)
    os.environ[STAGE_ENV] = stage
    try:
        _entry()
    finally:
        sys.argv = saved
    return result.get("value")


def precheck(overrides: list[str]) -> None:
    """Compose the config of a single run and check it before Hydra writes anything.

    Args:
        overrides: Hydra overrides of one run (no ``-m`` sweep).

    Raises:
        ConfigError: a bad config value (:func:`i2dl.config.check_config`), or a run or
            store folder that cannot be written (:func:`i2dl.config.check_output_folders`).
    """
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=CONFIG_NAME, overrides=overrides,
                          return_hydra_config=True)
    except HydraException:  # Hydra's own message comes from its real run below
        return
    finally:
        GlobalHydra.instance().clear()
    check_config(cfg)
    check_output_folders({"hydra.run.dir": cfg.hydra.run.dir, "store.dir": cfg.store.dir})


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``[stage, *arguments]`` to a stage; print the usage for an unknown one.

    Args:
        argv: ``[stage, *overrides]``; None reads ``sys.argv[1:]``.

    Returns:
        Exit status (0 success or help, 2 usage error; ``report``'s own status).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get(STAGE_ENV) in STAGES and ddp.is_worker() and (
            not args or args[0] not in STAGES):
        args = [os.environ[STAGE_ENV], *args]  # a DDP child process started by Lightning
    if not args or args[0] not in STAGES:
        if args and args[0] not in ("-h", "--help"):
            print(f"unknown stage {args[0]!r}", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    if not STAGES[args[0]].hydra:
        return int(stage_function(args[0])(args[1:]))
    run_stage(args[0], args[1:])
    return 0
