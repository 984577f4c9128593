"""Sen2Cor L2A product metadata (``MTD_MSIL2A.xml``) and the discovery of a tile's products.

:func:`parse_mtd_msil2a` reads one product's metadata (acquisition time, tile, baseline,
quantification value, BOA offsets, image paths); :func:`find_sen2cor_products` finds the
products of a tile below a folder. The reader is
:class:`i2dl.io.sensors.sen2cor.Sentinel2Sen2Cor` (product layout and SCL classes in that
module).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.io.raster import as_date, parse_date
from i2dl.io.sensors.common import normalize_tile

log = logging.getLogger(__name__)

#: Surface reflectance bands of a Sen2Cor product (B10, cirrus, is not corrected).
REFLECTANCE_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
)  # fmt: skip
#: ``band_id`` of ``BOA_ADD_OFFSET`` / ``Spectral_Information`` -> band, when the file
#: does not list its own ``physicalBand`` mapping.
ESA_BAND_IDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
#: Quantification value used when the metadata gives none.
DEFAULT_QUANTIFICATION = 10000.0
#: Glob patterns of the product metadata file inside a product folder.
MTD_PATTERNS: tuple[str, ...] = ("MTD_MSIL2A*.xml", "*MTD_SAFL2A*.xml")
_ENTRY_RE = re.compile(r"_(?P<band>B\d{2}|B8A|SCL|TCI|AOT|WVP|CLD|SNW)_(?P<res>\d{2})m$")
_TILE_RE = re.compile(r"(?:^|_)T(\d{2}[A-Z]{3})(?:_|$)")
_BAND_RE = re.compile(r"^B?(\d{1,2}|8A)$", re.IGNORECASE)


class _TileAbsentError(InputDataError):
    """The product does not hold the requested tile (skipped when scanning a folder)."""


@dataclass(frozen=True)
class Sen2CorMetadata:
    """What i2dl needs from one ``MTD_MSIL2A.xml``.

    Attributes:
        mtd_path: the metadata file; its folder is the product folder.
        sensing_time: acquisition start, UTC (``PRODUCT_START_TIME``).
        tile: MGRS tile id with its ``T`` prefix (``"T31TCJ"``).
        product_uri: ``PRODUCT_URI`` (``"S2A_MSIL2A_..._T31TCJ_....SAFE"``), or ``""``.
        processing_baseline: ``PROCESSING_BASELINE`` (``"02.12"``), or None.
        quantification: ``BOA_QUANTIFICATION_VALUE`` (10000 when absent).
        boa_offsets: band -> ``BOA_ADD_OFFSET`` in DN (-1000 from baseline 04.00); empty
            for older products (offset 0).
        image_files: resolution in metres -> band (``"B02"``, ``"SCL"``, ``"TCI"``, ...) ->
            image path relative to the product folder, exactly as in the XML (no ``.jp2``).
        scl_classes: the ``Scene_Classification_List`` of the file, index -> text.
    """

    mtd_path: Path
    sensing_time: dt.datetime
    tile: str
    product_uri: str
    processing_baseline: str | None
    quantification: float
    boa_offsets: dict[str, float]
    image_files: dict[int, dict[str, str]]
    scl_classes: dict[int, str] = field(default_factory=dict)

    @property
    def date(self) -> dt.date:
        """The acquisition date (UTC calendar day of ``sensing_time``)."""
        return self.sensing_time.date()

    @property
    def product_dir(self) -> Path:
        """The product (``.SAFE``) folder."""
        return self.mtd_path.parent

    @property
    def bands_10m(self) -> dict[str, str]:
        """Band -> relative path (no extension) of the 10 m images."""
        return self.image_files.get(10, {})

    @property
    def bands_20m(self) -> dict[str, str]:
        """Band -> relative path (no extension) of the 20 m images (includes ``SCL``)."""
        return self.image_files.get(20, {})

    def offset(self, band: str) -> float:
        """``BOA_ADD_OFFSET`` of ``band`` in DN (0 when the product has none)."""
        return self.boa_offsets.get(band, 0.0)

    def resolution(self, band: str) -> int:
        """Finest resolution (m) at which the product holds ``band``.

        Raises:
            InputDataError: no ``IMAGE_FILE`` entry for ``band``.
        """
        available = sorted(res for res, files in self.image_files.items() if band in files)
        if not available:
            raise InputDataError(
                f"{self.mtd_path}: no IMAGE_FILE entry for band {band} (bands listed: "
                f"{sorted({b for files in self.image_files.values() for b in files})}); "
                "the product is incomplete or not a Sen2Cor L2A product"
            )
        return available[0]

    def band_file(self, band: str, resolution: int | None = None) -> Path:
        """Absolute path of the JPEG2000 image of ``band`` (``.jp2`` added).

        Args:
            band: ``"B02"``, ``"B8A"``, ``"SCL"``, ...
            resolution: 10, 20 or 60 m; None picks the finest available.

        Raises:
            InputDataError: the product lists no such image.
        """
        if resolution is None:
            resolution = self.resolution(band)
        try:
            rel = self.image_files[resolution][band]
        except KeyError:
            raise InputDataError(
                f"{self.mtd_path}: no IMAGE_FILE entry for band {band} at {resolution} m "
                f"(available at {sorted(r for r, f in self.image_files.items() if band in f)} m)"
            ) from None
        return self.product_dir / f"{rel}.jp2"


def _local(tag: Any) -> str:
    """Element tag without its ``{namespace}``."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _iter_local(element: ET.Element, name: str) -> Iterator[ET.Element]:
    return (el for el in element.iter() if _local(el.tag) == name)


def _first_text(element: ET.Element, *names: str) -> str | None:
    for name in names:
        for el in _iter_local(element, name):
            if el.text and el.text.strip():
                return el.text.strip()
    return None


def find_mtd_file(product_dir: str | Path) -> Path:
    """The ``MTD_MSIL2A*.xml`` of a product folder.

    Raises:
        InputFileNotFoundError: the folder holds no product metadata file.
    """
    product_dir = Path(product_dir)
    found = sorted({p for pat in MTD_PATTERNS for p in product_dir.glob(pat) if p.is_file()})
    if not found:
        raise InputFileNotFoundError(
            f"Sen2Cor product folder {product_dir} holds no MTD_MSIL2A.xml metadata file; "
            "the product is incomplete (re-extract the .SAFE archive) or not a Level-2A "
            "product: remove it from the folder"
        )
    exact = [p for p in found if p.name == "MTD_MSIL2A.xml"]
    return exact[0] if exact else found[0]


def normalize_band(band: str) -> str:
    """``B02`` for ``B2``, ``b02`` or ``2`` (Sen2Cor band names), checked.

    Raises:
        ConfigError: not a Sentinel-2 band name, or a band without surface reflectance.
    """
    match = _BAND_RE.fullmatch(str(band).strip())
    if match is None:
        raise ConfigError(
            f"band {band!r} is not a Sentinel-2 band name; use names like 'B02' (or 'B2'), "
            f"'B8A', 'B11' among {list(REFLECTANCE_BANDS)}"
        )
    num = match.group(1).upper()
    name = "B8A" if num == "8A" else f"B{int(num):02d}"
    if name not in REFLECTANCE_BANDS:
        raise ConfigError(
            f"band {band!r}: Sen2Cor gives surface reflectance for {list(REFLECTANCE_BANDS)} only"
        )
    return name


def _parse_time(text: str, path: Path, tag: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    try:
        return dt.datetime.combine(parse_date(text), dt.time(), tzinfo=dt.timezone.utc)
    except ValueError:
        raise InputDataError(
            f"{path}: {tag} is {text!r}, not a date; the metadata file is corrupt "
            "(expected e.g. 2019-05-06T10:50:31.024Z)"
        ) from None


def _band_id_names(root: ET.Element) -> dict[str, str]:
    """``bandId`` -> band name from ``Spectral_Information``, or the ESA default order."""
    names = {str(i): b for i, b in enumerate(ESA_BAND_IDS)}
    for el in _iter_local(root, "Spectral_Information"):
        band_id, physical = el.get("bandId"), el.get("physicalBand")
        if band_id is not None and physical:
            try:
                names[band_id.strip()] = normalize_band(physical)
            except ConfigError:
                if physical.strip().upper() == "B10":
                    names[band_id.strip()] = "B10"
    return names


def _granule_tile(granule: ET.Element, entries: Sequence[str]) -> str | None:
    candidates = [Path(e).name for e in entries] + [part for e in entries for part in Path(e).parts]
    candidates += [granule.get("granuleIdentifier") or ""]
    for text in candidates:
        match = _TILE_RE.search(text)
        if match:
            return f"T{match.group(1)}"
    return None


def _quantification(root: ET.Element, path: Path) -> float:
    """``BOA_QUANTIFICATION_VALUE`` (reflectance = DN / it), or the default when absent.

    Raises:
        InputDataError: a value that is not a positive number.
    """
    quant_text = _first_text(root, "BOA_QUANTIFICATION_VALUE", "L2A_BOA_QUANTIFICATION_VALUE")
    if quant_text is None:
        log.debug("%s: no BOA_QUANTIFICATION_VALUE, using %s", path, DEFAULT_QUANTIFICATION)
        return DEFAULT_QUANTIFICATION
    try:
        quantification = float(quant_text)
    except ValueError:
        quantification = float("nan")
    if not np.isfinite(quantification) or quantification <= 0:
        raise InputDataError(
            f"{path}: BOA_QUANTIFICATION_VALUE is {quant_text!r}; it must be a positive "
            "number (10000 in ESA products)"
        )
    return quantification


def _boa_offsets(root: ET.Element, path: Path, baseline: str | None) -> dict[str, float]:
    """``BOA_ADD_OFFSET`` per band (baseline >= 04.00); warns when such a baseline has none.

    Raises:
        InputDataError: an offset that is not a number, or an unknown ``band_id``.
    """
    id_names = _band_id_names(root)
    offsets: dict[str, float] = {}
    for el in _iter_local(root, "BOA_ADD_OFFSET"):
        band_id = (el.get("band_id") or el.get("bandId") or "").strip()
        try:
            value = float((el.text or "").strip())
        except ValueError:
            raise InputDataError(
                f"{path}: BOA_ADD_OFFSET band_id={band_id!r} is {el.text!r}, not a number"
            ) from None
        if band_id not in id_names:
            raise InputDataError(
                f"{path}: BOA_ADD_OFFSET has band_id={band_id!r}; expected 0..12 "
                "(the bandId of Spectral_Information)"
            )
        offsets[id_names[band_id]] = value
    if not offsets and baseline is not None and _baseline_number(baseline) >= 4.0:
        log.warning(
            "%s: processing baseline %s but no BOA_ADD_OFFSET listed; reading without offset "
            "(ESA products of baseline >= 04.00 need -1000)",
            path,
            baseline,
        )
    return offsets


def _scl_classes(root: ET.Element) -> dict[int, str]:
    """The product's own SCL class index -> text table (may be empty)."""
    scl_classes: dict[int, str] = {}
    for el in _iter_local(root, "Scene_Classification_ID"):
        index = _first_text(el, "SCENE_CLASSIFICATION_INDEX")
        text = _first_text(el, "SCENE_CLASSIFICATION_TEXT")
        if index is not None and index.isdigit():
            scl_classes[int(index)] = text or ""
    return scl_classes


def parse_mtd_msil2a(path: str | Path, tile: str | None = None) -> Sen2CorMetadata:
    """Read a Sen2Cor ``MTD_MSIL2A.xml`` product metadata file.

    Args:
        path: the XML file, or the product (``.SAFE``) folder that holds it.
        tile: keep only the granule of this tile (``"T31TCJ"`` or ``"31TCJ"``); needed only
            for old multi-tile products. None: the product must hold a single tile.

    Returns:
        The acquisition time, tile, product URI, processing baseline, quantification
        value, BOA offsets and the image paths per resolution and band.

    Raises:
        InputFileNotFoundError: ``path`` does not exist, or the folder has no metadata file.
        InputDataError: the XML is malformed, has no acquisition time, no image entries,
            no tile id, a non-numeric quantification value or offset, several tiles and
            ``tile`` is None, or does not hold ``tile``.
    """
    path = Path(path)
    if path.is_dir():
        path = find_mtd_file(path)
    if not path.is_file():
        raise InputFileNotFoundError(
            f"Sen2Cor metadata file {path} does not exist; give the MTD_MSIL2A.xml of a "
            ".SAFE product or the .SAFE folder"
        )
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputDataError(
            f"{path} is not well-formed XML ({exc}); the file is truncated or corrupt: "
            "re-extract the product"
        ) from None

    time_text = _first_text(root, "PRODUCT_START_TIME", "DATATAKE_SENSING_START")
    if time_text is None:
        raise InputDataError(
            f"{path}: neither PRODUCT_START_TIME nor DATATAKE_SENSING_START found; this is "
            "not a Sen2Cor MTD_MSIL2A.xml product metadata file"
        )
    sensing_time = _parse_time(time_text, path, "PRODUCT_START_TIME")
    product_uri = _first_text(root, "PRODUCT_URI") or ""
    baseline = _first_text(root, "PROCESSING_BASELINE")

    quantification = _quantification(root, path)
    offsets = _boa_offsets(root, path, baseline)
    scl_classes = _scl_classes(root)

    image_files, tile_id = _image_files(root, path, product_uri, tile)
    return Sen2CorMetadata(
        mtd_path=path,
        sensing_time=sensing_time,
        tile=tile_id,
        product_uri=product_uri,
        processing_baseline=baseline,
        quantification=quantification,
        boa_offsets=offsets,
        image_files=image_files,
        scl_classes=scl_classes,
    )


def _baseline_number(baseline: str) -> float:
    try:
        return float(baseline)
    except ValueError:
        return 0.0


def _image_files(
    root: ET.Element, path: Path, product_uri: str, tile: str | None
) -> tuple[dict[int, dict[str, str]], str]:
    """Image entries of the selected granule(s): resolution -> band -> path, and the tile."""
    granules = [el for el in root.iter() if _local(el.tag) in ("Granule", "Granules")] or [root]
    uri_match = _TILE_RE.search(product_uri.removesuffix(".SAFE"))
    uri_tile = f"T{uri_match.group(1)}" if uri_match else None
    found: list[tuple[str | None, list[str]]] = []
    for granule in granules:
        entries = [
            el.text.strip().removesuffix(".jp2")
            for el in granule.iter()
            if _local(el.tag).startswith("IMAGE_FILE") and el.text and el.text.strip()
        ]
        if entries:
            found.append((_granule_tile(granule, entries) or uri_tile, entries))
    if not found:
        raise InputDataError(
            f"{path}: no Product_Organisation/Granule_List/Granule/IMAGE_FILE entries; the "
            "metadata file lists no images (not a Sen2Cor L2A product, or truncated)"
        )
    tiles = sorted({t for t, _ in found if t is not None})
    if tile is not None:
        wanted = normalize_tile(tile)
        found = [(t, e) for t, e in found if t == wanted]
        if not found:
            raise _TileAbsentError(
                f"{path}: the product holds tile(s) {tiles or 'unknown'}, not {wanted}"
            )
        tile_id = wanted
    elif len(tiles) > 1:
        raise InputDataError(
            f"{path}: the product holds several tiles {tiles}; pass tile= to choose one"
        )
    elif tiles:
        tile_id = tiles[0]
    else:
        raise InputDataError(
            f"{path}: no tile id (T31TCJ-like) in PRODUCT_URI {product_uri!r} nor in the "
            "image names; the metadata file is not a standard Sen2Cor product"
        )
    image_files: dict[int, dict[str, str]] = {}
    for _, entries in found:
        for entry in entries:
            match = _ENTRY_RE.search(Path(entry).name)
            if match is None:
                log.debug("%s: ignoring image entry %s", path, entry)
                continue
            res, band = int(match.group("res")), match.group("band")
            previous = image_files.setdefault(res, {}).setdefault(band, entry)
            if previous != entry:
                raise InputDataError(
                    f"{path}: two images for band {band} at {res} m ({previous} and {entry}); "
                    "the metadata file is inconsistent"
                )
    if not image_files:
        raise InputDataError(
            f"{path}: no IMAGE_FILE entry names a band (..._B02_10m); the metadata file "
            "is not a Sen2Cor L2A product"
        )
    return image_files, tile_id


def _product_folders(folder: Path) -> Iterator[Path]:
    for child in sorted(folder.iterdir()):
        if not child.is_dir():
            if child.suffix.lower() == ".zip" and "MSIL2A" in child.name.upper():
                log.warning("%s is a zipped product: unzip it to read it", child)
            continue
        if child.name.upper().endswith(".SAFE") or any(
            p.is_file() for pat in MTD_PATTERNS for p in child.glob(pat)
        ):
            yield child


def discover_products(
    root: str | Path,
    tile: str,
    start_date: dt.date | str | None = None,
    end_date: dt.date | str | None = None,
) -> tuple[Path, list[Sen2CorMetadata]]:
    """The searched folder and the metadata of its products of ``tile``, sorted by time."""
    root = Path(root)
    tile_id = normalize_tile(tile)
    start, end = as_date(start_date, "start_date"), as_date(end_date, "end_date")
    if start is not None and end is not None and start > end:
        raise ConfigError(f"start_date {start} is after end_date {end}; swap them")
    if not root.is_dir():
        raise InputFileNotFoundError(
            f"Sen2Cor data folder {root} does not exist; set it to the folder that holds "
            f"<tile>/<product>.SAFE (iota2's S2_S2C_Path) or the .SAFE folders themselves"
        )
    folder = root
    for name in (tile_id, tile_id[1:]):
        if (root / name).is_dir():
            folder = root / name
            break
    products: list[Sen2CorMetadata] = []
    for product in _product_folders(folder):
        try:
            meta = parse_mtd_msil2a(find_mtd_file(product), tile_id)
        except _TileAbsentError as exc:
            log.debug("skipping %s", exc)
            continue
        if (start is None or meta.date >= start) and (end is None or meta.date <= end):
            products.append(meta)
    products.sort(key=lambda m: (m.sensing_time, m.product_dir.name))
    return folder, products


def find_sen2cor_products(
    root: str | Path,
    tile: str,
    start_date: dt.date | str | None = None,
    end_date: dt.date | str | None = None,
) -> list[Path]:
    """Sen2Cor product folders of one tile, sorted by acquisition time.

    Searches ``root/<tile>/`` (``T31TCJ`` or ``31TCJ``) when it exists, else ``root``, for
    folders named ``*.SAFE`` or holding an ``MTD_MSIL2A*.xml``; products of other tiles
    are skipped.

    Args:
        root: the data folder (iota2's ``S2_S2C_Path``).
        tile: MGRS tile, ``"T31TCJ"`` or ``"31TCJ"``.
        start_date: keep acquisitions on or after this day (a date, or a ``YYYY-MM-DD`` /
            ``YYYYMMDD`` string); None = unbounded.
        end_date: keep acquisitions on or before this day (inclusive); None = unbounded.

    Returns:
        The product folders, earliest first.

    Raises:
        InputFileNotFoundError: ``root`` does not exist, or a ``.SAFE`` folder has no
            metadata file (the message names the folder).
        InputDataError: a metadata file is malformed (see :func:`parse_mtd_msil2a`).
        ConfigError: bad tile or date, or ``start_date`` after ``end_date``.
    """
    _, products = discover_products(root, tile, start_date, end_date)
    return [m.product_dir for m in products]
