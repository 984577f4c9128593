"""THEIA MUSCATE products: Sentinel-2 L2A (iota2 ``Sentinel_2``), L3A, and Landsat-8 L2A.

The Sentinel-2 L2A reader :class:`Sentinel2Theia` also reads :class:`Sentinel2L3A`
(``Sentinel_2_L3A``) and :class:`Landsat8Theia` (``Landsat8``), which differ only in
their :class:`TheiaFormat` (names, bands, masks).

Product layout (THEIA MUSCATE format, one folder per acquisition, one folder per tile)::

    <root>/T31TCJ/SENTINEL2A_20180511-105804-037_L2A_T31TCJ_D_V1-7/
        SENTINEL2A_..._FRE_B2.tif ... _FRE_B12.tif   flat-reflectance bands (SRE: surface)
        SENTINEL2A_..._FRE_STACK.tif                 iota2's pre-stacked bands (optional)
        SENTINEL2A_..._MTD_ALL.xml                   metadata
        MASKS/SENTINEL2A_..._CLM_R1.tif              cloud mask, 10 m (R2: 20 m)
        MASKS/SENTINEL2A_..._SAT_R1.tif              saturation mask, 10 m
        MASKS/SENTINEL2A_..._EDG_R1.tif              edge (outside the swath) mask, 10 m

Folder name: ``SENTINEL2<A|B>_<YYYYMMDD>-<HHMMSS>-<mmm>_L2A_T<tile>_<C|D>_V<x>-<y>``; the
acquisition date and time, tile and satellite are read from it (iota2 does the same: the
date is the second ``_`` field, up to the first ``-``).

Values (THEIA format description): reflectance x 10000 stored as int16, nodata -10000.
Bands B2 B3 B4 B8 are 10 m; B5 B6 B7 B8A B11 B12 are 20 m, on grids that share the tile's
origin. iota2 stacks the ten bands at 10 m in the order B2 B3 B4 B5 B6 B7 B8 B8A B11 B12
(``*_FRE_STACK.tif``, int16) and builds one binary mask per date: a pixel is masked when
CLM, SAT or EDG (R1) is non-zero.

CLM bits (THEIA product format, ``CLM_R1``/``CLM_R2``, one byte):
bit 0 (1) all clouds except the thinnest, and all shadows; bit 1 (2) all clouds except
the thinnest; bit 2 (4) clouds from mono-temporal thresholds; bit 3 (8) clouds from
multi-temporal thresholds; bit 4 (16) thinnest clouds; bit 5 (32) shadows of a detected
cloud; bit 6 (64) shadows of a cloud outside the image; bit 7 (128) high clouds from the
1.38 um band. SAT has one bit per band (saturated); EDG is 1 outside the acquisition.

What iota2's own test data holds (``iota2_testdata/references/CoRegister/sensor_data``):
folders for tiles T38KPD and T38KPE with only ``*_FRE_STACK.tif`` (a single uint16 band,
256 x 256 px at 10 m, EPSG:32738, no nodata tag, values 41-2286) and a truncated
``*_MTD_ALL.xml``; no band files and no MASKS folder. :class:`Sentinel2Theia` reads such
stacks; a stack whose band count is not 10 cannot follow iota2's order, so its bands are
named ``band1..bandN`` (see ``bands``).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform

from i2dl.errors import ConfigError, InputDataError
from i2dl.io.sensors.base import RasterReader
from i2dl.io.sensors.common import (
    Grid,
    RasterPool,
    check_grid,
    equals_nodata,
    nodata_or,
    normalize_tile,
    open_meta,
    short_list,
)
from i2dl.io.sensors.theia_products import (
    BANDS_10M,
    L3A_VALID_FLAGS,
    L8_L2A,
    S2_L2A,
    S2_L3A,
    THEIA_NODATA,
    THEIA_SCALE,
    TheiaFormat,
    TheiaProduct,
    check_level,
    find_theia_products,
)

log = logging.getLogger(__name__)

#: Source pixels read beyond the window on each side before resampling (>= kernel radius).
_MARGIN = 4


@dataclass
class _Plan:
    """How to read one product: from band files or from its stack."""

    product: TheiaProduct
    mode: str  # "bands" or "stack"
    paths: list[Path] = field(default_factory=list)  # bands mode, one per channel
    is_20m: list[bool] = field(default_factory=list)
    stack_indexes: list[int] = field(default_factory=list)  # stack mode, 1-based
    masks: dict[str, Path] = field(default_factory=dict)


class Sentinel2Theia(RasterReader):
    """A THEIA Sentinel-2 L2A time series of one tile on its 10 m grid (a TimeSeriesSource).

    Each product is read from its band files when all requested bands are there, else
    from iota2's ``*_<level>_STACK.tif``. 10 m bands are read as they are; 20 m bands are
    resampled onto the 10 m grid with ``resampling``: the 20 m pixels covering the window
    plus a margin of 4 pixels are read and warped (``rasterio.warp.reproject``, GDAL's
    warper, in float32, nodata excluded from the kernel) onto the window's 10 m pixels.
    For aligned grids (THEIA's: same origin, pixel 20 = 2 x 10 m) this is exact:
    ``nearest`` repeats each 20 m pixel 2 x 2, and any window gives the same values as
    warping the whole raster (the margin covers the kernel).

    Validity (iota2's rule): an observation is invalid where any band holds nodata
    (-10000, or the file's nodata tag; for a 20 m band, where the warper finds no valid
    source pixel, i.e. the 20 m pixel it lies in is nodata), or CLM (restricted to
    ``cloud_bits``), SAT or EDG (R1, 10 m) is non-zero. Masks missing from a product are
    skipped with a warning (iota2's test stacks have none).

    Args:
        root: folder of tile folders (iota2's ``S2Path``) or the tile folder.
        tile: MGRS tile, ``T31TCJ``.
        level: ``FRE`` (iota2's default) or ``SRE``.
        bands: channels to read, a subset of :data:`THEIA_BANDS` in any order; None means
            the ten bands in iota2's order -- or, for a stack whose band count is not 10,
            that stack's bands as they are, named ``band1..bandN``.
        resampling: rasterio ``Resampling`` name (or member) for the 20 m bands.
        start_date: first acquisition date kept (inclusive); None: no bound.
        end_date: last acquisition date kept (inclusive); None: no bound.
        cloud_bits: CLM bits (0-7) that mark a cloud; None means any non-zero CLM value
            (iota2). E.g. ``(0,)`` uses the summary bit "all clouds except the thinnest and
            all shadows".
        max_open: most files kept open at once (None: half the process's file limit).

    Attributes:
        path: the tile folder. products: the products read, by date.
        dates: T acquisition dates. band_names: C channel names.
        crs, transform, width, height: the 10 m grid (first product's B2, or its stack).

    Raises:
        InputFileNotFoundError: ``root`` or a file cannot be opened.
        InputDataError: no product; a product has neither all requested band files nor a
            stack; products disagree on the channels or the grid.
        ConfigError: bad ``level``, ``bands``, ``resampling``, ``cloud_bits``, tile or date.
    """

    #: the product format read (subclasses read other THEIA MUSCATE products)
    FORMAT: TheiaFormat = S2_L2A

    def __init__(
        self,
        root: str | Path,
        tile: str,
        level: str | None = None,
        bands: Sequence[str] | None = None,
        resampling: str | Resampling = "bilinear",
        start_date: dt.date | str | None = None,
        end_date: dt.date | str | None = None,
        cloud_bits: Iterable[int] | None = None,
        max_open: int | None = None,
    ) -> None:
        fmt = self.FORMAT
        self.level = check_level(level if level is not None else fmt.levels[0], fmt)
        self.tile = normalize_tile(tile)
        self.resampling = _check_resampling(resampling)
        self.cloud_mask = _cloud_mask(cloud_bits)
        requested = _check_bands(bands, fmt)
        self.products = find_theia_products(root, self.tile, start_date, end_date, self.level,
                                            fmt)
        self.path = self.products[0].folder.parent
        self.dates = [p.date for p in self.products]
        self._plans: list[_Plan] = []
        names_per_plan: list[tuple[str, ...]] = []
        for product in self.products:
            plan, names = self._plan(product, requested)
            self._plans.append(plan)
            names_per_plan.append(names)
        if len(set(names_per_plan)) > 1:
            detail = short_list(
                f"{p.product.name}: {list(n)}"
                for p, n in zip(self._plans, names_per_plan, strict=True)
            )
            raise InputDataError(
                f"the products of tile {self.tile} in {self.path} do not give the same "
                f"channels: {detail}; give every product the same band files (or stacks)"
            )
        self.band_names = list(names_per_plan[0])
        ref = _reference(self._plans[0], fmt.fine_bands)
        grid, _, _, _ = open_meta(ref, f"reference grid of {self.products[0].name}")
        self.grid = grid
        self._grid_from = f"{ref.name} (the {fmt.grid_name} grid reference of the first product)"
        self.crs, self.transform = grid.crs, grid.transform
        self.width, self.height = grid.width, grid.height
        self._roles: dict[Path, tuple[str, str]] = {}
        for plan in self._plans:
            for path, coarse in zip(plan.paths, plan.is_20m, strict=True):
                self._roles[path] = ("20m" if coarse else "10m", plan.product.name)
            if plan.mode == "stack" and plan.product.stack is not None:
                self._roles[plan.product.stack] = ("10m", plan.product.name)
            for path in plan.masks.values():
                self._roles[path] = ("10m", plan.product.name)
            self._roles.setdefault(_reference(plan, fmt.fine_bands), ("10m", plan.product.name))
        self._pool = RasterPool(max_open, on_open=self._check_opened)

    # -- construction helpers ---------------------------------------------------------
    def _plan(
        self, product: TheiaProduct, requested: tuple[str, ...] | None
    ) -> tuple[_Plan, tuple[str, ...]]:
        fmt = self.FORMAT
        wanted = requested or fmt.bands
        missing = [b for b in wanted if b not in product.bands]
        masks = {m: product.masks[m] for m in fmt.masks if m in product.masks}
        absent = [m for m in fmt.masks if m not in masks]
        if absent:
            suffix = f"{fmt.mask_suffix}.tif"
            log.warning(
                "%s: no MASKS/*_%s%s; not applied to this date (what it masks stays valid)",
                product.folder, f"{suffix}, *_".join(absent), suffix,
            )
        if not missing:
            paths = [product.bands[b] for b in wanted]
            plan = _Plan(product, "bands", paths, [b not in fmt.fine_bands for b in wanted],
                         masks=masks)
            return plan, tuple(wanted)
        if product.stack is None:
            raise InputDataError(
                f"{product.folder} has neither the {self.level} band files "
                f"{', '.join(f'*_{self.level}_{b}.tif' for b in missing)} nor iota2's "
                f"*_{self.level}_STACK.tif; complete the product or leave it out of the folder"
            )
        _, count, _, _ = open_meta(product.stack, f"stack of {product.name}")
        if count == len(fmt.bands):
            idx = [fmt.bands.index(b) + 1 for b in wanted]
            return _Plan(product, "stack", stack_indexes=idx, masks=masks), tuple(wanted)
        if requested is not None:
            raise InputDataError(
                f"{product.stack} has {count} band(s), not the {len(fmt.bands)} of iota2's "
                f"stack order {list(fmt.bands)}, so bands {list(requested)} cannot be "
                "located in it; set bands=None to read its bands as they are"
            )
        log.warning(
            "%s has %d band(s) instead of iota2's %d (%s); reading them as band1..band%d",
            product.stack,
            count,
            len(fmt.bands),
            " ".join(fmt.bands),
            count,
        )
        names = tuple(f"band{i + 1}" for i in range(count))
        plan = _Plan(product, "stack", stack_indexes=list(range(1, count + 1)), masks=masks)
        return plan, names

    def _check_opened(self, path: Path, src: Any) -> None:
        role, product = self._roles.get(path, ("10m", "?"))
        if role == "10m":
            check_grid(
                path,
                Grid.of(src),
                self.grid,
                self._grid_from,
                "every 10 m band, stack and R1 mask of a tile must share one grid "
                f"(product {product}); resample it onto that grid or remove the product",
            )
            return
        if src.crs != self.grid.crs:
            raise InputDataError(
                f"{path} (20 m band of {product}) has CRS {src.crs}, but the 10 m grid "
                f"({self._grid_from}) has {self.grid.crs}; THEIA bands of a product share "
                "one CRS"
            )
        left, bottom, right, top = _grid_bounds(self.grid)
        sl, sb, sr, st = src.bounds
        tol = 1e-6 * self.grid.res[0]
        if sl > left + tol or sb > bottom + tol or sr < right - tol or st < top - tol:
            raise InputDataError(
                f"{path} (20 m band of {product}) covers {tuple(src.bounds)}, which does not "
                f"contain the 10 m grid {self.grid.describe()}; the 20 m bands must cover the "
                "tile"
            )

    # -- TimeSeriesSource ---------------------------------------------------------------
    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read a window of every acquisition.

        Args:
            window: whole-pixel window of the 10 m grid; None reads the whole grid.

        Returns:
            ``x`` (H, W, T, C) float32, reflectance (stored value / 10000, unitless; 20 m
            bands resampled to 10 m; NaN where the 20 m resampling has no valid source) and
            ``valid`` (H, W, T) bool, True where the observation is usable (no nodata in
            any channel, CLM/SAT/EDG zero).

        Raises:
            ValueError: the window is fractional or outside the grid.
            InputFileNotFoundError: a file cannot be opened.
            InputDataError: a file is not on the tile's grid.
        """
        win, x, valid = self.start_read(window)
        for t, plan in enumerate(self._plans):
            values, invalid = self._read_plan(plan, win)
            x[:, :, t, :] = values.transpose(1, 2, 0) / np.float32(THEIA_SCALE)
            valid[:, :, t] = ~invalid
        return x, valid

    def _read_plan(self, plan: _Plan, win: Window) -> tuple[np.ndarray, np.ndarray]:
        """Raw values (C, H, W) float32 and invalid (H, W) bool of one product."""
        h, w = int(win.height), int(win.width)
        name = plan.product.name
        if plan.mode == "stack":
            assert plan.product.stack is not None
            src = self._pool.get(plan.product.stack, f"stack of {name}")
            values = src.read(plan.stack_indexes, window=win, out_dtype="float32")
            invalid = np.logical_or.reduce(equals_nodata(values, nodata_or(src, THEIA_NODATA)))
        else:
            values = np.empty((len(plan.paths), h, w), dtype=np.float32)
            invalid = np.zeros((h, w), dtype=bool)
            for c, (path, coarse) in enumerate(zip(plan.paths, plan.is_20m, strict=True)):
                src = self._pool.get(path, f"band {self.band_names[c]} of {name}")
                nodata = nodata_or(src, THEIA_NODATA)
                if coarse:
                    values[c] = self._resample(src, win, nodata)
                    invalid |= ~np.isfinite(values[c])
                else:
                    values[c] = src.read(1, window=win, out_dtype="float32")
                    invalid |= equals_nodata(values[c], nodata)
        for mask_name, path in plan.masks.items():
            src = self._pool.get(path, f"{mask_name} mask of {name}")
            invalid |= self._mask_invalid(mask_name, _as_int(src.read(1, window=win)))
        return values, invalid

    def _mask_invalid(self, mask_name: str, m: np.ndarray) -> np.ndarray:
        """Invalid pixels of one mask: non-zero (CLM: restricted to ``cloud_bits``)."""
        if mask_name == "CLM" and self.cloud_mask is not None:
            return (m & self.cloud_mask) != 0
        return m != 0

    def _resample(self, src: Any, win: Window, nodata: float | None) -> np.ndarray:
        """A 20 m band warped onto the 10 m window: (H, W) float32, NaN where no source."""
        h, w = int(win.height), int(win.width)
        dst = np.full((h, w), np.nan, dtype=np.float32)
        fwin = from_bounds(*window_bounds(win, self.transform), transform=src.transform)
        col0 = max(0, math.floor(fwin.col_off + 1e-9) - _MARGIN)
        row0 = max(0, math.floor(fwin.row_off + 1e-9) - _MARGIN)
        col1 = min(src.width, math.ceil(fwin.col_off + fwin.width - 1e-9) + _MARGIN)
        row1 = min(src.height, math.ceil(fwin.row_off + fwin.height - 1e-9) + _MARGIN)
        if col1 <= col0 or row1 <= row0:
            return dst
        swin = Window(col0, row0, col1 - col0, row1 - row0)
        data = src.read(1, window=swin, out_dtype="float32")
        reproject(
            source=data,
            destination=dst,
            src_transform=src.window_transform(swin),
            src_crs=src.crs,
            src_nodata=nodata,
            dst_transform=window_transform(win, self.transform),
            dst_crs=self.crs,
            dst_nodata=np.nan,
            resampling=self.resampling,
        )
        return dst

    def close(self) -> None:
        """Close the open files."""
        self._pool.close()


def _reference(plan: _Plan, fine: Sequence[str] = BANDS_10M) -> Path:
    """The file giving the 10 m grid: B2 (as iota2), another 10 m band, the stack or a mask.

    Raises:
        InputDataError: the product has none of them.
    """
    product = plan.product
    if plan.mode == "stack" and product.stack is not None:
        return product.stack
    for band in ("B2", *fine):
        if band in product.bands:
            return product.bands[band]
    if plan.masks:
        return next(iter(plan.masks.values()))
    raise InputDataError(
        f"{product.folder} has no 10 m band (B2, B3, B4, B8), stack or R1 mask to define the "
        "10 m grid; add its B2 file"
    )


def _grid_bounds(grid: Grid) -> tuple[float, float, float, float]:
    return window_bounds(Window(0, 0, grid.width, grid.height), grid.transform)


def _as_int(mask: np.ndarray) -> np.ndarray:
    """Mask values as int64; non-finite floats become -1 (any non-zero test flags them)."""
    if mask.dtype.kind in "iub":
        return mask.astype(np.int64, copy=False)
    finite = np.isfinite(mask) & (np.abs(mask) < 2**62)
    out = np.full(mask.shape, -1, dtype=np.int64)
    out[finite] = np.rint(mask[finite]).astype(np.int64)
    return out


def _check_bands(bands: Sequence[str] | None,
                 fmt: TheiaFormat = S2_L2A) -> tuple[str, ...] | None:
    if bands is None:
        return None
    if isinstance(bands, str):
        bands = [bands]
    names = tuple(str(b).upper() for b in bands)
    unknown = [b for b in names if b not in fmt.bands]
    if unknown or not names or len(set(names)) != len(names):
        raise ConfigError(
            f"bands={list(bands)}: {fmt.name} bands are {list(fmt.bands)}; give a "
            f"non-empty list of them without repeats (or None for all {len(fmt.bands)})"
        )
    return names


def _check_resampling(resampling: str | Resampling) -> Resampling:
    if isinstance(resampling, Resampling):
        return resampling
    try:
        return Resampling[str(resampling).lower()]
    except KeyError:
        raise ConfigError(
            f"resampling={resampling!r} is not a rasterio resampling method; use one of "
            f"{[r.name for r in Resampling if r.value <= 7]}"
        ) from None


def _cloud_mask(bits: Iterable[int] | None) -> int | None:
    if bits is None:
        return None
    bits = list(bits)
    if not bits or any(not isinstance(b, (int, np.integer)) or not 0 <= b <= 7 for b in bits):
        raise ConfigError(
            f"cloud_bits={bits}: give CLM bit numbers 0-7 (0: all clouds and shadows, "
            "1: clouds, 5-6: shadows, 7: high clouds), or None for any non-zero CLM value"
        )
    return sum(1 << int(b) for b in set(bits))


class Sentinel2L3A(Sentinel2Theia):
    """THEIA Sentinel-2 Level-3A monthly syntheses (WASP), iota2's ``Sentinel_2_L3A``.

    Folders ``SENTINEL2X_<YYYYMMDD>-000000-000_L3A_T<tile>_C_V<x>-<y>`` (the synthesis
    date), bands ``*_FRC_B2.tif`` ... ``*_FRC_B12.tif`` (the ten S2 bands, reflectance x
    10000, nodata -10000; 20 m bands resampled to 10 m as :class:`Sentinel2Theia`) and
    ``MASKS/*_FLG_R1.tif``. A pixel is valid where FLG is 3 (water) or 4 (land), invalid
    where it is 0 (no data), 1 (cloud) or 2 (snow): the synthesis found no clear
    observation there. Same arguments as :class:`Sentinel2Theia` (``level``: ``FRC``).
    """

    FORMAT = S2_L3A

    def _mask_invalid(self, mask_name: str, m: np.ndarray) -> np.ndarray:
        if mask_name == "FLG":
            return ~np.isin(m, L3A_VALID_FLAGS)
        return super()._mask_invalid(mask_name, m)


class Landsat8Theia(Sentinel2Theia):
    """THEIA Landsat-8 L2A in the MUSCATE format (since 2016), iota2's ``Landsat8``.

    Folders ``LANDSAT8-OLITIRS-XS_<YYYYMMDD>-<HHMMSS>-<mmm>_L2A_T<tile>_<C|D>_V<x>-<y>``
    on the Sentinel-2 MGRS tiles, bands ``*_FRE_B1.tif`` ... ``*_FRE_B7.tif`` (30 m,
    reflectance x 10000, nodata -10000; ``level: SRE`` for surface reflectance) and masks
    ``MASKS/*_CLM_XS.tif``, ``*_SAT_XS.tif``, ``*_EDG_XS.tif``: invalid where any is
    non-zero (CLM restricted to ``cloud_bits`` when given). Same arguments as
    :class:`Sentinel2Theia`.
    """

    FORMAT = L8_L2A
