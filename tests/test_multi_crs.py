"""Tiles in different projections on one output grid (iota2 ``chain.proj``, ``spatial_resolution``).

Two synthetic tiles in adjacent UTM zones (EPSG:32631 and EPSG:32632, on both sides of the
6°E zone boundary, overlapping by about 100 m) are mapped in EPSG:3035 (LAEA Europe). The
classes are a checkerboard of 120 m cells defined in EPSG:3035, so both tiles see the same
truth, and the reference polygons are written in EPSG:4326 (reprojected when read).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject, transform, transform_bounds
from rasterio.windows import Window
from shapely.geometry import box

from i2dl.errors import ConfigError, InputDataError
from i2dl.io.sensors.common import Grid, target_grid
from tests.conftest import FAST, write_stack

TARGET = "EPSG:3035"
ZONES = {"T1": "EPSG:32631", "T2": "EPSG:32632"}
CELL = 120.0  # m, side of a class cell in EPSG:3035
T, C = 4, 2
DATES = [dt.date(2021, 4, 1) + dt.timedelta(days=15 * i) for i in range(T)]


def _origin() -> tuple[float, float]:
    """EPSG:3035 coordinates of 6°E 45°N (the zone boundary), on the 10 m lattice."""
    xs, ys = transform("EPSG:4326", TARGET, [6.0], [45.0])
    return round(xs[0] / CELL) * CELL, round(ys[0] / CELL) * CELL


def _truth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Class 1..3 of EPSG:3035 points: a checkerboard of CELL-metre cells."""
    x0, y0 = _origin()
    return 1 + (np.floor((x - x0) / CELL) + np.floor((y - y0) / CELL)).astype(int) % 3


def _footprint(tile: str) -> tuple[float, float, float, float]:
    """The part of EPSG:3035 each tile covers: T1 west of the boundary, T2 east, 100 m shared."""
    x0, y0 = _origin()
    west, east = (x0 - 360, x0 + 50) if tile == "T1" else (x0 - 50, x0 + 360)
    return west, y0 - 240, east, y0 + 240


def _write_tiles(root: Path) -> dict[str, Path]:
    """Per tile ``<root>/<tile>/stack.tif`` (T*C float32) and ``clm.tif`` (T uint8)."""
    rng = np.random.default_rng(0)
    for tile, crs in ZONES.items():
        left, bottom, right, top = transform_bounds(TARGET, crs, *_footprint(tile))
        left, top = np.floor(left / 10) * 10, np.ceil(top / 10) * 10
        width, height = int(np.ceil((right - left) / 10)), int(np.ceil((top - bottom) / 10))
        tr = Affine(10, 0, left, 0, -10, top)
        cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
        ex, ny = tr * (cols, rows)
        tx, ty = transform(crs, TARGET, ex.ravel(), ny.ravel())
        label = _truth(np.array(tx), np.array(ty)).reshape(height, width).astype(float)
        base = np.stack([label, -label])  # (C, H, W)
        series = np.stack([base + rng.normal(0, 0.05, base.shape) for _ in range(T)])
        (root / tile).mkdir(parents=True)
        write_stack(root / tile / "stack.tif", series.reshape(T * C, height, width), tr, crs)
        clm = np.zeros((T, height, width))
        clm[1, :, : width // 3] = 1  # date 2 cloudy on the western third
        write_stack(root / tile / "clm.tif", clm, tr, crs, dtype="uint8")
    (root / "dates.txt").write_text("\n".join(d.isoformat() for d in DATES) + "\n")
    # reference polygons: a 60 m square in the middle of each cell, in EPSG:4326
    x0, y0 = _origin()
    polys, codes = [], []
    for i in range(-3, 3):
        for j in range(-2, 2):
            cx, cy = x0 + (i + 0.5) * CELL, y0 + (j + 0.5) * CELL
            polys.append(box(cx - 30, cy - 30, cx + 30, cy + 30))
            codes.append(int(_truth(np.array([cx]), np.array([cy]))[0]))
    gdf = gpd.GeoDataFrame({"code": codes}, geometry=polys, crs=TARGET).to_crs("EPSG:4326")
    gdf.to_file(root / "reference.gpkg", driver="GPKG")
    return {"root": root}


def _data_overrides(root: Path) -> list[str]:
    return [
        "data.name=utm_pair",
        f"data.raster='{root}/{{tile}}/stack.tif'",
        f"data.dates_file={root}/dates.txt",
        "data.band_names=[b1,b2]",
        f"data.masks=[{{path:'{root}/{{tile}}/clm.tif',invalid_values:[1]}}]",
        f"data.reference={root}/reference.gpkg",
        "data.data_field=code",
        "data.nomenclature=null",
        "+data.list_tile=[T1,T2]",
    ]


@pytest.fixture
def utm_pair(tmp_path: Path) -> Path:
    return _write_tiles(tmp_path / "tiles")["root"]


def test_target_grid_snaps_the_footprint_to_one_lattice() -> None:
    grid = Grid(CRS.from_user_input("EPSG:32631"), Affine(10, 0, 736003, 0, -10, 4990007), 40,
                30)
    out = target_grid(grid, TARGET, 20)
    assert out.crs == CRS.from_user_input(TARGET)
    assert (out.transform.a, out.transform.e) == (20, -20)
    assert out.transform.c % 20 == 0 and out.transform.f % 20 == 0
    left, bottom, right, top = transform_bounds(grid.crs, TARGET, 736003, 4989707, 736403,
                                                4990007)
    assert out.transform.c <= left and out.transform.f >= top
    assert out.transform.c + 20 * out.width >= right
    assert out.transform.f - 20 * out.height <= bottom
    assert target_grid(grid) is grid  # both null: the tile's own grid
    # same CRS, resolution null: the tile's pixel size on the 10 m lattice
    snapped = target_grid(grid, "EPSG:32631")
    assert snapped.transform.c == 736000 and snapped.transform.f == 4990010
    with pytest.raises(ConfigError, match="data.proj='EPSG:99999'"):
        target_grid(grid, "EPSG:99999", 10)
    with pytest.raises(ConfigError, match="spatial_resolution"):
        target_grid(grid, "EPSG:4326")  # degrees: the pixel size cannot be guessed
    with pytest.raises(ConfigError, match="spatial_resolution=-5"):
        target_grid(grid, TARGET, -5)


def test_features_read_through_the_warp_equal_the_reprojected_inputs(
    make_cfg, utm_pair: Path
) -> None:
    from i2dl.features.source import open_source

    cfg = make_cfg(*_data_overrides(utm_pair), f"data.proj={TARGET}",
                   "data.spatial_resolution=10")
    for tile in ZONES:
        with open_source(cfg.data, tile) as series:
            assert series.crs == CRS.from_user_input(TARGET)
            assert series.transform.c % 10 == 0 and series.transform.f % 10 == 0
            h, w = series.height, series.width
            # read in four windows: the blocks join without seam
            x = np.zeros((h, w, T, C), np.float32)
            valid = np.zeros((h, w, T), bool)
            for r0, c0 in ((0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2)):
                win = Window(c0, r0, (w - c0) if c0 else w // 2, (h - r0) if r0 else h // 2)
                xb, vb = series.read(win)
                x[r0 : r0 + xb.shape[0], c0 : c0 + xb.shape[1]] = xb
                valid[r0 : r0 + vb.shape[0], c0 : c0 + vb.shape[1]] = vb
            grid = (series.crs, series.transform, h, w)
        # the reference: a whole-tile warp of the same values, cloudy observations left
        # out of the interpolation, the validity by nearest
        with rasterio.open(utm_pair / tile / "stack.tif") as src, \
                rasterio.open(utm_pair / tile / "clm.tif") as msrc:
            cloud = msrc.read().astype(bool)  # (T, H, W)
            values = src.read().reshape(T, C, src.height, src.width)
            values = np.where(cloud[:, None], np.nan, values).reshape(T * C, *cloud.shape[1:])
            expected = np.full((T * C, h, w), np.nan, np.float32)
            common = {"src_transform": src.transform, "src_crs": src.crs,
                      "dst_transform": grid[1], "dst_crs": grid[0],
                      "tolerance": 0.0, "XSCALE": 1.0, "YSCALE": 1.0}
            reproject(values, expected, resampling=Resampling.bilinear, src_nodata=np.nan,
                      dst_nodata=np.nan, **common)
            clear = np.zeros((T, h, w), np.uint8)
            reproject((~cloud).astype(np.uint8), clear, resampling=Resampling.nearest, **common)
        expected = expected.reshape(T, C, h, w).transpose(2, 3, 0, 1)
        finite = np.isfinite(expected).all(axis=-1)  # (h, w, T)
        np.testing.assert_array_equal(valid, finite & (clear.transpose(1, 2, 0) == 1))
        np.testing.assert_allclose(x[valid], expected[valid], rtol=1e-4, atol=1e-4)
        assert (x[~valid] == 0).all()
        # a cloudy date is invalid on the tile's western third, its value never mixed in
        assert valid[:, : w // 4, 1].sum() < valid[:, : w // 4, 0].sum()
        inside = valid[..., [0, 2, 3]].any(axis=-1)
        # the footprint of a UTM tile is a rotated quadrilateral in EPSG:3035: corners empty
        assert 0.8 < inside.mean() < 1.0


def test_tiles_of_two_crs_are_refused_without_proj(make_cfg, utm_pair: Path) -> None:
    from i2dl.samples.extract import prepare

    with pytest.raises(InputDataError, match=r"EPSG:32632.*data\.proj"):
        prepare(make_cfg(*_data_overrides(utm_pair), "+experiment=rf", *FAST))


def test_two_utm_zones_one_map_in_the_target_crs(make_cfg, utm_pair: Path,
                                                 tmp_path: Path) -> None:
    import zarr

    from i2dl.stages.train import run as run_train

    cfg = make_cfg("+experiment=rf", *FAST, *_data_overrides(utm_pair), f"data.proj={TARGET}",
                   "data.spatial_resolution=10")
    summary = run_train(cfg)
    store = zarr.open_group(summary["store"], mode="r")
    assert set(np.unique(store["tile"][:])) == {0, 1}  # samples from both zones
    run = tmp_path / "run"
    maps = {t: rasterio.open(run / "maps" / t / "classif.tif") for t in ZONES}
    try:
        with rasterio.open(run / "final" / "Classif_Seed_0.tif") as mos:
            assert mos.crs == CRS.from_user_input(TARGET)
            assert mos.res == (10.0, 10.0)
            mosaic = mos.read(1)
            mt = mos.transform
        # every tile's map is on the mosaic's lattice: placed by whole-pixel offsets
        placed = {}
        for t, src in maps.items():
            col, row = ~mt * (src.transform.c, src.transform.f)
            assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6, t
            canvas = np.zeros_like(mosaic)
            r, c = round(row), round(col)
            canvas[r : r + src.height, c : c + src.width] = src.read(1)
            placed[t] = canvas
    finally:
        for src in maps.values():
            src.close()
    # the overlap is classified once: by T1 (first tile) where it has data, else by T2
    np.testing.assert_array_equal(
        mosaic, np.where(placed["T1"] > 0, placed["T1"], placed["T2"]))
    # no nodata gap: every pixel inside the union of the footprints (20 m in) is mapped
    cols, rows = np.meshgrid(np.arange(mosaic.shape[1]) + 0.5, np.arange(mosaic.shape[0]) + 0.5)
    x, y = mt * (cols, rows)
    inside = np.zeros(mosaic.shape, bool)
    for t in ZONES:
        west, south, east, north = _footprint(t)
        inside |= (x > west + 20) & (x < east - 20) & (y > south + 20) & (y < north - 20)
    assert (mosaic[inside] > 0).all()
    # the two tiles agree with the truth on both sides of the seam (T1's east edge), away
    # from the class-cell borders where bilinear resampling mixes classes
    truth = _truth(x, y)
    x0, _ = _origin()
    near_border = (np.abs(((x - x0) + CELL / 2) % CELL - CELL / 2) < 15) | \
        (np.abs(((y - _origin()[1]) + CELL / 2) % CELL - CELL / 2) < 15)
    seam = inside & (np.abs(x - (x0 + 50)) < 60) & ~near_border
    assert seam.sum() > 50
    assert (mosaic[seam] == truth[seam]).mean() > 0.95
    both = inside & (placed["T1"] > 0) & (placed["T2"] > 0) & ~near_border
    assert both.sum() > 50  # the overlap, mapped by each tile, agrees
    assert (placed["T1"][both] == placed["T2"][both]).mean() > 0.95
