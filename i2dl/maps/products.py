"""Companion products of a classification map: label table, colour-indexed map, QGIS style.

iota2 writes, next to its final map ``Classif_Seed_0.tif`` (iota2 documentation,
"Note about labels as strings" and "Color table"):

- ``*_table.csv``: which integer code stands for which original class label, with the
  class colour (columns label, code, R, G, B);
- ``Classif_Seed_0_ColorIndexed.tif``: the same pixels with the colour table embedded, so
  that any viewer shows the classes in their colours.

i2dl writes the same two files for ``maps/classif.tif`` (``classif_table.csv``,
``classif_ColorIndexed.tif``) and adds ``classif.qml``, a QGIS "paletted/unique values"
style with the class names as labels; QGIS applies a ``.qml`` that has the same base name
as the raster automatically when the layer is opened.

Colours come from an iota2 colour table (``code R G B`` lines) or a CSV class map with
``#rrggbb`` colours (:mod:`i2dl.io.colours`); classes it does not list get a default
qualitative palette. Code 0 is the no-data value of the maps: it has no class, no row in
the table and no palette entry in the style; in the colour-indexed map it is the raster's
nodata value and its palette entry is ``nodata_colour`` (black by default).
"""

from __future__ import annotations

import csv
import io
import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import rasterio

from i2dl.errors import InputDataError
from i2dl.io.colours import MAX_CODE, RGB, read_colour_table, resolve_colours, rgb_to_hex
from i2dl.io.files import atomic_path, write_text_atomic
from i2dl.io.geotiff import block_windows, geotiff_profile

log = logging.getLogger(__name__)

#: Suffixes appended to the map's stem (iota2 names: ``Classif_Seed_0_table.csv``,
#: ``Classif_Seed_0_ColorIndexed.tif``; QGIS loads ``<stem>.qml`` with ``<stem>.tif``).
TABLE_SUFFIX = "_table.csv"
COLOUR_INDEXED_SUFFIX = "_ColorIndexed.tif"
QML_SUFFIX = ".qml"
#: Header of the label table.
TABLE_COLUMNS = ("label", "code", "R", "G", "B")
#: QGIS version written in the style file (the paletted renderer format has been stable
#: since QGIS 3.0).
QGIS_VERSION = "3.28.0"

_CHUNK = 1024  # pixels a side of the windows copied at once (a multiple of the 256 tiles)


def _classes(
    class_codes: Sequence[int], class_names: Sequence[str], colours: Mapping[int, RGB]
) -> list[tuple[int, str, RGB]]:
    """Validate the classes and pair each code with its name and colour.

    Raises:
        InputDataError: lengths differ, a code is not in 1..65535 or repeated, or a code
            has no valid colour.
    """
    codes = [int(c) for c in class_codes]
    names = [str(n) for n in class_names]
    if len(codes) != len(names):
        raise InputDataError(
            f"{len(codes)} class codes but {len(names)} class names; give one name per code"
        )
    bad = [c for c in codes if not 1 <= c <= MAX_CODE]
    if bad:
        raise InputDataError(
            f"class code(s) {bad} out of range: codes must be 1-{MAX_CODE} (0 is the "
            "no-data value of the maps, and GeoTIFF palettes stop at 65535)"
        )
    dup = sorted({c for c in codes if codes.count(c) > 1})
    if dup:
        raise InputDataError(f"class code(s) {dup} are given more than once")
    missing = [c for c in codes if c not in colours]
    if missing:
        raise InputDataError(
            f"class code(s) {missing} have no colour; complete the colours with "
            "i2dl.io.colours.resolve_colours(class_codes, colour_table)"
        )
    out: list[tuple[int, str, RGB]] = []
    for code, name in zip(codes, names, strict=True):
        values = [int(v) for v in colours[code]]
        if len(values) != 3 or not all(0 <= v <= 255 for v in values):
            raise InputDataError(
                f"colour {colours[code]!r} of class {code} is not (R, G, B) with values 0-255"
            )
        out.append((code, name, (values[0], values[1], values[2])))
    return out


def write_label_table(
    path: str | Path,
    class_codes: Sequence[int],
    class_names: Sequence[str],
    colours: Mapping[int, RGB],
) -> Path:
    """Write iota2's label table: class label, its integer code and its colour.

    One CSV row per class, in the order given, under a header row
    ``label,code,R,G,B``, for example ``wheat,1,255,255,0``. iota2 documents the same
    columns (``urban, 1, 0, 255, 255``) without a header; the header is added so the
    file reads unambiguously with any CSV reader. Labels holding commas or quotes are
    quoted the CSV way. Written atomically (UTF-8).

    Args:
        path: output CSV, by convention ``<map stem>_table.csv`` next to the map.
        class_codes: the K class codes (1-65535).
        class_names: the K original labels / class names, same order.
        colours: code -> ``(R, G, B)``, for every code.

    Returns:
        ``path``.

    Raises:
        InputDataError: see :func:`_classes` (bad codes, names or colours).
    """
    classes = _classes(class_codes, class_names, colours)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for code, name, (r, g, b) in classes:
        writer.writerow([name, code, r, g, b])
    return write_text_atomic(path, buf.getvalue())


def _palette(
    colours: Mapping[int, RGB], nodata_colour: RGB,
) -> dict[int, tuple[int, int, int, int]]:
    """Code -> ``(R, G, B, A)`` palette entries, code 0 the transparent nodata colour.

    Raises:
        InputDataError: a code outside 1-65535 or a colour value outside 0-255.
    """
    palette: dict[int, tuple[int, int, int, int]] = {}
    for code, rgb in colours.items():
        code = int(code)
        if code == 0:
            continue
        if not 1 <= code <= MAX_CODE:
            raise InputDataError(f"colour code {code} out of range: palettes hold 1-{MAX_CODE}")
        r, g, b = (int(v) for v in rgb)
        if not all(0 <= v <= 255 for v in (r, g, b)):
            raise InputDataError(f"colour {tuple(rgb)!r} of code {code} has a value outside 0-255")
        palette[code] = (r, g, b, 255)
    nr, ng, nb = (int(v) for v in nodata_colour)
    palette[0] = (nr, ng, nb, 0)
    return palette


def _palette_dtype(src_dtype: np.dtype, max_code: int) -> np.dtype:
    """uint8 when the map and every colour code fit in it, else uint16."""
    dtype: np.dtype
    if src_dtype == np.uint8 or (src_dtype != np.uint16 and max_code <= 255):
        dtype = np.dtype(np.uint8)
    else:
        dtype = np.dtype(np.uint16)
    if max_code > np.iinfo(dtype).max:
        dtype = np.dtype(np.uint16)
    return dtype


def write_colour_map(
    classif_path: str | Path,
    out_path: str | Path,
    colours: Mapping[int, RGB],
    nodata_colour: RGB = (0, 0, 0),
) -> Path:
    """Write a colour-indexed copy of a classification map (iota2 ``*_ColorIndexed.tif``).

    The pixels are copied unchanged (window by window, so any map size fits in memory)
    into a GeoTIFF with the same grid (CRS, transform, size), an embedded colour table
    (photometric palette), 256 x 256 tiles and DEFLATE compression. Palettes exist only
    for 8 and 16 bit rasters: the copy is uint8 when every colour code and pixel fits,
    else uint16. Code 0 is the nodata value (its palette entry is ``nodata_colour`` with
    alpha 0; GeoTIFF stores RGB only, viewers hide it through the nodata tag); a source
    nodata value other than 0 is rewritten as 0. Pixel values with no colour are kept
    and drawn black; one warning lists them. The file is written under a temporary name
    and renamed at the end: an existing ``out_path`` is complete.

    Args:
        classif_path: single-band integer GeoTIFF of class codes, nodata 0.
        out_path: output GeoTIFF (e.g. ``classif_ColorIndexed.tif``).
        colours: code -> ``(R, G, B)`` 0-255; an entry for 0 is ignored (use
            ``nodata_colour``).
        nodata_colour: palette colour of code 0.

    Returns:
        ``out_path``.

    Raises:
        InputDataError: the map has several bands or a non-integer type, a code or pixel
            value outside 0-65535, ``out_path`` is the map itself, or a bad colour.
    """
    classif_path, out_path = Path(classif_path), Path(out_path)
    if out_path.resolve() == classif_path.resolve():
        raise InputDataError(
            f"colour map output {out_path} is the classification itself; choose another "
            "name (e.g. <stem>_ColorIndexed.tif)"
        )
    palette = _palette(colours, nodata_colour)

    with rasterio.open(classif_path) as src:
        if src.count != 1:
            raise InputDataError(
                f"classification {classif_path} has {src.count} bands; a colour-indexed map "
                "is made from a single band of class codes"
            )
        src_dtype = np.dtype(src.dtypes[0])
        if src_dtype.kind not in "iu":
            raise InputDataError(
                f"classification {classif_path} has pixel type {src_dtype}; class codes "
                "must be integers (uint8 or uint16)"
            )
        dtype = _palette_dtype(src_dtype, max(palette))
        src_nodata = src.nodata
        remap_nodata = src_nodata is not None and src_nodata != 0
        profile = geotiff_profile(
            src.width, src.height, 1, dtype, src.crs, src.transform, nodata=0,
            predictor=False, photometric="palette",
        )
        counts = np.zeros(np.iinfo(dtype).max + 1, dtype=np.int64)
        with atomic_path(out_path) as tmp:
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write_colormap(1, palette)
                for win in block_windows(src.width, src.height, _CHUNK):
                    block = src.read(1, window=win)
                    if remap_nodata:
                        block = np.where(block == src_nodata, 0, block)
                    lo, hi = int(block.min()), int(block.max())
                    if lo < 0 or hi > np.iinfo(dtype).max:
                        raise InputDataError(
                            f"classification {classif_path} holds pixel value "
                            f"{lo if lo < 0 else hi}, outside the {dtype.name} range of a "
                            f"colour-indexed map (0-{np.iinfo(dtype).max})"
                        )
                    block = block.astype(dtype, copy=False)
                    counts += np.bincount(block.ravel(), minlength=counts.size)
                    dst.write(block, 1, window=win)
                dst.update_tags(1, CLASS_CODES=",".join(str(c) for c in sorted(palette) if c))
    uncoloured = [int(v) for v in np.flatnonzero(counts) if int(v) not in palette]
    if uncoloured:
        log.warning(
            "%s: pixel value(s) %s have no colour (not classes of the map); they are drawn "
            "black in %s",
            classif_path,
            ", ".join(map(str, uncoloured)),
            out_path.name,
        )
    log.debug("colour-indexed map written: %s (%s)", out_path, dtype.name)
    return out_path


def qml_text(
    class_codes: Sequence[int], class_names: Sequence[str], colours: Mapping[int, RGB]
) -> str:
    """The QGIS style (``.qml``) of a classification: a paletted renderer on band 1.

    Each class is a ``<paletteEntry value="code" color="#rrggbb" label="name"
    alpha="255"/>``; pixel values without an entry (no-data 0) are not drawn. Names are
    XML-escaped.

    Raises:
        InputDataError: see :func:`_classes`.
    """
    classes = _classes(class_codes, class_names, colours)
    root = ET.Element(
        "qgis",
        version=QGIS_VERSION,
        styleCategories="AllStyleCategories",
        hasScaleBasedVisibilityFlag="0",
    )
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        type="paletted",
        band="1",
        opacity="1",
        alphaBand="-1",
        nodataColor="",
    )
    ET.SubElement(renderer, "rasterTransparency")
    ET.SubElement(renderer, "minMaxOrigin")
    palette = ET.SubElement(renderer, "colorPalette")
    for code, name, rgb in classes:
        ET.SubElement(
            palette,
            "paletteEntry",
            value=str(code),
            color=rgb_to_hex(rgb),
            label=name,
            alpha="255",
        )
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(
        pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0",
        colorizeRed="255", colorizeGreen="128", colorizeBlue="128", colorizeStrength="100",
    )
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode")
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + body + "\n"


def write_qml(
    path: str | Path,
    class_codes: Sequence[int],
    class_names: Sequence[str],
    colours: Mapping[int, RGB],
) -> Path:
    """Write the QGIS style of a classification (see :func:`qml_text`), atomically.

    Name it after the map (``classif.qml`` for ``classif.tif``): QGIS then applies it
    when the layer is opened.

    Returns:
        ``path``.

    Raises:
        InputDataError: see :func:`_classes`.
    """
    return write_text_atomic(path, qml_text(class_codes, class_names, colours))


def product_paths(classif_path: str | Path) -> dict[str, Path]:
    """Paths of the products of a map: keys ``table``, ``colour_indexed``, ``qml``."""
    classif_path = Path(classif_path)
    stem, parent = classif_path.stem, classif_path.parent
    return {
        "table": parent / f"{stem}{TABLE_SUFFIX}",
        "colour_indexed": parent / f"{stem}{COLOUR_INDEXED_SUFFIX}",
        "qml": parent / f"{stem}{QML_SUFFIX}",
    }


def write_map_products(
    classif_path: str | Path,
    class_codes: Sequence[int],
    class_names: Sequence[str],
    colour_table: str | Path | Mapping[int, RGB] | None = None,
) -> dict[str, Path]:
    """Write the label table, the colour-indexed map and the QGIS style next to a map.

    For ``maps/classif.tif``: ``maps/classif_table.csv``, ``maps/classif_ColorIndexed.tif``
    and ``maps/classif.qml`` (iota2's ``*_table.csv`` and ``*_ColorIndexed.tif``, plus the
    QGIS style). Colours come from ``colour_table``; class codes it lacks get default
    colours (one warning lists them); without a table every class gets a default colour.
    An entry 0 of the table colours the no-data pixels of the colour-indexed map.

    Args:
        classif_path: the classification GeoTIFF (class codes, nodata 0).
        class_codes: the K class codes of the model.
        class_names: their K names (nomenclature, else the original labels).
        colour_table: a colour table or class map file (:func:`read_colour_table`), a
            mapping code -> ``(R, G, B)``, or None for default colours.

    Returns:
        ``{"table": path, "colour_indexed": path, "qml": path}``.

    Raises:
        InputFileNotFoundError: the colour table file does not exist.
        InputDataError: a malformed colour table, bad classes, or a map that cannot be
            colour-indexed (see :func:`write_colour_map`).
    """
    if isinstance(colour_table, (str, Path)):
        table: Mapping[int, RGB] | None = read_colour_table(colour_table)
    else:
        table = colour_table
    colours = resolve_colours(class_codes, dict(table) if table is not None else None)
    nodata_colour: RGB = (0, 0, 0)
    if table is not None and 0 in table:
        r, g, b = (int(v) for v in table[0])
        nodata_colour = (r, g, b)
    paths = product_paths(classif_path)
    write_label_table(paths["table"], class_codes, class_names, colours)
    write_colour_map(classif_path, paths["colour_indexed"], colours, nodata_colour)
    write_qml(paths["qml"], class_codes, class_names, colours)
    log.info(
        "map products written next to %s: %s",
        classif_path,
        ", ".join(p.name for p in paths.values()),
    )
    return paths
