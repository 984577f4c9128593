"""Every per-tile stage on Dask (issue 23): prepare, features-map and the tiler.

Each runs on a 2-worker LocalCluster (``dask.engine=dask``) and must write exactly what
the serial run writes; a task that fails once is retried (iota2 ``task_retry_limits``,
``dask.retries``), one that always fails is reported by name (tile, chunk) with its log.
The clusters are threads of the test process (``dask.processes=false``: starts in about
a second and lets a test break a task), except one run with worker processes, which
checks that the tasks pickle.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.windows
from rasterio.transform import from_origin
from shapely.geometry import box

import i2dl.features.feature_maps as feature_maps
import i2dl.samples.reading as reading
from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.maps.cluster import DaskSettings, TaskRunner, dask_settings
from i2dl.samples.store import ARRAY_DTYPES, open_store, read_array, store_digest
from i2dl.stages import features_map, prepare
from i2dl.stages.tiler import main as tiler_main
from tests.conftest import write_stack

#: a 2-worker local cluster of threads
DASK = ["dask.engine=dask", "dask.n_workers=2", "dask.processes=false"]


def _tifs(folder: Path) -> dict[str, bytes]:
    """Every GeoTIFF under ``folder`` by relative path -> its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*.tif"))}


def test_prepare_on_dask_writes_the_serial_store(make_cfg, tiny_dataset, tmp_path,
                                                 monkeypatch) -> None:
    monkeypatch.setattr(reading, "EXTRACT_BLOCK", 8)  # 3 strips x 3 blocks of 8 px
    base = tiny_dataset["overrides"]
    serial = prepare.run(make_cfg(*base, f"store.dir={tmp_path / 's1'}",
                                  f"paths.output_dir={tmp_path / 'r1'}"))
    dask = prepare.run(make_cfg(*base, *DASK, f"store.dir={tmp_path / 's2'}",
                                f"paths.output_dir={tmp_path / 'r2'}"))
    assert serial.name == dask.name  # the engine is not part of the store's identity
    a, b = open_store(serial), open_store(dask)
    for name in ARRAY_DTYPES:
        np.testing.assert_array_equal(read_array(a, name), read_array(b, name))
    assert len(read_array(a, "code")) > 0
    assert store_digest(serial) == store_digest(dask)  # every chunk and attribute
    logs = sorted(p.name for p in (tmp_path / "r2" / "logs" / "prepare").glob("*.log"))
    assert logs == [f"extract_samples_raster_rows_{r}.log" for r in ("0-8", "16-20", "8-16")]
    text = (tmp_path / "r2" / "logs" / "prepare" / "extract_samples_raster_rows_0-8.log")
    assert "sample extraction of rows 0-8: done" in text.read_text()
    assert not (tmp_path / "r1" / "logs" / "prepare").exists()


def _two_tiles_two_regions(tiny: dict, root: Path) -> list[str]:
    """The tiny stack cut into tiles T1 (columns 0-11) and T2 (12-23), and two eco-regions
    (rows 0-9, rows 10-19): overrides."""
    for tile, c0 in (("T1", 0), ("T2", 12)):
        (root / tile).mkdir(parents=True)
        for name, key in (("stack.tif", "raster"), ("clm.tif", "cloud")):
            with rasterio.open(tiny[key]) as src:
                win = rasterio.windows.Window(c0, 0, 12, 20)
                write_stack(root / tile / name, src.read(window=win), src.window_transform(win),
                            dtype=src.dtypes[0])
    t = tiny["transform"]
    halves = [box(*(t * (0, 10)), *(t * (24, 0))), box(*(t * (0, 20)), *(t * (24, 10)))]
    gpd.GeoDataFrame({"region": ["1", "2"]}, geometry=halves, crs="EPSG:32633").to_file(
        root / "regions.gpkg")
    return [f"data.raster='{root}/{{tile}}/stack.tif'",
            f"data.masks=[{{path:'{root}/{{tile}}/clm.tif',invalid_values:[1]}}]",
            "+data.list_tile=[T1,T2]", f"sampling.region_file={root / 'regions.gpkg'}",
            "sampling.region_field=region"]


def test_prepare_on_dask_with_tiles_and_regions(make_cfg, tiny_dataset, tmp_path,
                                                monkeypatch) -> None:
    monkeypatch.setattr(reading, "EXTRACT_BLOCK", 8)
    base = [*tiny_dataset["overrides"], *_two_tiles_two_regions(tiny_dataset, tmp_path / "in")]
    serial = prepare.run(make_cfg(*base, f"store.dir={tmp_path / 's1'}"))
    dask = prepare.run(make_cfg(*base, *DASK, f"store.dir={tmp_path / 's2'}"))
    a = open_store(serial)
    assert sorted(np.unique(read_array(a, "tile"))) == [0, 1]
    assert sorted(np.unique(read_array(a, "region"))) == [1, 2]
    assert store_digest(serial) == store_digest(dask)
    logs = tmp_path / "run" / "logs" / "prepare"
    assert {p.name for p in logs.glob("*.log")} >= {"extract_samples_T1_rows_0-8.log",
                                                   "extract_samples_T2_rows_16-20.log"}


def test_features_map_on_dask_worker_processes_writes_the_serial_files(
    make_cfg, tiny_dataset, tmp_path
) -> None:
    base = [*tiny_dataset["overrides"], "features_map.chunk_size=8"]  # 9 chunks
    make = [f"paths.output_dir={tmp_path / 'a'}"], [f"paths.output_dir={tmp_path / 'b'}"]
    features_map.run(make_cfg(*base, *make[0]))
    features_map.run(make_cfg(*base, *make[1], "dask.engine=dask", "dask.n_workers=2",
                              "dask.processes=true"))
    serial, dask = _tifs(tmp_path / "a"), _tifs(tmp_path / "b")
    assert len([k for k in serial if k.startswith("customF/")]) == 9
    assert "final/features_map.tif" in serial and "features/tiny/tmp/MaskCommunSL.tif" in serial
    assert serial.keys() == dask.keys()
    for name, data in serial.items():
        assert data == dask[name], name
    logs = tmp_path / "b" / "logs" / "features-map"
    assert len(list(logs.glob("write_features_tiny_chunk_*.log"))) == 9
    assert "tile tiny, chunk 4" in (logs / "write_features_tiny_chunk_4.log").read_text()


def _break_chunk(monkeypatch, chunk: int, times: int) -> list[int]:
    """Make ``chunk`` fail its first ``times`` attempts (the workers are threads here)."""
    tries = [0]
    real = feature_maps._feature_chunk

    def flaky(source, tile, out, i, *args):
        if i == chunk:
            tries[0] += 1
            if tries[0] <= times:
                raise InputDataError(f"simulated read error in chunk {i}")
        return real(source, tile, out, i, *args)

    monkeypatch.setattr(feature_maps, "_feature_chunk", flaky)
    return tries


def test_a_task_that_fails_once_is_retried(make_cfg, tiny_dataset, tmp_path,
                                           monkeypatch) -> None:
    base = [*tiny_dataset["overrides"], "features_map.chunk_size=8"]
    features_map.run(make_cfg(*base, f"paths.output_dir={tmp_path / 'a'}"))
    tries = _break_chunk(monkeypatch, chunk=4, times=1)
    features_map.run(make_cfg(*base, *DASK, "dask.retries=1",
                              f"paths.output_dir={tmp_path / 'b'}"))
    assert tries[0] == 2
    assert _tifs(tmp_path / "a") == _tifs(tmp_path / "b")
    text = (tmp_path / "b" / "logs" / "features-map" / "write_features_tiny_chunk_4.log")
    lines = text.read_text()
    assert lines.count("tile tiny, chunk 4 (window rows 8-16, cols 8-16): started") == 2
    assert "simulated read error in chunk 4" in lines and lines.endswith("done\n")


def test_a_task_that_always_fails_is_reported_by_name(make_cfg, tiny_dataset, tmp_path,
                                                      monkeypatch) -> None:
    tries = _break_chunk(monkeypatch, chunk=4, times=99)
    cfg = make_cfg(*tiny_dataset["overrides"], "features_map.chunk_size=8", *DASK,
                   "dask.retries=2")
    with pytest.raises(InputDataError) as err:  # the task's own error class
        features_map.run(cfg)
    assert tries[0] == 3
    log = tmp_path / "run" / "logs" / "features-map" / "write_features_tiny_chunk_4.log"
    msg = str(err.value)
    assert "tile tiny, chunk 4 (window rows 8-16, cols 8-16) failed 3 time(s)" in msg
    assert "dask.retries=2" in msg and "simulated read error in chunk 4" in msg
    assert str(log) in msg and "Traceback" in log.read_text()
    assert not (tmp_path / "run" / "final" / "features_map.tif").exists()


@pytest.fixture
def tiler_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A 2-tile raster grid (EPSG:32633) and a folder of two features in EPSG:32632."""
    grid, feats = tmp_path / "grid", tmp_path / "features"
    grid.mkdir()
    feats.mkdir()
    for i, name in enumerate(("T1", "T2")):
        write_stack(grid / f"{name}.tif", np.zeros((1, 30, 40)),
                    from_origin(400000.0 + 400 * i, 5000400.0, 10.0, 10.0), dtype="uint8")
    rng = np.random.default_rng(0)
    # the tiles' area seen from the next UTM zone, 12 m pixels
    origin = from_origin(-72000.0, 5026000.0, 12.0, 12.0)
    write_stack(feats / "ndvi.tif", rng.normal(0.5, 0.2, (1, 200, 200)), origin,
                crs="EPSG:32634")
    write_stack(feats / "landcover.tif", rng.integers(1, 9, (1, 200, 200)), origin,
                crs="EPSG:32634", dtype="uint8")
    return grid, feats


def test_tiler_on_dask_writes_the_serial_rasters(tiler_inputs, tmp_path) -> None:
    grid, feats = tiler_inputs
    args = [f"rasters_grid_path={grid}", f"features_path={feats}",
            "resampling.landcover=nearest"]
    assert tiler_main([*args, f"output_path={tmp_path / 'a'}"]) == 0
    assert tiler_main([*args, f"output_path={tmp_path / 'b'}", *DASK]) == 0
    serial, dask = _tifs(tmp_path / "a"), _tifs(tmp_path / "b")
    assert sorted(serial) == ["T1/landcover.tif", "T1/ndvi.tif", "T2/landcover.tif",
                              "T2/ndvi.tif"]
    assert serial == dask
    with rasterio.open(tmp_path / "b" / "T2" / "ndvi.tif") as src:
        values = src.read(1)  # covered: no nodata (-9999)
        assert src.crs == "EPSG:32633" and -1 < values.min() and values.max() < 2
    logs = tmp_path / "b" / "logs" / "FeaturesTiler"
    assert sorted(p.name for p in logs.glob("*.log")) == [
        "tile_T1_landcover.log", "tile_T1_ndvi.log", "tile_T2_landcover.log",
        "tile_T2_ndvi.log"]
    assert "tile T2: ndvi written" in (logs / "tile_T2_ndvi.log").read_text()


def test_tiler_names_the_task_whose_input_is_broken(tiler_inputs, tmp_path, capsys) -> None:
    grid, feats = tiler_inputs
    (feats / "broken.tif").write_bytes(b"not a GeoTIFF")
    out = tmp_path / "out"
    code = tiler_main([f"rasters_grid_path={grid}", f"features_path={feats}",
                       f"output_path={out}", *DASK, "dask.retries=1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "tile T1, feature broken failed 2 time(s) on the Dask cluster" in err
    assert "cannot open" in err and str(feats / "broken.tif") in err
    assert str(out / "logs" / "FeaturesTiler" / "tile_T1_broken.log") in err


def test_runner_keeps_the_error_class_and_order(tmp_path) -> None:
    runner = TaskRunner(DaskSettings(n_workers=2, processes=False), tmp_path / "logs",
                        max_in_flight=2)
    try:
        tasks = [(f"task {i}", f"task_{i}", pow, (i, 2)) for i in range(7)]
        assert list(runner(tasks)) == [i * i for i in range(7)]  # in order, 2 in flight
        bad = [("tile X, feature dem", "tile_X_dem", Path.read_text,
                (tmp_path / "missing.txt",))]
        with pytest.raises(Exception) as err:
            list(runner(bad))
        assert not isinstance(err.value, InputFileNotFoundError)
        assert "tile X, feature dem failed 1 time(s)" in str(err.value)
        assert "FileNotFoundError" in str(err.value) and "dask.retries=N" in str(err.value)
    finally:
        runner.close()


def test_the_dask_group_is_checked_and_followed_by_infer(make_cfg) -> None:
    assert dask_settings(make_cfg()) is None  # local by default
    cfg = make_cfg("dask.engine=dask", "dask.n_workers=3", "dask.retries=2")
    assert dask_settings(cfg) == DaskSettings(None, 3, 1, True, 2)
    assert cfg.infer.engine == "dask" and cfg.infer.dask.n_workers == 3
    assert make_cfg("infer.engine=dask").dask.engine == "local"  # infer only
    for bad, key in (("dask.engine=spark", "dask.engine"), ("dask.retries=-1", "dask.retries"),
                     ("dask.n_workers=0", "dask.n_workers")):
        with pytest.raises(ConfigError, match=key):
            dask_settings(make_cfg("dask.engine=dask", bad))
