"""Issue 10, security: a run folder is data, not code; outputs get normal permissions."""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from i2dl.config import CONFIG_DIR
from i2dl.errors import StoreError, UnsafeModelSpecError
from i2dl.io.files import write_text_atomic
from i2dl.io.layout import MODEL_SPEC
from i2dl.samples.extract import class_statistics_path, prepare
from i2dl.training.build import DataDims, build_classifier, check_model_targets, load_classifier
from tests.conftest import SMALL_LTAE

EVIL_MODULE = "i2dl_test_evil_user_module"


def _write_spec(model_dir: Path, model: dict[str, Any]) -> Path:
    spec = {"name": "x", "model": model, "in_channels": 1, "n_dates": 3, "n_classes": 2,
            "n_parameters": None, "store": str(model_dir / "no_store.zarr"), "region": None}
    model_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(spec), model_dir / MODEL_SPEC)
    return model_dir / MODEL_SPEC


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A file that exists only if a crafted spec ran code; a user module that creates it."""
    path = tmp_path / "pwned"
    (tmp_path / f"{EVIL_MODULE}.py").write_text(
        f"from pathlib import Path\nPath({str(path)!r}).touch()\n"
        "class Boom:\n    def __init__(self, *a, **k):\n        pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    sys.modules.pop(EVIL_MODULE, None)


def _crafted(marker: Path) -> dict[str, dict[str, Any]]:
    touch = f"touch {marker}"
    ltae = {"_target_": "models.LTAE", "d_model": 8}
    return {
        "os.system": {"_target_": "os.system", "command": touch},
        "user module": {"_target_": f"{EVIL_MODULE}.Boom"},
        "attribute walk": {"_target_": "models.SITSClassifier",
                           "encoder": {"_target_": "models.ltae.torch.save", "obj": 1, "f": touch}},
        "no recursion": {"_target_": "models.SklearnClassifier", "_recursive_": False,
                         "estimator": {"_target_": "builtins.eval", "_args_": ["1"]}},
        "in a list": {"_target_": "models.SITSClassifier", "encoder": ltae,
                      "head": {"_target_": "models.ClassifierHead",
                               "hidden": [{"_target_": "subprocess.call", "args": touch}]}},
        "sklearn non-estimator": {"_target_": "models.SklearnClassifier",
                                  "estimator": {"_target_": "sklearn.utils.Bunch"}},
        "torch function": {"_target_": "models.SITSClassifier", "encoder": ltae,
                           "optimizer": {"_target_": "torch.optim.os.system", "command": touch}},
    }


CASES = ["os.system", "user module", "attribute walk", "no recursion", "in a list",
         "sklearn non-estimator", "torch function"]


@pytest.mark.parametrize("case", CASES)
def test_crafted_model_yaml_is_refused(tmp_path: Path, marker: Path, case: str) -> None:
    model = _crafted(marker)[case]
    spec_path = _write_spec(tmp_path / "run", model)
    with pytest.raises(UnsafeModelSpecError, match=re.escape(str(spec_path)) + r": model\..*"
                       r"_target_ = '[\w.]+' is not allowed"):
        load_classifier(tmp_path / "run")
    assert not marker.exists()
    assert EVIL_MODULE not in sys.modules


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml")))
def test_every_shipped_model_config_is_allowed(make_cfg, name: str) -> None:
    cfg = make_cfg(f"model={name}", "+model.scheduler={_target_:models.schedule.warmup_cosine,"
                   "_partial_:true,warmup_fraction:0.05,min_lr_ratio:0.01}"
                   if name not in ("rf", "svm", "extra_trees") else "seed=0")
    check_model_targets(OmegaConf.to_container(cfg.model, resolve=True), "model.yaml")


def test_pickled_checkpoint_is_refused(make_cfg, tmp_path: Path, marker: Path) -> None:
    """torch.load(weights_only=True): a checkpoint holding a pickled object runs nothing."""
    cfg = make_cfg(*SMALL_LTAE)
    net = build_classifier(cfg.model, DataDims(n_channels=1, n_dates=4, n_classes=2))

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": net.state_dict(), "payload": Payload()}, path)
    with pytest.raises(StoreError, match=re.escape(str(path)) + ".*weights_only=True"):
        net.load_weights(path)
    assert not marker.exists()
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(StoreError, match=re.escape(str(path)) + ".*truncated"):
        net.load_weights(path)


def test_atomic_files_get_umask_permissions(tmp_path: Path, tiny_dataset: dict,
                                             make_cfg) -> None:
    old = os.umask(0o022)
    try:
        store = prepare(make_cfg(*tiny_dataset["overrides"]))
        assert stat.S_IMODE(class_statistics_path(store).stat().st_mode) == 0o644
        os.umask(0o027)
        path = write_text_atomic(tmp_path / "out" / "t.csv", "a,b\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)
