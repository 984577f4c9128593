"""Inference engines: threaded read-ahead and Dask write the same maps as the serial path."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import rasterio
import torch
from rasterio.errors import RasterioIOError

from i2dl.errors import ConfigError, InputDataError
from i2dl.io.geotiff import block_windows
from i2dl.io.raster import open_time_series
from i2dl.maps.engine import classify_raster
from i2dl.maps.reading import read_windows
from i2dl.maps.run_maps import TileJob
from i2dl.stages import fit, infer, prepare
from tests.conftest import FAST, SMALL_LTAE
from tests.test_inference import _read, _setup, predict

CPU = torch.device("cpu")
MAPS = ("classif", "confidence", "proba")


class _Recorder:
    """Opens readers of the tiny stack and records which thread used each, and its close."""

    def __init__(self, tiny_dataset, cloud) -> None:
        self.args = (tiny_dataset["raster"], tiny_dataset["dates_file"], ["b1", "b2"])
        self.masks = [{"path": str(cloud), "invalid_values": [1]}]
        self.opened: list = []
        self.threads: set[int] = set()
        self.closed = 0

    def __call__(self):
        series = open_time_series(*self.args, masks=self.masks)
        read, close = series.read, series.close
        self.threads.add(threading.get_ident())

        def closing() -> None:
            self.closed += 1
            close()

        series.close = closing  # type: ignore[method-assign]
        series.read = read  # type: ignore[method-assign]
        self.opened.append(series)
        return series


def test_threaded_reading_writes_the_serial_maps(make_cfg, tiny_dataset, tmp_path) -> None:
    info, series = _setup(make_cfg, tiny_dataset, tmp_path)
    recorder = _Recorder(tiny_dataset, tmp_path / "clm_all.tif")
    with series:
        serial = classify_raster(series, info, predict, tmp_path / "serial", CPU, chunk_size=7,
                                 write_proba=True, progress=False, reader_threads=1, read_ahead=0)
        threaded = classify_raster(series, info, predict, tmp_path / "threads", CPU, chunk_size=7,
                                   write_proba=True, progress=False, reader_threads=3,
                                   read_ahead=4, open_reader=recorder)
    for name in MAPS:
        a, b = _read(getattr(serial, name)), _read(getattr(threaded, name))
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]
    assert serial.n_pixels == threaded.n_pixels and serial.n_nodata == threaded.n_nodata
    # the reader threads read through their own handles (not the main one), all closed
    assert len(recorder.opened) >= 2 and threading.get_ident() not in recorder.threads
    assert recorder.closed == len(recorder.opened)


def test_read_windows_yields_every_window_in_order(tiny_dataset) -> None:
    with open_time_series(tiny_dataset["raster"], tiny_dataset["dates_file"],
                          ["b1", "b2"]) as series:
        windows = block_windows(series.width, series.height, 5, "chunk")
        todo = [0, 3, 4, len(windows) - 1]
        whole, _ = series.read()
        got = list(read_windows(series, windows, todo, reader_threads=1, read_ahead=2))
    assert [i for i, _, _ in got] == todo
    for i, x, _ in got:
        w = windows[i]
        np.testing.assert_array_equal(
            x, whole[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
        )


def test_bad_reader_settings_are_refused(tiny_dataset) -> None:
    with open_time_series(tiny_dataset["raster"], tiny_dataset["dates_file"],
                          ["b1", "b2"]) as series:
        windows = block_windows(series.width, series.height, 5, "chunk")
        with pytest.raises(ConfigError, match="open_reader"):
            list(read_windows(series, windows, [0], reader_threads=2, read_ahead=1))
        with pytest.raises(ConfigError, match="read_ahead"):
            list(read_windows(series, windows, [0], reader_threads=1, read_ahead=-1))


def test_a_reader_thread_error_names_the_window_and_leaves_no_map(
    make_cfg, tiny_dataset, tmp_path
) -> None:
    info, series = _setup(make_cfg, tiny_dataset, tmp_path)
    recorder = _Recorder(tiny_dataset, tmp_path / "clm_all.tif")

    def failing():
        src = recorder()
        read = src.read

        def bad_read(window=None):
            if window is not None and window.row_off >= 14:
                raise RasterioIOError("TIFFReadEncodedTile() failed")
            return read(window)

        src.read = bad_read
        return src

    out = tmp_path / "broken"
    with series, pytest.raises(InputDataError, match=r"row_off=14|14"):
        classify_raster(series, info, predict, out, CPU, chunk_size=7, progress=False,
                        reader_threads=2, read_ahead=2, open_reader=failing)
    assert not (out / "classif.tif").exists() and not (out / "confidence.tif").exists()
    assert recorder.closed == len(recorder.opened)


@pytest.mark.parametrize(("experiment", "processes"), [("rf", "false"), ("ltae", "true")])
def test_dask_engine_writes_the_local_maps(
    make_cfg, tiny_dataset, tmp_path, experiment, processes
) -> None:
    """The stage with infer.engine=dask (a LocalCluster) gives the local engine's maps."""
    small = SMALL_LTAE if experiment == "ltae" else []
    base = [*tiny_dataset["overrides"], *FAST, *small, f"+experiment={experiment}",
            "infer.chunk_size=8", "infer.write_proba=true"]
    cfg = make_cfg(*base)
    prepare.run(cfg)
    fit.run(cfg)
    local = infer.run(make_cfg(*base, "infer.resume=false"))
    run = tmp_path / "run"
    saved = {name: _read(run / "maps" / f"{name}.tif")[0] for name in MAPS}
    dask = infer.run(make_cfg(*base, "infer.resume=false", "infer.engine=dask",
                              "infer.dask.n_workers=2", f"infer.dask.processes={processes}"))
    assert local is not None and dask is not None
    for name in MAPS:
        np.testing.assert_array_equal(saved[name], _read(run / "maps" / f"{name}.tif")[0])
    assert dask.n_pixels == local.n_pixels > 0
    assert "local Dask cluster: 2 workers" in (run / "logs" / "infer.log").read_text()
    # the former infer-only keys still work; every window logs (from the worker processes too)
    logs = sorted((run / "logs" / "infer").glob("classify_tiny_window_*.log"))
    assert len(logs) == 9 and all(p.read_text().endswith("done\n") for p in logs)
    with rasterio.open(run / "maps" / "classif.tif") as src:
        assert src.count == 1 and src.crs is not None


def test_tile_job_pickles_with_the_same_key(make_cfg, tiny_dataset, tmp_path) -> None:
    """What a real cluster's workers receive: a plain, picklable job with a stable key."""
    from omegaconf import OmegaConf

    cfg = make_cfg(*tiny_dataset["overrides"])
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "sampling")}
    job = TileJob(str(tmp_path), plain["data"], plain["sampling"], None, "best", "cpu",
                        "auto", True, False)
    again = pickle.loads(pickle.dumps(job))
    assert again == job and again.key == job.key
    other = TileJob(str(tmp_path), plain["data"], plain["sampling"], None, "last", "cpu",
                          "auto", True, False)
    assert other.key != job.key
    with again.open() as series:
        assert (series.width, series.height) == (24, 20)
