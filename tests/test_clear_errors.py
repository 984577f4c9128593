"""Clear errors instead of tracebacks or riddles (issue 10), each reproduced on tiny data.

Damaged GeoTIFF windows, reference files whose polygons are all labelled 0, all-NaN
rasters, a truncated ``model.joblib``, and a test table with a class unseen in training
(scored as errors, as the warning says).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from i2dl.errors import InputDataError, StoreError
from i2dl.io.raster import open_time_series, read_series_window
from i2dl.maps.engine import classify_raster
from i2dl.samples.extract import prepare
from i2dl.samples.store import read_info
from tests.conftest import write_stack


def _overrides(ds: dict, **data: object) -> list[str]:
    """The tiny dataset's overrides with some ``data.<key>`` values replaced."""
    out = [o for o in ds["overrides"] if o.split("=", 1)[0].removeprefix("data.") not in data]
    return out + [f"data.{k}={v}" for k, v in data.items()]


def _assert_no_store(tmp_path: Path) -> None:
    stores = tmp_path / "stores"
    # the store's lock file (filelock) may stay; no store, no temporary
    left = [p for p in stores.iterdir() if p.suffix != ".lock"] if stores.exists() else []
    assert not left, left


# ---------------------------------------------------------------- damaged GeoTIFF


def _damaged_copy(src: Path, dst: Path) -> Path:
    """A tiled, compressed copy of ``src`` whose last tile of band 1 is garbage."""
    with rasterio.open(src) as s:
        data, profile = s.read(), s.profile
    profile.update(tiled=True, blockxsize=16, blockysize=16, compress="deflate")
    with rasterio.open(dst, "w", **profile) as d:
        d.write(data)
    with rasterio.open(dst) as d:  # where GDAL put the tile (TIFF metadata domain)
        offset = int(d.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(d.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    raw = bytearray(dst.read_bytes())
    raw[offset : offset + size] = b"\xab" * size
    dst.write_bytes(bytes(raw))
    return dst


def test_damaged_raster_names_file_and_window(make_cfg, tiny_dataset, tmp_path) -> None:
    bad = _damaged_copy(tiny_dataset["raster"], tmp_path / "damaged.tif")
    with rasterio.open(bad) as src, pytest.raises(RasterioIOError):
        src.read()  # the file really is damaged
    cfg = make_cfg(*_overrides(tiny_dataset, raster=bad))
    with pytest.raises(InputDataError) as err:
        prepare(cfg)
    msg = str(err.value)
    # prepare reads the labelled pixels' bounding box of each block
    assert re.search(re.escape(f"cannot read {bad}, window rows ") + r"\d+\.\.\d+, columns", msg)
    assert "re-create or re-download it" in msg
    _assert_no_store(tmp_path)


def test_damaged_mask_is_the_file_named(tiny_dataset, tmp_path) -> None:
    bad = _damaged_copy(tiny_dataset["cloud"], tmp_path / "damaged_clm.tif")
    series = open_time_series(tiny_dataset["raster"], tiny_dataset["dates_file"], ["b1", "b2"],
                              [{"path": str(bad), "invalid_values": [1]}])
    with series, pytest.raises(InputDataError, match=re.escape(f"cannot read {bad}, window")):
        series.read(Window(0, 0, 24, 20))


def test_any_reader_error_names_source_and_window(tmp_path) -> None:
    class Broken:
        path = tmp_path / "T31TCJ"

        def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
            raise RasterioIOError("TIFFReadEncodedTile() failed")

    with pytest.raises(InputDataError) as err:
        read_series_window(Broken(), Window(512, 1024, 512, 256))
    assert f"cannot read {tmp_path / 'T31TCJ'}, window rows 1024..1279, columns 512..1023" in str(
        err.value
    )
    assert "TIFFReadEncodedTile" in str(err.value)


# ---------------------------------------------------------------- labels and values


def test_all_polygons_labelled_zero(make_cfg, tiny_dataset, tmp_path) -> None:
    gdf = tiny_dataset["gdf"].copy()
    gdf["code"] = 0
    path = tmp_path / "all_zero.gpkg"
    gdf.to_file(path, driver="GPKG")
    cfg = make_cfg(*_overrides(tiny_dataset, reference=path))
    with pytest.raises(InputDataError) as err:
        prepare(cfg)
    msg = str(err.value)
    assert msg.startswith(f"no labelled polygon in {path} (field 'code')")
    assert "nan" not in msg
    _assert_no_store(tmp_path)


@pytest.mark.parametrize("fill", ["nan", "nodata"])
def test_all_nan_or_nodata_raster_names_the_file(make_cfg, tiny_dataset, tmp_path,
                                                 fill: str) -> None:
    with rasterio.open(tiny_dataset["raster"]) as src:
        shape, transform = (src.count, src.height, src.width), src.transform
    path = tmp_path / f"all_{fill}.tif"
    if fill == "nan":
        write_stack(path, np.full(shape, np.nan), transform)
    else:
        write_stack(path, np.full(shape, -9999.0), transform)
        with rasterio.open(path, "r+") as dst:
            dst.nodata = -9999.0
    cfg = make_cfg(*_overrides(tiny_dataset, raster=path, masks="[]"))
    with pytest.raises(InputDataError) as err:
        prepare(cfg)
    msg = str(err.value)
    assert str(path) in msg and "has a valid observation" in msg
    assert "all-NaN or all-nodata raster" in msg
    _assert_no_store(tmp_path)


def test_all_nan_raster_gives_no_empty_map(make_cfg, tiny_dataset, tmp_path) -> None:
    store = read_info(prepare(make_cfg(*tiny_dataset["overrides"], "sampling.ratio=0.5")))
    with rasterio.open(tiny_dataset["raster"]) as src:
        shape, transform = (src.count, src.height, src.width), src.transform
    path = write_stack(tmp_path / "all_nan.tif", np.full(shape, np.nan), transform)
    series = open_time_series(path, tiny_dataset["dates_file"], ["b1", "b2"])

    def predict(x: torch.Tensor, days: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x), store.n_classes), 1.0 / store.n_classes)

    maps = tmp_path / "maps"
    with series, pytest.raises(InputDataError, match=rf"no pixel of {re.escape(str(path))} has"):
        classify_raster(series, store, predict, maps, torch.device("cpu"), progress=False)
    assert not maps.exists() or not any(p.suffix == ".tif" for p in maps.iterdir())


# ---------------------------------------------------------------- models and test tables


def _write_table(path: Path, labels: tuple[int, ...], n_poly: int = 4, t: int = 5,
                 c: int = 2) -> Path:
    """Five pixels per polygon, label l around 2 l in every band."""
    rng = np.random.default_rng(len(labels))
    rows = [
        [label, 100 * label + p, *rng.normal(label * 2.0, 0.2, size=t * c)]
        for label in labels for p in range(n_poly) for _ in range(5)
    ]
    pd.DataFrame(rows).to_csv(path, header=False, index=False)
    return path


def _table_run(make_cfg, tmp_path: Path, *overrides: str) -> object:
    train = _write_table(tmp_path / "train.csv", (0, 1))
    return make_cfg(
        "+experiment=rf", "data=formosat2_crops", "data.name=toy_table",
        f"data.table={train}", "data.n_dates=5", "data.band_names=[b1,b2]",
        "data.nomenclature=null", "model.estimator.n_estimators=5", "model.estimator.n_jobs=1",
        *overrides,
    )


def test_test_table_class_unseen_in_training_is_scored_as_errors(
    make_cfg, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    from i2dl.stages.train import run as run_train

    test = _write_table(tmp_path / "test.csv", (0, 1, 2), n_poly=2)  # label 2 -> code 3
    with caplog.at_level(logging.WARNING):
        summary = run_train(_table_run(make_cfg, tmp_path, f"test_table={test}"))
    assert "classes [3] (10 rows) unseen in training are scored as errors" in caplog.text
    report = tmp_path / "run" / "report" / "test"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n_samples"] == 30 == summary["test"]["n_samples"]
    cm = np.array(metrics["confusion_matrix"])
    assert [c["code"] for c in metrics["classes"]] == [1, 2, 3]
    assert cm[2].sum() == 10 and cm[2, 2] == 0 and cm[:, 2].sum() == 0  # never predicted
    assert metrics["oa"] == pytest.approx(np.trace(cm) / 30, abs=1e-4)
    assert np.trace(cm) <= 20  # the 10 unseen rows all count as errors
    assert metrics["classes"][2]["recall"] == 0.0
    csv = pd.read_csv(report / "confusion_matrix.csv", index_col=0)
    assert "3 3 (unseen in training)" in csv.index


def test_truncated_sklearn_model_says_refit(make_cfg, tmp_path) -> None:
    from i2dl.stages import evaluate
    from i2dl.stages.train import run as run_train

    cfg = _table_run(make_cfg, tmp_path)
    run_train(cfg)
    model = tmp_path / "run" / "checkpoints" / "model.joblib"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(StoreError) as err:
        evaluate.run(cfg)
    msg = str(err.value)
    # the sha256 recorded in fit_state.json catches it before joblib reads it (issue 21)
    assert f"checkpoint {model} is not the one fit wrote" in msg
    assert "truncated or damaged" in msg and "python -m i2dl train" in msg
