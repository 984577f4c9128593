"""Zonal statistics per polygon against a direct whole-grid computation (Slovenia)."""

from __future__ import annotations

import subprocess
import sys

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.features import rasterize

from i2dl.config import ROOT_DIR
from i2dl.maps.zonal import zonal_stats


@pytest.fixture
def slovenia_map(slovenia_dir, tmp_path):
    """A classification map (codes 1..4, some nodata) and a confidence map on the NDVI grid."""
    with rasterio.open(slovenia_dir / "NDVI.tif") as src:
        profile = {"driver": "GTiff", "width": src.width, "height": src.height,
                   "crs": src.crs, "transform": src.transform, "count": 1}
    rng = np.random.default_rng(0)
    classif = rng.integers(1, 5, (profile["height"], profile["width"])).astype(np.uint8)
    classif[:10, :10] = 0
    conf = rng.random(classif.shape).astype(np.float32)
    paths = {"map": tmp_path / "classif.tif", "conf": tmp_path / "confidence.tif"}
    with rasterio.open(paths["map"], "w", dtype="uint8", nodata=0, **profile) as dst:
        dst.write(classif[None])
    with rasterio.open(paths["conf"], "w", dtype="float32", **profile) as dst:
        dst.write(conf[None])
    return paths, classif, conf, profile


def test_zonal_stats_equal_a_direct_computation(slovenia_dir, slovenia_map) -> None:
    paths, classif, conf, profile = slovenia_map
    zones = gpd.read_file(slovenia_dir / "reference.gpkg")
    ndvi = slovenia_dir / "NDVI.tif"
    got = zonal_stats(paths["map"], zones, paths["conf"], [ndvi], chunk_size=16,
                      progress=False)
    with rasterio.open(ndvi) as src:
        bands = src.read().astype(np.float64)
    burnt = rasterize([(g, i + 1) for i, g in enumerate(zones.geometry)],
                      out_shape=classif.shape, transform=profile["transform"], fill=0,
                      dtype="int32") - 1
    checked = 0
    for i in range(len(zones)):
        sel = (burnt == i) & (classif > 0)
        assert got["n_pixels"][i] == sel.sum()
        if not sel.any():
            assert got["majority"][i] == 0
            continue
        checked += 1
        values, counts = np.unique(classif[sel], return_counts=True)
        assert got["majority"][i] == values[counts.argmax()]
        for code in (1, 2, 3, 4):
            assert got[f"rate_{code}"][i] == pytest.approx((classif[sel] == code).mean())
        assert got["confidence_mean"][i] == pytest.approx(conf[sel].mean(), rel=1e-5)
        for b in (0, 30, 67):
            v = bands[b][sel]
            assert got[f"NDVI_b{b + 1}_mean"][i] == pytest.approx(v.mean(), rel=1e-6, abs=1e-9)
            assert got[f"NDVI_b{b + 1}_std"][i] == pytest.approx(v.std(), rel=1e-4, abs=1e-6)
            assert got[f"NDVI_b{b + 1}_min"][i] == v.min()
            assert got[f"NDVI_b{b + 1}_max"][i] == v.max()
    assert checked > 40  # most reference polygons cover pixels, many across windows


def test_zonal_stats_command_writes_csv_and_gpkg(slovenia_dir, slovenia_map, tmp_path) -> None:
    paths = slovenia_map[0]
    for out in (tmp_path / "z.csv", tmp_path / "z.gpkg"):
        proc = subprocess.run(
            [sys.executable, "-m", "i2dl", "zonal-stats", f"map={paths['map']}",
             f"zones={slovenia_dir / 'reference.gpkg'}", f"out={out}",
             f"confidence={paths['conf']}"],
            cwd=ROOT_DIR, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        table = pd.read_csv(out) if out.suffix == ".csv" else gpd.read_file(out)
        assert len(table) == 88 and {"n_pixels", "majority", "confidence_mean"} <= set(table)
    bad = subprocess.run([sys.executable, "-m", "i2dl", "zonal-stats", f"map={paths['map']}"],
                         cwd=ROOT_DIR, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "missing zones, out" in bad.stderr
