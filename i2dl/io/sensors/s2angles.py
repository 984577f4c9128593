"""Sentinel-2 sun and viewing angles on a tile grid (iota2 features tiler, ``s2_path``).

Sentinel-2 metadata give the angles on a coarse grid (23 x 23 points, one every 5000 m
from the tile's upper-left corner): the sun zenith and azimuth, and the viewing
(incidence) zenith and azimuth per band and per detector, NaN where a detector does not
see. Two layouts hold them, parsed alike (namespaces ignored):

- Sen2Cor / ESA L2A: ``<product>.SAFE/GRANULE/<granule>/MTD_TL.xml``: ``Tile_Angles`` with
  ``Sun_Angles_Grid`` and ``Viewing_Incidence_Angles_Grids bandId=.. detectorId=..``; the
  grid origin is ``Tile_Geocoding/Geoposition`` (``ULX``, ``ULY``) in
  ``HORIZONTAL_CS_CODE``; the date is ``SENSING_TIME``.
- THEIA (MAJA) L2A: ``<product>/<product>_MTD_ALL.xml``: ``Sun_Angles_Grids`` and
  ``Viewing_Incidence_Angles_Grids detector_id=..`` inside ``Band_Viewing_Incidence_
  Angles_Grids_List band_id=..``; origin ``ULX``/``ULY`` of the geopositioning; date
  ``ACQUISITION_DATE``.

The product-level ``MTD_MSIL2A.xml`` holds no angle grid (iota2's test data only has
those): reading it is an error that names the file to use instead.

For each tile of the tiler and each acquisition date (date order), six rasters are written
with one band per date, as iota2: ``SOLAR_ZENITH``, ``SOLAR_AZIMUTH``, ``EVEN_ZENITH``,
``ODD_ZENITH``, ``EVEN_AZIMUTH``, ``ODD_AZIMUTH``. Sentinel-2's 12 detectors alternate
their viewing geometry, so the viewing angles are averaged over the even detectors and
over the odd detectors separately (and over the bands). The coarse grids are interpolated
bilinearly (``rasterio.warp.reproject``) onto the tile grid in any CRS; azimuths are
averaged and interpolated through their sine and cosine, so 350° and 10° give 0°, not
180°. Degrees; NaN (the nodata value) where no detector of the parity sees the pixel.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject

from i2dl.errors import InputDataError, InputFileNotFoundError
from i2dl.io.files import atomic_path
from i2dl.io.geotiff import geotiff_profile

log = logging.getLogger(__name__)

#: the rasters written per tile, in this order
ANGLE_RASTERS = ("SOLAR_ZENITH", "SOLAR_AZIMUTH", "EVEN_ZENITH", "ODD_ZENITH",
                 "EVEN_AZIMUTH", "ODD_AZIMUTH")
#: metadata file names searched under ``s2_path``
METADATA_PATTERNS = ("MTD_TL.xml", "*_MTD_ALL.xml")


@dataclass
class AngleGrids:
    """The angle grids of one acquisition.

    Attributes:
        path: the metadata file.
        date: acquisition date.
        crs: CRS of the grid; origin: (x, y) of the first grid point (upper left);
        step: (column step, row step) in CRS units (metres).
        sun_zenith, sun_azimuth: (R, C) float64 degrees.
        viewing: detector id -> list of (zenith (R, C), azimuth (R, C)), one per band.
    """

    path: Path
    date: dt.date
    crs: Any
    origin: tuple[float, float]
    step: tuple[float, float]
    sun_zenith: np.ndarray
    sun_azimuth: np.ndarray
    viewing: dict[int, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(root: ET.Element, name: str) -> ET.Element | None:
    for el in root.iter():
        if _local(el.tag) == name:
            return el
    return None


def _grid(node: ET.Element, path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """A ``<Zenith>``/``<Azimuth>`` block: its values (R, C) and (col, row) steps."""
    col = _find(node, "COL_STEP")
    row = _find(node, "ROW_STEP")
    values = _find(node, "Values_List")
    if col is None or row is None or values is None:
        raise InputDataError(f"{path}: an angle grid lacks COL_STEP, ROW_STEP or Values_List")
    rows = [[float(v) for v in (e.text or "").split()] for e in values
            if _local(e.tag) == "VALUES"]
    try:
        grid = np.array(rows, dtype=np.float64)
    except ValueError:
        raise InputDataError(f"{path}: angle grid rows of different lengths") from None
    if grid.ndim != 2 or grid.size == 0:
        raise InputDataError(f"{path}: empty angle grid")
    return grid, (float(col.text or 0), float(row.text or 0))


def _child(node: ET.Element, name: str) -> ET.Element | None:
    for el in node:
        if _local(el.tag) == name:
            return el
    return None


def read_angle_grids(path: str | Path) -> AngleGrids:
    """Parse the angle grids of a Sen2Cor ``MTD_TL.xml`` or THEIA ``*_MTD_ALL.xml``.

    Raises:
        InputFileNotFoundError: the file cannot be read.
        InputDataError: not well-formed XML, no angle grid (e.g. a product-level
            ``MTD_MSIL2A.xml``), no grid origin, CRS or date, or malformed grids.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except OSError as exc:
        raise InputFileNotFoundError(f"cannot read Sentinel-2 metadata {path}: {exc}") from None
    except ET.ParseError as exc:
        raise InputDataError(f"Sentinel-2 metadata {path} is not well-formed XML (truncated "
                             f"or damaged?): {exc}") from None
    sun = _find(root, "Sun_Angles_Grid")
    if sun is None:
        sun = _find(root, "Sun_Angles_Grids")
    if sun is None:
        hint = (" (MTD_MSIL2A.xml is the product-level metadata; the angles are in "
                "GRANULE/<granule>/MTD_TL.xml)" if "MSIL2A" in path.name else "")
        raise InputDataError(f"{path} holds no Sentinel-2 sun angle grid{hint}")
    zen, azi = _child(sun, "Zenith"), _child(sun, "Azimuth")
    if zen is None or azi is None:
        raise InputDataError(f"{path}: the sun angle grid lacks Zenith or Azimuth")
    sun_zenith, step = _grid(zen, path)
    sun_azimuth, _ = _grid(azi, path)
    ulx, uly = _find(root, "ULX"), _find(root, "ULY")
    code = _find(root, "HORIZONTAL_CS_CODE")
    if ulx is None or uly is None or code is None:
        raise InputDataError(f"{path}: no grid origin (ULX, ULY) or HORIZONTAL_CS_CODE")
    when = _find(root, "SENSING_TIME")
    if when is None:
        when = _find(root, "ACQUISITION_DATE")
    if when is None or not re.match(r"\d{4}-\d{2}-\d{2}", (when.text or "").strip()):
        raise InputDataError(f"{path}: no SENSING_TIME or ACQUISITION_DATE")
    grids = AngleGrids(
        path=path, date=dt.date.fromisoformat((when.text or "").strip()[:10]),
        crs=CRS.from_user_input((code.text or "").strip()),
        origin=(float(ulx.text or 0), float(uly.text or 0)), step=step,
        sun_zenith=sun_zenith, sun_azimuth=sun_azimuth,
    )
    for el in root.iter():
        if _local(el.tag) != "Viewing_Incidence_Angles_Grids":
            continue
        det = el.get("detectorId") or el.get("detector_id")
        z, a = _child(el, "Zenith"), _child(el, "Azimuth")
        if det is None or z is None or a is None:
            continue
        grids.viewing.setdefault(int(det), []).append((_grid(z, path)[0], _grid(a, path)[0]))
    return grids


def _nanmean(stack: list[np.ndarray]) -> np.ndarray:
    arr = np.stack(stack)
    ok = np.isfinite(arr)
    n = ok.sum(axis=0)
    total = np.where(ok, arr, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _to_tile(grid: np.ndarray, angles: AngleGrids, tile: Any) -> np.ndarray:
    """Bilinear interpolation of one coarse grid onto the tile grid (NaN outside)."""
    sx, sy = angles.step
    # grid points are pixel centres of a coarse raster
    transform = Affine(sx, 0, angles.origin[0] - sx / 2, 0, -sy, angles.origin[1] + sy / 2)
    out = np.full((tile.height, tile.width), np.nan, dtype=np.float64)
    reproject(grid, out, src_transform=transform, src_crs=angles.crs, src_nodata=np.nan,
              dst_transform=tile.transform, dst_crs=tile.crs, dst_nodata=np.nan,
              resampling=Resampling.bilinear)
    return out


def _zenith_azimuth(pairs: list[tuple[np.ndarray, np.ndarray]], tile: Any,
                    angles: AngleGrids) -> tuple[np.ndarray, np.ndarray]:
    """Mean zenith and circular-mean azimuth of grids, interpolated onto the tile."""
    zen = _nanmean([z for z, _ in pairs])
    rad = [np.deg2rad(a) for _, a in pairs]
    s, c = _nanmean([np.sin(r) for r in rad]), _nanmean([np.cos(r) for r in rad])
    z_t = _to_tile(zen, angles, tile)
    s_t, c_t = _to_tile(s, angles, tile), _to_tile(c, angles, tile)
    azi = np.rad2deg(np.arctan2(s_t, c_t)) % 360.0
    return z_t, np.where(np.isfinite(s_t) & np.isfinite(c_t), azi, np.nan)


def tile_angles(angles: AngleGrids, tile: Any) -> dict[str, np.ndarray]:
    """The six angle rasters of one acquisition on a tile grid ((H, W) float64 degrees).

    Raises:
        InputDataError: no viewing grid of an even or an odd detector.
    """
    out: dict[str, np.ndarray] = {}
    out["SOLAR_ZENITH"], out["SOLAR_AZIMUTH"] = _zenith_azimuth(
        [(angles.sun_zenith, angles.sun_azimuth)], tile, angles)
    for parity, name in ((0, "EVEN"), (1, "ODD")):
        pairs = [p for det, ps in angles.viewing.items() if det % 2 == parity for p in ps]
        if not pairs:
            raise InputDataError(f"{angles.path}: no viewing angle grid of an {name.lower()} "
                                 "detector")
        out[f"{name}_ZENITH"], out[f"{name}_AZIMUTH"] = _zenith_azimuth(pairs, tile, angles)
    return out


def find_metadata(s2_path: str | Path, tile_name: str) -> list[Path]:
    """The angle metadata files for a tile.

    Searched recursively (:data:`METADATA_PATTERNS`) under ``<s2_path>/<tile>/`` when it
    exists, else under ``s2_path``.

    Raises:
        InputFileNotFoundError: ``s2_path`` is not a folder, or holds no metadata file.
    """
    root = Path(s2_path)
    if not root.is_dir():
        raise InputFileNotFoundError(f"s2_path {root} is not a folder")
    base = root / tile_name if (root / tile_name).is_dir() else root
    files = sorted({p for pat in METADATA_PATTERNS for p in base.rglob(pat)})
    if not files:
        raise InputFileNotFoundError(
            f"no Sentinel-2 tile metadata (MTD_TL.xml of a .SAFE granule, or THEIA "
            f"*_MTD_ALL.xml) under {base}")
    return files


def write_s2_angles(s2_path: str | Path, tile: Any, out_dir: Path) -> dict[str, Path]:
    """Write the six angle rasters of every acquisition for one tile (see module doc).

    Several products of one date (e.g. two granules) are averaged where both see.

    Returns:
        name -> written path (``<out_dir>/<NAME>.tif``, float32, one band per date, band
        descriptions ``YYYYMMDD``, nodata NaN).

    Raises:
        InputFileNotFoundError, InputDataError: see :func:`find_metadata`,
            :func:`read_angle_grids`, :func:`tile_angles`.
    """
    by_date: dict[dt.date, list[dict[str, np.ndarray]]] = {}
    for path in find_metadata(s2_path, tile.name):
        grids = read_angle_grids(path)
        by_date.setdefault(grids.date, []).append(tile_angles(grids, tile))
    dates = sorted(by_date)
    profile = geotiff_profile(tile.width, tile.height, len(dates), "float32", tile.crs,
                              tile.transform, float("nan"))
    written = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ANGLE_RASTERS:
        path = out_dir / f"{name}.tif"
        with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for b, day in enumerate(dates, start=1):
                parts = [p[name] for p in by_date[day]]
                if name.endswith("AZIMUTH") and len(parts) > 1:
                    rad = [np.deg2rad(p) for p in parts]
                    value = np.rad2deg(np.arctan2(_nanmean([np.sin(r) for r in rad]),
                                                  _nanmean([np.cos(r) for r in rad]))) % 360
                else:
                    value = _nanmean(parts)
                dst.write(value.astype(np.float32), b)
                dst.set_band_description(b, day.strftime("%Y%m%d"))
        written[name] = path
    log.info("tile %s: Sentinel-2 angles of %d dates (%s .. %s)", tile.name, len(dates),
             dates[0], dates[-1])
    return written
