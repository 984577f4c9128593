"""Sentinel-2 sun and viewing angles interpolated onto tiler tiles (iota2 ``s2_path``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from i2dl.errors import InputDataError
from i2dl.features.tiling import run_tiler
from i2dl.io.sensors.s2angles import read_angle_grids
from tests.conftest import DATA_DIR

ULX, ULY, STEP, N = 300000.0, 5000040.0, 5000.0, 23
SHARED = DATA_DIR / "iota2_testdata"


def _values(grid: np.ndarray) -> str:
    rows = "".join(f"<VALUES>{' '.join('NaN' if np.isnan(v) else f'{v:.6f}' for v in r)}"
                   "</VALUES>" for r in grid)
    return (f'<COL_STEP unit="m">{STEP:g}</COL_STEP><ROW_STEP unit="m">{STEP:g}</ROW_STEP>'
            f"<Values_List>{rows}</Values_List>")


def sun_zenith(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A plane in map coordinates: bilinear interpolation reproduces it exactly."""
    return 30.0 + 1e-4 * (x - ULX) - 5e-5 * (ULY - y)


def write_mtd_tl(path: Path, day: dt.date, even_zenith: float, odd_zenith: float) -> None:
    """A Sen2Cor granule MTD_TL.xml (Level-2A_Tile_ID schema, the elements i2dl reads)."""
    jj, ii = np.meshgrid(np.arange(N), np.arange(N))
    x, y = ULX + jj * STEP, ULY - ii * STEP
    sun_z, sun_a = sun_zenith(x, y), np.full((N, N), 150.0)
    views = []
    for det in (1, 2, 3, 4):
        zen = np.full((N, N), even_zenith if det % 2 == 0 else odd_zenith)
        azi = np.full((N, N), 350.0 if det in (1, 2) else 10.0)  # circular mean 0
        if det in (3, 4):
            zen[:, 15:] = np.nan  # these detectors do not see the east
            azi[:, 15:] = np.nan
        for band in (0, 1):
            views.append(f'<Viewing_Incidence_Angles_Grids bandId="{band}" detectorId="{det}">'
                         f"<Zenith>{_values(zen)}</Zenith><Azimuth>{_values(azi)}</Azimuth>"
                         "</Viewing_Incidence_Angles_Grids>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<n1:Level-2A_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/'
        'S2_PDI_Level-2A_Tile_Metadata.xsd">'
        f"<n1:General_Info><SENSING_TIME>{day:%Y-%m-%d}T10:56:21.024Z</SENSING_TIME>"
        "</n1:General_Info><n1:Geometric_Info><Tile_Geocoding>"
        "<HORIZONTAL_CS_NAME>WGS84 / UTM zone 31N</HORIZONTAL_CS_NAME>"
        "<HORIZONTAL_CS_CODE>EPSG:32631</HORIZONTAL_CS_CODE>"
        f'<Geoposition resolution="10"><ULX>{ULX:g}</ULX><ULY>{ULY:g}</ULY>'
        "<XDIM>10</XDIM><YDIM>-10</YDIM></Geoposition></Tile_Geocoding><Tile_Angles>"
        f"<Sun_Angles_Grid><Zenith>{_values(sun_z)}</Zenith>"
        f"<Azimuth>{_values(sun_a)}</Azimuth></Sun_Angles_Grid>{''.join(views)}"
        "</Tile_Angles></n1:Geometric_Info></n1:Level-2A_Tile_ID>")


@pytest.fixture
def s2_tree(tmp_path: Path) -> Path:
    root = tmp_path / "S2"
    for day, even, odd in ((dt.date(2021, 5, 6), 8.0, 4.0), (dt.date(2021, 5, 1), 9.0, 3.0)):
        safe = f"S2A_MSIL2A_{day:%Y%m%d}T105621_N0212_R094_T31TCJ_{day:%Y%m%d}T134411.SAFE"
        write_mtd_tl(root / "T31TCJ" / safe / "GRANULE" / "L2A_T31TCJ_A0" / "MTD_TL.xml",
                     day, even, odd)
    return root


def test_angles_on_a_tile_grid(s2_tree: Path, tmp_path: Path) -> None:
    grid = tmp_path / "grid"
    grid.mkdir()
    # a 1 km tile at 100 m inside the S2 tile, east of x = ULX + 15 * 5000 partly
    transform = from_origin(ULX + 70000.0, ULY - 20000.0, 100.0, 100.0)
    with rasterio.open(grid / "T31TCJ.tif", "w", driver="GTiff", width=100, height=10,
                       count=1, dtype="uint8", crs="EPSG:32631", transform=transform) as dst:
        dst.write(np.zeros((1, 10, 100), np.uint8))
    out = tmp_path / "out"
    written = run_tiler({"rasters_grid_path": str(grid), "output_path": str(out),
                         "s2_path": str(s2_tree)})["T31TCJ"]
    assert sorted(written) == sorted(["SOLAR_ZENITH", "SOLAR_AZIMUTH", "EVEN_ZENITH",
                                      "ODD_ZENITH", "EVEN_AZIMUTH", "ODD_AZIMUTH"])
    cols, rows = np.meshgrid(np.arange(100), np.arange(10))
    x, y = transform * (cols + 0.5, rows + 0.5)
    with rasterio.open(written["SOLAR_ZENITH"]) as src:
        assert src.count == 2 and src.descriptions == ("20210501", "20210506")  # date order
        np.testing.assert_allclose(src.read(1), sun_zenith(x, y), atol=1e-6)
    with rasterio.open(written["SOLAR_AZIMUTH"]) as src:
        np.testing.assert_allclose(src.read(2), 150.0, atol=1e-6)
    with rasterio.open(written["EVEN_ZENITH"]) as src:
        np.testing.assert_allclose(src.read(1), 9.0, atol=1e-6)  # 2021-05-01
        np.testing.assert_allclose(src.read(2), 8.0, atol=1e-6)
    with rasterio.open(written["ODD_ZENITH"]) as src:
        np.testing.assert_allclose(src.read(2), 4.0, atol=1e-6)
    with rasterio.open(written["EVEN_AZIMUTH"]) as src:
        azi = src.read(1).astype(np.float64)
    # west: detectors 2 (350) and 4 (10) average to 0 (not 180); east: detector 2 alone
    west, east = x < ULX + 14 * STEP, x > ULX + 15 * STEP
    assert np.all(np.minimum(azi[west], 360 - azi[west]) < 1e-3)
    np.testing.assert_allclose(azi[east], 350.0, atol=1e-3)


def test_product_level_metadata_has_no_angles(tmp_path: Path) -> None:
    """iota2's test data only hold MTD_MSIL2A.xml: no angle grid, said clearly."""
    real = sorted(SHARED.glob("MTD_MSIL2A_*.xml"))
    if not real:
        pytest.skip(f"real data absent: {SHARED}")
    for path in real:
        with pytest.raises(InputDataError, match="MTD_TL.xml"):
            read_angle_grids(path)
    # and their THEIA MTD_ALL.xml are truncated fragments: said so
    for path in sorted(SHARED.rglob("*_MTD_ALL.xml"))[:2]:
        with pytest.raises(InputDataError, match="not well-formed XML"):
            read_angle_grids(path)


def test_grids_parsed(s2_tree: Path) -> None:
    grids = read_angle_grids(next(s2_tree.rglob("MTD_TL.xml")))
    assert grids.sun_zenith.shape == (N, N) and sorted(grids.viewing) == [1, 2, 3, 4]
    assert len(grids.viewing[1]) == 2  # two bands
    assert grids.crs.to_epsg() == 32631 and grids.origin == (ULX, ULY)
    assert grids.step == (STEP, STEP)
