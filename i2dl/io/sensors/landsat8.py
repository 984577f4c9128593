"""THEIA Landsat-8 N2A products (the pre-2016 THEIA/MACCS format), iota2's ``Landsat8_old``.

Product layout (one folder per acquisition, one folder per tile)::

    <root>/D0005H0002/LANDSAT8_OLITIRS_XS_20160330_N2A_France-MetropoleD0005H0002/
        LANDSAT8_OLITIRS_XS_20160330_N2A_ORTHO_SURF_CORR_PENTE_France-MetropoleD0005H0002.TIF
        MASK/..._NUA.TIF      clouds (non-zero = cloud)
        MASK/..._SAT.TIF      saturation (non-zero = saturated)
        MASK/..._DIV.TIF      miscellaneous flags; bit 0 set = no data (outside the image)
        MASK/..._NODATA.TIF   data footprint (bit 0 set = data); not used by iota2

Folder name: ``LANDSAT8_OLITIRS_XS_<YYYYMMDD>_N2A_<site><tile>`` (tile ``D0005H0002``);
the date is the 4th ``_`` field, as iota2 reads it.

The image holds the 7 OLI reflective bands, named B1..B7 by iota2 (coastal, blue, green,
red, NIR, SWIR1, SWIR2), 30 m, slope-corrected surface reflectance (``CORR_PENTE``) x 1000
(the N2A format; values of iota2's test products: 4-611, i.e. reflectance 0.004-0.611,
with the NIR band B5 highest, as expected of vegetation), nodata -10000.

Validity, as iota2's ``Landsat_8_old`` builds its date masks: an observation is invalid
where DIV is odd (bit 0, no data), NUA != 0 or SAT != 0, or the image holds nodata. iota2
ignores the NODATA mask; older iota2 (``nodata_Mask`` option) used it instead of DIV with
"odd = data". In iota2's test data that mask contradicts itself: tile D0005H0002 has
NODATA = 1 everywhere (uint16/uint8, data everywhere), tile D0005H0003 has NODATA = 0
everywhere (float32 placeholder masks), while both images are fully valid, so reading
"NODATA != 0 = invalid" would wipe out D0005H0002 and "even = invalid" D0005H0003. It is
therefore off by default (``use_nodata_mask``).

iota2's test products (``iota2_testdata/L8_50x50``): D0005H0002 is 50 x 50 px, image uint16,
masks uint16 (2016-03-30) or uint8 (2016-04-15); D0005H0003 is 56 x 49 px, image int16,
masks float32 with nodata tag -3.4e38; EPSG:2154, 30 m; no image nodata tag; all masks 0
(NODATA as above).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from i2dl.errors import ConfigError, InputDataError
from i2dl.io.raster import as_date, parse_date
from i2dl.io.sensors.base import RasterReader
from i2dl.io.sensors.common import (
    Grid,
    RasterPool,
    check_grid,
    equals_nodata,
    in_range,
    no_product_error,
    nodata_or,
    open_meta,
    short_list,
    tile_folder,
)

log = logging.getLogger(__name__)

#: iota2's names of the 7 bands of the N2A image, in file order.
LANDSAT8_BANDS: tuple[str, ...] = ("B1", "B2", "B3", "B4", "B5", "B6", "B7")
#: Reflectance = stored value / LANDSAT8_N2A_SCALE.
LANDSAT8_N2A_SCALE = 1000.0
#: Nodata value of N2A reflectance images.
LANDSAT8_N2A_NODATA = -10000.0
#: Mask files (suffix in MASK/) iota2 uses; NODATA is optional.
MASK_NAMES: tuple[str, ...] = ("NUA", "SAT", "DIV")

_FOLDER_RE = re.compile(r"^(?P<sat>LANDSAT8)_OLITIRS_XS_(?P<date>\d{8})_N2A_(?P<rest>.+)$")


@dataclass(frozen=True)
class N2AFormat:
    """What differs between the THEIA N2A (old format) Landsat products.

    Attributes:
        name: for messages (``THEIA Landsat-8 N2A``).
        folder_re: folder name (groups ``date``, ``rest`` = ``<site><tile>``).
        prefix: the folder name's start, for messages (``LANDSAT8_OLITIRS_XS``).
        satellite: ``LANDSAT8`` or ``LANDSAT5``.
        bands: iota2's band names, in file order.
    """

    name: str
    folder_re: re.Pattern[str]
    prefix: str
    satellite: str
    bands: tuple[str, ...]


#: iota2 ``Landsat8_old``.
L8_N2A = N2AFormat("THEIA Landsat-8 N2A", _FOLDER_RE, "LANDSAT8_OLITIRS_XS", "LANDSAT8",
                   LANDSAT8_BANDS)
#: iota2 ``Landsat5_old``: TM, 6 reflective bands (blue, green, red, NIR, SWIR1, SWIR2).
L5_N2A = N2AFormat(
    "THEIA Landsat-5 N2A",
    re.compile(r"^(?P<sat>LANDSAT5)_TM_XS_(?P<date>\d{8})_N2A_(?P<rest>.+)$"),
    "LANDSAT5_TM_XS", "LANDSAT5", ("B1", "B2", "B3", "B4", "B5", "B6"),
)
_TILE_RE = re.compile(r"(?P<tile>D\d{4}H\d{4})$")
_IMAGE_TAG = "_ORTHO_SURF_CORR_PENTE_"


@dataclass(frozen=True)
class Landsat8Product:
    """One THEIA Landsat-8 N2A acquisition (a product folder).

    Attributes:
        folder: the product folder.
        satellite: ``LANDSAT8``.
        date: acquisition date, from the folder name.
        site: the site part of the name (``France-Metropole``).
        tile: the tile (``D0005H0002``).
        image: the ``*_ORTHO_SURF_CORR_PENTE_*.TIF`` reflectance image, or None.
        masks: ``NUA``/``SAT``/``DIV``/``NODATA`` -> ``MASK/*_<name>.TIF`` found.
    """

    folder: Path
    satellite: str
    date: dt.date
    site: str
    tile: str
    image: Path | None = None
    masks: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The product (folder) name."""
        return self.folder.name

    @classmethod
    def from_folder(cls, folder: str | Path, tile: str | None = None,
                    fmt: N2AFormat = L8_N2A) -> Landsat8Product:
        """Describe a product folder: parse its name and find its image and masks.

        Args:
            folder: ``LANDSAT8_OLITIRS_XS_YYYYMMDD_N2A_<site><tile>`` (``fmt.prefix``).
            tile: the expected tile, used to split ``<site><tile>`` when the tile is not
                of the ``D####H####`` form.
            fmt: :data:`L8_N2A` or :data:`L5_N2A`.

        Raises:
            InputDataError: the name does not follow the pattern, or the folder holds
                several reflectance images.
        """
        folder = Path(folder)
        parsed = _parse_name(folder.name, tile, fmt)
        if parsed is None:
            raise InputDataError(
                f"{folder} is not named like a {fmt.name} product "
                f"({fmt.prefix}_YYYYMMDD_N2A_<site><tile>)"
            )
        date, site, ptile = parsed
        images = sorted(
            p
            for p in folder.iterdir()
            if p.is_file()
            and _IMAGE_TAG in p.name.upper()
            and p.suffix.upper() in (".TIF", ".TIFF")
            and "COREG" not in p.name.upper()
        )
        if len(images) > 1:
            raise InputDataError(
                f"{folder} holds several reflectance images: {short_list(i.name for i in images)}"
                "; keep one *_ORTHO_SURF_CORR_PENTE_*.TIF per product"
            )
        masks: dict[str, Path] = {}
        mask_dir = folder / "MASK"
        if mask_dir.is_dir():
            for path in sorted(mask_dir.iterdir()):
                stem = path.name.upper()
                for name in (*MASK_NAMES, "NODATA"):
                    if path.is_file() and stem.endswith((f"_{name}.TIF", f"_{name}.TIFF")):
                        masks[name] = path
        return cls(
            folder=folder,
            satellite=fmt.satellite,
            date=date,
            site=site,
            tile=ptile,
            image=images[0] if images else None,
            masks=masks,
        )


def _parse_name(name: str, tile: str | None,
                fmt: N2AFormat = L8_N2A) -> tuple[dt.date, str, str] | None:
    match = fmt.folder_re.match(name)
    if match is None:
        return None
    try:
        date = parse_date(match["date"])
    except ValueError:
        return None
    rest = match["rest"]
    if tile and rest.upper().endswith(tile.upper()):
        return date, rest[: -len(tile)], rest[-len(tile) :]
    found = _TILE_RE.search(rest)
    if found is None:
        return date, "", rest
    return date, rest[: found.start()], found["tile"]


def find_landsat8_products(
    root: str | Path,
    tile: str,
    start_date: dt.date | str | None = None,
    end_date: dt.date | str | None = None,
    fmt: N2AFormat = L8_N2A,
) -> list[Landsat8Product]:
    """Find the THEIA N2A products of a tile (Landsat-8 unless ``fmt`` is :data:`L5_N2A`).

    Args:
        root: folder with one sub-folder per tile (iota2's ``L8Path_old``), or the tile
            folder itself.
        tile: the tile, e.g. ``D0005H0002``.
        start_date: keep acquisitions on or after this date; None: no bound.
        end_date: keep acquisitions on or before this date (inclusive); None: no bound.
        fmt: the product format.

    Returns:
        The products, sorted by date.

    Raises:
        InputFileNotFoundError: ``root`` does not exist.
        InputDataError: no product of the tile (in the date range) in the folder; the
            message lists the folder's entries.
        ConfigError: a date argument is not a date.
    """
    tile = str(tile).strip()
    start, end = as_date(start_date, "start_date"), as_date(end_date, "end_date")
    folder = tile_folder(root, tile, fmt.name)
    products, others = [], []
    for entry in sorted(folder.iterdir()):
        parsed = _parse_name(entry.name, tile, fmt) if entry.is_dir() else None
        if parsed is None or parsed[2].upper() != tile.upper():
            others.append(entry.name)
            continue
        if not in_range(parsed[0], start, end):
            others.append(f"{entry.name} (out of the date range)")
            continue
        products.append(Landsat8Product.from_folder(entry, tile, fmt))
    if not products:
        raise no_product_error(fmt.name, tile, start, end, folder, others,
                               f"{fmt.prefix}_YYYYMMDD_N2A_<site>{tile}")
    products.sort(key=lambda p: p.date)
    return products


class Landsat8N2A(RasterReader):
    """A THEIA Landsat-8 N2A time series of one tile (a TimeSeriesSource), 30 m.

    Args:
        root: folder of tile folders (iota2's ``L8Path_old``) or the tile folder.
        tile: the tile, ``D0005H0002``.
        bands: channels to read, a subset of :data:`LANDSAT8_BANDS` (B1..B7) in any
            order; None reads all seven.
        start_date: first acquisition date kept (inclusive); None: no bound.
        end_date: last acquisition date kept (inclusive); None: no bound.
        use_nodata_mask: also mark invalid where ``MASK/*_NODATA.TIF`` is even (bit 0
            clear = no data, older iota2's reading); off by default, as in iota2 (see the
            module notes on iota2's test data).
        scale: reflectance = stored value / ``scale`` (1000 for N2A products).
        max_open: most files kept open at once (None: half the process's file limit).

    Attributes:
        path: the tile folder. products: the products read, by date.
        dates: T acquisition dates. band_names: C channel names.
        crs, transform, width, height: the grid of the first product's image.

    Raises:
        InputFileNotFoundError: ``root`` or a file cannot be opened.
        InputDataError: no product; a product has no image, an image without 7 bands, a
            required mask missing, or a file off the first image's grid.
        ConfigError: bad ``bands``, ``scale`` or date.
    """

    #: the product format read (:class:`Landsat5N2A` reads Landsat-5)
    FORMAT: N2AFormat = L8_N2A

    def __init__(
        self,
        root: str | Path,
        tile: str,
        bands: Sequence[str] | None = None,
        start_date: dt.date | str | None = None,
        end_date: dt.date | str | None = None,
        use_nodata_mask: bool = False,
        scale: float = LANDSAT8_N2A_SCALE,
        max_open: int | None = None,
    ) -> None:
        fmt = self.FORMAT
        self.tile = str(tile).strip()
        self.band_names = _check_bands(bands, fmt)
        self._indexes = [fmt.bands.index(b) + 1 for b in self.band_names]
        if not scale or scale <= 0:
            raise ConfigError(f"scale={scale!r}: give the positive reflectance scale (1000)")
        self.scale = float(scale)
        self.use_nodata_mask = bool(use_nodata_mask)
        self.products = find_landsat8_products(root, self.tile, start_date, end_date, fmt)
        self.path = self.products[0].folder.parent
        self.dates = [p.date for p in self.products]
        wanted = (*MASK_NAMES, "NODATA") if self.use_nodata_mask else MASK_NAMES
        for product in self.products:
            if product.image is None:
                raise InputDataError(
                    f"{product.folder} holds no *{_IMAGE_TAG}*.TIF reflectance image; complete "
                    "the product or remove it from the folder"
                )
            missing = [m for m in wanted if m not in product.masks]
            if missing:
                raise InputDataError(
                    f"{product.folder}/MASK lacks {', '.join(f'*_{m}.TIF' for m in missing)}, "
                    "needed to mark clouds, saturation and no-data; complete the product"
                    + (" or set use_nodata_mask=False" if "NODATA" in missing else "")
                )
        first = self.products[0].image
        assert first is not None
        grid, count, _, _ = open_meta(first, f"image of {self.products[0].name}")
        if count != len(fmt.bands):
            raise InputDataError(
                f"{first} has {count} bands; a {fmt.name} image has the "
                f"{len(fmt.bands)} bands {list(fmt.bands)}"
            )
        self.grid = grid
        self.crs, self.transform = grid.crs, grid.transform
        self.width, self.height = grid.width, grid.height
        self._pool = RasterPool(max_open, on_open=self._check_opened)

    def _check_opened(self, path: Path, src: Any) -> None:
        check_grid(
            path,
            Grid.of(src),
            self.grid,
            f"the first image {self.products[0].image}",
            "every image and mask of a tile must share one grid; resample it or remove the product",
        )
        if path.parent.name != "MASK" and src.count != len(self.FORMAT.bands):
            raise InputDataError(
                f"{path} has {src.count} bands; a {self.FORMAT.name} image has the "
                f"{len(self.FORMAT.bands)} bands {list(self.FORMAT.bands)}"
            )

    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read a window of every acquisition.

        Args:
            window: whole-pixel window of the grid; None reads the whole grid.

        Returns:
            ``x`` (H, W, T, C) float32, surface reflectance (stored value / ``scale``,
            unitless) and ``valid`` (H, W, T) bool, True where usable: no image nodata in
            any channel, DIV even, NUA == 0, SAT == 0 (and NODATA odd when
            ``use_nodata_mask``).

        Raises:
            ValueError: the window is fractional or outside the grid.
            InputFileNotFoundError: a file cannot be opened.
            InputDataError: a file is not on the tile's grid.
        """
        win, x, valid = self.start_read(window)
        for t, product in enumerate(self.products):
            assert product.image is not None
            src = self._pool.get(product.image, f"image of {product.name}")
            values = src.read(self._indexes, window=win, out_dtype="float32")
            invalid = equals_nodata(values, nodata_or(src, LANDSAT8_N2A_NODATA)).any(axis=0)
            for name in (*MASK_NAMES, "NODATA") if self.use_nodata_mask else MASK_NAMES:
                msrc = self._pool.get(product.masks[name], f"{name} mask of {product.name}")
                invalid |= mask_invalid(name, msrc.read(1, window=win))
            x[:, :, t, :] = values.transpose(1, 2, 0) / np.float32(self.scale)
            valid[:, :, t] = ~invalid
        return x, valid

    def close(self) -> None:
        """Close the open files."""
        self._pool.close()


def mask_invalid(name: str, values: np.ndarray) -> np.ndarray:
    """Where one N2A mask marks an observation invalid (iota2's ``Landsat_8_old`` rules).

    Args:
        name: ``NUA`` or ``SAT`` (invalid where != 0), ``DIV`` (invalid where bit 0 is set),
            ``NODATA`` (invalid where bit 0 is clear).
        values: (H, W) mask values, any numeric dtype; non-finite floats are invalid.

    Returns:
        (H, W) bool, True = invalid.
    """
    if values.dtype.kind == "f":
        finite = np.isfinite(values) & (np.abs(values) < 2**62)
        ints = np.where(finite, np.rint(np.where(finite, values, 0)), 0).astype(np.int64)
    else:
        finite = np.ones(values.shape, dtype=bool)
        ints = values.astype(np.int64, copy=False)
    if name == "DIV":
        bad = (ints & 1) == 1
    elif name == "NODATA":
        bad = (ints & 1) == 0
    else:
        bad = ints != 0
    return bad | ~finite


def _check_bands(bands: Sequence[str] | None, fmt: N2AFormat = L8_N2A) -> list[str]:
    if bands is None:
        return list(fmt.bands)
    if isinstance(bands, str):
        bands = [bands]
    names = [str(b).upper() for b in bands]
    if not names or any(b not in fmt.bands for b in names) or len(set(names)) != len(names):
        raise ConfigError(
            f"bands={list(bands)}: {fmt.name} bands are {list(fmt.bands)}; give a "
            f"non-empty list of them without repeats (or None for all {len(fmt.bands)})"
        )
    return names


class Landsat5N2A(Landsat8N2A):
    """A THEIA Landsat-5 N2A time series of one tile, iota2's ``Landsat5_old``.

    The same format as :class:`Landsat8N2A` (30 m image x 1000, nodata -10000, masks
    ``MASK/*_NUA``, ``*_SAT``, ``*_DIV``), with folders
    ``LANDSAT5_TM_XS_<YYYYMMDD>_N2A_<site><tile>`` and the 6 TM reflective bands B1..B6
    (blue, green, red, NIR, SWIR1, SWIR2; iota2's Landsat-5 roles: red B3, NIR B4,
    SWIR B5).
    """

    FORMAT = L5_N2A
