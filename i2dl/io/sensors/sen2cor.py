"""Sentinel-2 Level-2A products from ESA's Sen2Cor (``.SAFE`` folders).

This is the reader behind iota2's ``Sentinel_2_S2C`` sensor: one ``.SAFE`` folder per
acquisition, stored under ``<root>/<tile>/`` (iota2's ``S2_S2C_Path/T31TCJ/``) or directly
under ``<root>``. Each product holds an ``MTD_MSIL2A.xml`` product metadata file (ESA PSD
"Level-2A User Product") and JPEG2000 images::

    S2A_MSIL2A_20190506T105031_N0212_R051_T31TCJ_20190506T140834.SAFE/
        MTD_MSIL2A.xml
        GRANULE/L2A_T31TCJ_A020211_20190506T105031/IMG_DATA/
            R10m/T31TCJ_20190506T105031_B02_10m.jp2   (B02 B03 B04 B08, TCI AOT WVP)
            R20m/T31TCJ_20190506T105031_B05_20m.jp2   (B02..B8A B11 B12, SCL, ...)
            R60m/...                                  (all bands, B01 B09, SCL, ...)

Facts used from ``MTD_MSIL2A.xml`` (namespaces vary between Sen2Cor versions, so every
element is matched on its local tag name):

- ``Product_Info/PRODUCT_START_TIME`` (UTC, e.g. ``2019-05-06T10:50:31.024Z``), else
  ``Datatake/DATATAKE_SENSING_START``: the acquisition date.
- ``Product_Info/PRODUCT_URI``: ``S2A_MSIL2A_<sensing>_N<baseline>_R<orbit>_T<tile>_<gen>.SAFE``.
- ``Product_Organisation/Granule_List/Granule/IMAGE_FILE``: the image paths, relative to
  the product folder and **without** the ``.jp2`` extension
  (``GRANULE/.../IMG_DATA/R10m/T31TCJ_20190506T105031_B02_10m``); Sen2Cor 2.3-2.4
  products name the element ``IMAGE_FILE_2A``.
- ``QUANTIFICATION_VALUES_LIST/BOA_QUANTIFICATION_VALUE`` (10000): reflectance = DN / 10000.
- ``BOA_ADD_OFFSET_VALUES_LIST/BOA_ADD_OFFSET band_id="i"`` (processing baseline >= 04.00,
  i.e. products generated from 25 January 2022 on, and the reprocessed collection 1):
  -1000 for every band, so reflectance = (DN + offset) / quantification. ``band_id`` is
  the index of ``Spectral_Information bandId="i" physicalBand="B8A"`` (0 = B1, ...,
  8 = B8A, 9 = B9, 10 = B10, 11 = B11, 12 = B12). Older products have no offset (0).
- ``Special_Values``: DN 0 = NODATA, 65535 = SATURATED. DN 0 is read as invalid.
- ``Scene_Classification_List``: the SCL classes, see :data:`SCL_CLASSES`.

Scene classification (SCL, a 20 m and 60 m uint8 image of each product):

====  ==========================================================  =====================
SCL   Class (``SCENE_CLASSIFICATION_TEXT``)                       Default here
====  ==========================================================  =====================
0     NO_DATA (``SC_NODATA``)                                     invalid (always)
1     SATURATED_OR_DEFECTIVE (``SC_SATURATED_DEFECTIVE``)         invalid (always)
2     DARK_AREA_PIXELS (``SC_DARK_FEATURE_SHADOW``; topographic
      cast shadows from baseline 04.00)                           valid
3     CLOUD_SHADOWS (``SC_CLOUD_SHADOW``)                         invalid
4     VEGETATION                                                  valid
5     NOT_VEGETATED (bare soils)                                  valid
6     WATER                                                       valid
7     UNCLASSIFIED (low-probability clouds in Sen2Cor < 2.5)      valid
8     CLOUD_MEDIUM_PROBABILITY (``SC_CLOUD_MEDIUM_PROBA``)        invalid
9     CLOUD_HIGH_PROBABILITY (``SC_CLOUD_HIGH_PROBA``)            invalid
10    THIN_CIRRUS                                                 invalid
11    SNOW (``SC_SNOW_ICE``)                                      invalid
====  ==========================================================  =====================

iota2's ``Sentinel_2_S2C`` masks ``[0, 1, 3, 8, 9, 10]`` (snow kept); pass
``invalid_scl=(3, 8, 9, 10)`` to :class:`Sentinel2Sen2Cor` for the same mask.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.io.sensors.base import RasterReader
from i2dl.io.sensors.common import normalize_tile
from i2dl.io.sensors.sen2cor_metadata import (
    Sen2CorMetadata,
    discover_products,
    normalize_band,
)

log = logging.getLogger(__name__)

#: The ten bands iota2 stacks for Sentinel-2 (10 m and 20 m bands), in its order.
DEFAULT_BANDS: tuple[str, ...] = (
    "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12",
)  # fmt: skip
#: Scene classification (SCL) classes of Sen2Cor.
SCL_CLASSES: dict[int, str] = {
    0: "NO_DATA",
    1: "SATURATED_OR_DEFECTIVE",
    2: "DARK_AREA_PIXELS",
    3: "CLOUD_SHADOWS",
    4: "VEGETATION",
    5: "NOT_VEGETATED",
    6: "WATER",
    7: "UNCLASSIFIED",
    8: "CLOUD_MEDIUM_PROBABILITY",
    9: "CLOUD_HIGH_PROBABILITY",
    10: "THIN_CIRRUS",
    11: "SNOW",
}
#: SCL classes always read as invalid (no data, saturated or defective).
ALWAYS_INVALID_SCL: tuple[int, ...] = (0, 1)
#: SCL classes read as invalid by default (on top of :data:`ALWAYS_INVALID_SCL`).
DEFAULT_INVALID_SCL: tuple[int, ...] = (3, 8, 9, 10, 11)


class Sentinel2Sen2Cor(RasterReader):
    """A Sen2Cor L2A time series of one tile on the 10 m grid of B02.

    Satisfies :class:`i2dl.io.sensors.base.TimeSeriesSource`. Bands are read from the
    products' JPEG2000 images: 10 m bands directly, 20 m (and 60 m) bands resampled onto
    the 10 m grid with ``resampling`` (a GDAL warped VRT, so windows match a whole-grid
    read); SCL always with nearest neighbour. Values are surface reflectance
    ``(DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE`` as float32. An observation is
    invalid when any band has DN 0 (NODATA; resampled bands ignore NODATA source pixels
    and are 0 only where the nearest source pixel is NODATA) or when its SCL class is in
    ``invalid_scl`` or :data:`ALWAYS_INVALID_SCL`.

    Use as a context manager (or call :meth:`close`): images stay open between windows,
    at most ``max_open`` at a time (least recently used are closed).

    Attributes:
        path: the searched folder (``root/<tile>`` or ``root``).
        tile: ``"T31TCJ"``.
        products: the product metadata, one per date.
        dates: T acquisition dates (UTC day), earliest first.
        band_names: C bands (``"B02"``, ...).
        invalid_scl: SCL classes read as invalid (including 0 and 1).
        crs, transform, width, height: the 10 m grid of the first product's B02.
    """

    def __init__(
        self,
        root: str | Path,
        tile: str,
        bands: Sequence[str] = DEFAULT_BANDS,
        resampling: str = "bilinear",
        invalid_scl: Iterable[int] = DEFAULT_INVALID_SCL,
        start_date: dt.date | str | None = None,
        end_date: dt.date | str | None = None,
        max_open: int = 256,
    ) -> None:
        """Find the products and open the reference grid.

        Args:
            root: data folder holding ``<tile>/<product>.SAFE`` or the ``.SAFE`` folders.
            tile: MGRS tile, ``"T31TCJ"`` or ``"31TCJ"``.
            bands: bands to read, in channel order (``"B02"`` or ``"B2"``).
            resampling: rasterio/GDAL resampling name for bands coarser than 10 m
                (``"bilinear"``, ``"nearest"``, ``"cubic"``, ...).
            invalid_scl: SCL classes (0..11) that make an observation invalid; 0 and 1
                are always invalid.
            start_date: first acquisition day kept (inclusive); None = unbounded.
            end_date: last acquisition day kept (inclusive); None = unbounded.
            max_open: most images kept open at once (>= 1).

        Raises:
            ConfigError: bad tile, band, resampling name, SCL class, date or ``max_open``.
            InputFileNotFoundError: no product of ``tile`` in the date range, a product
                without metadata, or a band image listed in the metadata is missing.
            InputDataError: malformed metadata, or a product without B02 at 10 m.
        """
        self.root = Path(root)
        self.tile = normalize_tile(tile)
        self.band_names = [normalize_band(b) for b in bands]
        if not self.band_names:
            raise ConfigError("bands is empty; give at least one band, e.g. ['B02']")
        duplicates = sorted({b for b in self.band_names if self.band_names.count(b) > 1})
        if duplicates:
            raise ConfigError(f"bands lists {duplicates} more than once: {list(bands)}")
        try:
            self.resampling = Resampling[str(resampling)]
        except KeyError:
            raise ConfigError(
                f"resampling={resampling!r} is not a rasterio resampling method; use one of "
                f"{[r.name for r in Resampling][:8]}"
            ) from None
        scl = [int(v) for v in invalid_scl]
        bad = [v for v in scl if v not in SCL_CLASSES]
        if bad:
            raise ConfigError(
                f"invalid_scl={scl} holds {bad}, which are not SCL classes; use values in "
                f"0..11: {SCL_CLASSES}"
            )
        self.invalid_scl = tuple(sorted(set(scl) | set(ALWAYS_INVALID_SCL)))
        if int(max_open) < 1:
            raise ConfigError(f"max_open must be >= 1, got {max_open}")
        self.max_open = int(max_open)

        self.path, self.products = discover_products(self.root, self.tile, start_date, end_date)
        if not self.products:
            raise InputFileNotFoundError(
                f"no Sen2Cor L2A product of tile {self.tile} between {start_date or '-inf'} "
                f"and {end_date or '+inf'} in {self.path}; check the data folder, the tile "
                "name and the date range"
            )
        self.dates = [m.date for m in self.products]
        repeated = sorted({d for i, d in enumerate(self.dates[1:], 1) if d == self.dates[i - 1]})
        if repeated:
            log.info("%s: several acquisitions on the same day %s", self.path, repeated)

        # (path, resolution) of every band and of SCL, per product; checked to exist.
        self._band_files: list[list[tuple[Path, int]]] = []
        self._scl_files: list[tuple[Path, int]] = []
        for meta in self.products:
            row = []
            for band in self.band_names:
                res = meta.resolution(band)
                row.append((self._existing(meta, band, res), res))
            self._band_files.append(row)
            res = meta.resolution("SCL")
            self._scl_files.append((self._existing(meta, "SCL", res), res))

        ref = self.products[0]
        if 10 not in ref.image_files or "B02" not in ref.image_files[10]:
            raise InputDataError(
                f"{ref.mtd_path}: no B02 image at 10 m, which defines the grid; the product "
                "is incomplete"
            )
        self._ref_file = self._existing(ref, "B02", 10)
        with rasterio.open(self._ref_file) as src:
            self.crs = src.crs
            self.transform = src.transform
            self.width = src.width
            self.height = src.height
        self._handles: OrderedDict[tuple[Path, str], Any] = OrderedDict()

    @staticmethod
    def _existing(meta: Sen2CorMetadata, band: str, res: int) -> Path:
        path = meta.band_file(band, res)
        if not path.is_file():
            raise InputFileNotFoundError(
                f"image {path} of band {band} ({res} m), listed in {meta.mtd_path}, does not "
                "exist; the product is incomplete: re-extract it or remove it"
            )
        return path

    def _reader(self, path: Path, resolution: int, resampling: Resampling) -> Any:
        """An open dataset on the 10 m grid: the image itself (10 m) or a warped VRT."""
        key = (path, "direct" if resolution == 10 else resampling.name)
        if key in self._handles:
            self._handles.move_to_end(key)
            return self._handles[key]
        while len(self._handles) >= self.max_open:
            _, old = self._handles.popitem(last=False)
            _close(old)
        try:
            src = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise InputFileNotFoundError(
                f"cannot open Sen2Cor image {path}: {exc}; the file is corrupt or GDAL lacks "
                "a JPEG2000 driver (JP2OpenJPEG)"
            ) from None
        if src.crs != self.crs:
            src.close()
            raise InputDataError(
                f"{path} has CRS {src.crs}, but the grid of tile {self.tile} ({self._ref_file}) "
                f"has {self.crs}; products of another tile were mixed in"
            )
        if resolution == 10:
            if (src.width, src.height) != (self.width, self.height) or src.transform != (
                self.transform
            ):
                src.close()
                raise InputDataError(
                    f"{path} is {src.width}x{src.height} px at {tuple(src.transform)[:6]}, but "
                    f"the 10 m grid ({self._ref_file}) is {self.width}x{self.height} px at "
                    f"{tuple(self.transform)[:6]}; products of another tile were mixed in"
                )
            handle = src
        else:
            options: dict[str, Any] = {}
            if resampling != Resampling.nearest:
                # NODATA (DN 0) source pixels are left out of the interpolation.
                options = {"src_nodata": 0, "nodata": 0}
            handle = _Warped(
                src,
                WarpedVRT(
                    src,
                    crs=self.crs,
                    transform=self.transform,
                    width=self.width,
                    height=self.height,
                    resampling=resampling,
                    dtype="float32" if resampling != Resampling.nearest else src.dtypes[0],
                    **options,
                ),
            )
        self._handles[key] = handle
        return handle

    def close(self) -> None:
        """Close the open images."""
        for handle in self._handles.values():
            _close(handle)
        self._handles.clear()

    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read a window of the series.

        Args:
            window: pixel window on the 10 m grid; None reads the whole grid.

        Returns:
            ``x`` (H, W, T, C) float32, surface reflectance (unitless, about 0..1; negative
            values are possible from baseline 04.00), and ``valid`` (H, W, T) bool, True
            where no band is NODATA and the SCL class is not invalid.

        Raises:
            ValueError: the window is fractional, empty or not inside the grid.
        """
        # the (h, w, T) mask starts as "nothing invalid"; bands and SCL add to it
        window, x, invalid = self.start_read(window, valid_fill=False)
        for t, meta in enumerate(self.products):
            scale = np.float32(meta.quantification)
            for c, band in enumerate(self.band_names):
                path, res = self._band_files[t][c]
                dn = self._reader(path, res, self.resampling).read(
                    1, window=window, out_dtype="float32"
                )
                invalid[:, :, t] |= dn == 0
                offset = meta.offset(band)
                if offset:
                    dn += np.float32(offset)
                x[:, :, t, c] = dn / scale
            path, res = self._scl_files[t]
            scl = self._reader(path, res, Resampling.nearest).read(1, window=window)
            invalid[:, :, t] |= np.isin(scl, self.invalid_scl)
        return x, ~invalid


class _Warped:
    """A warped VRT with the dataset under it, closed together."""

    def __init__(self, src: Any, vrt: WarpedVRT) -> None:
        self.src, self.vrt = src, vrt

    def read(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.vrt.read(*args, **kwargs)

    def close(self) -> None:
        self.vrt.close()
        self.src.close()


def _close(handle: Any) -> None:
    handle.close()
