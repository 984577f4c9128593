"""The chain's logs and task status (issue 22): run_informations.txt, tasks_status, logs.zip."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from i2dl.io.run_info import TaskStatus, write_logs_zip


def test_task_status_records_each_stage_and_a_failure(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"seed": 3, "model": {"name": "ltae"}})
    status = TaskStatus(tmp_path, cfg, command=["python", "-m", "i2dl", "train", "seed=3"])
    with status.stage("prepare"):
        tasks = json.loads((tmp_path / "logs" / "tasks_status.json").read_text())["tasks"]
        assert [(t["name"], t["state"]) for t in tasks] == [("prepare", "running")]
    with pytest.raises(ValueError, match="bad lr"), status.stage("fit"):
        raise ValueError("bad lr")
    tasks = json.loads((tmp_path / "logs" / "tasks_status.json").read_text())["tasks"]
    assert [(t["name"], t["state"]) for t in tasks] == [("prepare", "done"), ("fit", "failed")]
    assert all(t["duration_s"] >= 0 and t["end"] for t in tasks)
    assert tasks[1]["error"] == "ValueError: bad lr"
    # the SVG is well-formed and shows one box per stage, coloured by its state
    svg = ET.parse(tmp_path / "logs" / "tasks_status.svg").getroot()
    groups = svg.findall("{http://www.w3.org/2000/svg}g")
    assert [g.get("data-state") for g in groups] == ["done", "failed"]
    fills = [g.find("{http://www.w3.org/2000/svg}rect").get("fill") for g in groups]
    assert fills[0] != fills[1]
    text = (tmp_path / "logs" / "run_informations.txt").read_text()
    assert "python -m i2dl train seed=3" in text and "torch:" in text
    assert "fit        failed" in text and "ValueError: bad lr" in text
    assert "seed: 3" in text  # the config


def test_logs_zip_holds_the_logs_and_the_hydra_config(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "train.log").write_text("a line\n")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 0\n")
    TaskStatus(tmp_path, command=["x"]).write()
    path = write_logs_zip(tmp_path)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert zf.read("logs/train.log") == b"a line\n"
    assert names == {"logs/train.log", "logs/tasks_status.json", "logs/tasks_status.svg",
                     "logs/run_informations.txt", ".hydra/config.yaml"}
    write_logs_zip(tmp_path)  # rewritten, never containing itself
    with zipfile.ZipFile(path) as zf:
        assert "logs/logs.zip" not in zf.namelist()
