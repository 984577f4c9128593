"""Checks on reference polygons, run once on the whole file before any sampling.

The rules come from iota2's documentation of reference data ("i2_classification advanced
uses" > "Preparing your data" > "Reference data", kept in
``shared/reference/iota2_docs/003_a2369de09cbc1a56.txt``; the feature maps builder page,
``001_84d44a3b1887ebe5.txt``, repeats "no multi-polygons, no overlapping"):

1. the file's name starts with an ASCII letter (a-z, A-Z);
2. a label field exists and is of integer or string type;
3. every geometry is a Polygon (MultiPolygons, points, lines, collections are refused);
4. polygons do not overlap.

iota2 also asks for a Shapefile; i2dl reads any vector format pyogrio opens and does not
enforce that one. Two checks are i2dl's own, because the others cannot be computed without
them: a feature with a null or empty geometry is not a Polygon (rule 3), and a geometry must
be valid in the OGC sense (shapely ``is_valid``) for areas and overlaps to mean anything.

Every rule is checked on every feature and all problems are reported together in one
:class:`~i2dl.errors.InputDataError`, so a user fixes the file once rather than once per
problem. Two problems can be fixed by i2dl on request, both logged: MultiPolygons are split
into their parts (``explode_multipolygons``) and invalid geometries are repaired with
``shapely.make_valid`` (``make_valid``).
"""

from __future__ import annotations

import logging
import string
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely.geometry import MultiPolygon, Polygon

from i2dl.errors import InputDataError

log = logging.getLogger(__name__)

#: at most this many feature ids (or pairs) are written per rule in an error message
MAX_LISTED = 20
#: two polygons overlap when their intersection is larger than this fraction of the
#: smaller one's area (shared edges give a zero area; rounding slivers a tiny one)
OVERLAP_RTOL = 1e-9


def validate_reference(
    gdf: gpd.GeoDataFrame,
    path: str | Path,
    data_field: str,
    explode_multipolygons: bool = False,
    make_valid: bool = False,
) -> tuple[gpd.GeoDataFrame, dict[str, int]]:
    """Check reference polygons against iota2's rules and report every problem at once.

    Rules, in the order they are reported (see the module docstring for their source):

    - file name: ``path``'s name must start with an ASCII letter.
    - label field: ``data_field`` must exist; it must be an integer or string field. A float
      field is accepted when all its values are whole numbers (an integer field with empty
      values, or a Shapefile ``Real`` field of codes, reads as float); features with a
      non-integral or negative code are listed. Empty values (NaN, "") are no data and are
      left to the caller. Boolean, date or mixed fields are refused.
    - empty geometry: null or empty geometries are listed.
    - not polygons: points, lines, GeometryCollections... are listed with their type.
    - MultiPolygon: listed unless ``explode_multipolygons``; then each is split into its
      parts, which keep the feature's id and attributes.
    - invalid geometry: polygons failing ``shapely.is_valid`` are listed with GEOS's reason
      unless ``make_valid``; then they are repaired with ``shapely.make_valid``, keeping only
      the polygonal parts. A repair that yields several polygons (a bow-tie gives two
      triangles) is split into them whatever ``explode_multipolygons`` says, since the
      feature was a single Polygon in the file; a repair that leaves no area is listed.
    - overlaps: pairs of features whose intersection has an area larger than
      ``OVERLAP_RTOL`` times the smaller feature's area (polygons that only share an edge
      or a vertex do not overlap). Found with the spatial index; only features with a valid
      (or repaired) polygonal geometry are compared.

    Args:
        gdf: the features as read, indexed by their feature id (``fid_as_index=True``).
        path: the file they were read from, for messages.
        data_field: the label field (iota2's ``data_field``, i2dl's ``data.data_field``).
        explode_multipolygons: split MultiPolygons into their parts instead of refusing
            them (``sampling.explode_multipolygons``).
        make_valid: repair invalid geometries instead of refusing them
            (``sampling.make_valid``).

    Returns:
        ``(polygons, report)``: the features, all valid single Polygons, still indexed by
        feature id (index name ``fid``; an exploded or repaired feature gives several rows
        with the same id); and counts for logging: ``features_read``, ``exploded``
        (MultiPolygon features split), ``repaired`` (invalid geometries repaired),
        ``polygons`` (rows returned).

    Raises:
        InputDataError: one or more rules are broken; the message lists, rule by rule, every
            offending feature id (the first ``MAX_LISTED``, then how many more) and how to
            fix it.
    """
    path = Path(path)
    fids = gdf.index.to_numpy()
    geoms = np.asarray(gdf.geometry.array, dtype=object)
    problems = _check_file_name(path) + _check_label_field(gdf, data_field)
    kinds, is_multi = _check_geometry_types(fids, geoms, explode_multipolygons)
    problems += kinds
    invalid, checked, valid, repaired = _check_validity(path, fids, geoms, make_valid)
    problems += invalid
    pairs = _overlapping_pairs(checked[valid], fids[valid])  # trusted geometries only
    if pairs:
        problems.append(
            f"overlaps: {len(pairs)} pair(s) of overlapping features (fid, fid): "
            f"{_listing(pairs)}; iota2 forbids overlapping polygons (pixels inside both "
            "would get two labels). Remove or merge the overlapping polygons, or cut one "
            "out of the other"
        )
    if problems:
        raise InputDataError(
            f"{path}: {len(problems)} kind(s) of problem with the reference polygons "
            "(iota2's rules for reference data); all are listed, fix them and run again:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )

    out = gdf.copy()
    out[gdf.geometry.name] = gpd.GeoSeries(checked, index=gdf.index, crs=gdf.crs)
    out.index = out.index.rename("fid")
    n_exploded = int(is_multi.sum())
    if n_exploded:
        log.warning(
            "%s: splitting %d MultiPolygon feature(s) into their parts (same id and label), fid %s",
            path,
            n_exploded,
            _listing(fids[is_multi].tolist()),
        )
    out = out.explode(index_parts=False)
    report = {
        "features_read": len(gdf),
        "exploded": n_exploded,
        "repaired": len(repaired),
        "polygons": len(out),
    }
    return out, report


def _check_file_name(path: Path) -> list[str]:
    """Rule 1: the file's name starts with an ASCII letter."""
    if not path.name[:1] or path.name[0] not in string.ascii_letters:
        return [
            f"file name: {path.name!r} does not start with an ASCII letter (a-z, A-Z), as "
            "iota2 requires. Rename the file (and its side files) so that its name starts "
            "with a letter"
        ]
    return []


def _geometry_kinds(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(empty, is_poly, is_multi, types)``: (N,) bool masks and (N,) geometry type names."""
    null = shapely.is_missing(geoms)
    empty = null | shapely.is_empty(geoms)
    types = np.array([g.geom_type if g is not None else "None" for g in geoms], dtype=object)
    is_poly = ~empty & (types == "Polygon")
    is_multi = ~empty & (types == "MultiPolygon")
    return empty, is_poly, is_multi, types


def _check_geometry_types(
    fids: np.ndarray, geoms: np.ndarray, explode_multipolygons: bool,
) -> tuple[list[str], np.ndarray]:
    """Rule 3: empty geometries, non-polygons and (unless exploded) MultiPolygons.

    Returns:
        The problems and the (N,) bool mask of MultiPolygon features.
    """
    problems: list[str] = []
    empty, is_poly, is_multi, types = _geometry_kinds(geoms)
    other = ~empty & ~is_poly & ~is_multi
    if empty.any():
        ids = fids[empty].tolist()
        problems.append(
            f"empty geometry: {len(ids)} feature(s) without a geometry, fid {_listing(ids)}. "
            "Delete these features or draw their polygon"
        )
    if other.any():
        rows = [(int(f), str(t)) for f, t in zip(fids[other], types[other], strict=True)]
        problems.append(
            f"not polygons: {len(rows)} feature(s) that are not polygons (fid, type): "
            f"{_listing(rows)}; reference data must be Polygons. Delete these features or "
            "replace them by the polygons they stand for"
        )
    if is_multi.any() and not explode_multipolygons:
        ids = fids[is_multi].tolist()
        problems.append(
            f"MultiPolygon: {len(ids)} MultiPolygon feature(s), fid {_listing(ids)}; iota2 "
            "requires single Polygons. Split them into Polygons, or set "
            "sampling.explode_multipolygons=true to split each into its parts (same label "
            "and polygon id)"
        )
    return problems, is_multi


def _check_validity(
    path: Path, fids: np.ndarray, geoms: np.ndarray, make_valid: bool,
) -> tuple[list[str], np.ndarray, np.ndarray, list[int]]:
    """OGC validity of the polygonal features (others are refused by rule 3), or repair.

    Returns:
        ``(problems, checked, valid, repaired)``: the geometries used from here on
        (repaired ones replaced), the (N,) bool mask of valid (or repaired) polygonal
        features, and the ids of the repaired features.
    """
    _, is_poly, is_multi, _ = _geometry_kinds(geoms)
    polygonal = is_poly | is_multi
    valid = np.zeros(len(geoms), dtype=bool)
    valid[polygonal] = shapely.is_valid(geoms[polygonal])
    invalid = polygonal & ~valid
    checked = geoms.copy()
    repaired: list[int] = []
    if not invalid.any():
        return [], checked, valid, repaired
    reasons = shapely.is_valid_reason(geoms[invalid])
    if not make_valid:
        rows = [(int(f), str(r)) for f, r in zip(fids[invalid], reasons, strict=True)]
        return [
            f"invalid geometry: {len(rows)} invalid feature(s) (fid, reason): "
            f"{_listing(rows)}. Fix them in a GIS (e.g. QGIS 'Fix geometries'), or set "
            "sampling.make_valid=true to repair them (only polygonal parts are kept)"
        ], checked, valid, repaired
    problems: list[str] = []
    lost = []
    for i, reason in zip(np.flatnonzero(invalid), reasons, strict=True):
        fixed = _polygonal_part(shapely.make_valid(geoms[i]))
        if fixed is None:
            lost.append((int(fids[i]), f"{reason}; no area left after repair"))
        else:
            checked[i], valid[i] = fixed, True
            repaired.append(int(fids[i]))
    if lost:
        problems.append(
            f"invalid geometry: {len(lost)} invalid feature(s) with no area left "
            f"after sampling.make_valid (fid, reason): {_listing(lost)}. Delete "
            "these features or redraw them"
        )
    if repaired:
        log.warning(
            "%s: repaired %d invalid feature(s) with shapely.make_valid "
            "(polygonal parts kept), fid %s",
            path,
            len(repaired),
            _listing(repaired),
        )
    return problems, checked, valid, repaired


def _check_label_field(gdf: gpd.GeoDataFrame, data_field: str) -> list[str]:
    """Problems with the label field: missing, of a refused type, or bad numeric codes."""
    if data_field not in gdf.columns or data_field == gdf.geometry.name:
        fields = [c for c in gdf.columns if c != gdf.geometry.name]
        return [
            f"label field: {data_field!r} (data.data_field) not found; the file has fields "
            f"{fields}. Set data.data_field to one of them"
        ]
    labels = gdf[data_field]
    dtype = labels.dtype
    if pd.api.types.is_bool_dtype(dtype) or not (
        pd.api.types.is_integer_dtype(dtype)
        or pd.api.types.is_float_dtype(dtype)
        or _is_text(labels)
    ):
        return [
            f"label field: {data_field!r} (data.data_field) is of type {dtype}; iota2 needs "
            "an integer or string field. Set data.data_field to such a field or convert it"
        ]
    if _is_text(labels):
        return []
    values = labels.to_numpy(dtype=float)
    known = ~np.isnan(values)
    bad = known & ((values < 0) | (values != np.round(values)))
    if not bad.any():
        if pd.api.types.is_float_dtype(dtype) and known.any():
            log.info(
                "label field %r is a float field of whole numbers: read as integers", data_field
            )
        return []
    ids = gdf.index.to_numpy()[bad].tolist()
    shown = [v.item() if isinstance(v, np.generic) else v for v in values[bad]]
    return [
        f"label values: field {data_field!r} must hold positive integer class codes (0 or "
        f"empty = no data); {len(ids)} feature(s) do not, fid {_listing(ids)} (values "
        f"{_listing(shown)}). Correct these values, or use a string field"
    ]


def _is_text(labels: pd.Series) -> bool:
    """True for a string field (pandas string dtype, or objects that are all str/None)."""
    if pd.api.types.is_string_dtype(labels.dtype) and labels.dtype != object:
        return True
    if labels.dtype == object:
        return all(v is None or isinstance(v, str) or v != v for v in labels)
    return False


def _polygonal_part(geom: Any) -> Polygon | MultiPolygon | None:
    """The polygons of a (repaired) geometry, None when it has no area."""
    parts = [
        g
        for g in shapely.get_parts(shapely.get_parts(geom))
        if isinstance(g, Polygon) and not g.is_empty
    ]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _overlapping_pairs(geoms: np.ndarray, fids: np.ndarray) -> list[tuple[int, int]]:
    """Pairs of feature ids (sorted) whose geometries share an area, not just an edge."""
    if len(geoms) < 2:
        return []
    series = gpd.GeoSeries(geoms)
    left, right = series.sindex.query(geoms, predicate="intersects")
    keep = left < right
    left, right = left[keep], right[keep]
    if len(left) == 0:
        return []
    area = shapely.area(geoms)
    shared = shapely.area(shapely.intersection(geoms[left], geoms[right]))
    over = shared > OVERLAP_RTOL * np.minimum(area[left], area[right])
    pairs = {
        tuple(sorted((int(fids[i]), int(fids[j]))))
        for i, j in zip(left[over], right[over], strict=True)
    }
    return sorted(pairs)  # type: ignore[arg-type]


def _listing(items: list[Any]) -> str:
    """``repr`` of a list, cut after ``MAX_LISTED`` items with the number left out."""
    items = [int(v) if isinstance(v, np.integer) else v for v in items]
    if len(items) <= MAX_LISTED:
        return repr(items)
    head = ", ".join(repr(v) for v in items[:MAX_LISTED])
    return f"[{head}, ...] ({len(items) - MAX_LISTED} more)"
