"""The command line: a table of stages, each run under Hydra with command-line overrides."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
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
from i2dl.errors import ConfigError, I2dlError
from i2dl.io.files import explain_disk_full, not_writable, run_folder_lock
from i2dl.io.layout import (
    CHECKPOINT_DIR,
    FINAL_DIR,
    LOGS_DIR,
    MAPS_DIR,
    REGIONS_DIR,
    REPORT_DIR,
    TB_DIR,
)
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


#: The sub-folders of a run folder that ``train`` and ``fit`` may write (any existing
#: sub-folder too: ``seed_<i>/``, ``fold_<i>/``, a tile's features).
RUN_OUTPUTS = (CHECKPOINT_DIR, TB_DIR, REPORT_DIR, MAPS_DIR, FINAL_DIR, LOGS_DIR, REGIONS_DIR)
#: The sub-folders that the other stages write (:func:`output_folders`).
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "prepare": (LOGS_DIR,),
    "evaluate": (REPORT_DIR, LOGS_DIR),
    "infer": (MAPS_DIR, FINAL_DIR, LOGS_DIR),
}


def output_folders(run: Path, stage: str) -> list[Path]:
    """The folders of a run that ``stage`` may write: run folder, sub-folders, theirs.

    ``prepare``, ``evaluate`` and ``infer`` write only their own sub-folders
    (:data:`STAGE_OUTPUTS`), so that a folder protected on purpose (a read-only
    ``checkpoints/``) does not stop them; ``train``, ``fit`` (which removes an older
    model's outputs) and the other stages any (:data:`RUN_OUTPUTS` and every existing
    sub-folder but ``.hydra``).

    Args:
        run: the run folder.
        stage: the stage name.

    Returns:
        The run folder, then each sub-folder (absent ones too: checked on their parent;
        a file in their place is refused) and every folder below an existing one
        (``maps/<tile>/``, ``maps/.infer-partial/``).
    """
    names = STAGE_OUTPUTS.get(stage)
    tops = [run / name for name in (names or RUN_OUTPUTS)]
    if names is None and run.is_dir():
        tops += [d for d in sorted(run.iterdir()) if d.is_dir() and d.name != ".hydra"]
    found = [run]
    for top in dict.fromkeys(tops):
        found.append(top)
        if top.is_dir():
            found += sorted(d for d in top.rglob("*") if d.is_dir())
    return found


def check_stage_outputs(run: Path, stage: str) -> None:
    """Refuse to start a stage that could not write one of its output folders.

    A read-only (``chmod``, ``chattr +i``, read-only mount) or missing-parent folder would
    otherwise stop the stage deep inside its work with a bare ``PermissionError``.

    Args:
        run: the run folder.
        stage: the stage name (see :func:`output_folders`).

    Raises:
        ConfigError: the folders that cannot be written, each with the reason, and the fix.
    """
    problems = [f"{folder}: {why}" for folder in output_folders(run, stage)
                if (why := not_writable(folder))]
    if problems:
        raise ConfigError(
            f"{stage} cannot write its outputs in the run folder {run}:\n  "
            + "\n  ".join(problems)
            + "\nMake them writable (chmod u+w; chattr -i if immutable) or give the run "
            "another folder (hydra.run.dir=...)"
        )


@contextmanager
def guarded_run(cfg: DictConfig, stage: str) -> Iterator[None]:
    """What every Hydra stage runs inside: output folders checked, run folder locked.

    Every folder the stage will write is checked writable (:func:`check_stage_outputs`),
    the run folder (``paths.output_dir``) is held by this process
    (:func:`i2dl.io.files.run_folder_lock`; not in DDP worker processes, whose rank 0
    holds it), and a full disk or file size limit while writing becomes a
    :class:`~i2dl.io.files.DiskFullError` naming the file and the free space.

    Raises:
        ConfigError: a folder the stage writes is read-only (or a file), or the run folder
            is used by another i2dl process.
        DiskFullError: no space left, quota or file size limit reached inside the block.
    """
    run = Path(cfg.paths.output_dir)
    with ExitStack() as stack:
        check_stage_outputs(run, stage)
        if not ddp.is_worker():
            stack.enter_context(run_folder_lock(run))
        stack.enter_context(explain_disk_full([run, Path(cfg.store.dir)]))
        yield


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
    the stage with nothing written. Multiruns are checked job by job. The stage then runs
    in :func:`guarded_run`: its run folder locked against a second i2dl process, every
    folder it writes checked writable, a full disk explained. ``seed=null`` draws
    a seed, recorded in the run folder (:func:`i2dl.config.resolve_seed`).

    Raises:
        ValueError: unknown or non-Hydra stage.
        SystemExit: (status 2) an i2dl error (bad config value, read-only output folder,
            run folder used by another process, disk full, bad input data...), logged
            (or, before Hydra starts, printed) with its message.
    """
    register_resolvers()
    check_packages()
    if stage in STAGES and not STAGES[stage].hydra:
        raise ValueError(f"stage {stage!r} takes plain arguments: use main([{stage!r}, ...])")
    fn = stage_function(stage)
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a.startswith("task_name=") for a in args):
        args.append(f"task_name={stage}")
    # a run folder named on the command line is held before Hydra writes its .hydra/ there
    early = ExitStack()
    if not any(a.startswith("-") for a in args):  # a single run, no Hydra flag
        try:
            run = precheck(args)
            if run is not None and not ddp.is_worker() and any(
                    a.startswith("hydra.run.dir=") and "${now:" not in a for a in args):
                early.enter_context(run_folder_lock(run))
        except I2dlError as exc:
            print(f"i2dl {stage}: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    result: dict[str, Any] = {}

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=CONFIG_NAME)
    def _entry(cfg: DictConfig) -> Any:
        try:
            check_config(cfg)
            check_output_folders({"store.dir": cfg.store.dir})
            with guarded_run(cfg, stage):
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
        with early:
            _entry()
    finally:
        sys.argv = saved
    return result.get("value")


def precheck(overrides: list[str]) -> Path | None:
    """Compose the config of a single run and check it before Hydra writes anything.

    Args:
        overrides: Hydra overrides of one run (no ``-m`` sweep).

    Returns:
        The run folder (``hydra.run.dir``), or None when Hydra cannot compose the config
        (its own run reports why).

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
        return None
    finally:
        GlobalHydra.instance().clear()
    check_config(cfg)
    check_output_folders({"hydra.run.dir": cfg.hydra.run.dir, "store.dir": cfg.store.dir})
    return Path(cfg.hydra.run.dir)


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
