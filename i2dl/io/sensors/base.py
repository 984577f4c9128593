"""The interface every time-series source implements (stacks, sensor products, features).

``prepare`` (sample extraction) and ``infer`` (chunked maps) only need a grid, a list of
acquisition dates, channel names and a ``read(window)`` method. :class:`TimeSeriesSource`
states that contract; :class:`i2dl.io.raster.TimeSeriesRaster` (a GeoTIFF stack), the
sensor readers of this package (THEIA Sentinel-2, Sen2Cor, Landsat-8 N2A, user features)
and the feature pipeline (:mod:`i2dl.io.sensors.stack`) all satisfy it, so the same code
feeds the sample store and the inference from any of them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol, runtime_checkable

import numpy as np
from rasterio.windows import Window


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
        """rasterio creation profile of the grid: driver, crs, transform, width, height."""
        ...

    def close(self) -> None:
        """Release open files."""
        ...

    def __enter__(self) -> TimeSeriesSource: ...

    def __exit__(self, *exc: object) -> None: ...
