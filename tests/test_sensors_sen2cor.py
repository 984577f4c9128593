"""Sen2Cor L2A reader: real MTD_MSIL2A.xml files and a tiny synthetic .SAFE tree."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.io.sensors.base import TimeSeriesSource
from i2dl.io.sensors.sen2cor import SCL_CLASSES, Sentinel2Sen2Cor
from i2dl.io.sensors.sen2cor_metadata import find_sen2cor_products, parse_mtd_msil2a
from tests.conftest import DATA_DIR

IOTA2_DATA = DATA_DIR / "iota2_testdata"
REAL_MTD = {
    dt.date(2019, 5, 1): IOTA2_DATA / "MTD_MSIL2A_20190501.xml",
    dt.date(2019, 5, 6): IOTA2_DATA / "MTD_MSIL2A_20190506.xml",
}

TILE = "T31TCJ"
BANDS_10M = ("B02", "B03", "B04", "B08")
BANDS_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
DEFAULT_INVALID = (0, 1, 3, 8, 9, 10, 11)
ORIGIN = (300000.0, 4900020.0)  # UTM 31N, upper-left corner
PSD14 = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


# --------------------------------------------------------------------------- real files


@pytest.fixture(params=sorted(REAL_MTD), ids=str)
def real_mtd(request: pytest.FixtureRequest) -> tuple[dt.date, Path]:
    """(expected date, path) of one real MTD_MSIL2A.xml, or skip."""
    path = REAL_MTD[request.param]
    if not path.is_file():
        pytest.skip(f"real data absent: {path} (set I2DL_DATA to the shared data folder)")
    return request.param, path


def _raw_entries(raw: str) -> list[str]:
    return re.findall(r"<IMAGE_FILE>\s*([^<\s]+)\s*</IMAGE_FILE>", raw)


def test_real_mtd_date_tile_quantification(real_mtd: tuple[dt.date, Path]) -> None:
    """Date, tile, URI and quantification agree with a regex reading of the raw XML."""
    date, path = real_mtd
    raw = path.read_text(encoding="utf-8")
    meta = parse_mtd_msil2a(path)
    assert meta.date == date
    start = re.search(r"<PRODUCT_START_TIME>([^<]+)</PRODUCT_START_TIME>", raw).group(1)
    assert meta.date.isoformat() == start[:10]
    # tile, found independently in the URI and in the image names
    uri = re.search(r"<PRODUCT_URI>([^<]+)</PRODUCT_URI>", raw).group(1)
    assert meta.product_uri == uri
    uri_tile = re.search(r"_(T\d{2}[A-Z]{3})_", uri).group(1)
    name_tiles = {Path(e).name.split("_")[0] for e in _raw_entries(raw)}
    assert name_tiles == {uri_tile}
    assert meta.tile == uri_tile == "T31TCJ"
    quant = re.search(r"<BOA_QUANTIFICATION_VALUE[^>]*>([^<]+)<", raw).group(1)
    assert meta.quantification == float(quant) == 10000.0
    # baselines 02.11 / 02.12: no BOA_ADD_OFFSET, so no offset
    assert "BOA_ADD_OFFSET" not in raw
    assert meta.boa_offsets == {} and meta.offset("B02") == 0.0
    assert meta.processing_baseline in ("02.11", "02.12")
    # the file's own SCL table has the classes documented in SCL_CLASSES
    assert sorted(meta.scl_classes) == sorted(SCL_CLASSES) == list(range(12))
    assert meta.scl_classes[9] == "SC_CLOUD_HIGH_PROBA"


def test_real_mtd_band_paths(real_mtd: tuple[dt.date, Path]) -> None:
    """The 10 m / 20 m / 60 m image paths are the XML IMAGE_FILE entries."""
    _, path = real_mtd
    meta = parse_mtd_msil2a(path)
    entries = _raw_entries(path.read_text(encoding="utf-8"))
    for band, res in [("B02", 10), ("B11", 20), ("SCL", 20), ("B02", 20), ("SCL", 60)]:
        expected = [e for e in entries if e.endswith(f"_{band}_{res}m")]
        assert len(expected) == 1
        assert meta.image_files[res][band] == expected[0]
        assert meta.band_file(band, res) == path.parent / f"{expected[0]}.jp2"
    assert set(BANDS_10M) <= set(meta.bands_10m)
    assert set(BANDS_20M) | {"SCL"} <= set(meta.bands_20m)
    assert "B11" not in meta.bands_10m
    assert meta.resolution("B02") == 10 and meta.resolution("B11") == 20
    assert meta.resolution("SCL") == 20
    assert meta.bands_10m["B02"].startswith("GRANULE/L2A_T31TCJ_")
    assert "/IMG_DATA/R10m/" in meta.bands_10m["B02"]


def test_real_mtd_product_folder_without_mtd(tmp_path: Path) -> None:
    """A .SAFE folder without metadata: the error names the folder."""
    safe = tmp_path / "S2A_MSIL2A_20190506T105031_N0212_R051_T31TCJ_20190506T140834.SAFE"
    safe.mkdir()
    with pytest.raises(InputFileNotFoundError, match=re.escape(str(safe))):
        parse_mtd_msil2a(safe)


# ------------------------------------------------------------------ synthetic products


def _mtd_xml(
    sensing: dt.datetime,
    granules: list[tuple[str, list[str]]],
    baseline: str = "02.12",
    offset: int | None = None,
    quantification: int = 10000,
) -> str:
    """An MTD_MSIL2A.xml in the structure of ESA's (PSD 14), trimmed."""
    stamp = sensing.strftime("%Y%m%dT%H%M%S")
    tile = granules[0][0]
    iso = sensing.strftime("%Y-%m-%dT%H:%M:%S.024Z")
    granule_xml = ""
    for g_tile, entries in granules:
        files = "".join(f"\n          <IMAGE_FILE>{e}</IMAGE_FILE>" for e in entries)
        granule_xml += (
            f'\n        <Granule datastripIdentifier="S2A_OPER_MSI_L2A_DS_{stamp}" '
            f'granuleIdentifier="S2A_OPER_MSI_L2A_TL_MPS__{stamp}_A020211_{g_tile}_N{baseline}" '
            f'imageFormat="JPEG2000">{files}\n        </Granule>'
        )
    offsets = ""
    if offset is not None:
        offsets = (
            "\n      <BOA_ADD_OFFSET_VALUES_LIST>"
            + "".join(f'<BOA_ADD_OFFSET band_id="{i}">{offset}</BOA_ADD_OFFSET>' for i in range(13))
            + "</BOA_ADD_OFFSET_VALUES_LIST>"
        )
    spectral = "".join(
        f'<Spectral_Information bandId="{i}" physicalBand="{b}"><RESOLUTION>20</RESOLUTION>'
        "</Spectral_Information>"
        for i, b in enumerate(
            ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
        )
    )
    uri = f"S2A_MSIL2A_{stamp}_N{baseline.replace('.', '')}_R051_{tile}_{stamp}.SAFE"
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-2A_User_Product xmlns:n1="{PSD14}" xmlns:xsi="{XSI}">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{iso}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{iso}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{uri}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <Datatake datatakeIdentifier="GS2A_{stamp}_020211_N{baseline}">
        <SPACECRAFT_NAME>Sentinel-2A</SPACECRAFT_NAME>
        <DATATAKE_SENSING_START>{iso}</DATATAKE_SENSING_START>
      </Datatake>
      <Product_Organisation>
      <Granule_List>{granule_xml}
      </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
      <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">{quantification}</BOA_QUANTIFICATION_VALUE>
        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>{offsets}
      <Spectral_Information_List>{spectral}</Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
"""


def _grid(res: int) -> Affine:
    """Transform of the synthetic tile at ``res`` metres."""
    return Affine(res, 0.0, ORIGIN[0], 0.0, -res, ORIGIN[1])


def _write_jp2(path: Path, array: np.ndarray, res: int) -> None:
    """Lossless JPEG2000 (REVERSIBLE=YES, QUALITY=100), as Sen2Cor writes its images."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="JP2OpenJPEG",
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype=array.dtype,
        crs="EPSG:32631",
        transform=_grid(res),
        QUALITY=100,
        REVERSIBLE="YES",
        YCBCR420="NO",
    ) as dst:
        dst.write(array, 1)


def make_safe(
    folder: Path,
    sensing: dt.datetime,
    dn10: dict[str, np.ndarray],
    dn20: dict[str, np.ndarray],
    scl: np.ndarray,
    tile: str = TILE,
    baseline: str = "02.12",
    offset: int | None = None,
) -> Path:
    """Write one .SAFE product: 10 m and 20 m band images, SCL, MTD_MSIL2A.xml."""
    stamp = sensing.strftime("%Y%m%dT%H%M%S")
    safe = folder / f"S2A_MSIL2A_{stamp}_N{baseline.replace('.', '')}_R051_{tile}_{stamp}.SAFE"
    img = f"GRANULE/L2A_{tile}_A020211_{stamp}/IMG_DATA"
    entries = []
    for band, array in dn10.items():
        entries.append(f"{img}/R10m/{tile}_{stamp}_{band}_10m")
        _write_jp2(safe / f"{entries[-1]}.jp2", array, 10)
    for band, array in {**dn20, "SCL": scl}.items():
        entries.append(f"{img}/R20m/{tile}_{stamp}_{band}_20m")
        _write_jp2(safe / f"{entries[-1]}.jp2", array, 20)
    # listed like in real products, but never read: no image written
    entries.append(f"{img}/R60m/{tile}_{stamp}_B01_60m")
    xml = _mtd_xml(sensing, [(tile, entries)], baseline=baseline, offset=offset)
    (safe / "MTD_MSIL2A.xml").write_text(xml, encoding="utf-8")
    return safe


SENSING = [dt.datetime(2019, 5, 1, 10, 50, 39), dt.datetime(2019, 5, 6, 10, 50, 31)]


@pytest.fixture
def sen2cor_root(tmp_path: Path) -> dict:
    """``root/T31TCJ/`` with 2 products (20x20 px at 10 m, 10x10 px at 20 m)."""
    rng = np.random.default_rng(42)
    root = tmp_path / "S2_S2C"
    products = []
    for t, sensing in enumerate(SENSING):
        dn10 = {b: rng.integers(1, 10000, (20, 20)).astype(np.uint16) for b in BANDS_10M}
        dn20 = {b: rng.integers(1, 10000, (10, 10)).astype(np.uint16) for b in BANDS_20M}
        dn20["B06"][:] = 1500  # constant: bilinear must give it back exactly
        scl = rng.choice(np.arange(12, dtype=np.uint8), size=(10, 10))
        scl[0, 0], scl[0, 1], scl[1, 0] = 4, 9, 3  # vegetation, cloud, cloud shadow
        dn10["B03"][5, 7 + t] = 0  # 10 m NODATA pixel
        dn20["B11"][8, 2] = 0  # 20 m NODATA pixel = a 2x2 block at 10 m
        scl[8, 2] = 4  # ... on a clear SCL pixel: only DN 0 makes it invalid
        make_safe(root / TILE, sensing, dn10, dn20, scl)
        products.append({"dn10": dn10, "dn20": dn20, "scl": scl})
    # an unrelated file next to the products is ignored
    (root / TILE / "notes.txt").write_text("not a product")
    return {"root": root, "products": products}


def _up(a: np.ndarray) -> np.ndarray:
    """Nearest-neighbour 20 m -> 10 m: each pixel repeated 2x2."""
    return np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)


def _expected(products: list[dict], bands: list[str], invalid_scl: tuple[int, ...]) -> tuple:
    xs, valids = [], []
    for p in products:
        dns = [p["dn10"][b] if b in p["dn10"] else _up(p["dn20"][b]) for b in bands]
        xs.append(np.stack([dn.astype(np.float32) / np.float32(10000) for dn in dns], axis=-1))
        nodata = np.zeros((20, 20), bool)
        for dn in dns:
            nodata |= dn == 0
        valids.append(~nodata & ~np.isin(_up(p["scl"]), invalid_scl))
    return np.stack(xs, axis=2), np.stack(valids, axis=2)


def test_read_exact_reflectance_nearest(sen2cor_root: dict) -> None:
    """Exact DN / 10000 at 10 m, 2x2 repeats for 20 m, validity from SCL and DN 0."""
    bands = list(BANDS_10M[:2]) + ["B11", "B05", "B08"]
    with Sentinel2Sen2Cor(sen2cor_root["root"], TILE, bands=bands, resampling="nearest") as src:
        assert isinstance(src, TimeSeriesSource)
        assert src.dates == [s.date() for s in SENSING]
        assert src.band_names == bands and (src.n_dates, src.n_channels) == (2, 5)
        assert (src.width, src.height) == (20, 20)
        assert src.transform == _grid(10)
        assert src.crs == rasterio.crs.CRS.from_epsg(32631)
        assert src.profile()["transform"] == src.transform
        x, valid = src.read()
        assert x.dtype == np.float32 and x.shape == (20, 20, 2, 5)
        assert valid.dtype == bool and valid.shape == (20, 20, 2)
        ex, ev = _expected(sen2cor_root["products"], bands, DEFAULT_INVALID)
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(valid, ev)
        # 20 m nearest = 2x2 repeat, checked on the raw DN too
        p0 = sen2cor_root["products"][0]
        np.testing.assert_array_equal(np.rint(x[:, :, 0, 2] * 10000), _up(p0["dn20"]["B11"]))
        # spot checks of the masks
        assert valid[0, 0, 0] and not valid[0, 2, 0] and not valid[2, 0, 0]  # 4, 9 and 3
        assert not valid[5, 7, 0] and not valid[5, 8, 1]  # B03 DN 0
        assert not valid[16:18, 4:6, :].any()  # B11 DN 0 on clear SCL
        assert valid.any() and not valid.all()
        # a window equals the same slice of the whole grid
        xw, vw = src.read(Window(3, 5, 11, 9))
        np.testing.assert_array_equal(xw, x[5:14, 3:14])
        np.testing.assert_array_equal(vw, valid[5:14, 3:14])
        with pytest.raises(ValueError, match="outside"):
            src.read(Window(15, 0, 10, 5))


def test_read_default_bands_bilinear(sen2cor_root: dict) -> None:
    """Default bands, bilinear: 10 m bands exact, 20 m within range, same validity."""
    with Sentinel2Sen2Cor(sen2cor_root["root"], "31TCJ") as src:
        assert src.band_names == list(BANDS_10M[:3] + BANDS_20M[:3] + BANDS_10M[3:] + BANDS_20M[3:])
        x, valid = src.read()
        xw, vw = src.read(Window(4, 2, 12, 16))
    products = sen2cor_root["products"]
    for t, p in enumerate(products):
        for c, band in enumerate(src.band_names):
            if band in p["dn10"]:  # 10 m bands are never resampled
                ref = p["dn10"][band].astype(np.float32) / np.float32(10000)
                np.testing.assert_array_equal(x[:, :, t, c], ref)
            else:  # interpolated values stay within the source range
                ok = ~(_up(p["dn20"][band]) == 0)
                src_valid = p["dn20"][band][p["dn20"][band] > 0] / 10000
                assert (x[:, :, t, c][ok] >= src_valid.min() - 1e-6).all()
                assert (x[:, :, t, c][ok] <= src_valid.max() + 1e-6).all()
        np.testing.assert_array_equal(x[:, :, t, src.band_names.index("B06")], np.float32(0.15))
    # validity does not depend on the resampling (SCL is always nearest)
    _, ev = _expected(products, src.band_names, DEFAULT_INVALID)
    np.testing.assert_array_equal(valid, ev)
    np.testing.assert_allclose(xw, x[2:18, 4:16], atol=1e-6)
    np.testing.assert_array_equal(vw, valid[2:18, 4:16])


def test_invalid_scl_is_configurable(sen2cor_root: dict) -> None:
    """invalid_scl replaces the default classes; 0 and 1 stay invalid."""
    bands = ["B02", "B12"]
    with Sentinel2Sen2Cor(sen2cor_root["root"], TILE, bands=bands, invalid_scl=[9]) as src:
        assert src.invalid_scl == (0, 1, 9)  # no data and defective always invalid
        _, valid = src.read()
    _, ev = _expected(sen2cor_root["products"], bands, (0, 1, 9))
    np.testing.assert_array_equal(valid, ev)
    assert valid[2, 0, 0]  # cloud shadow (3) is now valid
    assert not valid[0, 2, 0]  # high-probability cloud (9) still invalid


def test_date_filter(sen2cor_root: dict) -> None:
    """Inclusive date bounds, as dates or strings, in the finder and the reader."""
    root = sen2cor_root["root"]
    all_products = find_sen2cor_products(root, TILE)
    assert [p.name[11:19] for p in all_products] == ["20190501", "20190506"]
    assert all(p.parent == root / TILE for p in all_products)
    assert find_sen2cor_products(root, TILE, start_date="2019-05-02") == all_products[1:]
    assert find_sen2cor_products(root, TILE, end_date=dt.date(2019, 5, 1)) == all_products[:1]
    assert find_sen2cor_products(root, TILE, "20190501", "20190506") == all_products
    assert find_sen2cor_products(root, TILE, "2019-05-07") == []
    assert find_sen2cor_products(root, "T31TCK") == []  # no such tile in the folder
    with Sentinel2Sen2Cor(root, TILE, bands=["B04"], start_date="2019-05-06") as src:
        assert src.dates == [dt.date(2019, 5, 6)]
        x, _ = src.read()
    np.testing.assert_array_equal(
        x[:, :, 0, 0], sen2cor_root["products"][1]["dn10"]["B04"].astype(np.float32) / 10000
    )
    with pytest.raises(InputFileNotFoundError, match="no Sen2Cor L2A product of tile T31TCJ"):
        Sentinel2Sen2Cor(root, TILE, start_date="2020-01-01")
    with pytest.raises(ConfigError, match="after end_date"):
        find_sen2cor_products(root, TILE, "2019-05-06", "2019-05-01")


def test_products_directly_under_root(tmp_path: Path) -> None:
    """Products straight under root; other tiles skipped; tile without T."""
    z10 = {b: np.full((20, 20), 100, np.uint16) for b in BANDS_10M}
    z20 = {b: np.full((10, 10), 200, np.uint16) for b in BANDS_20M}
    scl = np.full((10, 10), 4, np.uint8)
    make_safe(tmp_path, SENSING[1], z10, z20, scl)
    make_safe(tmp_path, SENSING[0], z10, z20, scl, tile="T31TCK")  # another tile: skipped
    found = find_sen2cor_products(tmp_path, "31tcj")
    assert len(found) == 1 and "_T31TCJ_" in found[0].name


def test_missing_mtd_names_the_folder(sen2cor_root: dict) -> None:
    """A .SAFE folder without MTD_MSIL2A.xml is an error naming it."""
    root = sen2cor_root["root"]
    broken = root / TILE / "S2B_MSIL2A_20190511T105029_N0212_R051_T31TCJ_20190511T140000.SAFE"
    (broken / "GRANULE").mkdir(parents=True)
    with pytest.raises(InputFileNotFoundError, match=re.escape(str(broken))) as info:
        find_sen2cor_products(root, TILE)
    assert "MTD_MSIL2A.xml" in str(info.value)
    with pytest.raises(InputFileNotFoundError, match=re.escape(broken.name)):
        Sentinel2Sen2Cor(root, TILE)


def test_missing_band_image_names_the_file(sen2cor_root: dict) -> None:
    """A band image listed but absent is an error naming the file."""
    safe = find_sen2cor_products(sen2cor_root["root"], TILE)[0]
    b11 = next(safe.rglob("*_B11_20m.jp2"))
    b11.unlink()
    with pytest.raises(InputFileNotFoundError, match=re.escape(str(b11))):
        Sentinel2Sen2Cor(sen2cor_root["root"], TILE)
    # a band the product does not list at all
    with pytest.raises(InputDataError, match="no IMAGE_FILE entry for band B01"):
        parse_mtd_msil2a(safe).band_file("B01", 20)


def test_boa_offset_baseline_04(tmp_path: Path) -> None:
    """Processing baseline >= 04.00: reflectance = (DN - 1000) / 10000; DN 0 stays NODATA."""
    rng = np.random.default_rng(1)
    dn10 = {b: rng.integers(0, 3000, (20, 20)).astype(np.uint16) for b in BANDS_10M}
    dn20 = {b: rng.integers(500, 3000, (10, 10)).astype(np.uint16) for b in BANDS_20M}
    scl = np.full((10, 10), 5, np.uint8)
    dn10["B02"][0, 0] = 0
    safe = make_safe(tmp_path, dt.datetime(2023, 7, 2, 10, 40), dn10, dn20, scl,
                     baseline="05.09", offset=-1000)  # fmt: skip
    meta = parse_mtd_msil2a(safe / "MTD_MSIL2A.xml")
    assert meta.processing_baseline == "05.09"
    assert meta.boa_offsets["B02"] == meta.boa_offsets["B8A"] == meta.offset("B12") == -1000.0
    assert set(meta.boa_offsets) >= set(BANDS_10M + BANDS_20M)
    with Sentinel2Sen2Cor(tmp_path, TILE, bands=["B02", "B8A"], resampling="nearest") as src:
        x, valid = src.read()
    expected = (dn10["B02"].astype(np.float32) - np.float32(1000)) / np.float32(10000)
    np.testing.assert_array_equal(x[:, :, 0, 0], expected)
    expected = (_up(dn20["B8A"]).astype(np.float32) - np.float32(1000)) / np.float32(10000)
    np.testing.assert_array_equal(x[:, :, 0, 1], expected)
    assert (x < 0).any()  # DN < 1000: negative reflectance, kept
    np.testing.assert_array_equal(valid[:, :, 0], dn10["B02"] != 0)


def test_multi_tile_product_selects_the_granule(tmp_path: Path) -> None:
    """Old multi-tile products: tile= picks the granule."""
    sensing = dt.datetime(2016, 3, 1, 10, 30)
    granules = [
        (t, [f"GRANULE/L2A_{t}_A003/IMG_DATA/R{r}m/{t}_20160301T103000_{b}_{r}m" for b, r in
             [("B02", 10), ("B11", 20), ("SCL", 20)]])
        for t in ("T31TCJ", "T31TDJ")
    ]  # fmt: skip
    path = tmp_path / "MTD_MSIL2A.xml"
    path.write_text(_mtd_xml(sensing, granules), encoding="utf-8")
    meta = parse_mtd_msil2a(path, tile="31TDJ")
    assert meta.tile == "T31TDJ"
    assert meta.image_files[20]["SCL"].startswith("GRANULE/L2A_T31TDJ_")
    with pytest.raises(InputDataError, match="several tiles"):
        parse_mtd_msil2a(path)
    with pytest.raises(InputDataError, match="not T32ULU"):
        parse_mtd_msil2a(path, tile="T32ULU")


def test_malformed_metadata(tmp_path: Path) -> None:
    """Malformed or incomplete metadata: InputDataError naming the file."""
    bad = tmp_path / "MTD_MSIL2A.xml"
    bad.write_text("<n1:Level-2A_User_Product><Product_Info>", encoding="utf-8")
    with pytest.raises(InputDataError, match=re.escape(str(bad))):
        parse_mtd_msil2a(bad)
    good = _mtd_xml(SENSING[0], [(TILE, ["GRANULE/x/IMG_DATA/R10m/T31TCJ_x_B02_10m"])])
    bad.write_text(good.replace("PRODUCT_START_TIME", "X").replace("DATATAKE_SENSING_START", "Y"))
    with pytest.raises(InputDataError, match="PRODUCT_START_TIME"):
        parse_mtd_msil2a(bad)
    bad.write_text(re.sub(r"<IMAGE_FILE>.*</IMAGE_FILE>", "", good))
    with pytest.raises(InputDataError, match="IMAGE_FILE"):
        parse_mtd_msil2a(bad)
    bad.write_text(good.replace(">10000<", ">ten thousand<"))
    with pytest.raises(InputDataError, match="BOA_QUANTIFICATION_VALUE"):
        parse_mtd_msil2a(bad)
    with pytest.raises(InputFileNotFoundError, match="does not exist"):
        parse_mtd_msil2a(tmp_path / "nope.xml")


def test_bad_arguments(sen2cor_root: dict) -> None:
    """Bad tile, band, resampling or SCL class: ConfigError; band name forms."""
    root = sen2cor_root["root"]
    with pytest.raises(ConfigError, match="tile"):
        Sentinel2Sen2Cor(root, "31-TCJ")
    with pytest.raises(ConfigError, match="B13"):
        Sentinel2Sen2Cor(root, TILE, bands=["B02", "B13"])
    with pytest.raises(ConfigError, match="resampling"):
        Sentinel2Sen2Cor(root, TILE, resampling="spline42")
    with pytest.raises(ConfigError, match="invalid_scl"):
        Sentinel2Sen2Cor(root, TILE, invalid_scl=[3, 12])
    with pytest.raises(InputFileNotFoundError, match="does not exist"):
        Sentinel2Sen2Cor(root / "missing", TILE)
    with Sentinel2Sen2Cor(root, TILE, bands=["b2", "B8a", "11"]) as src:
        assert src.band_names == ["B02", "B8A", "B11"]


def test_few_open_files(sen2cor_root: dict) -> None:
    """With max_open=2 the least recently used images are closed, results unchanged."""
    bands = ["B02", "B05", "B11"]
    with Sentinel2Sen2Cor(sen2cor_root["root"], TILE, bands=bands, resampling="nearest") as src:
        x_all, v_all = src.read()
    with Sentinel2Sen2Cor(
        sen2cor_root["root"], TILE, bands=bands, resampling="nearest", max_open=2
    ) as src:
        x, v = src.read()
        assert len(src._handles) <= 2
    np.testing.assert_array_equal(x, x_all)
    np.testing.assert_array_equal(v, v_all)
    assert not src._handles
