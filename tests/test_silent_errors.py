"""Issue 10, "nothing silently wrong": each case reproduced, now a right result or an error.

Cases: string labels with a ``name:code`` nomenclature (2), +-inf inputs (3), damaged
reused stores (4), short rows and text cells in pixel tables (5).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
import zarr
from rasterio.windows import Window

from i2dl.errors import InputDataError, StoreError
from i2dl.io.nomenclature import read_class_names
from i2dl.io.raster import open_time_series
from i2dl.io.table import read_pixel_table
from i2dl.io.vector import read_reference
from i2dl.samples.extract import prepare
from i2dl.samples.store import LEARN, VAL, read_array, read_info, verify_store
from i2dl.stages.fit import existing_store
from tests.conftest import write_stack

# ---------------------------------------------------------------- case 2: string labels


def _string_label_cfg(tiny_dataset: dict, make_cfg, tmp_path: Path, nomenclature: str):
    """The tiny dataset labelled by its ``name`` field (class1..class3), with a nomenclature."""
    path = tmp_path / "nomenclature.txt"
    path.write_text(nomenclature)
    return make_cfg(*tiny_dataset["overrides"], "data.data_field=name",
                    f"data.nomenclature={path}")


def test_string_labels_take_their_nomenclature_code(tiny_dataset: dict, make_cfg,
                                                    tmp_path: Path) -> None:
    """Labels class1..class3 get the nomenclature's codes, not 1..3 alphabetically."""
    cfg = _string_label_cfg(tiny_dataset, make_cfg, tmp_path, "class3:1\nclass1:2\nclass2:7\n")
    store = prepare(cfg)
    info = read_info(store)
    assert info.class_codes == [1, 2, 7]
    assert info.class_names == ["class3", "class1", "class2"]
    group = zarr.open_group(str(store), mode="r")
    row, col = read_array(group, "row"), read_array(group, "col")
    truth = tiny_dataset["label"][row, col]  # the class1/2/3 of each pixel, 1..3
    expected = np.array([0, 2, 7, 1])[truth]  # class1 -> 2, class2 -> 7, class3 -> 1
    np.testing.assert_array_equal(read_array(group, "code"), expected)


def test_string_label_missing_from_nomenclature_is_an_error(tiny_dataset: dict, make_cfg,
                                                            tmp_path: Path) -> None:
    cfg = _string_label_cfg(tiny_dataset, make_cfg, tmp_path,
                            "class1:1\nclass2:2\nclasse3:3\n")
    with pytest.raises(InputDataError, match=r"'class3' \(fid \[7, 8, 9\]\) is not in the "
                       r"nomenclature \(did you mean 'classe3'\?\).*data.nomenclature=null"):
        prepare(cfg)
    assert not any(Path(cfg.store.dir).glob("*.zarr"))


def test_slovenia_names_get_the_codes_of_their_ids(slovenia_dir: Path, tmp_path: Path) -> None:
    """Real data: LULC_NAME read with the nomenclature gives the LULC_ID of every polygon."""
    with rasterio.open(slovenia_dir / "NDVI.tif") as src:
        crs, bounds = src.crs, tuple(src.bounds)
    nomenclature = read_class_names(slovenia_dir / "nomenclature.txt")
    # the data spells shrubland "schrubland": a clear error, not a wrong code
    with pytest.raises(InputDataError, match=r"'schrubland' .*did you mean 'shrubland'"):
        read_reference(slovenia_dir / "reference.gpkg", "LULC_NAME", crs, bounds,
                       nomenclature=nomenclature)
    fixed = {c: ("schrubland" if n == "shrubland" else n) for c, n in nomenclature.items()}
    by_name = read_reference(slovenia_dir / "reference.gpkg", "LULC_NAME", crs, bounds,
                             nomenclature=fixed)
    by_id = read_reference(slovenia_dir / "reference.gpkg", "LULC_ID", crs, bounds)
    np.testing.assert_array_equal(by_name.polygons["polygon_id"], by_id.polygons["polygon_id"])
    np.testing.assert_array_equal(by_name.polygons["code"], by_id.polygons["code"])
    assert by_name.class_names[2] == "forest"


# ---------------------------------------------------------------- case 3: +-inf inputs


def test_inf_in_raster_is_invalid(tiny_dataset: dict, make_cfg, tmp_path: Path) -> None:
    series = tiny_dataset["series"].copy()  # (T, C, H, W)
    series[1, 0, 1:5, 1:7] = np.inf  # date 2 of the first polygon of class 1
    series[3, 1, 7:11, 1:7] = -np.inf  # date 4 of the first polygon of class 2
    t, c, h, w = series.shape
    write_stack(tiny_dataset["raster"], series.reshape(t * c, h, w), tiny_dataset["transform"])
    with open_time_series(tiny_dataset["raster"], tiny_dataset["dates_file"], ["b1", "b2"]) as ts:
        x, valid = ts.read()
    assert not valid[1:5, 1:7, 1].any() and not valid[7:11, 1:7, 3].any()
    assert valid[1:5, 1:7, 0].all()
    assert np.isnan(x[1:5, 1:7, 1, 0]).all() and not np.isinf(x).any()

    info = read_info(prepare(make_cfg(*tiny_dataset["overrides"])))
    assert np.isfinite(info.mean).all() and np.isfinite(info.std).all()
    assert (np.abs(info.mean) < 3).all()  # values are around +-1..3


def test_inf_from_an_external_feature_is_invalid(slovenia_dir: Path, tmp_path: Path) -> None:
    """A user's external feature returning +-inf marks those dates invalid, never stored."""
    from i2dl.features.source import open_feature_stack

    module = tmp_path / "inf_feature.py"
    module.write_text(
        "import numpy as np\n"
        "def spiky(data):\n"
        "    out = np.zeros((*data.get('NDVI').shape[:2], 1), np.float32)\n"
        "    out[:5] = np.inf\n"
        "    out[5:10] = -np.inf\n"
        "    return out, ['spiky']\n"
    )
    data = {
        "name": "slo", "tile": "slo", "gapfilling": {"enabled": False},
        "sensors": {"stack": {"raster": str(slovenia_dir / "NDVI.tif"),
                              "dates_file": str(slovenia_dir / "dates.txt"),
                              "band_names": ["NDVI"]}},
        "external_features": {"module": str(module), "functions": ["spiky"]},
    }
    with open_feature_stack(data) as stack:
        x, valid = stack.read(Window(0, 0, 20, 20))
    assert np.isfinite(x).all()
    assert not valid[:10].any() and valid[10:].any()


def _table(path: Path, rows: list[list]) -> Path:
    pd.DataFrame(rows).to_csv(path, header=False, index=False)
    return path


def _table_rows(t: int = 2, c: int = 2) -> list[list]:
    rng = np.random.default_rng(0)
    return [[k, 10 * k + p, *rng.normal(k, 0.1, t * c)]
            for k in (1, 2) for p in range(4) for _ in range(3)]


def test_inf_in_table_is_missing(make_cfg, tmp_path: Path) -> None:
    rows = _table_rows()
    rows[0][2] = np.inf  # date 1, channel 1
    rows[5][5] = -np.inf  # date 2, channel 2
    path = _table(tmp_path / "t.csv", rows)
    assert "inf" in path.read_text()
    table = read_pixel_table(path, n_dates=2, n_channels=2)
    assert not table.valid[0, 0] and not table.valid[5, 1]
    assert table.valid.sum() == table.valid.size - 2
    assert not np.isinf(table.x).any()

    cfg = make_cfg("data=formosat2_crops", "data.name=inf_table", f"data.table={path}",
                   "data.n_dates=2", "data.band_names=[b1,b2]", "data.label_offset=0",
                   "data.nomenclature=null")
    info = read_info(prepare(cfg))
    assert np.isfinite(info.mean).all() and np.isfinite(info.std).all()


# ---------------------------------------------------------------- case 5: strict tables


def test_short_row_is_refused_not_padded(tmp_path: Path) -> None:
    rows = "1,1,0.1,0.2,0.3,0.4\n1,2,0.1,0.2,0.3\n2,3,0.1,0.2,0.3,0.4\n"
    path = tmp_path / "short.csv"
    path.write_text(rows)
    with pytest.raises(InputDataError, match=r"short\.csv: rows with a wrong number of "
                       r"columns \(line 2: 5 cells;.*every row needs 6"):
        read_pixel_table(path, n_dates=2, n_channels=2)


@pytest.mark.parametrize("cell", ["abc", "null", "N/A", "-"])
def test_text_cell_is_refused_not_missing(tmp_path: Path, cell: str) -> None:
    path = tmp_path / "text.csv"
    path.write_text(f'1,1,0.1,0.2,0.3,0.4\n2,2,0.1,"{cell}",0.3,0.4\n')
    with pytest.raises(InputDataError, match=r"text\.csv: values that are not numbers "
                       rf"\(line 2, column 4: '{cell}'"):
        read_pixel_table(path, n_dates=2, n_channels=2)


def test_empty_and_nan_cells_are_missing(tmp_path: Path) -> None:
    path = tmp_path / "na.csv"
    path.write_text("1,1,0.1,,0.3,0.4\n2,2,NA,0.2,nan,NaN\n")
    table = read_pixel_table(path, n_dates=2, n_channels=2)
    np.testing.assert_array_equal(table.valid, [[False, True], [False, False]])


# ---------------------------------------------------------------- case 4: damaged stores


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4] = bytes(b ^ 0xFF for b in data[mid : mid + 4])
    path.write_bytes(bytes(data))


def _set_val_to_learn(store: Path) -> None:
    split = zarr.open_array(str(store / "split"), mode="r+")
    values = np.asarray(split[:])
    values[values == VAL] = LEARN
    split[:] = values


DAMAGES = {
    "deleted X chunk": lambda s: (s / "X" / "c" / "1" / "0" / "0").unlink(),
    "deleted split chunk": lambda s: (s / "split" / "c" / "1").unlink(),
    "garbled X chunk": lambda s: _flip_bytes(s / "X" / "c" / "0" / "0" / "0"),
    "truncated X/zarr.json": lambda s: (s / "X" / "zarr.json").write_text(
        (s / "X" / "zarr.json").read_text()[:40]),
    "missing array": lambda s: shutil.rmtree(s / "mask"),
    "truncated root zarr.json": lambda s: (s / "zarr.json").write_text(
        (s / "zarr.json").read_text()[:100]),
    "split rewritten": _set_val_to_learn,
}


@pytest.fixture
def tiny_store(tiny_dataset: dict, make_cfg) -> tuple[Any, Path]:
    """The tiny dataset's store in chunks of 64 samples (216 samples, 4 chunks)."""
    cfg = make_cfg(*tiny_dataset["overrides"], "store.samples_per_chunk=64")
    return cfg, prepare(cfg)


def test_intact_store_is_verified_and_reused(tiny_store: tuple[Any, Path], caplog) -> None:
    cfg, store = tiny_store
    stamp = (store / "X" / "zarr.json").stat().st_mtime_ns
    assert verify_store(store).n_samples == 216
    with caplog.at_level(logging.INFO, logger="i2dl.samples.extract"):
        assert prepare(cfg) == store
    assert "reusing up-to-date sample store" in caplog.text
    assert (store / "X" / "zarr.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_store_is_rebuilt_or_refused(tiny_store: tuple[Any, Path], caplog,
                                             damage: str) -> None:
    cfg, store = tiny_store
    before = {n: read_array(zarr.open_group(str(store), mode="r"), n) for n in ("X", "split")}
    DAMAGES[damage](store)
    with pytest.raises(StoreError, match=re.escape(str(store))):
        verify_store(store)

    strict = cfg.copy()
    strict.store.rebuild_damaged = False
    with pytest.raises(StoreError, match=re.escape(str(store)) + r".*store\.rebuild=true"):
        prepare(strict)
    with pytest.raises(StoreError, match=re.escape(str(store)) + r".*store\.rebuild=true"):
        existing_store(strict)

    with caplog.at_level(logging.WARNING, logger="i2dl.samples.extract"):
        assert prepare(cfg) == store
    assert f"sample store {store}" in caplog.text and "rebuilding it" in caplog.text
    verify_store(store)
    group = zarr.open_group(str(store), mode="r")
    np.testing.assert_array_equal(read_array(group, "split"), before["split"])
    np.testing.assert_array_equal(read_array(group, "X"), before["X"])


def test_evaluate_refuses_a_store_damaged_after_fit(tiny_dataset: dict, make_cfg) -> None:
    from i2dl.stages import evaluate, fit

    cfg = make_cfg(*tiny_dataset["overrides"], "store.samples_per_chunk=64", "model=rf",
                   "model.estimator.n_estimators=5", "model.estimator.n_jobs=1")
    store = prepare(cfg)
    fit.run(cfg, store)
    evaluate.run(cfg)  # intact: scored
    DAMAGES["deleted split chunk"](store)
    with pytest.raises(StoreError, match=re.escape(str(store)) + r".*store\.rebuild=true"):
        evaluate.run(cfg)
