"""Sentinel-1 backscatter calibrated and orthorectified on the tile grid (iota2 ``Sentinel_1``).

iota2 does not classify raw Sentinel-1 products: its S1 processor (and CNES's S1Tiling,
which replaced it) calibrates, orthorectifies and filters the GRD products onto the
Sentinel-2 tile grid first, one GeoTIFF per acquisition and polarisation, and iota2 then
reads those files, interpolates the S1 series apart from the S2 series and concatenates
the S1 features to the S2 features of every pixel (labwork §3.3). This module reads that
layout::

    <root>/<tile>/s1a_31TCJ_vv_DES_008_20180108t060459.tif
    <root>/<tile>/s1a_31TCJ_vv_DES_008_20180108t060459_BorderMask.tif
    <root>/<tile>/s1b_31TCJ_vh_ASC_132_20180110t174002.tif   ...

File name: ``s1<a|b|c>_<tile>_<pol>_<ASC|DES>_<relative orbit>_<YYYYMMDD>[t<HHMMSS>]...``;
the tile is written with or without its ``T``; ``_BorderMask`` marks the border mask of
the image of the same name (non-zero = inside the swath, 0 = border; S1Tiling's
convention). Values are sigma0 backscatter, linear (S1Tiling's output) or already in dB
(``input_values``); 0, nodata, NaN and non-positive linear values are invalid.

Ascending and descending acquisitions are **separate series** with their own dates
(:func:`open_sentinel1` returns one :class:`Sentinel1` reader per orbit direction): the
feature stack (:class:`i2dl.features.stack.FeatureStack`) interpolates each series from
its own acquisitions only, as iota2 interpolates S1 apart from S2. Two files of the same
direction, polarisation and day (two relative orbits overlapping the tile) are merged:
the first valid value in file-name order is kept.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.io.raster import as_date
from i2dl.io.sensors.base import RasterReader
from i2dl.io.sensors.common import (
    Grid,
    RasterPool,
    check_grid,
    equals_nodata,
    in_range,
    open_meta,
    short_list,
    tile_folder,
)

log = logging.getLogger(__name__)

#: Orbit directions, as written in the file names.
ORBITS: tuple[str, ...] = ("ASC", "DES")
#: Name of the optional cross-polarisation ratio channel (VH - VV in dB, VH / VV linear).
RATIO = "VH_VV"

_FILE_RE = re.compile(
    r"^(?P<sat>s1[abcd])_(?P<tile>t?\d{2}[a-z]{3})_(?P<pol>vv|vh|hh|hv)_(?P<orbit>asc|des)_"
    r"(?P<relorb>\d{1,3})_(?P<date>\d{8})(?:t(?P<time>\d{6}))?(?P<rest>.*)\.tiff?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class S1File:
    """One S1 image of the tile folder, parsed from its name."""

    path: Path
    satellite: str
    polarisation: str
    orbit: str
    relative_orbit: int
    date: dt.date
    mask: Path | None


def scan_s1(folder: Path, tile: str) -> list[S1File]:
    """The S1 images of ``tile`` in ``folder`` (border masks attached), sorted by name.

    Raises:
        InputDataError: an image name has an impossible date.
    """
    want = tile.upper().removeprefix("T")
    images: list[S1File] = []
    masks: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        m = _FILE_RE.match(path.name)
        if m is None or m["tile"].upper().removeprefix("T") != want:
            continue
        rest = m["rest"]
        if "bordermask" in rest.lower():
            key = path.name[: path.name.lower().index("_bordermask")]
            masks[key] = path
            continue
        try:
            day = dt.datetime.strptime(m["date"], "%Y%m%d").date()
        except ValueError:
            raise InputDataError(
                f"{path}: {m['date']!r} is not a date (YYYYMMDD); rename or remove the file"
            ) from None
        images.append(S1File(path, m["sat"].lower(), m["pol"].upper(), m["orbit"].upper(),
                             int(m["relorb"]), day, None))
    out = []
    for img in images:
        stem = img.path.name.rsplit(".", 1)[0]
        out.append(S1File(img.path, img.satellite, img.polarisation, img.orbit,
                          img.relative_orbit, img.date, masks.get(stem)))
    return out


def s1_folder(root: str | Path, tile: str) -> Path:
    """``root/<tile>`` (``T31TCJ`` or ``31TCJ``) when it exists, else ``root`` itself.

    Raises:
        InputFileNotFoundError: ``root`` is not a folder.
    """
    bare = tile.upper().removeprefix("T")
    for name in (tile, f"T{bare}", bare):
        folder = tile_folder(root, name, "Sentinel-1 (data.sensors.sentinel1.root)")
        if folder != Path(root):
            return folder
    return Path(root)


class Sentinel1(RasterReader):
    """The S1 backscatter series of one tile and one orbit direction.

    Args:
        root: folder with one sub-folder per tile (``<root>/<tile>/s1a_...tif``), or the
            tile folder itself.
        tile: the tile (``T31TCJ`` or ``31TCJ``).
        orbit: ``ASC`` or ``DES``.
        polarisations: channels, in this order (default ``VV``, ``VH``); every date must
            have all of them.
        values: output unit, ``db`` (10 log10 of linear sigma0; iota2 classifies dB) or
            ``linear``.
        input_values: unit of the files, ``linear`` (S1Tiling) or ``db``.
        ratio: append the cross-polarisation ratio channel ``VH_VV`` (VH - VV in dB,
            VH / VV in linear units); needs VV and VH.
        start_date, end_date: keep acquisitions in this range (inclusive); None = open.
        max_open: most files kept open (see :class:`~i2dl.io.sensors.common.RasterPool`).

    ``read`` returns ``x`` (H, W, T, C) float32 in ``values`` units (0 where invalid) and
    ``valid`` (H, W, T) bool: False outside the swath (border mask 0), where a
    polarisation is 0, nodata, NaN or (linear) non-positive.

    Raises:
        ConfigError: bad orbit, polarisation, unit, or ``ratio`` without VV and VH.
        InputFileNotFoundError: no folder, or no image of this tile and direction.
        InputDataError: a date lacks a polarisation, or images are on different grids.
    """

    def __init__(
        self,
        root: str | Path,
        tile: str,
        orbit: str = "DES",
        polarisations: Sequence[str] = ("VV", "VH"),
        values: str = "db",
        input_values: str = "linear",
        ratio: bool = False,
        start_date: Any = None,
        end_date: Any = None,
        max_open: int | None = None,
    ) -> None:
        self.orbit = str(orbit).upper()
        if self.orbit not in ORBITS:
            raise ConfigError(f"data.sensors.sentinel1: orbit {orbit!r} is not ASC or DES")
        self.polarisations = [str(p).upper() for p in polarisations]
        bad = [p for p in self.polarisations if p not in ("VV", "VH", "HH", "HV")]
        if bad or not self.polarisations:
            raise ConfigError(
                f"data.sensors.sentinel1.polarisations={list(polarisations)}: use VV, VH, HH "
                "or HV")
        self.values, self.input_values = str(values).lower(), str(input_values).lower()
        for key, unit in (("values", self.values), ("input_values", self.input_values)):
            if unit not in ("db", "linear"):
                raise ConfigError(f"data.sensors.sentinel1.{key}={unit!r}: use db or linear")
        self.ratio = bool(ratio)
        if self.ratio and not {"VV", "VH"} <= set(self.polarisations):
            raise ConfigError("data.sensors.sentinel1.ratio needs both VV and VH polarisations")
        start = as_date(start_date, "data.start_date")
        end = as_date(end_date, "data.end_date")

        folder = s1_folder(root, tile)
        self.path = folder
        files = [f for f in scan_s1(folder, tile)
                 if f.orbit == self.orbit and in_range(f.date, start, end)
                 and f.polarisation in self.polarisations]
        if not files:
            raise InputFileNotFoundError(
                f"no Sentinel-1 {self.orbit} image of tile {tile} in {folder} "
                f"(expected s1a_{tile}_vv_{self.orbit}_<orbit>_<YYYYMMDD>...tif"
                + (f" between {start} and {end}" if start or end else "") + ")")
        by_date: dict[dt.date, dict[str, list[S1File]]] = {}
        for f in files:
            by_date.setdefault(f.date, {}).setdefault(f.polarisation, []).append(f)
        for day, pols in sorted(by_date.items()):
            missing = [p for p in self.polarisations if p not in pols]
            if missing:
                raise InputDataError(
                    f"Sentinel-1 {self.orbit} {day} in {folder} has no {', '.join(missing)} "
                    f"image (found {', '.join(sorted(pols))}); add it, or set "
                    "data.sensors.sentinel1.polarisations to the ones every date has")
        self.dates = sorted(by_date)
        self._files = [by_date[d] for d in self.dates]
        self.band_names = list(self.polarisations) + ([RATIO] if self.ratio else [])

        first = files[0].path
        grid, _, _, nodata = open_meta(first, "Sentinel-1 image")
        self._grid = grid
        self.crs, self.transform = grid.crs, grid.transform
        self.width, self.height = grid.width, grid.height
        self.nodata = nodata
        self._pool = RasterPool(max_open, on_open=self._check_opened)
        log.info("Sentinel-1 %s %s: %d dates (%s), %s", self.orbit, tile, len(self.dates),
                 short_list(self.dates), self.band_names)

    def _check_opened(self, path: Path, src: Any) -> None:
        check_grid(path, Grid.of(src), self._grid, f"the first image of {self.path}",
                   "S1 images of a tile must all be orthorectified on the tile grid")

    def close(self) -> None:
        """Close the open images."""
        self._pool.close()

    def _read_pol(self, files: list[S1File], window: Window) -> tuple[np.ndarray, np.ndarray]:
        """One polarisation of one date: values in linear units, and validity."""
        h, w = int(window.height), int(window.width)
        out = np.zeros((h, w), np.float32)
        ok = np.zeros((h, w), bool)
        for f in files:  # first valid value wins (overlapping relative orbits)
            src = self._pool.get(f.path, f"Sentinel-1 {f.polarisation} {f.date}")
            v = src.read(1, window=window, out_dtype="float32")
            good = ~equals_nodata(v, src.nodata) & (v != 0)
            if self.input_values == "linear":
                good &= v > 0
            else:
                v = np.power(10.0, v / 10.0, dtype=np.float32)
            if f.mask is not None:
                good &= self._pool.get(f.mask, f"border mask of {f.path.name}").read(
                    1, window=window) != 0
            take = good & ~ok
            out[take] = v[take]
            ok |= good
        return out, ok

    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``x`` (H, W, T, C) float32 in ``values`` units and ``valid`` (H, W, T) bool."""
        window, x, valid = self.start_read(window, x_fill=0.0, valid_fill=True)
        for t, pols in enumerate(self._files):
            lin = {}
            for c, pol in enumerate(self.polarisations):
                v, ok = self._read_pol(pols[pol], window)
                lin[pol] = v
                valid[:, :, t] &= ok
                x[:, :, t, c] = v
            if self.ratio:
                with np.errstate(divide="ignore", invalid="ignore"):
                    x[:, :, t, -1] = lin["VH"] / lin["VV"]
        if self.values == "db":
            with np.errstate(divide="ignore", invalid="ignore"):
                # a ratio of linear values becomes VH_dB - VV_dB
                x = (10.0 * np.log10(x)).astype(np.float32)
        x[~valid] = 0.0
        return x.astype(np.float32, copy=False), valid


def open_sentinel1(
    opts: dict[str, Any],
    tile: str,
    start_date: dt.date | None = None,
    end_date: dt.date | None = None,
) -> dict[str, Sentinel1]:
    """One reader per orbit direction of the ``data.sensors.sentinel1`` entry.

    Args:
        opts: the entry's options: ``root`` (required), ``orbits`` (``[ASC, DES]``; None =
            every direction found in the folder), and :class:`Sentinel1`'s options.
        tile: the tile.
        start_date: first acquisition date kept; None: no bound.
        end_date: last acquisition date kept; None: no bound.

    Returns:
        ``{"sentinel1_asc": reader, "sentinel1_des": reader}`` (the directions asked for or
        found), each a separate series with its own dates.

    Raises:
        ConfigError: no ``root``, or an unknown direction.
        InputFileNotFoundError: a direction asked for has no image, or none is found.
    """
    opts = dict(opts)
    if not opts.get("root"):
        raise ConfigError("data.sensors.sentinel1.root is required: the folder of S1 images")
    orbits = opts.pop("orbits", None)
    if orbits is None:
        found = {f.orbit for f in scan_s1(s1_folder(opts["root"], tile), tile)}
        orbits = [o for o in ORBITS if o in found] or list(ORBITS)
    if isinstance(orbits, str):
        orbits = orbits.split()
    readers: dict[str, Sentinel1] = {}
    try:
        for orbit in orbits:
            readers[f"sentinel1_{str(orbit).lower()}"] = Sentinel1(
                tile=tile, orbit=orbit, start_date=start_date, end_date=end_date, **opts)
    except BaseException:
        for r in readers.values():
            r.close()
        raise
    return readers
