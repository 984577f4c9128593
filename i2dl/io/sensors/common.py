"""Helpers shared by the sensor readers: grids, windows, tiles and a pool of open rasters.

Sensor products are folders of many small GeoTIFFs (one per band, one per mask, one folder
per acquisition date). The readers keep the datasets they have opened in a
:class:`RasterPool` so that reading many windows does not reopen files, while never holding
more file handles than the process may open (a year of Sentinel-2 is about 70 dates x 13
files).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import resource
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.io.geotiff import grid_profile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform and size in pixels."""

    crs: Any
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, src: Any) -> Grid:
        """The grid of an open rasterio dataset."""
        return cls(src.crs, src.transform, src.width, src.height)

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units, both positive."""
        return abs(self.transform.a), abs(self.transform.e)

    def same_as(self, other: Grid) -> bool:
        """True when both grids have the same CRS, transform (to 1e-6 px) and size."""
        return (
            (self.width, self.height) == (other.width, other.height)
            and self.transform.almost_equals(other.transform, precision=1e-6 * self.res[0])
            and _same_crs(self.crs, other.crs)
        )

    def describe(self) -> str:
        """``W x H px, origin (x, y), pixel (rx, ry), CRS`` for messages."""
        t = self.transform
        crs = self.crs.to_string() if self.crs is not None else "no CRS"
        return (
            f"{self.width}x{self.height} px, origin ({t.c:g}, {t.f:g}), "
            f"pixel ({t.a:g}, {t.e:g}), {crs}"
        )

    def profile(self) -> dict[str, Any]:
        """A rasterio creation profile of the grid (no band count, dtype or options)."""
        return grid_profile(self)


def _same_crs(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(a == b)


def target_grid(
    grid: Grid, proj: Any = None, resolution: float | None = None, where: str = "the tile",
) -> Grid:
    """A tile's grid on the run's output grid (iota2 ``chain.proj``, ``spatial_resolution``).

    The tile's footprint is transformed to ``proj`` (edges densified, so a UTM tile's
    curved edges are covered) and snapped outwards to multiples of ``resolution``: every
    tile is then on one pixel lattice, and the maps of neighbouring tiles mosaic pixel for
    pixel, without resampling (iota2 reprojects every tile onto ``proj`` at
    ``spatial_resolution`` the same way). Pixels of the new grid outside the tile's
    footprint have no data.

    Args:
        grid: the tile's own grid.
        proj: output CRS (``"EPSG:2154"``, WKT, a rasterio ``CRS``); None = the tile's CRS.
        resolution: output pixel size in ``proj`` units (square pixels); None = the tile's
            pixel size, which needs ``proj`` in the tile's units (metres to metres).
        where: the tile named in messages.

    Returns:
        The output grid; ``grid`` itself when both ``proj`` and ``resolution`` are None.

    Raises:
        ConfigError: ``proj`` is not a CRS, ``resolution`` is not a number > 0, or it is
            None while ``proj`` has other units than the tile.
        InputDataError: the tile has no CRS, so it cannot be reprojected.
    """
    if proj is None and resolution is None:
        return grid
    if proj is not None and grid.crs is None:
        raise InputDataError(
            f"{where} has no CRS, so it cannot be reprojected to data.proj={proj}: assign "
            "its CRS (gdal_edit.py -a_srs EPSG:...) or set data.proj to null"
        )
    try:
        crs = grid.crs if proj is None else CRS.from_user_input(proj)
    except CRSError as exc:
        raise ConfigError(
            f"data.proj={proj!r} is not a coordinate reference system ({exc}); give it as "
            "iota2's chain.proj, e.g. EPSG:2154"
        ) from None
    if resolution is None:
        if not _same_units(grid.crs, crs):
            raise ConfigError(
                f"data.proj={proj} is not in the units of {where} ({grid.crs}): set "
                "data.spatial_resolution, the output pixel size in data.proj units"
            )
        resolution = grid.res[0]
    if isinstance(resolution, bool) or not isinstance(resolution, int | float) \
            or not resolution > 0:
        raise ConfigError(
            f"data.spatial_resolution={resolution!r}: give the output pixel size, a number "
            "> 0 in data.proj units (e.g. 10), or null for the tiles' own pixel size"
        )
    res = float(resolution)
    t = grid.transform
    xs = (t.c, t.c + t.a * grid.width)
    ys = (t.f, t.f + t.e * grid.height)
    bounds = (min(xs), min(ys), max(xs), max(ys))
    if grid.crs is not None and not _same_crs(grid.crs, crs):
        bounds = transform_bounds(grid.crs, crs, *bounds, densify_pts=21)
    x0 = math.floor(bounds[0] / res + 1e-6) * res
    y1 = math.ceil(bounds[3] / res - 1e-6) * res
    width = max(1, math.ceil((bounds[2] - x0) / res - 1e-6))
    height = max(1, math.ceil((y1 - bounds[1]) / res - 1e-6))
    return Grid(crs, Affine(res, 0.0, x0, 0.0, -res, y1), width, height)


def _same_units(a: Any, b: Any) -> bool:
    """Both CRS geographic, or both projected with the same linear unit."""
    if a is None or b is None:
        return a is None and b is None
    if a.is_geographic or b.is_geographic:
        return bool(a.is_geographic and b.is_geographic)
    return bool(a.linear_units == b.linear_units)


def check_grid(path: Path, grid: Grid, expected: Grid, expected_from: str, fix: str) -> None:
    """Raise when a raster is not on the expected grid.

    Raises:
        InputDataError: the grids differ; the message gives both and ``fix``.
    """
    if not grid.same_as(expected):
        raise InputDataError(
            f"{path} is on the grid {grid.describe()}, but {expected_from} is on "
            f"{expected.describe()}; {fix}"
        )


def resolve_window(window: Window | None, width: int, height: int, where: Any) -> Window:
    """An integer pixel window inside a ``width`` x ``height`` grid.

    Args:
        window: the requested window; None means the whole grid.
        width: grid width in pixels.
        height: grid height in pixels.
        where: the source named in messages.

    Returns:
        The window with integer offsets and sizes.

    Raises:
        ValueError: the window has fractional offsets or sizes, is empty, or reaches
            outside the grid.
    """
    if window is None:
        return Window(0, 0, width, height)
    vals = (window.col_off, window.row_off, window.width, window.height)
    ints = tuple(int(round(v)) for v in vals)
    if any(abs(v - i) > 1e-9 for v, i in zip(vals, ints, strict=True)):
        raise ValueError(f"{where}: read windows must be whole pixels, got {window}")
    col, row, w, h = ints
    if w <= 0 or h <= 0 or col < 0 or row < 0 or col + w > width or row + h > height:
        raise ValueError(
            f"{where}: window {window} is empty or reaches outside the grid of "
            f"{width}x{height} px; cut windows with i2dl.io.geotiff.block_windows"
        )
    return Window(col, row, w, h)


def in_range(date: dt.date, start: dt.date | None, end: dt.date | None) -> bool:
    """True when ``start <= date <= end`` (None bounds are open)."""
    return (start is None or date >= start) and (end is None or date <= end)


def normalize_tile(tile: str) -> str:
    """A Sentinel-2 (MGRS) tile id as product names spell it: ``38KPD``, ``t38kpd`` -> ``T38KPD``.

    Args:
        tile: the tile id, with or without its ``T``, any case, spaces around ignored.

    Returns:
        ``T`` + two digits + three capital letters.

    Raises:
        ConfigError: ``tile`` is not an MGRS tile id.
    """
    text = str(tile).strip().upper()
    if not re.fullmatch(r"T?\d{2}[A-Z]{3}", text):
        raise ConfigError(f"tile {tile!r} is not an MGRS tile id; give it as 'T31TCJ' or '31TCJ'")
    return text if text.startswith("T") else f"T{text}"


def tile_folder(root: str | Path, tile: str, sensor: str) -> Path:
    """The folder holding a tile's products: ``root/<tile>``, or ``root`` itself.

    ``root`` is taken as the tile folder when ``root/<tile>`` does not exist and ``root``
    is named after the tile or holds product folders directly (the caller checks the
    latter).

    Raises:
        InputFileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputFileNotFoundError(
            f"{sensor} data folder {root} does not exist; set it to the folder that holds "
            f"one sub-folder per tile ({root}/{tile}/...) or to the tile folder itself"
        )
    if (root / tile).is_dir():
        return root / tile
    return root


def short_list(items: Iterable[Any], limit: int = 8) -> str:
    """``a, b, c, ... (N in all)`` for messages; ``nothing`` when empty."""
    items = [str(i) for i in items]
    if not items:
        return "nothing"
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items)} in all)"


def no_product_error(
    sensor: str, tile: str, start: dt.date | None, end: dt.date | None, folder: Path,
    others: list[str], naming: str, hint: str = "",
) -> InputDataError:
    """The error of a tile folder holding no product of a sensor (in a date range).

    Args:
        sensor: the product format's name, e.g. ``Landsat-8 THEIA``.
        tile: the tile id.
        start: first date asked for, or None.
        end: last date asked for, or None.
        folder: the folder searched.
        others: what the folder holds instead (names, with why each was skipped).
        naming: how a product folder is named, e.g. ``LANDSAT8_YYYYMMDD_N2A_<site>T31TCJ``.
        hint: text appended to the message (e.g. "; unzip the archives first").

    Returns:
        The exception to raise, naming the folder, what it holds and the expected names.
    """
    period = ""
    if start or end:
        period = f" between {start or 'the start'} and {end or 'the end'}"
    return InputDataError(
        f"no {sensor} product of tile {tile}{period} in {folder}: found "
        f"{short_list(others)}. Product folders are named {naming} and lie in "
        f"<root>/{tile}/{hint}"
    )


def default_max_open() -> int:
    """How many rasters a reader keeps open: half the process's file limit, at most 1024."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ValueError, OSError):  # pragma: no cover - platform without the limit
        return 256
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(16, min(1024, soft // 2))


class RasterPool:
    """Open rasterio datasets, kept open between reads, least recently used closed first.

    Args:
        max_open: most datasets open at once; None means :func:`default_max_open`.
        on_open: called as ``on_open(path, dataset)`` the first time a path is opened
            (used to check grids once); it may raise.
    """

    def __init__(
        self,
        max_open: int | None = None,
        on_open: Callable[[Path, Any], None] | None = None,
    ) -> None:
        self.max_open = max_open or default_max_open()
        self._on_open = on_open
        self._open: OrderedDict[Path, Any] = OrderedDict()
        self._checked: set[Path] = set()

    def get(self, path: Path, what: str) -> Any:
        """The open dataset of ``path``.

        Args:
            path: raster file.
            what: what the file is, for messages (``"band B2 of <product>"``).

        Raises:
            InputFileNotFoundError: the file cannot be opened.
            InputDataError: raised by ``on_open`` (wrong grid, ...).
        """
        src = self._open.get(path)
        if src is not None:
            self._open.move_to_end(path)
            return src
        try:
            src = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise InputFileNotFoundError(
                f"cannot open {path} ({what}): {exc}. The product may be incomplete or "
                "still zipped: unzip it, or remove it from the folder"
            ) from None
        if path not in self._checked and self._on_open is not None:
            try:
                self._on_open(path, src)
            except Exception:
                src.close()
                raise
        self._checked.add(path)
        self._open[path] = src
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return src

    def close(self) -> None:
        """Close every open dataset."""
        for src in self._open.values():
            src.close()
        self._open.clear()

    def __len__(self) -> int:
        return len(self._open)


def open_meta(path: Path, what: str) -> tuple[Grid, int, tuple[str, ...], float | None]:
    """Grid, band count, dtypes and nodata of a raster, opening it briefly.

    Raises:
        InputFileNotFoundError: the file cannot be opened.
    """
    try:
        with rasterio.open(path) as src:
            return Grid.of(src), src.count, tuple(src.dtypes), src.nodata
    except rasterio.errors.RasterioIOError as exc:
        raise InputFileNotFoundError(f"cannot open {path} ({what}): {exc}") from None


def nodata_or(src: Any, default: float | None) -> float | None:
    """The dataset's nodata tag, or ``default`` when it has none."""
    return src.nodata if src.nodata is not None else default


def equals_nodata(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """Boolean array: True where ``values`` equal ``nodata`` or are NaN or +-inf."""
    bad = ~np.isfinite(values) if values.dtype.kind == "f" else np.zeros(values.shape, bool)
    if nodata is not None and not np.isnan(nodata):
        bad |= values == nodata
    return bad
