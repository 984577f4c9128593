"""The interface every time-series source implements, and the base class of the readers.

``prepare`` (sample extraction) and ``infer`` (chunked maps) only need a grid, a list of
acquisition dates, channel names and a ``read(window)`` method. :class:`TimeSeriesSource`
states that contract; :class:`i2dl.io.raster.TimeSeriesRaster` (a GeoTIFF stack), the
sensor readers of this package (THEIA Sentinel-2, Sen2Cor, Landsat-8 N2A, user features)
and the feature pipeline (:class:`i2dl.features.stack.FeatureStack`) all satisfy it, so
the same code feeds the sample store and the inference from any of them.

They share :class:`RasterReader`, which gives, once, what every reader would otherwise
re-write (as torchgeo's ``RasterDataset`` subclasses share ``GeoDataset``): ``n_dates``,
``n_channels``, ``profile``, the start of every ``read`` (:meth:`RasterReader.start_read`:
the window checked, the arrays to fill), the context manager and ``repr``. A subclass sets
the attributes in its ``__init__`` and implements ``read`` (and ``close`` when it holds
files).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from rasterio.windows import Window

from i2dl.io.geotiff import grid_profile
from i2dl.io.sensors.common import resolve_window

_R = TypeVar("_R", bound="RasterReader")


@runtime_checkable
class TimeSeriesSource(Protocol):
    """A gridded time series that can be read by windows.

    Attributes:
        path: a path naming the source in messages (file or folder).
        dates: T acquisition dates (may be empty when only day offsets are known).
        band_names: C channel names.
        crs: rasterio CRS of the grid (or None); transform: affine transform;
        width, height: grid size in pixels.
    """

    path: Any
    dates: list[dt.date]
    band_names: list[str]
    crs: Any
    transform: Any
    width: int
    height: int

    @property
    def n_dates(self) -> int:
        """T."""
        ...

    @property
    def n_channels(self) -> int:
        """C."""
        ...

    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``x`` (H, W, T, C) float32 and ``valid`` (H, W, T) bool (True = valid)."""
        ...

    def profile(self) -> dict[str, Any]:
        """Creation profile (rasterio) of the grid: driver, crs, transform, width, height."""
        ...

    def close(self) -> None:
        """Release open files."""
        ...

    def __enter__(self) -> TimeSeriesSource: ...

    def __exit__(self, *exc: object) -> None: ...


class RasterReader:
    """Base class of the readers: the members that do not depend on the product format.

    Subclasses set every attribute below in ``__init__``, implement ``read`` (``x``
    (H, W, T, C) float32, ``valid`` (H, W, T) bool) and override :meth:`close` when they
    keep files open. Use a reader as a context manager, or call :meth:`close`.

    Attributes:
        path: the file or folder read, named in messages.
        dates: T acquisition dates (empty for date-independent rasters, e.g. user
            features).
        band_names: C channel names.
        crs: rasterio CRS of the grid, or None.
        transform: affine transform of the grid.
        width: grid width in pixels.
        height: grid height in pixels.
    """

    path: Any
    dates: list[dt.date]
    band_names: list[str]
    crs: Any
    transform: Any
    width: int
    height: int

    @property
    def n_dates(self) -> int:
        """T, the number of acquisition dates."""
        return len(self.dates)

    @property
    def n_channels(self) -> int:
        """C, the number of channels per date."""
        return len(self.band_names)

    def profile(self) -> dict[str, Any]:
        """Creation profile (rasterio) of the grid: driver, crs, transform, width, height."""
        return grid_profile(self)

    def start_read(
        self, window: Window | None, x_fill: float | None = None, valid_fill: bool | None = None,
    ) -> tuple[Window, np.ndarray, np.ndarray]:
        """The start of every ``read``: the window checked and the arrays that the read fills.

        Args:
            window: whole-pixel window of the grid; None = the whole grid.
            x_fill: initial value of ``x``; None = uninitialised (the read writes every value).
            valid_fill: initial value of ``valid``; None = uninitialised.

        Returns:
            ``(win, x, valid)``: the integer window, ``x`` (h, w, T, C) float32 and
            ``valid`` (h, w, T) bool for the window's ``h`` rows and ``w`` columns.

        Raises:
            ValueError: the window is fractional, empty or reaches outside the grid
                (:func:`i2dl.io.sensors.common.resolve_window`).
        """
        win = resolve_window(window, self.width, self.height, self.path)
        shape = (int(win.height), int(win.width), self.n_dates)
        if x_fill is None:
            x = np.empty((*shape, self.n_channels), dtype=np.float32)
        else:
            x = np.full((*shape, self.n_channels), x_fill, dtype=np.float32)
        valid = np.empty(shape, dtype=bool) if valid_fill is None else np.full(shape, valid_fill)
        return win, x, valid

    def close(self) -> None:
        """Release open files (nothing to release in the base class)."""

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        crs = self.crs.to_string() if self.crs is not None else "no CRS"
        return (
            f"{type(self).__name__}(path={str(self.path)!r}, dates={self.n_dates}, "
            f"bands={self.band_names}, grid={self.width}x{self.height} px {crs})"
        )
