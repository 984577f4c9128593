"""The chain's logs and task status, as iota2 users know them (issue 22).

iota2 writes, for every run of its chain, ``logs/run_informations.txt`` (the command, the
configuration, the versions, and each step's start and end), a picture of its task graph
coloured by state (``tasks_status_<i>.svg``) and keeps every log in the output tree, so
that a user asking for help attaches one archive. i2dl writes the same into
``<run>/logs/``:

```
logs/tasks_status.json       the stages run, in order: state, start, end, duration (s)
logs/tasks_status.svg        the same as a chain of boxes (green done, orange running,
                             red failed), with the duration of each stage
logs/run_informations.txt    command, host, versions, the composed config, the stages
logs/logs.zip                every file of logs/ plus the Hydra config of the run
```

Each file is rewritten atomically whenever a stage starts or ends (:class:`TaskStatus`),
so a killed or failed run still shows where it stopped; ``logs.zip`` is written when the
job ends, failed or not (:func:`write_logs_zip`).
"""

from __future__ import annotations

import io
import json
import logging
import platform
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from i2dl.io.files import write_bytes_atomic, write_text_atomic
from i2dl.io.layout import LOGS_DIR, versions

log = logging.getLogger(__name__)

#: files of ``<run>/logs/`` (see the module's docstring)
TASKS_JSON = "tasks_status.json"
TASKS_SVG = "tasks_status.svg"
RUN_INFORMATIONS = "run_informations.txt"
LOGS_ZIP = "logs.zip"
#: task states and their colours in the SVG
COLOURS = {"done": "#6abf69", "running": "#f0ad4e", "failed": "#d9534f", "skipped": "#cccccc"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class TaskStatus:
    """The state of each stage of one run, kept in ``<run>/logs/`` (module docstring).

    Args:
        run: the run folder.
        cfg: the composed config, written into ``run_informations.txt``.
        command: the command line; default ``sys.argv``.
    """

    def __init__(self, run: str | Path, cfg: DictConfig | None = None,
                 command: list[str] | None = None) -> None:
        self.run = Path(run)
        self.logs = self.run / LOGS_DIR
        self.cfg = cfg
        self.command = list(sys.argv if command is None else command)
        self.started = _now()
        self.tasks: list[dict[str, Any]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Record the stage ``name`` as running, then done (or failed, and re-raise)."""
        task: dict[str, Any] = {"name": name, "state": "running", "start": _now(),
                                "end": None, "duration_s": None}
        self.tasks.append(task)
        self.write()
        t0 = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            task["state"] = "failed"
            task["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
            raise
        else:
            task["state"] = "done"
        finally:
            task["end"] = _now()
            task["duration_s"] = round(time.perf_counter() - t0, 3)
            self.write()

    def write(self) -> None:
        """Rewrite ``tasks_status.json``, ``tasks_status.svg`` and ``run_informations.txt``.

        Best effort: a folder that cannot be written is logged (a warning), never raised,
        so that the stage's own check reports it with its fix.
        """
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.logs / TASKS_JSON, json.dumps(
                {"run": str(self.run), "started": self.started, "tasks": self.tasks},
                indent=2))
            write_text_atomic(self.logs / TASKS_SVG, tasks_svg(self.tasks))
            write_text_atomic(self.logs / RUN_INFORMATIONS, self.informations())
        except OSError as exc:
            log.warning("task status not written in %s: %s", self.logs, exc)

    def informations(self) -> str:
        """The text of ``run_informations.txt``."""
        lines = [
            "i2dl run informations",
            f"run folder : {self.run}",
            f"command    : {' '.join(self.command)}",
            f"host       : {platform.node()} ({platform.platform()})",
            f"started    : {self.started}",
            "",
            "versions:",
            *(f"  {k}: {v}" for k, v in versions().items()),
            "",
            "stages (state, start, end, duration):",
        ]
        for t in self.tasks:
            duration = "" if t["duration_s"] is None else f"{t['duration_s']:.1f} s"
            lines.append(f"  {t['name']:<10} {t['state']:<8} {t['start']} -> "
                         f"{t['end'] or '...'} {duration}")
            if t.get("error"):
                lines.append(f"             {t['error']}")
        if self.cfg is not None:
            lines += ["", "config:", OmegaConf.to_yaml(self.cfg, resolve=False)]
        return "\n".join(lines) + "\n"


def tasks_svg(tasks: list[dict[str, Any]]) -> str:
    """A chain of boxes, one per task, coloured by state, with name and duration (SVG 1.1).

    Args:
        tasks: ``[{"name", "state", "duration_s"}, ...]`` in order.

    Returns:
        The SVG document, standalone (opens in a browser).
    """
    box_w, box_h, gap, pad = 130, 50, 40, 10
    width = pad * 2 + max(1, len(tasks)) * (box_w + gap) - gap
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{box_h + 2 * pad}" font-family="sans-serif" font-size="12">']
    for i, t in enumerate(tasks):
        x = pad + i * (box_w + gap)
        colour = COLOURS.get(str(t["state"]), "#ffffff")
        duration = "" if t.get("duration_s") is None else f"{float(t['duration_s']):.1f} s"
        parts.append(
            f'<g class="task" data-state="{escape(str(t["state"]))}">'
            f'<title>{escape(str(t["name"]))}: {escape(str(t["state"]))}</title>'
            f'<rect x="{x}" y="{pad}" width="{box_w}" height="{box_h}" rx="6" '
            f'fill="{colour}" stroke="#333"/>'
            f'<text x="{x + box_w / 2}" y="{pad + 20}" text-anchor="middle">'
            f'{escape(str(t["name"]))}</text>'
            f'<text x="{x + box_w / 2}" y="{pad + 38}" text-anchor="middle">'
            f'{escape(str(t["state"]))} {duration}</text></g>')
        if i:
            y = pad + box_h / 2
            parts.append(f'<line x1="{x - gap}" y1="{y}" x2="{x - 4}" y2="{y}" '
                         'stroke="#333" marker-end="url(#arrow)"/>')
    parts.insert(1, '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="8" '
                    'refY="4" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#333"/>'
                    '</marker></defs>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_logs_zip(run: str | Path) -> Path | None:
    """Archive ``<run>/logs/*`` (not the archive itself) and ``<run>/.hydra/*.yaml``.

    The archive a user attaches when asking for help; written atomically, the names inside
    relative to the run folder. Best effort, as :meth:`TaskStatus.write`.

    Returns:
        ``<run>/logs/logs.zip``, or None when it could not be written (logged).
    """
    run = Path(run)
    try:
        return _zip_logs(run)
    except OSError as exc:
        log.warning("logs.zip not written in %s: %s", run / LOGS_DIR, exc)
        return None


def _zip_logs(run: Path) -> Path:
    files = sorted(p for p in (run / LOGS_DIR).glob("*") if p.is_file() and p.name != LOGS_ZIP)
    files += sorted((run / ".hydra").glob("*.yaml"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(path, arcname=str(path.relative_to(run)))
    return write_bytes_atomic(run / LOGS_DIR / LOGS_ZIP, buffer.getvalue())
