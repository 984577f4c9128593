"""Time-series rasters: GeoTIFF stacks with acquisition dates and validity masks.

A time series is one multi-band GeoTIFF whose bands are ordered **date-major**, as iota2
writes its feature stacks: band ``t * C + c`` (0-based) is channel ``c`` of acquisition
``t``. The acquisition dates come from a dates file (one date a line, ISO ``YYYY-MM-DD``,
ISO timestamps or iota2's ``YYYYMMDD``) or, when no file is given, from the band
descriptions (``NDVI_20150711``). Optional validity rasters (cloud mask, data mask, ...) on
the same grid, with one band per date (or one band for all dates), mark observations as
invalid.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import rasterio
from rasterio.windows import Window

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.io.sensors.base import RasterReader

log = logging.getLogger(__name__)

#: GDAL's GTiff ``NUM_THREADS`` open option of the time-series stacks: the compressed
#: tiles or strips of one window read are decoded by this many threads (``ALL_CPUS``).
READ_THREADS = "ALL_CPUS"

_DATE_RE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")


def parse_date(text: str) -> dt.date:
    """Parse one acquisition date.

    Args:
        text: ``YYYY-MM-DD``, an ISO timestamp (``2015-07-11T10:00:08``) or ``YYYYMMDD``;
            the first such pattern found in the text is used.

    Returns:
        The calendar date (time of day dropped).

    Raises:
        ValueError: no date pattern in ``text`` or an impossible date.
    """
    match = _DATE_RE.search(text)
    if match is None:
        raise ValueError(f"no date (YYYY-MM-DD or YYYYMMDD) found in {text!r}")
    return dt.date(*(int(g) for g in match.groups()))


@overload
def as_date(value: None, param: str = ...) -> None: ...
@overload
def as_date(value: dt.date | str, param: str = ...) -> dt.date: ...
def as_date(value: dt.date | str | None, param: str = "date") -> dt.date | None:
    """A date given in a config or an argument (``start_date``, ``end_date``...) as a date.

    The one place where i2dl turns user dates into ``datetime.date``; text is read by
    :func:`parse_date`.

    Args:
        value: a date, a datetime (time dropped), text :func:`parse_date` reads
            (``YYYY-MM-DD``, an ISO timestamp, ``YYYYMMDD``), or None / ``""``.
        param: the parameter named in the error message (``data.start_date``).

    Returns:
        The date, or None for None or an empty string.

    Raises:
        ConfigError: the text holds no valid date.
    """
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return parse_date(str(value))
    except ValueError as exc:
        raise ConfigError(f"{param}={value!r} is not a date: {exc}; use YYYY-MM-DD") from None


def read_dates_file(path: str | Path) -> list[dt.date]:
    """Read a dates file: one acquisition date a line (blank lines ignored).

    Args:
        path: text file, e.g. ``slovenia_s2_ndvi/dates.txt`` or iota2's ``*_dates.txt``.

    Returns:
        The dates, in file order (which must be the band order of the stack).

    Raises:
        InputFileNotFoundError: the file does not exist.
        InputDataError: a line holds no date (file and line number given) or the dates
            go back in time.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(
            f"dates file {path} does not exist; set data.dates_file to a text file with one "
            "acquisition date per line, or to null to read dates from the band descriptions"
        )
    dates: list[dt.date] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            dates.append(parse_date(line))
        except ValueError as exc:
            raise InputDataError(
                f"{path}, line {lineno}: {exc}; each line must hold one acquisition date "
                "(YYYY-MM-DD, an ISO timestamp or YYYYMMDD)"
            ) from None
    _check_increasing(dates, str(path))
    return dates


def _check_increasing(dates: Sequence[dt.date], where: str) -> None:
    """Dates must not go back in time; the same day twice (two passes) is allowed, logged."""
    for i in range(1, len(dates)):
        if dates[i] < dates[i - 1]:
            raise InputDataError(
                f"{where}: acquisition dates must be in increasing order, but date {i + 1} "
                f"({dates[i]}) follows {dates[i - 1]}; sort the bands by date"
            )
    repeated = sorted({d for i, d in enumerate(dates[1:], start=1) if d == dates[i - 1]})
    if repeated:
        log.info("%s: several acquisitions on the same day %s", where, [str(d) for d in repeated])


@dataclass(frozen=True)
class MaskSpec:
    """One validity raster and how to read it.

    Exactly one of ``invalid_values`` (e.g. a cloud mask, ``[1]`` = cloud) or
    ``valid_values`` (e.g. a data mask, ``[1]`` = data) is given. The raster has one band
    per acquisition date, or a single band applied to every date.
    """

    path: Path
    invalid_values: tuple[int, ...] = ()
    valid_values: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, item: Mapping[str, Any] | str) -> MaskSpec:
        """Build from a config entry ``{path, invalid_values | valid_values}``.

        A bare path means a cloud-mask convention: value 1 = invalid.

        Raises:
            ConfigError: both or neither of ``invalid_values``/``valid_values`` given.
        """
        if isinstance(item, (str, Path)):
            return cls(Path(item), invalid_values=(1,))
        inv = tuple(int(v) for v in (item.get("invalid_values") or ()))
        val = tuple(int(v) for v in (item.get("valid_values") or ()))
        if bool(inv) == bool(val):
            raise ConfigError(
                f"mask {item.get('path')}: give exactly one of invalid_values (e.g. [1] for a "
                "cloud mask) or valid_values (e.g. [1] for a data mask)"
            )
        return cls(Path(item["path"]), invalid_values=inv, valid_values=val)

    def invalid(self, values: np.ndarray) -> np.ndarray:
        """Boolean array, True where ``values`` mark an invalid observation."""
        if self.invalid_values:
            return np.isin(values, self.invalid_values)
        return ~np.isin(values, self.valid_values)


@dataclass(repr=False)
class TimeSeriesRaster(RasterReader):
    """A date-major GeoTIFF time series with its dates and validity masks.

    Use as a context manager (or call :meth:`close`): the datasets stay open so that
    reading many windows does not reopen files. ``n_dates``, ``n_channels``,
    ``profile`` and ``repr`` come from :class:`~i2dl.io.sensors.base.RasterReader`.

    Attributes:
        path: the stack.
        dates: T acquisition dates, band order.
        band_names: C channel names (``["NDVI"]``, ``["B2", "B3", ...]``).
        masks: validity rasters.
        crs, transform, width, height: the grid (rasterio objects, pixels).
        nodata: the stack's nodata value, or None; such observations are invalid, and so
            are NaN and +-inf values.
    """

    path: Path
    dates: list[dt.date]
    band_names: list[str]
    masks: list[MaskSpec] = field(default_factory=list)
    crs: Any = None
    transform: Any = None
    width: int = 0
    height: int = 0
    nodata: float | None = None
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)

    def _open(self, path: Path) -> Any:
        if path not in self._handles:
            # GTiff NUM_THREADS: the tiles or strips of one window are decoded in parallel
            self._handles[path] = rasterio.open(path, num_threads=READ_THREADS)
        return self._handles[path]

    def close(self) -> None:
        """Close the open datasets."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read a window of the series.

        Args:
            window: pixel window (``rasterio.windows.Window``); None reads the whole grid.

        Returns:
            ``x`` (H, W, T, C) float32, the stack's values (unscaled), and ``valid``
            (H, W, T) bool, True where the observation is valid (not masked, not nodata,
            not NaN or +-inf in any channel). Non-finite values are returned as NaN.

        Raises:
            InputDataError: the stack or a mask cannot be read in ``window`` (damaged
                strips or tiles); the file and the window are named.
        """
        src = self._open(self.path)
        t, c = self.n_dates, self.n_channels
        if np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
            # integer stack: read natively, nodata on the integers (no NaN or inf exists),
            # then one cast-and-transpose copy into the (H, W, T, C) float32 layout
            raw = read_checked(src, self.path, window)  # (T*C, H, W)
            h, w = raw.shape[1:]
            cube = raw.reshape(t, c, h, w)
            if self.nodata is not None and not np.isnan(self.nodata):
                invalid = (cube == self.nodata).any(axis=1).transpose(1, 2, 0)  # (H, W, T)
            else:
                invalid = np.zeros((h, w, t), dtype=bool)
            x = np.empty((h, w, t, c), dtype=np.float32)
            x[...] = cube.transpose(2, 3, 0, 1)
        else:
            data = read_checked(src, self.path, window, out_dtype="float32")  # (T*C, H, W)
            h, w = data.shape[1:]
            x = np.ascontiguousarray(data.reshape(t, c, h, w).transpose(2, 3, 0, 1))
            finite = np.isfinite(x)
            if not finite.all():  # +-inf is missing exactly like NaN: never a value
                x[~finite] = np.nan
            invalid = ~finite.all(axis=-1)
            if self.nodata is not None and not np.isnan(self.nodata):
                invalid |= (x == self.nodata).any(axis=-1)
        for spec in self.masks:
            mask_src = self._open(spec.path)
            m = read_checked(mask_src, spec.path, window)  # (T or 1, H, W)
            invalid |= spec.invalid(m).transpose(1, 2, 0)
        return x, ~invalid


def describe_window(window: Window | None) -> str:
    """A window in words for messages: ``rows 0..511, columns 512..1023``."""
    if window is None:
        return "the whole grid"
    r0, c0 = int(window.row_off), int(window.col_off)
    return (f"window rows {r0}..{r0 + int(window.height) - 1}, "
            f"columns {c0}..{c0 + int(window.width) - 1}")


def unreadable(path: Any, window: Window | None, exc: Exception) -> InputDataError:
    """The error for a raster that fails to read in a window (corrupt strip or tile)."""
    return InputDataError(
        f"cannot read {path}, {describe_window(window)}: {exc}. The file is damaged (a "
        "corrupt or truncated strip or tile): check it with `gdalinfo -checksum`, then "
        "re-create or re-download it"
    )


def read_checked(src: Any, path: Any, window: Window | None, **kwargs: Any) -> np.ndarray:
    """``src.read(window=window, **kwargs)`` with read errors naming the file and window.

    Raises:
        InputDataError: GDAL cannot decode the window (see :func:`unreadable`).
    """
    try:
        data: np.ndarray = src.read(window=window, **kwargs)
    except rasterio.errors.RasterioError as exc:
        raise unreadable(path, window, exc) from None
    return data


def read_series_window(series: Any, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """``series.read(window)`` of any reader, with read errors naming the source and window.

    Used by the windowed reads of prepare and inference, whatever the reader
    (GeoTIFF stack, sensor products).

    Raises:
        InputDataError: a file of the series cannot be read in ``window``.
    """
    try:
        x, valid = series.read(window)
    except rasterio.errors.RasterioError as exc:
        raise unreadable(series.path, window, exc) from None
    return x, valid


def open_time_series(
    path: str | Path,
    dates_file: str | Path | None = None,
    band_names: Sequence[str] | None = None,
    masks: Sequence[Mapping[str, Any] | str] = (),
) -> TimeSeriesRaster:
    """Open and check a date-major time-series stack.

    Args:
        path: GeoTIFF stack with T*C bands.
        dates_file: dates file (see :func:`read_dates_file`); None reads the dates from
            the band descriptions.
        band_names: the C channel names; None means one channel named ``band1`` unless
            the band count and dates say otherwise (then ``band1..bandC``).
        masks: validity rasters, config entries for :meth:`MaskSpec.from_config`.

    Returns:
        The opened series (close it, or use it in a ``with`` block).

    Raises:
        InputFileNotFoundError: the stack or a mask cannot be opened.
        InputDataError: the band count is not T*C, a band description holds no date, or a
            mask is not on the stack's grid or has neither T nor 1 bands.
    """
    path = Path(path)
    src = _open_checked(path, "data.raster")
    with src:
        count, crs, transform = src.count, src.crs, src.transform
        width, height, nodata = src.width, src.height, src.nodata
        descriptions = src.descriptions
    if dates_file is not None:
        dates = read_dates_file(dates_file)
        where = f"dates file {dates_file}"
    else:
        dates = _dates_from_descriptions(path, descriptions, band_names)
        where = f"band descriptions of {path}"
    n_dates = len(dates)
    if band_names is None:
        n_chan = count // n_dates if n_dates and count % n_dates == 0 else 1
        band_names = [f"band{i + 1}" for i in range(n_chan)]
    band_names = [str(b) for b in band_names]
    if count != n_dates * len(band_names):
        raise InputDataError(
            f"{path} has {count} bands but the {where} gives {n_dates} acquisition dates "
            f"and data.band_names gives {len(band_names)} channel(s) {band_names}: "
            f"{n_dates} x {len(band_names)} = {n_dates * len(band_names)} != {count}. "
            "Fix the dates file (one line per acquisition, in band order) or band_names."
        )
    specs = [MaskSpec.from_config(m) for m in masks]
    for spec in specs:
        with _open_checked(spec.path, "data.masks") as msrc:
            if (msrc.width, msrc.height) != (width, height) or msrc.transform != transform:
                raise InputDataError(
                    f"mask {spec.path} is {msrc.width}x{msrc.height} px with transform "
                    f"{tuple(msrc.transform)[:6]}, but the stack {path} is {width}x{height} px "
                    f"with {tuple(transform)[:6]}: resample the mask onto the stack's grid"
                )
            if msrc.count not in (1, n_dates):
                raise InputDataError(
                    f"mask {spec.path} has {msrc.count} bands; it needs one band per "
                    f"acquisition date ({n_dates}) or a single band for all dates"
                )
    if crs is None:
        log.warning("%s has no CRS: polygons cannot be checked against it", path)
    return TimeSeriesRaster(
        path=path,
        dates=dates,
        band_names=band_names,
        masks=specs,
        crs=crs,
        transform=transform,
        width=width,
        height=height,
        nodata=nodata,
    )


def _open_checked(path: Path, param: str) -> Any:
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputFileNotFoundError(
            f"cannot open raster {path} (set by {param}): {exc}. Check the path "
            "(relative paths are resolved from the working directory; paths.data_dir or the "
            "I2DL_DATA environment variable set the data folder)"
        ) from None


def _dates_from_descriptions(
    path: Path, descriptions: Sequence[str | None], band_names: Sequence[str] | None
) -> list[dt.date]:
    step = len(band_names) if band_names else 1
    dates: list[dt.date] = []
    for i in range(0, len(descriptions), step):
        desc = descriptions[i]
        try:
            if desc is None:
                raise ValueError("no description")
            dates.append(parse_date(desc))
        except ValueError:
            raise InputDataError(
                f"{path}: band {i + 1} has description {desc!r}, which holds no acquisition "
                "date; set data.dates_file to a file with one date per acquisition"
            ) from None
    _check_increasing(dates, f"band descriptions of {path}")
    return dates


def days_since(dates: Sequence[dt.date], reference: dt.date) -> np.ndarray:
    """Day offsets of ``dates`` from ``reference``: (T,) int64, days."""
    return np.array([(d - reference).days for d in dates], dtype=np.int64)
