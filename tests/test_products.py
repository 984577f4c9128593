"""Label table, colour-indexed map and QGIS style of a classification (i2dl.maps.products)."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin

from i2dl.errors import InputDataError, InputFileNotFoundError
from i2dl.io.colours import (
    default_colours,
    read_class_map_colours,
    read_colour_table,
    resolve_colours,
)
from i2dl.maps.products import (
    write_colour_map,
    write_label_table,
    write_map_products,
    write_qml,
)
from tests.conftest import DATA_DIR

CODES = [1, 2, 5]
NAMES = ["wheat", "forest & <wood>", "urban, dense"]
COLOURS = {1: (255, 255, 0), 2: (0, 128, 0), 5: (200, 10, 30)}
TRANSFORM = from_origin(500000.0, 5000240.0, 10.0, 10.0)
CRS = "EPSG:32633"


def _classif(path: Path, dtype: str = "uint8", codes: tuple[int, ...] = (0, 1, 2, 5)) -> np.ndarray:
    """Write a 30 x 40 georeferenced classification (nodata 0) like infer's."""
    rng = np.random.default_rng(0)
    arr = rng.choice(np.array(codes), size=(30, 40)).astype(dtype)
    with rasterio.open(
        path, "w", driver="GTiff", width=40, height=30, count=1, dtype=dtype, crs=CRS,
        transform=TRANSFORM, nodata=0, tiled=True, blockxsize=16, blockysize=16,
        compress="deflate",
    ) as dst:
        dst.write(arr, 1)
    return arr


# ------------------------------------------------------------------ colour tables


def test_read_colour_table_iota2_format(tmp_path: Path) -> None:
    """iota2 `code R G B` lines, space or comma separated, comments skipped."""
    p = tmp_path / "colours.txt"
    p.write_text("# code R G B\n\n1 255 0 0\n2,0,255,0\n  3\t0 0   255 \n0 10 10 10\n")
    assert read_colour_table(p) == {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255), 0: (10, 10, 10)}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1 255 0 0\n\n2 0 300 0\n", r"line 3: G value 300 .* out of range, expected 0-255"),
        ("1 255 0 0\n# c\n1 0 0 255\n", r"line 3: class code 1 already has a colour on line 1"),
        ("1 255 0 0\n2 0 255\n", r"line 2: 3 value\(s\) in '2 0 255', expected 4"),
        ("wheat 255 0 0\n", r"line 1: class code 'wheat' .* not an integer"),
        ("1 255 0.5 0\n", r"line 1: G value '0.5'"),
        ("-1 255 0 0\n", r"line 1: class code -1 .* out of range"),
        ("# only comments\n\n", r"has no entry"),
    ],
)
def test_read_colour_table_errors(tmp_path: Path, text: str, match: str) -> None:
    """Malformed tables fail with the file, the line number and what is expected."""
    p = tmp_path / "colours.txt"
    p.write_text(text)
    with pytest.raises(InputDataError, match=match) as exc:
        read_colour_table(p)
    assert str(p) in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_read_colour_table_missing_file(tmp_path: Path) -> None:
    """A missing colour table is a FileNotFoundError naming the path."""
    with pytest.raises(InputFileNotFoundError, match="does not exist"):
        read_colour_table(tmp_path / "nope.txt")


def test_class_map_hex_colours(tmp_path: Path) -> None:
    """`#rrggbb` colours of a CSV class map, read directly or auto-detected."""
    p = tmp_path / "class_map.txt"
    p.write_text("value,class,colour\n1,wheat,#FFFF00\n2,\"a, b\",#00008c\n")
    expected = {1: (255, 255, 0), 2: (0, 0, 140)}
    assert read_class_map_colours(p) == expected
    assert read_colour_table(p) == expected  # auto-detected by its `value,` header
    p.write_text("value,class,colour\n1,wheat,#ffff0\n")
    with pytest.raises(InputDataError, match=r"line 2: colour '#ffff0' of class 1"):
        read_class_map_colours(p)
    p.write_text("value,class,colour\n1,wheat,#ffff00\n1,barley,#ffffdc\n")
    with pytest.raises(InputDataError, match=r"line 3: class code 1 already .* line 2"):
        read_class_map_colours(p)
    p.write_text("value,class\n1,wheat\n")
    with pytest.raises(InputDataError, match="no colour column"):
        read_class_map_colours(p)


def test_formosat2_class_map_colours() -> None:
    """The real Formosat-2 class map: wheat `#ffff00` is (255, 255, 0)."""
    path = DATA_DIR / "formosat2_crops" / "class_map.txt"
    if not path.is_file():
        pytest.skip(f"real data absent: {path}")
    colours = read_colour_table(path)
    assert colours[1] == (255, 255, 0)  # 1,wheat,#ffff00
    assert colours[3] == (0xF1, 0x8A, 0xD9)  # 3,rapeseed,#f18ad9
    assert len(colours) >= 13
    assert all(0 <= v <= 255 for rgb in colours.values() for v in rgb)


def test_default_colours_stable_and_distinct() -> None:
    """Default colours depend on the code set only and stay distinct."""
    a = default_colours([5, 1, 2])
    assert a == default_colours([2, 5, 1, 1])  # order and duplicates do not matter
    assert list(a) == [1, 2, 5]
    assert a[1] == (31, 119, 180)  # tab10's first colour, as the map preview
    many = default_colours(range(1, 101))
    assert len(set(many.values())) == 100
    assert all(0 <= v <= 255 for rgb in many.values() for v in rgb)


def test_resolve_colours_fills_missing(caplog: pytest.LogCaptureFixture) -> None:
    """Codes missing from the table get unused default colours, with a warning."""
    with caplog.at_level(logging.WARNING):
        colours = resolve_colours([1, 2, 5], {1: (255, 0, 0), 9: (1, 2, 3)})
    assert colours[1] == (255, 0, 0)
    assert set(colours) == {1, 2, 5}
    assert (255, 0, 0) not in (colours[2], colours[5])
    assert "2, 5" in caplog.text


# ------------------------------------------------------------------ products


def test_colour_indexed_map(tmp_path: Path) -> None:
    """Same pixels and grid, palette photometric, colormap equal to the table."""
    arr = _classif(tmp_path / "classif.tif")
    out = write_colour_map(tmp_path / "classif.tif", tmp_path / "classif_ColorIndexed.tif", COLOURS)
    assert out == tmp_path / "classif_ColorIndexed.tif"
    assert not list(tmp_path.glob(".*tmp*"))
    with rasterio.open(out) as src:
        assert src.dtypes[0] == "uint8"
        assert np.array_equal(src.read(1), arr)
        assert src.crs == rasterio.crs.CRS.from_string(CRS)
        assert src.transform == TRANSFORM
        assert src.nodata == 0
        assert src.compression.name.lower() == "deflate"
        assert src.block_shapes[0] == (256, 256)
        assert src.colorinterp[0] == rasterio.enums.ColorInterp.palette
        cmap = src.colormap(1)
    for code, rgb in COLOURS.items():
        assert cmap[code][:3] == rgb
    assert cmap[0][:3] == (0, 0, 0)


def test_colour_indexed_map_uint16(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Codes above 255 give a uint16 palette map; uncoloured pixels are reported."""
    arr = _classif(tmp_path / "c.tif", "uint16", codes=(0, 1, 300, 7))
    colours = {1: (1, 2, 3), 300: (250, 0, 5)}
    with caplog.at_level(logging.WARNING):
        out = write_colour_map(tmp_path / "c.tif", tmp_path / "c_ColorIndexed.tif", colours)
    assert "pixel value(s) 7 have no colour" in caplog.text
    with rasterio.open(out) as src:
        assert src.dtypes[0] == "uint16"
        assert np.array_equal(src.read(1), arr)
        cmap = src.colormap(1)
    assert cmap[300][:3] == (250, 0, 5)
    assert cmap[1][:3] == (1, 2, 3)


def test_colour_map_rejects_float(tmp_path: Path) -> None:
    """A float map is not a classification: clear error, nothing written."""
    with rasterio.open(
        tmp_path / "f.tif", "w", driver="GTiff", width=4, height=4, count=1, dtype="float32",
        crs=CRS, transform=TRANSFORM,
    ) as dst:
        dst.write(np.ones((1, 4, 4), np.float32))
    with pytest.raises(InputDataError, match="float32"):
        write_colour_map(tmp_path / "f.tif", tmp_path / "o.tif", COLOURS)
    assert not (tmp_path / "o.tif").exists()


def test_qml(tmp_path: Path) -> None:
    """The QML parses and lists every code with its hex colour and (escaped) name."""
    path = write_qml(tmp_path / "classif.qml", CODES, NAMES, COLOURS)
    root = ET.parse(path).getroot()
    assert root.tag == "qgis"
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = {
        int(e.get("value")): (e.get("color"), e.get("label"), e.get("alpha"))
        for e in renderer.iter("paletteEntry")
    }
    assert entries == {
        1: ("#ffff00", "wheat", "255"),
        2: ("#008000", "forest & <wood>", "255"),
        5: ("#c80a1e", "urban, dense", "255"),
    }


def test_label_table(tmp_path: Path) -> None:
    """`<map>_table.csv` reads back with pandas to one row per class."""
    path = write_label_table(tmp_path / "classif_table.csv", CODES, NAMES, COLOURS)
    df = pd.read_csv(path)
    assert list(df.columns) == ["label", "code", "R", "G", "B"]
    assert df.values.tolist() == [
        ["wheat", 1, 255, 255, 0],
        ["forest & <wood>", 2, 0, 128, 0],
        ["urban, dense", 5, 200, 10, 30],
    ]


def test_label_table_checks_classes(tmp_path: Path) -> None:
    """Missing colours, length mismatch and code 0 are rejected."""
    with pytest.raises(InputDataError, match="have no colour"):
        write_label_table(tmp_path / "t.csv", [1, 3], ["a", "b"], COLOURS)
    with pytest.raises(InputDataError, match="2 class codes but 1 class names"):
        write_label_table(tmp_path / "t.csv", [1, 2], ["a"], COLOURS)
    with pytest.raises(InputDataError, match="out of range"):
        write_label_table(tmp_path / "t.csv", [0, 1], ["nodata", "a"], {0: (0, 0, 0), **COLOURS})


def test_write_map_products(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """All three products next to the map, table colours completed by defaults."""
    maps = tmp_path / "maps"
    maps.mkdir()
    arr = _classif(maps / "classif.tif")
    table = tmp_path / "colours.txt"
    table.write_text("0 20 20 20\n1 255 255 0\n2 0 128 0\n")  # no colour for code 5
    with caplog.at_level(logging.WARNING):
        paths = write_map_products(maps / "classif.tif", CODES, NAMES, table)
    assert "class code(s) 5 have no colour in the colour table" in caplog.text
    assert paths == {
        "table": maps / "classif_table.csv",
        "colour_indexed": maps / "classif_ColorIndexed.tif",
        "qml": maps / "classif.qml",
    }
    df = pd.read_csv(paths["table"])
    rows = {r.code: (r.label, (r.R, r.G, r.B)) for r in df.itertuples()}
    assert rows[1] == ("wheat", (255, 255, 0)) and rows[2] == (NAMES[1], (0, 128, 0))
    default5 = rows[5][1]
    with rasterio.open(paths["colour_indexed"]) as src:
        assert np.array_equal(src.read(1), arr)
        cmap = src.colormap(1)
    assert cmap[5][:3] == default5 and cmap[1][:3] == (255, 255, 0)
    assert cmap[0][:3] == (20, 20, 20)  # the table's entry 0 colours nodata
    colours = {
        int(e.get("value")): e.get("color")
        for e in ET.parse(paths["qml"]).getroot().iter("paletteEntry")
    }
    assert colours == {1: "#ffff00", 2: "#008000", 5: "#{:02x}{:02x}{:02x}".format(*default5)}

    # without a colour table: default colours everywhere, the same in all three files
    paths = write_map_products(maps / "classif.tif", CODES, NAMES)
    expected = default_colours(CODES)
    df = pd.read_csv(paths["table"])
    assert {r.code: (r.R, r.G, r.B) for r in df.itertuples()} == expected
    with rasterio.open(paths["colour_indexed"]) as src:
        cmap = src.colormap(1)
    assert {c: cmap[c][:3] for c in CODES} == expected
