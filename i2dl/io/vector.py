"""Reference polygons: reading, checking and rasterising them on a raster grid.

Follows iota2's rules for reference data, all checked at once by
:func:`i2dl.io.validation.validate_reference` right after reading: file name starting with a
letter, a label field of integer or string type, single valid non-overlapping Polygons (a
MultiPolygon is rejected with its feature ids, unless ``explode_multipolygons`` splits it
into parts that keep the feature's label and id; invalid geometries are rejected unless
``make_valid`` repairs them). Label 0 or empty = no data (ignored). A text field whose
labels are all integers (``"8"``) gives those integers as codes, as an integer field would;
other string labels take the code of their name in the nomenclature when one is given
(``data.nomenclature``), else codes 1..K in sorted order. A file without a CRS is assumed to
be in the raster's CRS, with a warning.
"""

from __future__ import annotations

import difflib
import logging
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.windows
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely.geometry import box

from i2dl.errors import InputDataError, InputFileNotFoundError
from i2dl.io.validation import validate_reference

log = logging.getLogger(__name__)


@dataclass
class ReferenceData:
    """Reference polygons ready for sampling.

    Attributes:
        polygons: GeoDataFrame in the raster CRS with columns ``polygon_id`` (int64, the
            feature id in the file), ``code`` (int64 class code >= 1) and ``geometry``.
        class_names: code -> label as written in the file (string labels) or str(code).
        string_labels: True when the labels are names (a text field whose labels are all
            integers gives integer codes: False).
    """

    polygons: gpd.GeoDataFrame
    class_names: dict[int, str]
    string_labels: bool


def read_reference(
    path: str | Path,
    data_field: str,
    raster_crs: Any,
    raster_bounds: tuple[float, float, float, float],
    explode_multipolygons: bool = False,
    make_valid: bool = False,
    nomenclature: Mapping[int, str] | None = None,
) -> ReferenceData:
    """Read and check reference polygons against a raster.

    Args:
        path: GeoPackage or Shapefile (any format pyogrio reads).
        data_field: the label field (iota2's ``data_field``), integer or string.
        raster_crs: CRS of the time series; polygons in another CRS are reprojected to
            it (logged); polygons without a CRS are assumed to be in it (warned).
        raster_bounds: (left, bottom, right, top) of the raster in ``raster_crs``.
        explode_multipolygons: split MultiPolygons into Polygons instead of rejecting
            them (``sampling.explode_multipolygons``).
        make_valid: repair invalid geometries with ``shapely.make_valid`` instead of
            rejecting them (``sampling.make_valid``).
        nomenclature: class code -> name (``data.nomenclature``). With string labels, each
            label takes the code of the nomenclature entry of the same name (compared
            after stripping white space, case-insensitively); None numbers the labels
            1..K in sorted order. Integer labels, and text labels that are all integers,
            ignore it.

    Returns:
        The labelled polygons (no-data labels dropped) and the class names.

    Raises:
        InputFileNotFoundError: the file does not exist or cannot be read.
        InputDataError: the file breaks one or more of iota2's rules for reference data
            (file name, label field and codes, Polygon geometries, validity, overlaps: see
            :func:`i2dl.io.validation.validate_reference`; all problems in one message);
            every polygon is labelled 0 or empty (no labelled polygon); a string label is
            not a name of ``nomenclature`` or matches a name that several codes share
            (labels, feature ids and the nomenclature's names given); or no labelled
            polygon intersects the raster.

    Warns:
        UserWarning: the file declares no CRS while the raster has one (also logged).
    """
    path = Path(path)
    gdf = _read_checked(path, data_field, explode_multipolygons, make_valid)
    # feature ids apart: the file may have a field of its own called "fid"
    fids = gdf.index.to_numpy()
    gdf = gdf.reset_index(drop=True)
    codes, nodata, class_names, string_labels = _label_codes(
        gdf[data_field], nomenclature, fids, path, data_field
    )
    n_nodata = int(nodata.sum())
    if n_nodata == len(nodata):
        raise InputDataError(
            f"no labelled polygon in {path} (field {data_field!r}): all {n_nodata} polygon(s) "
            "have label 0 or an empty label, which mean no data. Give the classes codes >= 1 "
            "(or names) in that field, or set data.data_field to the field holding the classes"
        )
    if n_nodata:
        log.info(
            "%s: %d polygon(s) with no-data label (0 or empty) ignored: fid %s",
            path,
            n_nodata,
            fids[nodata].tolist(),
        )
    out = gpd.GeoDataFrame(
        {
            "polygon_id": fids[~nodata].astype(np.int64),
            "code": codes[~nodata].astype(np.int64).to_numpy(),
        },
        geometry=gdf.loc[~nodata].geometry.to_numpy(),
        crs=gdf.crs,
    )
    out = _on_raster(out, path, raster_crs, raster_bounds)
    class_names = {c: n for c, n in class_names.items() if c in set(out["code"])}
    return ReferenceData(polygons=out, class_names=class_names, string_labels=string_labels)


def _read_checked(
    path: Path, data_field: str, explode_multipolygons: bool, make_valid: bool,
) -> gpd.GeoDataFrame:
    """The file's features, indexed by feature id, checked by :func:`validate_reference`.

    Raises:
        InputFileNotFoundError: the file does not exist or cannot be read.
        InputDataError: iota2's rules for reference data are broken.
    """
    if not path.exists():
        raise InputFileNotFoundError(
            f"reference polygons {path} do not exist (data.reference); give a GeoPackage or "
            "Shapefile path"
        )
    try:
        gdf = gpd.read_file(path, engine="pyogrio", fid_as_index=True)
    except Exception as exc:  # pyogrio raises several DataSource errors
        raise InputFileNotFoundError(f"cannot read reference polygons {path}: {exc}") from None
    gdf, report = validate_reference(
        gdf, path, data_field, explode_multipolygons=explode_multipolygons, make_valid=make_valid
    )
    log.info(
        "%s: %d feature(s) read, %d MultiPolygon(s) split, %d invalid geometry(ies) "
        "repaired: %d polygon(s)",
        path,
        report["features_read"],
        report["exploded"],
        report["repaired"],
        report["polygons"],
    )
    return gdf


def _label_codes(
    labels: pd.Series, nomenclature: Mapping[int, str] | None, fids: np.ndarray, path: Path,
    data_field: str,
) -> tuple[pd.Series, np.ndarray, dict[int, str], bool]:
    """Class code of each feature from its label (integer codes, or names).

    Returns:
        ``(codes, nodata, class_names, string_labels)``: the codes (undefined where
        ``nodata``), the (N,) bool no-data mask (0 or empty labels), code -> name, and
        whether the labels are strings.

    Raises:
        InputDataError: a string label is not a name of ``nomenclature``, or matches a name
            that several codes share.
    """
    string_labels = not pd.api.types.is_numeric_dtype(labels)
    if string_labels:
        text = labels.astype("string").str.strip()
        nodata = text.isna() | (text == "") | (text == "0")
        names = sorted(text[~nodata].unique())
        digits = [n for n in names if n.isascii() and n.isdigit()]
        if names and len(digits) == len(names):  # integer codes stored as text: kept
            log.info(
                "%s: field %r is text but every label is an integer: the labels are used "
                "as class codes, as with an integer field", path, data_field,
            )
            codes = pd.Series(pd.NA, index=text.index, dtype="Int64")
            codes[~nodata] = text[~nodata].astype("int64")
            codes = codes.where(codes != 0)
            nodata = nodata | codes.isna()
            class_names = {int(n): str(int(n)) for n in digits if int(n) != 0}
            return codes, nodata.to_numpy(dtype=bool), class_names, False
        if digits:
            log.warning(
                "%s: field %r mixes integer labels %s with names: every label is taken as a "
                "name (numbered 1..K alphabetically, or by the nomenclature), so %r is not "
                "class code %s. Use one kind of label", path, data_field, digits[:10],
                digits[0], digits[0],
            )
        if nomenclature:
            mapping = _codes_from_nomenclature(names, nomenclature, text, fids, path, data_field)
        else:
            mapping = {name: i + 1 for i, name in enumerate(names)}
        codes = text.map(mapping)
        class_names = {code: name for name, code in mapping.items()}
    else:
        nodata = labels.isna() | (labels == 0)
        values = labels[~nodata]  # whole numbers >= 1: checked by validate_reference
        codes = labels
        class_names = {int(c): str(int(c)) for c in sorted(values.unique())}
    return codes, nodata.to_numpy(dtype=bool), class_names, string_labels


def _on_raster(
    out: gpd.GeoDataFrame, path: Path, raster_crs: Any,
    raster_bounds: tuple[float, float, float, float],
) -> gpd.GeoDataFrame:
    """The polygons in the raster's CRS that intersect it (the others dropped, logged).

    Raises:
        InputDataError: no polygon intersects the raster.

    Warns:
        UserWarning: the polygons have no CRS but the raster has one.
    """
    if raster_crs is not None and out.crs is not None and out.crs != raster_crs:
        log.info("reprojecting %s from %s to the raster CRS %s", path, out.crs, raster_crs)
        out = out.to_crs(raster_crs)
    elif out.crs is None and raster_crs is not None:
        msg = (
            f"{path} declares no CRS: its coordinates are assumed to be in the raster's CRS "
            f"({raster_crs}). If they are not, assign the right CRS to the file (e.g. "
            "`ogr2ogr -a_srs EPSG:<code>`), otherwise its polygons fall in the wrong place"
        )
        log.warning("%s", msg)
        warnings.warn(msg, UserWarning, stacklevel=3)
    inside = out.intersects(box(*raster_bounds))
    if not inside.any():
        raise InputDataError(
            f"{path}: none of the {len(out)} labelled polygons intersects the raster "
            f"(polygon bounds {tuple(round(float(v), 2) for v in out.total_bounds)}, "
            f"raster bounds {tuple(round(float(v), 2) for v in raster_bounds)} in {raster_crs}). "
            "Check that the polygons and the raster cover the same area and that both CRS "
            "are declared"
        )
    if (~inside).any():
        log.info("%d polygon(s) outside the raster ignored", int((~inside).sum()))
    return out[inside].reset_index(drop=True)


def _codes_from_nomenclature(
    names: list[str],
    nomenclature: Mapping[int, str],
    text: pd.Series,
    fids: np.ndarray,
    path: Path,
    data_field: str,
) -> dict[str, int]:
    """Code of each string label: the nomenclature code of the entry with that name.

    Names are compared stripped and case-insensitively (``Forest`` = ``forest``).

    Raises:
        InputDataError: a label matches no nomenclature name (with a close name suggested,
            and the feature ids carrying it), or a name several codes share.
    """
    by_name: dict[str, list[int]] = {}
    for code, name in nomenclature.items():
        by_name.setdefault(str(name).strip().casefold(), []).append(int(code))
    mapping: dict[str, int] = {}
    problems = []
    for label in names:
        found = by_name.get(label.casefold(), [])
        if len(found) == 1:
            mapping[label] = found[0]
            continue
        ids = fids[(text == label).fillna(False).to_numpy(dtype=bool)][:10].tolist()
        if found:
            problems.append(f"{label!r} (fid {ids}) matches codes {found}, which share that name")
            continue
        close = difflib.get_close_matches(label.casefold(), list(by_name), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{label!r} (fid {ids}) is not in the nomenclature{hint}")
    if problems:
        known = ", ".join(f"{n!r}:{c}" for c, n in nomenclature.items())
        raise InputDataError(
            f"{path}, field {data_field!r}: the string labels must be class names of the "
            f"nomenclature (data.nomenclature) to get its codes: {'; '.join(problems)}. "
            f"The nomenclature has {known}. Fix the labels or the nomenclature, use an "
            "integer code field as data.data_field, or set data.nomenclature=null to number "
            "the labels 1..K alphabetically"
        )
    return mapping


def burn_polygons(
    geometries: Iterable[Any], values: Iterable[int], transform: Any, width: int, height: int
) -> np.ndarray:
    """Burn polygon values on a raster grid (pixel-centre rule, as OTB's sample extraction).

    The one place where i2dl rasterises polygons (reference polygons, eco-regions).

    Args:
        geometries: shapely geometries in the grid's CRS.
        values: one value per geometry, integers in ``0 .. 2**31 - 2``.
        transform: affine transform of the grid.
        width: grid width in pixels.
        height: grid height in pixels.

    Returns:
        (height, width) int64 array: the value of the polygon covering each pixel centre,
        -1 where none. Where polygons overlap, the last one wins.
    """
    shapes = [(geom, int(v) + 1) for geom, v in zip(geometries, values, strict=True)]
    if not shapes:
        return np.full((height, width), -1, dtype=np.int64)
    burnt = rasterize(
        shapes, out_shape=(height, width), transform=transform, fill=0, dtype="int32"
    )
    return burnt.astype(np.int64) - 1


def rasterize_polygons(
    polygons: gpd.GeoDataFrame, transform: Any, width: int, height: int
) -> np.ndarray:
    """Burn the row index of each polygon on a raster grid (:func:`burn_polygons`).

    Args:
        polygons: rows in the grid's CRS; the row index (0..P-1) is burnt.
        transform: affine transform of the grid.
        width: grid width in pixels.
        height: grid height in pixels.

    Returns:
        (height, width) int64 array: the row index of the polygon covering each pixel
        centre, -1 where none. Where polygons overlap, the last one wins.
    """
    return burn_polygons(polygons.geometry, range(len(polygons)), transform, width, height)


def burn_window(
    polygons: gpd.GeoDataFrame, values: np.ndarray, transform: Any, window: Window
) -> np.ndarray:
    """:func:`burn_polygons` on one window of a grid: only the polygons that reach it.

    The polygons whose bounding box meets the window (spatial index) are burnt, in their
    order in ``polygons``, on the window's own grid: the result equals the same window
    of a whole-grid burn (same pixel-centre rule, same "last one wins"), with memory and
    time proportional to the window, not to the grid.

    Args:
        polygons: in the grid's CRS.
        values: (P,) integer value of each polygon (``0 .. 2**31 - 2``).
        transform: affine transform of the whole grid.
        window: the window (rasterio), inside the grid.

    Returns:
        (window.height, window.width) int64, -1 where no polygon covers the pixel centre.
    """
    height, width = int(window.height), int(window.width)
    bounds = rasterio.windows.bounds(window, transform)
    idx = np.sort(polygons.sindex.query(box(*bounds)))
    return burn_polygons(
        polygons.geometry.iloc[idx], np.asarray(values)[idx],
        rasterio.windows.transform(window, transform), width, height,
    )
