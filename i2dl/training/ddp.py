"""Several processes training one model (Lightning's DDP): who decides, who follows.

With ``trainer=ddp`` Lightning starts one process per device: on one machine its launcher
re-runs the command in child processes (``LOCAL_RANK`` > 0), on a SLURM cluster ``srun``
starts every task (``SLURM_PROCID`` > 0). Every process runs ``prepare`` (one builds the
store under its lock, the others reuse it) and ``fit``; only **rank 0** plans the fit
(reuse, resume or fresh), cleans the run folder, writes ``fit_state.json``, checkpoints,
TensorBoard and the report, and goes on to ``evaluate`` and ``infer``. The other ranks
(workers) wait for rank 0's ``fit_state.json`` of the same launch (``launch`` field:
:data:`LAUNCH_ENV` inherited by the launcher's children, or the SLURM job and step ids)
and take its decision (``resume_from``), so that every process restores the same
checkpoint; after ``fit`` they stop.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from i2dl.errors import ConfigError
from i2dl.io.layout import FIT_STATE

log = logging.getLogger(__name__)

#: environment variable naming rank 0's launch; set by rank 0 before ``trainer.fit`` so
#: that the processes Lightning starts inherit it
LAUNCH_ENV = "I2DL_DDP_LAUNCH"
#: seconds a worker waits for rank 0's decision
WAIT_S = 3600.0


def process_rank(env: dict[str, str] | None = None) -> int:
    """This process's rank before Lightning starts: 0 unless a launcher said otherwise.

    Reads ``RANK`` (torchrun), ``SLURM_PROCID`` (srun with several tasks), ``NODE_RANK``
    and ``LOCAL_RANK`` (Lightning's launcher); the largest is returned (only "0 or not"
    matters here).
    """
    env = dict(os.environ) if env is None else env
    ranks = [env.get("RANK"), env.get("LOCAL_RANK"), env.get("NODE_RANK")]
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        ranks.append(env.get("SLURM_PROCID"))
    return max((int(r) for r in ranks if r and r.isdigit()), default=0)


def is_worker() -> bool:
    """True in a DDP process of rank > 0 (follows rank 0's fit, writes nothing)."""
    return process_rank() > 0


def launch_id(env: dict[str, str] | None = None) -> str | None:
    """The id shared by the processes of one launch, or None when none is known yet."""
    env = dict(os.environ) if env is None else env
    if env.get(LAUNCH_ENV):
        return env[LAUNCH_ENV]
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return f"slurm-{env['SLURM_JOB_ID']}-{env.get('SLURM_STEP_ID', '0')}"
    return None


def new_launch() -> str:
    """Rank 0: this launch's id (from SLURM, or a new one exported for the children)."""
    known = launch_id()
    if known is not None:
        return known
    os.environ[LAUNCH_ENV] = f"local-{uuid.uuid4().hex}"
    return os.environ[LAUNCH_ENV]


def wait_for_rank_zero(model_dir: Path, wait_s: float = WAIT_S) -> dict[str, Any]:
    """A worker: rank 0's ``fit_state.json`` of this launch (its plan), once written.

    Raises:
        ConfigError: no launch id in this process's environment, or rank 0 wrote no
            state for this launch within ``wait_s`` seconds.
    """
    launch = launch_id()
    if launch is None:
        raise ConfigError(
            f"this process has DDP rank {process_rank()} but no launch id ({LAUNCH_ENV}, or "
            "SLURM_JOB_ID with several tasks): start DDP runs through Lightning's launcher "
            "(trainer=ddp trainer.devices=N) or srun"
        )
    path = model_dir / FIT_STATE
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("launch") == launch:
            return state
        time.sleep(0.5)
    raise ConfigError(
        f"DDP rank {process_rank()}: rank 0 wrote no {path} for launch {launch} within "
        f"{wait_s:.0f} s; check rank 0's log (logs/fit.log)"
    )
