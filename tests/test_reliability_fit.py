"""Issue 21, fit side: checkpoints and stores bound to their fit, verified store content.

Cases: a checkpoint copied from another run (5), ``model.yaml`` pointing at another store
(6), store attributes edited after writing (7); tracebacks turned into messages
(``model.optimizer.lr=-1``, ``n_estimators=0``, an unreadable ``last.ckpt``); unclear cases
(``+sampling.ratioo``, ``infer.device=cuda`` without CUDA, ``trainer=ddp`` with a
scikit-learn model, the DDP ``runs=2`` message).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from i2dl.config import check_config
from i2dl.errors import ConfigError, StoreError
from i2dl.io.layout import file_sha256, read_fit_state
from i2dl.samples.extract import prepare
from i2dl.samples.store import MANIFEST, read_info, store_digest, verify_store
from i2dl.stages import evaluate, fit
from i2dl.training.loops import fit_network
from i2dl.training.trained import load_models
from tests.conftest import FAST, SMALL_LTAE

RF = ["model=rf", "model.estimator.n_estimators=5", "model.estimator.n_jobs=1", "cpu_threads=1"]
LTAE = [*FAST, *SMALL_LTAE, "trainer.max_epochs=2", "cpu_threads=1", "datamodule.batch_size=32"]


def _edit_attrs(store: Path, edit: Any) -> None:
    """Edit the root ``zarr.json`` attributes of a store by hand, as a user could."""
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    edit(meta["attributes"])
    meta_path.write_text(json.dumps(meta))


def _double_mean(attrs: dict) -> None:
    attrs["norm"]["mean"] = [2 * v + 1 for v in attrs["norm"]["mean"]]
    if "offset" in attrs["norm"]:
        attrs["norm"]["offset"] = [2 * v + 1 for v in attrs["norm"]["offset"]]


def _swap_names(attrs: dict) -> None:
    a, b = attrs["classes"][0], attrs["classes"][1]
    a["name"], b["name"] = b["name"], a["name"]


def _with(cfg: DictConfig, **values: Any) -> DictConfig:
    out = cfg.copy()
    for key, value in values.items():
        OmegaConf.update(out, key, value, force_add=True)
    return out


# ---------------------------------------------------------------- case 7: store content


@pytest.mark.parametrize("edit", [_double_mean, _swap_names], ids=["norm stat", "class names"])
def test_edited_store_attributes_are_not_reused(tiny_dataset: dict, make_cfg, caplog,
                                                edit: Any) -> None:
    cfg = make_cfg(*tiny_dataset["overrides"])
    store = prepare(cfg)
    assert (store / MANIFEST).is_file()
    before = read_info(store)
    _edit_attrs(store, edit)
    with pytest.raises(StoreError, match=re.escape(str(store)) + r".*zarr\.json.*attributes"):
        verify_store(store)
    strict = _with(cfg, **{"store.rebuild_damaged": False})
    with pytest.raises(StoreError, match=r"zarr\.json.*store\.rebuild=true"):
        prepare(strict)
    with caplog.at_level(logging.WARNING, logger="i2dl.samples.extract"):
        assert prepare(cfg) == store
    assert "rebuilding it" in caplog.text and "reusing" not in caplog.text
    after = verify_store(store)  # rebuilt: the written statistics and names again
    assert after.class_names == before.class_names
    assert after.mean.tolist() == before.mean.tolist()


def test_manifest_is_written_last_and_covers_every_file(tiny_dataset: dict, make_cfg) -> None:
    store = prepare(make_cfg(*tiny_dataset["overrides"]))
    files = json.loads((store / MANIFEST).read_text())["files"]
    on_disk = {p.relative_to(store).as_posix() for p in store.rglob("*")
               if p.is_file() and p.name != MANIFEST}
    assert set(files) == on_disk and "zarr.json" in files and "X/zarr.json" in files
    newest = max((store / rel).stat().st_mtime_ns for rel in files)
    assert (store / MANIFEST).stat().st_mtime_ns >= newest
    (store / "X" / "c" / "extra").write_bytes(b"x")  # a file not written with the store
    with pytest.raises(StoreError, match="were not written with it"):
        verify_store(store)


# ---------------------------------------------------------------- case 5: checkpoints


def test_scikit_learn_model_from_another_run_is_refused_then_refitted(
    tiny_dataset: dict, make_cfg, tmp_path: Path, caplog
) -> None:
    cfg = make_cfg(*tiny_dataset["overrides"], *RF)
    store = prepare(cfg)
    fit.run(cfg, store)
    run = Path(cfg.paths.output_dir)
    other = _with(cfg, **{"paths.output_dir": str(tmp_path / "other"), "seed": 1,
                          "model.estimator.random_state": 1})
    fit.run(other, prepare(other))
    model = run / "checkpoints" / "model.joblib"
    state = read_fit_state(run)
    assert state["checkpoints"]["checkpoints/model.joblib"] == file_sha256(model)
    assert state["class_codes"] == [1, 2, 3] and state["store_digest"] == store_digest(store)
    shutil.copy(tmp_path / "other" / "checkpoints" / "model.joblib", model)

    with pytest.raises(StoreError, match=re.escape(str(model)) + r".*sha256.*resume=never"):
        evaluate.run(cfg)
    with pytest.raises(StoreError, match="not the one fit wrote"):
        load_models(run, "best")  # what infer loads
    with caplog.at_level(logging.INFO):
        fit.run(cfg, store)
    assert "not reusing" in caplog.text and "fresh" in caplog.text
    assert read_fit_state(run)["checkpoints"]["checkpoints/model.joblib"] == file_sha256(model)
    assert evaluate.run(cfg)["n_samples"] > 0


def test_deep_checkpoint_from_another_seed_is_refused_then_refitted(
    tiny_dataset: dict, make_cfg, tmp_path: Path, caplog
) -> None:
    cfg = make_cfg(*tiny_dataset["overrides"], *LTAE)
    store = prepare(cfg)
    fit.run(cfg, store)
    run = Path(cfg.paths.output_dir)
    other = _with(cfg, **{"paths.output_dir": str(tmp_path / "other"), "seed": 1})
    fit.run(other, prepare(other))
    best = run / "checkpoints" / "best.ckpt"
    written = file_sha256(best)
    shutil.copy(tmp_path / "other" / "checkpoints" / "best.ckpt", best)
    with pytest.raises(StoreError, match=re.escape(written[:16])):
        evaluate.run(cfg)
    with caplog.at_level(logging.WARNING):
        fit.run(cfg, store)
    assert f"not reusing {best}" in caplog.text
    assert file_sha256(best) == written  # the same seed refitted: the same weights


# ---------------------------------------------------------------- case 6: another store


def test_model_yaml_pointing_at_another_store_is_refused(tiny_dataset: dict, make_cfg,
                                                         tmp_path: Path) -> None:
    cfg = make_cfg(*tiny_dataset["overrides"], *RF)
    store = prepare(cfg)
    fit.run(cfg, store)
    other = prepare(_with(cfg, seed=7, **{"sampling.random_seed": 7,
                                          "sampling.selection_seed": 7}))
    assert other != store
    spec = Path(cfg.paths.output_dir) / "model.yaml"
    text = spec.read_text()
    assert f"store_digest: {store_digest(store)}" in text
    spec.write_text(text.replace(str(store), str(other)))
    with pytest.raises(StoreError, match=re.escape(str(other)) + ".*" + re.escape(str(store))):
        evaluate.run(cfg)
    with pytest.raises(StoreError, match="fitted on the store"):
        load_models(Path(cfg.paths.output_dir), "best")


def test_store_attributes_edited_after_fit_stop_infer_loading(tiny_dataset: dict,
                                                              make_cfg) -> None:
    cfg = make_cfg(*tiny_dataset["overrides"], *RF)
    store = prepare(cfg)
    fit.run(cfg, store)
    load_models(Path(cfg.paths.output_dir), "best")  # intact
    _edit_attrs(store, _double_mean)
    with pytest.raises(StoreError, match=r"zarr\.json.*store\.rebuild=true"):
        load_models(Path(cfg.paths.output_dir), "best")


# ---------------------------------------------------------------- tracebacks


class _Payload:
    """An object that torch.load(weights_only=True) refuses to unpickle."""


@pytest.mark.parametrize("damage", ["truncated", "pickled object"])
def test_unreadable_last_ckpt_starts_afresh_with_a_warning(tiny_dataset: dict, make_cfg,
                                                           caplog, damage: str) -> None:
    cfg = make_cfg(*tiny_dataset["overrides"], *LTAE)
    store = prepare(cfg)
    fit.run(cfg, store)
    run = Path(cfg.paths.output_dir)
    state = read_fit_state(run)
    state["status"] = "running"  # as a fit killed after its last checkpoint leaves it
    (run / "fit_state.json").write_text(json.dumps(state))
    last = run / "checkpoints" / "last.ckpt"
    if damage == "truncated":
        data = last.read_bytes()
        last.write_bytes(data[: len(data) // 3])
    else:
        torch.save({"state_dict": {}, "payload": argparse.Namespace(x=_Payload())}, last)
    with caplog.at_level(logging.WARNING):
        fit.run(cfg, store)
    assert f"cannot resume from {last}" in caplog.text and "resume=never" in caplog.text
    assert read_fit_state(run)["status"] == "done"
    # called directly (a DDP worker following rank 0) the loop names the fix too
    last.write_bytes(b"not a checkpoint")
    with pytest.raises(StoreError, match=re.escape(str(last)) + ".*resume=never"):
        fit_network(cfg, None, None, run, None, resume_from=last)  # type: ignore[arg-type]


@pytest.mark.parametrize(("override", "message"), [
    ("model.optimizer.lr=-1", "model.optimizer.lr=-1: expected a number > 0"),
    ("model.optimizer.lr=0", "model.optimizer.lr=0: expected a number > 0"),
    ("+experiment=rf model.estimator.n_estimators=0",
     "model.estimator.n_estimators=0: expected an integer >= 1"),
    ("+sampling.ratioo=0.5", "sampling.ratioo: unknown key .* did you mean sampling.ratio?"),
    ("+store.rebuld=true", "store.rebuld: unknown key .* did you mean store.rebuild?"),
    ("+model.encoder.d_modle=8", "model.encoder.d_modle: unknown key .*models.LTAE.* "
     "did you mean model.encoder.d_model?"),
    ("+experiment=rf trainer=ddp", "trainer=ddp with model 'rf': DDP trains deep models"),
])
def test_bad_values_are_refused_at_config_check(make_cfg, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(make_cfg(*override.split()))


def test_valid_added_keys_pass_the_checks(make_cfg) -> None:
    check_config(make_cfg("+trainer.limit_train_batches=2", "+data.tile=T31TCJ",
                          "+callbacks.spy._target_=lightning.pytorch.callbacks.Callback",
                          "model.scheduler={_target_:models.schedule.warmup_cosine,"
                          "_partial_:true}"))


def test_lr_refused_by_the_cli_before_any_work(tiny_dataset: dict, tmp_path: Path,
                                               capsys) -> None:
    from i2dl.cli import run_stage

    run = tmp_path / "cli_run"
    with pytest.raises(SystemExit) as exc:
        run_stage("train", [*tiny_dataset["overrides"], f"hydra.run.dir={run}",
                            f"paths.store_dir={tmp_path / 'cli_stores'}",
                            "model.optimizer.lr=-1"])
    assert exc.value.code == 2
    assert "model.optimizer.lr=-1" in capsys.readouterr().err
    assert not run.exists() and not (tmp_path / "cli_stores").exists()


def test_cuda_without_cuda_is_refused_at_config_check(make_cfg, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"infer.device='cuda': this machine has no CUDA"):
        check_config(make_cfg("infer.device=cuda"))
    with pytest.raises(ConfigError, match=r"trainer.accelerator='gpu'"):
        check_config(make_cfg("trainer.accelerator=gpu", "infer.device=cpu"))
    check_config(make_cfg("infer.device=auto"))


def test_ddp_refusal_names_only_what_was_set(make_cfg) -> None:
    with pytest.raises(ConfigError) as exc:
        check_config(make_cfg("trainer=ddp", "runs=2"))
    assert "runs=2 with trainer=ddp" in str(exc.value) and "kfold" not in str(exc.value)
    with pytest.raises(ConfigError, match="kfold=3 with trainer=ddp") as exc:
        check_config(make_cfg("trainer=ddp", "kfold=3"))
    assert "runs=" not in str(exc.value)


def test_ddp_refusal_of_the_runs_loop_names_only_what_was_set(make_cfg) -> None:
    from i2dl.training.runs import requested_runs

    with pytest.raises(ConfigError) as exc:
        requested_runs(make_cfg("trainer=ddp", "runs=2"))
    assert "runs=2 is not supported" in str(exc.value) and "kfold" not in str(exc.value)
