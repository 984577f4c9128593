"""Pixel-table input (Formosat-2 CSV format) and the external test-table evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from i2dl.errors import InputDataError
from i2dl.io.table import read_pixel_table
from i2dl.samples.extract import prepare
from i2dl.samples.store import LEARN, SELECTION, VAL
from tests.conftest import DATA_DIR, FAST, SMALL_LTAE

FORMOSAT = DATA_DIR / "formosat2_crops"


def _write_table(path: Path, n_poly: int = 4, per_poly: int = 5, t: int = 5, c: int = 2) -> Path:
    """Two classes (labels 0 and 1), polygons of per_poly pixels, class 1 brighter."""
    rng = np.random.default_rng(1)
    rows = []
    for label in (0, 1):
        for p in range(n_poly):
            for _ in range(per_poly):
                series = rng.normal(label * 2.0, 0.2, size=t * c)
                rows.append([label, 100 * label + p, *series])
    pd.DataFrame(rows).to_csv(path, header=False, index=False)
    return path


def _table_overrides(path: Path, t: int = 5) -> list[str]:
    return [
        "data=formosat2_crops",
        "data.name=toy_table",
        f"data.table={path}",
        f"data.n_dates={t}",
        "data.band_names=[b1,b2]",
        "data.nomenclature=null",
    ]


def test_read_pixel_table_is_date_major(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("3,7,1,2,3,4,5,6\n0,8,1,1,1,1,1,1\n")
    table = read_pixel_table(path, n_dates=3, n_channels=2, label_offset=1)
    np.testing.assert_array_equal(table.x[0], [[1, 2], [3, 4], [5, 6]])  # (T, C)
    np.testing.assert_array_equal(table.codes, [4, 1])
    np.testing.assert_array_equal(table.polygon_id, [7, 8])
    assert table.valid.all()


def test_bad_tables(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("1,7,1,2,3\n")
    with pytest.raises(InputDataError, match=r"has 5 columns .* needs 2 \+ 6 = 8"):
        read_pixel_table(path, n_dates=3, n_channels=2)
    path.write_text("1,7,1,2\nx,8,1,2\n")
    with pytest.raises(InputDataError, match=r"rows \[2\]"):
        read_pixel_table(path, n_dates=1, n_channels=2)


def test_table_store_is_polygon_grouped(make_cfg, tmp_path: Path) -> None:
    path = _write_table(tmp_path / "train.csv")
    store = zarr.open_group(str(prepare(make_cfg(*_table_overrides(path)))), mode="r")
    assert store["X"].shape == (40, 5, 2)
    pid, split, y = store["polygon_id"][:], store["split"][:], store["code"][:]
    assert not set(pid[split == LEARN]) & set(pid[split == VAL])
    assert set(y) == {1, 2}  # label_offset 1 of the formosat config
    # 4 polygons per class, ratio 0.75 -> 3 learn + selection, 1 val; selection_ratio 0.2
    # of the 3 learn polygons -> round(0.6) = 1 selection polygon
    for code in (1, 2):
        assert len(set(pid[(y == code) & (split == LEARN)])) == 2
        assert len(set(pid[(y == code) & (split == SELECTION)])) == 1
        assert len(set(pid[(y == code) & (split == VAL)])) == 1
    raw = pd.read_csv(path, header=None).to_numpy()
    order = np.argsort(raw[:, 1], kind="stable")
    np.testing.assert_allclose(
        store["X"][:][np.argsort(pid, kind="stable")].reshape(40, -1), raw[order, 2:], rtol=1e-6
    )


def test_train_on_table_with_external_test_set(make_cfg, tmp_path: Path) -> None:
    from i2dl.stages.train import run as run_train

    train = _write_table(tmp_path / "train.csv")
    test = _write_table(tmp_path / "test.csv", n_poly=2)
    cfg = make_cfg(*_table_overrides(train), *FAST, *SMALL_LTAE, "trainer.max_epochs=5",
                   f"test_table={test}")
    summary = run_train(cfg)
    run = tmp_path / "run"
    assert summary["classif_map"] is None  # no raster: no map
    metrics = json.loads((run / "report" / "test" / "metrics.json").read_text())
    assert metrics["n_samples"] == 20 == summary["test"]["n_samples"]
    cm = pd.read_csv(run / "report" / "test" / "confusion_matrix.csv", index_col=0)
    assert int(cm.to_numpy().sum()) == 20
    assert np.asarray(cm.sum(axis=1)).tolist() == [10, 10]


def test_formosat_store(make_cfg) -> None:
    if not (FORMOSAT / "train.csv").is_file():
        pytest.skip(f"real data absent: {FORMOSAT}")
    store = zarr.open_group(str(prepare(make_cfg("data=formosat2_crops"))), mode="r")
    assert store["X"].shape == (260, 149, 3)
    assert [c["name"] for c in store.attrs["classes"]][:2] == ["wheat", "barley"]
    assert [c["code"] for c in store.attrs["classes"]] == list(range(1, 14))
    raw = pd.read_csv(FORMOSAT / "train.csv", header=None).to_numpy()
    np.testing.assert_allclose(store["X"][:].reshape(260, -1), raw[:, 2:], rtol=1e-6)
    pid, split = store["polygon_id"][:], store["split"][:]
    assert not set(pid[split == LEARN]) & set(pid[split == VAL])


def test_polygon_with_two_labels_is_rejected(make_cfg, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("0,5,1,1,1,1,1,1,1,1,1,1\n1,5,2,2,2,2,2,2,2,2,2,2\n1,6,2,2,2,2,2,2,2,2,2,2\n")
    with pytest.raises(InputDataError, match=r"polygon ids \[5\] carry several classes"):
        prepare(make_cfg(*_table_overrides(path)))
    stores = tmp_path / "stores"  # nothing but the store's lock file (i2dl.io.files)
    assert not stores.exists() or all(p.suffix == ".lock" for p in stores.iterdir())
