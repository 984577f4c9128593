"""End-to-end tests of the main job on the real Slovenia example (short runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import zarr
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from i2dl.config import CONFIG_DIR, CONFIG_NAME, ROOT_DIR, register_resolvers
from i2dl.samples.store import LEARN, SELECTION, VAL
from tests.conftest import FAST, SLOVENIA, SMALL_LTAE


@pytest.fixture(scope="module")
def slovenia_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short `train` of a small LTAE on the Slovenia example, shared by the tests."""
    if not (SLOVENIA / "NDVI.tif").is_file():
        pytest.skip(f"real data absent: {SLOVENIA} (set I2DL_DATA to the shared data folder)")
    from i2dl.stages.train import run as run_train

    tmp = tmp_path_factory.mktemp("slovenia")
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name=CONFIG_NAME,
            overrides=[
                "+experiment=ltae",
                f"paths.output_dir={tmp / 'run'}",
                f"paths.store_dir={tmp / 'stores'}",
                *FAST,
                *SMALL_LTAE,
                "infer.chunk_size=64",  # several chunks on the 101 x 100 raster
                "infer.write_proba=true",
            ],
        )
    GlobalHydra.instance().clear()
    summary = run_train(cfg)
    return {"cfg": cfg, "summary": summary, "run": tmp / "run"}


def test_store_shapes_and_disjoint_split(slovenia_run: dict) -> None:
    store = zarr.open_group(slovenia_run["summary"]["store"], mode="r")
    n = store["X"].shape[0]
    assert store["X"].shape == (n, 68, 1)
    assert store["mask"].shape == (n, 68)
    for name in ("code", "polygon_id", "split", "row", "col", "region", "tile"):
        assert store[name].shape == (n,), name
    split, pid = store["split"][:], store["polygon_id"][:]
    assert set(np.unique(split)) == {LEARN, SELECTION, VAL}
    parts = {s: set(pid[split == s]) for s in (LEARN, SELECTION, VAL)}
    assert not parts[LEARN] & parts[VAL], "a polygon is in learn and val"
    assert not parts[SELECTION] & (parts[LEARN] | parts[VAL]), "a selection polygon elsewhere"
    # label 0 polygons (fid 16, 40, 41, 46 per the data README: four no-data polygons) absent
    assert 0 not in set(store["code"][:])
    assert set(store["code"][:]) <= {1, 2, 3, 4, 8}
    # every sample has at least one valid date, and X equals the raster at (row, col)
    assert store["mask"][:].any(axis=1).all()
    rows, cols = store["row"][:], store["col"][:]
    with rasterio.open(SLOVENIA / "NDVI.tif") as src:
        ndvi = src.read()  # (68, H, W)
    np.testing.assert_array_equal(store["X"][:][:, :, 0], ndvi[:, rows, cols].T)
    with rasterio.open(SLOVENIA / "CLM.tif") as c, rasterio.open(SLOVENIA / "IS_DATA.tif") as d:
        valid = (c.read() == 0) & (d.read() == 1)
    np.testing.assert_array_equal(store["mask"][:], valid[:, rows, cols].T)
    attrs = store.attrs
    assert len(attrs["dates"]) == 68 and attrs["dates"][0] == "2015-07-11"
    assert attrs["band_names"] == ["NDVI"]
    learn = split == LEARN
    x_learn = store["X"][:][learn][store["mask"][:][learn]]
    np.testing.assert_allclose(attrs["norm"]["mean"], [x_learn.mean()], rtol=1e-4)
    np.testing.assert_allclose(attrs["norm"]["std"], [x_learn.std()], rtol=1e-4)


def test_summary_and_checkpoint(slovenia_run: dict) -> None:
    summary = slovenia_run["summary"]
    run = slovenia_run["run"]
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("oa", "kappa", "f1_macro", "n_learn", "n_val", "n_classes", "best_checkpoint",
                "classif_map", "timings_s", "versions"):
        assert key in summary, key
    assert 0.0 <= summary["oa"] <= 1.0
    assert set(summary["timings_s"]) == {"prepare", "fit", "evaluate", "infer"}
    assert Path(summary["best_checkpoint"]).is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert any((run / "tb").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = acc.Tags()
    for key in ("learn/loss", "selection/loss", "selection/oa", "selection/kappa",
                "selection/fscore"):
        assert key in tags["scalars"], (key, tags["scalars"])
    assert any(t.startswith("lr-") for t in tags["scalars"]), tags["scalars"]
    # evaluate's run tb/evaluate: confusion matrix and the HParams tab (final metrics)
    acc = EventAccumulator(str(run / "tb" / "evaluate"))
    acc.Reload()
    tags = acc.Tags()
    assert "val/confusion_matrix" in tags["images"]
    summary = slovenia_run["summary"]
    assert "hparam/oa" in tags["scalars"]
    assert acc.Scalars("hparam/oa")[-1].value == pytest.approx(summary["oa"], abs=1e-6)
    for png in (run / "report" / "learning_curves.png", run / "maps" / "classif_preview.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    for stage in ("prepare", "fit", "evaluate", "infer", "train"):
        assert (run / "logs" / f"{stage}.log").stat().st_size > 0, stage


def test_confusion_matrix_total_is_val_pixel_count(slovenia_run: dict) -> None:
    run = slovenia_run["run"]
    store = zarr.open_group(slovenia_run["summary"]["store"], mode="r")
    n_val = int((store["split"][:] == VAL).sum())
    cm = pd.read_csv(run / "report" / "confusion_matrix.csv", index_col=0)
    assert int(cm.to_numpy().sum()) == n_val == slovenia_run["summary"]["n_val"]
    # rows are the reference: row sums are the val pixels per class
    y_val = store["code"][:][store["split"][:] == VAL]
    codes, counts = np.unique(y_val, return_counts=True)
    row_sums = dict(zip([int(i.split()[0]) for i in cm.index], cm.sum(axis=1), strict=True))
    for code, count in zip(codes, counts, strict=True):
        assert row_sums[int(code)] == count
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["oa"] == pytest.approx(np.trace(cm.to_numpy()) / n_val, abs=1e-6)
    assert (run / "report" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_map_grid_and_values(slovenia_run: dict) -> None:
    run = slovenia_run["run"]
    with rasterio.open(SLOVENIA / "NDVI.tif") as src:
        crs, transform, shape = src.crs, src.transform, src.shape
    codes = {c["code"] for c in slovenia_run["summary"]["classes"]}
    with rasterio.open(run / "maps" / "classif.tif") as m:
        assert m.crs == crs and m.transform == transform and m.shape == shape
        assert m.nodata == 0 and m.count == 1
        assert m.profile["tiled"] and m.profile.get("compress", "").lower() == "deflate"
        classif = m.read(1)
    assert set(np.unique(classif)) <= codes | {0}
    with rasterio.open(SLOVENIA / "CLM.tif") as c, rasterio.open(SLOVENIA / "IS_DATA.tif") as d:
        any_valid = ((c.read() == 0) & (d.read() == 1)).any(axis=0)
    np.testing.assert_array_equal(classif == 0, ~any_valid)
    with rasterio.open(run / "maps" / "confidence.tif") as m:
        conf = m.read(1)
        assert m.dtypes[0] == "float32" and m.crs == crs
    assert ((conf[any_valid] > 0) & (conf[any_valid] <= 1.0 + 1e-6)).all()
    with rasterio.open(run / "maps" / "proba.tif") as m:
        proba = m.read()
    assert proba.shape[0] == len(codes)
    np.testing.assert_allclose(proba.max(axis=0)[any_valid], conf[any_valid], rtol=1e-6)
    np.testing.assert_allclose(proba.sum(axis=0)[any_valid], 1.0, atol=1e-4)
    order = sorted(codes)
    best = np.asarray(order)[proba.argmax(axis=0)]
    np.testing.assert_array_equal(best[any_valid], classif[any_valid])
    assert not list((run / "maps").glob(".*tmp*"))


def test_second_prepare_reuses_store(slovenia_run: dict, caplog: pytest.LogCaptureFixture) -> None:
    from i2dl.samples.extract import prepare

    store = Path(slovenia_run["summary"]["store"])
    before = store.joinpath("zarr.json").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert prepare(slovenia_run["cfg"]) == store
    assert store.joinpath("zarr.json").stat().st_mtime_ns == before
    assert "reusing up-to-date sample store" in caplog.text


def test_cli_train_on_tiny_data(tmp_path: Path, tiny_dataset: dict) -> None:
    """`python -m i2dl train +experiment=ltae` through Hydra, in a subprocess."""
    run = tmp_path / "cli_run"
    cmd = [
        sys.executable, "-m", "i2dl", "train", "+experiment=ltae",
        f"hydra.run.dir={run}", f"paths.store_dir={tmp_path / 'stores'}",
        *tiny_dataset["overrides"], *FAST, *SMALL_LTAE,
    ]
    proc = subprocess.run(cmd, cwd=ROOT_DIR, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["experiment"] == "ltae"
    assert (run / "maps" / "classif.tif").is_file()
    assert (run / ".hydra" / "train" / "config.yaml").is_file()


def test_cli_reports_bad_input_without_traceback(tmp_path: Path, tiny_dataset: dict) -> None:
    cmd = [
        sys.executable, "-m", "i2dl", "prepare", f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.store_dir={tmp_path / 'stores'}", *tiny_dataset["overrides"],
        "data.data_field=nope",
    ]
    proc = subprocess.run(cmd, cwd=ROOT_DIR, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "'nope'" in out and "data.data_field" in out and "Traceback" not in out
    stores = tmp_path / "stores"  # nothing but the store's lock file (i2dl.io.files)
    assert not stores.exists() or all(p.suffix == ".lock" for p in stores.iterdir())


def test_unknown_stage_prints_usage() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "i2dl", "fly"], capture_output=True, text=True, cwd=ROOT_DIR
    )
    assert proc.returncode == 2 and "usage: python -m i2dl" in proc.stderr


def test_evaluate_again_replaces_its_tensorboard_entry(slovenia_run: dict) -> None:
    """A re-run of evaluate leaves one HParams entry, not one per run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from i2dl.stages import evaluate

    folder = slovenia_run["run"] / "tb" / "evaluate"
    before = sorted(folder.glob("events.out.tfevents.*"))
    evaluate.run(slovenia_run["cfg"])
    after = sorted(folder.glob("events.out.tfevents.*"))
    assert len(after) == len(before) and not set(after) & set(before)  # replaced
    acc = EventAccumulator(str(folder))
    acc.Reload()
    assert len(acc.Scalars("hparam/oa")) == 1
    assert len(acc.Images("val/confusion_matrix")) == 1
