"""THEIA MUSCATE product folders: their formats, names and discovery.

The formats of Sentinel-2 L2A (iota2 ``Sentinel_2``), L3A (``Sentinel_2_L3A``) and
Landsat-8 L2A (``Landsat8``) products, one :class:`TheiaProduct` per acquisition folder and
:func:`find_theia_products` for the products of a tile; the reader is
:class:`i2dl.io.sensors.theia.Sentinel2Theia` (layout and values in that module).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from i2dl.errors import ConfigError, InputDataError
from i2dl.io.raster import as_date, parse_date
from i2dl.io.sensors.common import (
    in_range,
    no_product_error,
    normalize_tile,
    short_list,
    tile_folder,
)

log = logging.getLogger(__name__)

#: iota2's band order for Sentinel-2 THEIA (and of ``*_FRE_STACK.tif``).
THEIA_BANDS: tuple[str, ...] = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
#: Bands delivered at 10 m; the others are at 20 m.
BANDS_10M: tuple[str, ...] = ("B2", "B3", "B4", "B8")
#: Nodata value of THEIA reflectance rasters.
THEIA_NODATA = -10000.0
#: Reflectance = stored value / THEIA_SCALE.
THEIA_SCALE = 10000.0
#: Masks iota2 uses, at 10 m (R1).
MASK_NAMES: tuple[str, ...] = ("CLM", "SAT", "EDG")

_FOLDER_RE = re.compile(
    r"^(?P<sat>SENTINEL2[AB])_(?P<date>\d{8})-(?P<time>\d{6})-(?P<ms>\d{3})_L2A_"
    r"(?P<tile>T\d{2}[A-Z]{3})_(?P<kind>[A-Z])_V(?P<version>\d+-\d+)$"
)


@dataclass(frozen=True)
class TheiaFormat:
    """What differs between the THEIA MUSCATE products read by :class:`Sentinel2Theia`.

    Attributes:
        name: the product kind, for messages (``THEIA Sentinel-2 L2A``).
        folder_re: product folder name (groups sat, date, time, ms, tile, kind, version).
        example: a folder name for messages, ``{tile}`` standing for the tile.
        levels: reflectance levels of the band files (``FRE``, ``SRE``; ``FRC``).
        bands: every band, in iota2's order (also that of a ``*_STACK.tif``).
        fine_bands: bands on the reference (finest) grid; the others are resampled.
        masks: mask names (``MASKS/*_<name><mask_suffix>``).
        mask_suffix: ``_R1`` (S2, 10 m) or ``_XS`` (Landsat).
        grid_name: the reference grid, for messages (``10 m``).
    """

    name: str
    folder_re: re.Pattern[str]
    example: str
    levels: tuple[str, ...]
    bands: tuple[str, ...]
    fine_bands: tuple[str, ...]
    masks: tuple[str, ...]
    mask_suffix: str
    grid_name: str

    def band_re(self) -> re.Pattern[str]:
        """``_<level>_<band>.tif`` of a band file."""
        return re.compile(rf"_(?P<level>{'|'.join(self.levels)})_(?P<band>B\d{{1,2}}A?)\.tiff?$",
                          re.IGNORECASE)

    def mask_re(self) -> re.Pattern[str]:
        """``_<mask><suffix>.tif`` of a mask file."""
        return re.compile(rf"_(?P<mask>{'|'.join(self.masks)}){self.mask_suffix}\.tiff?$",
                          re.IGNORECASE)


#: THEIA Sentinel-2 L2A (MAJA), iota2 ``Sentinel_2``.
S2_L2A = TheiaFormat(
    name="THEIA Sentinel-2 L2A", folder_re=_FOLDER_RE,
    example="SENTINEL2A_YYYYMMDD-HHMMSS-mmm_L2A_{tile}_C_V1-0", levels=("FRE", "SRE"),
    bands=THEIA_BANDS, fine_bands=BANDS_10M, masks=MASK_NAMES, mask_suffix="_R1",
    grid_name="10 m",
)


@dataclass(frozen=True)
class TheiaProduct:
    """One THEIA Sentinel-2 L2A acquisition (a product folder).

    Attributes:
        folder: the product folder.
        satellite: ``SENTINEL2A`` or ``SENTINEL2B``.
        date: acquisition date (UTC), from the folder name.
        time: acquisition time (UTC, milliseconds kept), from the folder name.
        tile: MGRS tile with its ``T`` (``T31TCJ``).
        kind: the letter after the tile in the name (``C`` or ``D``).
        version: product version, ``1-0`` for ``V1-0``.
        level: ``FRE`` (flat reflectance, slope corrected) or ``SRE`` (surface reflectance).
        bands: band name -> ``*_<level>_<band>.tif`` found in the folder.
        masks: ``CLM``/``SAT``/``EDG`` -> ``MASKS/*_<name>_R1.tif`` found.
        stack: iota2's ``*_<level>_STACK.tif``, or None.
    """

    folder: Path
    satellite: str
    date: dt.date
    time: dt.time
    tile: str
    kind: str
    version: str
    level: str = "FRE"
    bands: dict[str, Path] = field(default_factory=dict)
    masks: dict[str, Path] = field(default_factory=dict)
    stack: Path | None = None

    @property
    def name(self) -> str:
        """The product (folder) name."""
        return self.folder.name

    @classmethod
    def from_folder(cls, folder: str | Path, level: str = "FRE",
                    fmt: TheiaFormat = S2_L2A) -> TheiaProduct:
        """Describe a product folder: parse its name and list its band and mask files.

        Args:
            folder: ``SENTINEL2X_YYYYMMDD-HHMMSS-mmm_L2A_T<tile>_<C|D>_V<x-y>`` (or the
                ``fmt`` product's name).
            level: which reflectance files to list, one of ``fmt.levels``.
            fmt: the product format (:data:`S2_L2A` by default).

        Raises:
            InputDataError: the folder name does not follow the format's pattern.
        """
        folder = Path(folder)
        level = check_level(level, fmt)
        match = fmt.folder_re.match(folder.name)
        if match is None:
            raise InputDataError(
                f"{folder} is not named like a {fmt.name} product "
                f"({fmt.example.format(tile='T<tile>')})"
            )
        g = match.groupdict()
        date = parse_date(g["date"])
        t = (
            dt.datetime.strptime(g["time"], "%H%M%S")
            .time()
            .replace(microsecond=int(g["ms"]) * 1000)
        )
        bands: dict[str, Path] = {}
        stack = None
        band_re, mask_re = fmt.band_re(), fmt.mask_re()
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            band = band_re.search(path.name)
            if band and band["level"].upper() == level:
                bands[band["band"].upper()] = path
            elif path.name.upper().endswith(f"_{level}_STACK.TIF"):
                stack = path
        masks: dict[str, Path] = {}
        mask_dir = folder / "MASKS"
        if mask_dir.is_dir():
            for path in sorted(mask_dir.iterdir()):
                hit = mask_re.search(path.name)
                if hit and path.is_file():
                    masks[hit["mask"].upper()] = path
        return cls(
            folder=folder,
            satellite=g["sat"],
            date=date,
            time=t,
            tile=g["tile"],
            kind=g["kind"],
            version=g["version"],
            level=level,
            bands=bands,
            masks=masks,
            stack=stack,
        )


def check_level(level: str, fmt: TheiaFormat = S2_L2A) -> str:
    """``level`` upper-cased, refused unless it is one of the format's reflectance levels.

    Raises:
        ConfigError: ``level`` is not in ``fmt.levels``.
    """
    level = str(level).upper()
    if level not in fmt.levels:
        raise ConfigError(
            f"level={level!r} is not a {fmt.name} reflectance level; use "
            + (" or ".join(fmt.levels) if fmt.levels != ("FRE", "SRE") else
               "FRE (flat reflectance, slope-corrected, iota2's default) or SRE (surface "
               "reflectance)")
        )
    return level


def find_theia_products(
    root: str | Path,
    tile: str,
    start_date: dt.date | str | None = None,
    end_date: dt.date | str | None = None,
    level: str = "FRE",
    fmt: TheiaFormat = S2_L2A,
) -> list[TheiaProduct]:
    """Find the THEIA products of a tile (Sentinel-2 L2A unless ``fmt`` says otherwise).

    Args:
        root: folder with one sub-folder per tile (iota2's ``S2Path``: ``root/T31TCJ/...``),
            or the tile folder itself.
        tile: MGRS tile, ``T31TCJ`` (``31TCJ`` is accepted).
        start_date: keep acquisitions on or after this date (a date, ``YYYY-MM-DD`` or
            ``YYYYMMDD``); None leaves the bound open.
        end_date: keep acquisitions on or before this date (inclusive); None: open.
        level: ``FRE`` or ``SRE``, the reflectance files listed in each product.
        fmt: the product format (:data:`S2_L2A`, :data:`S2_L3A`, :data:`L8_L2A`).

    Returns:
        The products, sorted by acquisition date and time.

    Raises:
        InputFileNotFoundError: ``root`` does not exist.
        InputDataError: no product of the tile in the folder (or in the date range); the
            message lists the folder's entries.
        ConfigError: bad ``level``, tile or date.
    """
    tile = normalize_tile(tile)
    level = check_level(level, fmt)
    start, end = as_date(start_date, "start_date"), as_date(end_date, "end_date")
    folder = tile_folder(root, tile, fmt.name)
    products, others = [], []
    for entry in sorted(folder.iterdir()):
        match = fmt.folder_re.match(entry.name) if entry.is_dir() else None
        if match is None or match["tile"] != tile:
            others.append(entry.name)
            continue
        product = TheiaProduct.from_folder(entry, level, fmt)
        if in_range(product.date, start, end):
            products.append(product)
        else:
            others.append(f"{entry.name} (out of the date range)")
    if not products:
        zips = [o for o in others if o.lower().endswith(".zip")]
        hint = f"; unzip the THEIA archives first ({short_list(zips, 3)})" if zips else ""
        raise no_product_error(fmt.name, tile, start, end, folder, others,
                               fmt.example.format(tile=tile), hint)
    products.sort(key=lambda p: (p.date, p.time, p.satellite))
    return products


#: THEIA Sentinel-2 L3A monthly syntheses (WASP), iota2 ``Sentinel_2_L3A``.
S2_L3A = TheiaFormat(
    name="THEIA Sentinel-2 L3A",
    folder_re=re.compile(
        r"^(?P<sat>SENTINEL2X)_(?P<date>\d{8})-(?P<time>\d{6})-(?P<ms>\d{3})_L3A_"
        r"(?P<tile>T\d{2}[A-Z]{3})_(?P<kind>[A-Z])_V(?P<version>\d+-\d+)$"),
    example="SENTINEL2X_YYYYMMDD-000000-000_L3A_{tile}_C_V1-0", levels=("FRC",),
    bands=THEIA_BANDS, fine_bands=BANDS_10M, masks=("FLG",), mask_suffix="_R1",
    grid_name="10 m",
)
#: L3A FLG_R1 values that are usable: 3 water, 4 land (0 no data, 1 cloud, 2 snow).
L3A_VALID_FLAGS = (3, 4)
#: the 7 OLI reflective bands of THEIA Landsat-8 L2A, iota2's names.
LANDSAT8_THEIA_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7")
#: THEIA Landsat-8 L2A (MAJA, MUSCATE format on MGRS tiles), iota2 ``Landsat8``.
L8_L2A = TheiaFormat(
    name="THEIA Landsat-8 L2A",
    folder_re=re.compile(
        r"^(?P<sat>LANDSAT8)[-_]OLITIRS[-_]XS_(?P<date>\d{8})-(?P<time>\d{6})-(?P<ms>\d{3})_"
        r"L2A_(?P<tile>T\d{2}[A-Z]{3})_(?P<kind>[A-Z])_V(?P<version>\d+-\d+)$"),
    example="LANDSAT8-OLITIRS-XS_YYYYMMDD-HHMMSS-mmm_L2A_{tile}_D_V1-0",
    levels=("FRE", "SRE"), bands=LANDSAT8_THEIA_BANDS, fine_bands=LANDSAT8_THEIA_BANDS,
    masks=("CLM", "SAT", "EDG"), mask_suffix="_XS", grid_name="30 m",
)
