"""Run an i2dl stage, pausing forever at the N-th call of a function (for kill tests).

Usage: ``python tests/pause_run.py MODULE:QUALNAME N FLAG -- STAGE [overrides]``.
The N-th call of ``MODULE.QUALNAME`` (e.g. ``models.base:SITSClassifier.on_train_epoch_start``)
writes the file ``FLAG`` and sleeps, so that the test can ``kill -9`` the process at that
point. When ``FLAG`` exists already, nothing is patched: re-running the same command is a
plain run. Run with ``PYTHONPATH`` set to the repository root.
"""

from __future__ import annotations

import functools
import importlib
import sys
import time
from pathlib import Path
from typing import Any


def pause_at(target: str, n: int, flag: Path) -> None:
    """Make the ``n``-th call of ``MODULE:QUALNAME`` write ``flag`` and sleep 600 s."""
    module_name, qualname = target.split(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = qualname.split(".")
    for part in parents:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = [0]

    @functools.wraps(original)
    def paused(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            flag.write_text("paused")
            time.sleep(600)
        return original(*args, **kwargs)

    setattr(owner, name, paused)


def main(argv: list[str]) -> int:
    """Patch, then run ``python -m i2dl`` with the arguments after ``--``."""
    split = argv.index("--")
    target, n, flag = argv[:split]
    if not Path(flag).exists():
        pause_at(target, int(n), Path(flag))
    from i2dl.cli import main as i2dl_main

    return int(i2dl_main(argv[split + 1 :]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
