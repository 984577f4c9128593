"""The features tiler: grids, windowed reprojection, SRTM slope/aspect, WorldClim."""

from __future__ import annotations

import math
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import reproject, transform_bounds
from shapely.geometry import box

import i2dl.features.tiling as tiler
from i2dl.config import ROOT_DIR
from i2dl.errors import ConfigError, InputDataError
from i2dl.features.tiling import Tile, grid_from_vector, run_tiler, slope_aspect, write_srtm


@pytest.fixture
def dem_grid(slovenia_dir, tmp_path):
    """A 2-tile vector grid in EPSG:3035 over the Slovenia DEM, and the features folder."""
    dem = slovenia_dir / "DEM.tif"
    with rasterio.open(dem) as src:
        x0, y0, x1, y1 = transform_bounds(src.crs, "EPSG:3035", *src.bounds)
    xm = (x0 + x1) / 2
    grid = gpd.GeoDataFrame({"tile": ["A", "B"]},
                            geometry=[box(x0, y0, xm, y1), box(xm, y0, x1, y1)],
                            crs="EPSG:3035").to_crs("EPSG:4326")
    path = tmp_path / "grid.gpkg"
    grid.to_file(path)
    feats = tmp_path / "features"
    feats.mkdir()
    (feats / "DEM.tif").symlink_to(dem)
    return path, feats, dem


def test_vector_grid_reprojection_equals_rasterio_warp(dem_grid, tmp_path, monkeypatch):
    grid, feats, dem = dem_grid
    monkeypatch.setattr(tiler, "BLOCK", 16)  # many blocks: the windowed path is exercised
    out = tmp_path / "out"
    written = run_tiler({"grid": str(grid), "tile_field": "tile", "spatial_resolution": 15,
                         "proj": "EPSG:3035", "output_path": str(out), "features_path": str(feats),
                         "list_tile": ["A", "B"]})
    assert sorted(written) == ["A", "B"]
    tiles = grid_from_vector(grid, "tile", 15, "EPSG:3035")
    with rasterio.open(dem) as src:
        whole = src.read(1)
        for tile in tiles:
            want = np.full((tile.height, tile.width), np.nan)
            reproject(whole.astype(np.float64), want, src_transform=src.transform,
                      src_crs=src.crs, dst_transform=tile.transform, dst_crs=tile.crs,
                      resampling=Resampling.bilinear, src_nodata=src.nodata, dst_nodata=np.nan)
            with rasterio.open(out / tile.name / "DEM.tif") as got_src:
                assert got_src.crs == tile.crs and got_src.transform == tile.transform
                got = got_src.read(1, masked=True).astype(float).filled(np.nan)
            both = ~np.isnan(want) & ~np.isnan(got)
            assert both.sum() > 0.8 * (~np.isnan(want)).sum()
            np.testing.assert_allclose(got[both], want[both], rtol=1e-4, atol=0.05)
        assert (out / "logs" / "FeaturesTiler" / f"tile_{tile.name}_DEM.log").is_file()


def test_raster_grid_is_reused(dem_grid, tmp_path):
    _, feats, dem = dem_grid
    gdir = tmp_path / "grid_rasters"
    gdir.mkdir()
    with rasterio.open(dem) as src:
        left, top = src.bounds.left, src.bounds.top
    tr = from_origin(left + 100, top - 100, 20, 20)
    with rasterio.open(gdir / "T1.tif", "w", driver="GTiff", width=30, height=25, count=1,
                       dtype="uint8", crs="EPSG:32633", transform=tr) as dst:
        dst.write(np.zeros((1, 25, 30), np.uint8))
    out = tmp_path / "out"
    run_tiler({"rasters_grid_path": str(gdir), "output_path": str(out),
               "features_path": str(feats), "resampling": {"DEM": "nearest"}})
    with rasterio.open(out / "T1" / "DEM.tif") as got, rasterio.open(dem) as src:
        assert (got.width, got.height, got.transform) == (30, 25, tr)
        # nearest: the value of the source pixel under each output pixel centre
        x, y = tr @ (0.5, 0.5)
        r, c = src.index(x, y)
        assert got.read(1)[0, 0] == src.read(1)[r, c]


def test_grid_errors(dem_grid, tmp_path):
    grid, feats, _ = dem_grid
    base = {"output_path": str(tmp_path / "o"), "features_path": str(feats)}
    with pytest.raises(ConfigError, match="exactly one grid"):
        run_tiler(base)
    with pytest.raises(ConfigError, match="exactly one grid"):
        run_tiler({**base, "grid": str(grid), "rasters_grid_path": str(tmp_path)})
    with pytest.raises(InputDataError, match="not tiles"):
        run_tiler({**base, "grid": str(grid), "tile_field": "tile", "spatial_resolution": 10,
                   "proj": "EPSG:3035", "list_tile": ["Z"]})
    with pytest.raises(ConfigError, match="not implemented"):
        run_tiler({**base, "grid": str(grid), "tile_field": "tile", "spatial_resolution": 10,
                   "proj": "EPSG:3035", "s1_dir": "/x"})
    dup = gpd.read_file(grid).assign(tile="A")
    dup.to_file(tmp_path / "dup.gpkg")
    with pytest.raises(InputDataError, match="more than once"):
        grid_from_vector(tmp_path / "dup.gpkg", "tile", 10, "EPSG:3035")


def test_slope_and_aspect_of_a_plane(tmp_path):
    # z = 0.1 * east + 0.05 * north (metres): slope atan(|grad|), downhill towards -grad
    rows, cols = np.mgrid[0:20, 0:30]
    xres, yres = 10.0, 10.0
    east, north = cols * xres, -rows * yres
    z = 0.1 * east + 0.05 * north
    slope, aspect = slope_aspect(z, xres, yres)
    want_slope = math.degrees(math.atan(math.hypot(0.1, 0.05)))
    want_aspect = math.degrees(math.atan2(-0.1, -0.05)) % 360  # 243.4: west-south-west
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(slope[inner], want_slope, rtol=1e-6)
    np.testing.assert_allclose(aspect[inner], want_aspect, rtol=1e-6)
    flat_s, flat_a = slope_aspect(np.full((5, 5), 300.0), 10, 10)
    assert (flat_s == 0).all() and (flat_a == -1).all()
    # the same through write_srtm (blocks with a 1-px halo), on a projected plane raster
    tr = from_origin(500000, 5000000, xres, yres)
    src = tmp_path / "plane.tif"
    with rasterio.open(src, "w", driver="GTiff", width=30, height=20, count=1,
                       dtype="float32", crs="EPSG:32633", transform=tr, nodata=-32768) as dst:
        dst.write((z + 0.1 * 500000 + 0.05 * 5000000)[None].astype(np.float32))
    paths = write_srtm([src], Tile("T", rasterio.crs.CRS.from_epsg(32633), tr, 30, 20),
                       tmp_path / "T")
    with rasterio.open(paths["slope"]) as s, rasterio.open(paths["aspect"]) as a:
        np.testing.assert_allclose(s.read(1)[inner], want_slope, rtol=1e-3)
        np.testing.assert_allclose(a.read(1)[inner], want_aspect, rtol=1e-3)


def test_srtm_hgt_and_worldclim_through_the_command(tmp_path):
    srtm = tmp_path / "srtm"
    srtm.mkdir()
    # a synthetic SRTM3 tile: 1201 x 1201 big-endian int16, georeferenced by its name
    np.full((1201, 1201), 412, dtype=">i2").tofile(srtm / "N46E014.hgt")
    wc = tmp_path / "worldclim"
    wc.mkdir()
    for i, value in enumerate((5.0, 17.0)):
        with rasterio.open(wc / f"wc2.1_30s_tavg_0{i + 1}.tif", "w", driver="GTiff", width=60,
                           height=60, count=1, dtype="float32", crs="EPSG:4326",
                           transform=from_origin(14.0, 47.0, 1 / 60, 1 / 60)) as dst:
            dst.write(np.full((1, 60, 60), value, np.float32))
    grid = gpd.GeoDataFrame({"tile": ["T"]}, geometry=[box(14.3, 46.3, 14.5, 46.5)],
                            crs="EPSG:4326")
    grid.to_file(tmp_path / "grid.gpkg")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "i2dl", "tiler", f"grid={tmp_path / 'grid.gpkg'}",
         "tile_field=tile", "spatial_resolution=100", "proj=EPSG:32633",
         f"output_path={out}", f"srtm_path={srtm}", f"worldclim_path={wc}"],
        cwd=ROOT_DIR, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with rasterio.open(out / "T" / "elevation.tif") as e, rasterio.open(out / "T" / "slope.tif") \
            as s, rasterio.open(out / "T" / "worldclim.tif") as w:
        assert np.allclose(e.read(1), 412) and np.allclose(s.read(1), 0)
        assert w.count == 2 and w.descriptions == ("wc2.1_30s_tavg_01", "wc2.1_30s_tavg_02")
        assert np.allclose(w.read(1), 5.0) and np.allclose(w.read(2), 17.0)
    bad = subprocess.run([sys.executable, "-m", "i2dl", "tiler", f"output_path={out}"],
                         cwd=ROOT_DIR, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "exactly one grid" in bad.stderr


def test_tiled_features_train_a_map(make_cfg, dem_grid, slovenia_dir, tmp_path):
    """grid + features folder -> tiler -> data.user_features of a run -> a map (README)."""
    from i2dl.samples.store import read_info
    from i2dl.stages import train

    _, feats, _ = dem_grid
    grid = tmp_path / "grid_rasters"
    grid.mkdir()
    (grid / "SL.tif").symlink_to(slovenia_dir / "NDVI.tif")  # the series' own grid
    tiled = tmp_path / "tiled"
    run_tiler({"rasters_grid_path": str(grid), "features_path": str(feats),
               "output_path": str(tiled)})
    summary = train.run(make_cfg(
        "+experiment=rf", "trainer.max_epochs=1", "+data.tile=SL",
        f"+data.user_features={{root:{tiled},patterns:[DEM.tif]}}"))
    info = read_info(summary["store"])
    assert info.band_names[-1] == "DEM" and info.attrs["static_channels"] == ["DEM"]
    with rasterio.open(summary["classif_map"]) as src, \
            rasterio.open(slovenia_dir / "NDVI.tif") as ref:
        assert (src.width, src.height, src.transform) == (ref.width, ref.height, ref.transform)
        assert (src.read(1) > 0).any()
