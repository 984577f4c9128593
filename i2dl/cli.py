"""Hydra entry points of the stages and the per-stage log file."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from i2dl.config import CONFIG_DIR, CONFIG_NAME, register_resolvers
from i2dl.errors import I2dlError

log = logging.getLogger(__name__)

STAGES = ("prepare", "fit", "evaluate", "infer", "train", "features-map")


@contextlib.contextmanager
def stage_logging(run_dir: str | Path, stage: str) -> Iterator[Path]:
    """Copy every log record of a stage to ``<run>/logs/<stage>.log``.

    Yields:
        The log file path.
    """
    log_dir = Path(run_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{stage}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    )
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


def stage_function(stage: str) -> Callable[[DictConfig], Any]:
    """The Python function of a stage, taking the composed config."""
    if stage == "prepare":
        from i2dl.pipeline import run_prepare as fn
    elif stage == "fit":
        from i2dl.pipeline import run_fit as fn
    elif stage == "evaluate":
        from i2dl.pipeline import run_evaluate as fn
    elif stage == "infer":
        from i2dl.pipeline import run_infer as fn
    elif stage == "train":
        from i2dl.pipeline import run_train as fn
    elif stage == "features-map":
        from i2dl.features_map import run_features_map as fn
    else:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return fn


def run_stage(stage: str, argv: list[str] | None = None) -> Any:
    """Run a stage under Hydra with command-line overrides.

    Args:
        stage: one of :data:`STAGES`.
        argv: Hydra overrides (``["+experiment=ltae", "seed=1"]``), ``-m`` for multirun;
            None reads them from ``sys.argv[1:]``.

    Returns:
        The stage's return value (single run).
    """
    register_resolvers()
    fn = stage_function(stage)
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a.startswith("task_name=") for a in args):
        args.append(f"task_name={stage}")
    result: dict[str, Any] = {}

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=CONFIG_NAME)
    def _entry(cfg: DictConfig) -> Any:
        try:
            result["value"] = fn(cfg)
        except I2dlError as exc:
            log.error("%s failed: %s", stage, exc)
            raise SystemExit(2) from None
        return result["value"]

    saved = sys.argv
    sys.argv = [f"i2dl {stage}", *args]
    try:
        _entry()
    finally:
        sys.argv = saved
    return result.get("value")
