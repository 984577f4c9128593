"""The data configs of the real pixel-table datasets compose, prepare and train.

Each expected number is copied from the dataset's README in ``../shared/data/<name>/``
(not computed with the code under test): samples, dates, channels, classes, how the
polygon ids group samples, dates and class names.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from i2dl.errors import InputDataError
from i2dl.io.nomenclature import read_class_names
from i2dl.io.table import read_pixel_table
from i2dl.samples.extract import prepare
from i2dl.samples.store import LEARN, SELECTION, VAL
from tests.conftest import DATA_DIR, FAST, SMALL_LTAE

#: name -> what its README documents.
DATASETS = {
    "ucr_crop": {
        "n": 7200, "dates": 46, "bands": ["NDVI"], "classes": 24,
        "first_class": "mais (corn)", "last_class": "lac (lake)",
        "first_date": None, "last_date": None,
    },
    "campo_verde_mod13q1": {
        "n": 5501, "dates": 23, "bands": ["NDVI", "EVI", "BLUE", "RED", "NIR", "MIR"],
        "classes": 13, "first_class": "Cerrado", "last_class": "Soy_Sorghum",
        "first_date": "2015-09-14", "last_date": "2016-08-28",
    },
    "sits_matogrosso_mod13q1": {
        "n": 1514, "dates": 23, "bands": ["NDVI", "EVI", "BLUE", "RED", "NIR", "MIR"],
        "classes": 9, "first_class": "Cerrado", "last_class": "Soy_Sunflower",
        "first_date": "2015-09-14", "last_date": "2016-08-28",
    },
}


def _data(name: str) -> Path:
    folder = DATA_DIR / name
    if not (folder / "train.csv").is_file():
        pytest.skip(f"real data absent: {folder / 'train.csv'} (set I2DL_DATA to the shared "
                    "data folder)")
    return folder


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_config_prepares_the_documented_store(name: str, make_cfg) -> None:
    _data(name)
    doc = DATASETS[name]
    cfg = make_cfg(f"data={name}")
    assert cfg.data.name == name and cfg.data.raster is None
    store = zarr.open_group(str(prepare(cfg)), mode="r")
    assert store["X"].shape == (doc["n"], doc["dates"], len(doc["bands"]))
    assert store["mask"][:].all()  # the READMEs: no missing value
    assert store.attrs["band_names"] == doc["bands"]
    assert len(store.attrs["days"]) == doc["dates"]
    classes = store.attrs["classes"]
    assert [c["code"] for c in classes] == list(range(1, doc["classes"] + 1))  # label_offset 0
    assert (classes[0]["name"], classes[-1]["name"]) == (doc["first_class"], doc["last_class"])
    if doc["first_date"] is not None:
        dates = [str(d)[:10] for d in store.attrs["dates"]]
        assert (dates[0], dates[-1]) == (doc["first_date"], doc["last_date"])
        first = dt.date.fromisoformat(doc["first_date"])
        assert store.attrs["days"][-1] == (dt.date.fromisoformat(doc["last_date"]) - first).days
    # polygon-grouped split: no polygon id on two sides
    pid, split = store["polygon_id"][:], store["split"][:]
    sides = [set(pid[split == s].tolist()) for s in (LEARN, SELECTION, VAL)]
    assert all(not a & b for i, a in enumerate(sides) for b in sides[i + 1 :])
    assert (split == LEARN).any() and (split == VAL).any()


def test_documented_grouping_and_class_balance(make_cfg) -> None:
    for name in DATASETS:
        _data(name)
    ucr = zarr.open_group(str(prepare(make_cfg("data=ucr_crop"))), mode="r")
    assert len(set(ucr["polygon_id"][:].tolist())) == 7200  # one polygon id per pixel
    assert np.bincount(ucr["code"][:])[1:].tolist() == [300] * 24  # 300 per class
    cv = zarr.open_group(str(prepare(make_cfg("data=campo_verde_mod13q1"))), mode="r")
    names = {c["code"]: c["name"] for c in cv.attrs["classes"]}
    code = cv["code"][:]
    soy = np.isin(code, [k for k, v in names.items() if v in ("Soy_Corn", "Soy_Cotton")])
    assert round(float(soy.mean()), 2) == 0.69  # "Soy_Corn and Soy_Cotton hold 69 %"
    assert len(set(cv["polygon_id"][:].tolist())) < 5501 / 5  # parcels group pixels


def test_headerless_class_map(tmp_path: Path) -> None:
    path = tmp_path / "class_map.txt"
    path.write_text("1,mais (corn)\n2,ble (wheat)\n\n24,lac (lake)\n")  # as ucr_crop's
    assert read_class_names(path) == {1: "mais (corn)", 2: "ble (wheat)", 24: "lac (lake)"}
    path.write_text("1,Cerrado\n1,Forest\n")
    with pytest.raises(InputDataError, match=r"line 2: class code 1 .* already used"):
        read_class_names(path)
    path.write_text("forest:2\n")  # iota2 nomenclature, unchanged
    assert read_class_names(path) == {2: "forest"}


def test_table_errors_name_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("1,7,0.1,0.2\n\n2,8,0.3\n")
    with pytest.raises(InputDataError, match=r"wrong number of columns \(line 3: 3 cells;"):
        read_pixel_table(path, n_dates=2, n_channels=1)
    path.write_text("1,7,0.1,0.2\n\n2,8,0.3,abc\n")
    with pytest.raises(InputDataError, match=r"line 3, column 4: 'abc'"):
        read_pixel_table(path, n_dates=2, n_channels=1)
    path.write_text("class,pid,d1,d2\n1,7,0.1,0.2\n")
    with pytest.raises(InputDataError, match=r"column 1 \(line 1: 'class'\) \(a header line"):
        read_pixel_table(path, n_dates=2, n_channels=1)
    path.write_text("1,7,0.1,\n")  # an empty cell is a missing observation
    table = read_pixel_table(path, n_dates=2, n_channels=1)
    assert table.valid.tolist() == [[True, False]]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["ltae", "tempcnn", "rf"])
def test_train_on_sits_matogrosso(experiment: str, make_cfg, tmp_path: Path) -> None:
    from i2dl.stages.train import run as run_train

    _data("sits_matogrosso_mod13q1")
    extra = SMALL_LTAE if experiment == "ltae" else []
    cfg = make_cfg(f"+experiment={experiment}", "data=sits_matogrosso_mod13q1", *FAST, *extra)
    summary = run_train(cfg)
    assert summary["n_classes"] == 9 and summary["classif_map"] is None
    metrics = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    assert metrics["n_samples"] == summary["n_val"] > 0
