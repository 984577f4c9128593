"""Open one reader from its ``data`` config: a GeoTIFF stack or one sensor's products.

- a **stack**: ``data.raster`` (a date-major GeoTIFF), ``data.dates_file``,
  ``data.band_names``, ``data.masks`` (:func:`i2dl.io.raster.open_time_series`);
- a **sensor**: one entry of ``data.sensors`` (``sentinel2_theia``, ``sentinel2_sen2cor``,
  ``landsat8_n2a``, ``stac`` (COGs listed by a STAC catalogue), or ``stack``) and its
  options, for one tile.

Composing the sensors of a tile into one feature series (gap-filling, indices, user and
external features) is the job of :func:`i2dl.features.source.open_source`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from importlib import import_module
from typing import Any

from i2dl.errors import ConfigError
from i2dl.io.raster import TimeSeriesRaster, open_time_series
from i2dl.io.sensors.base import TimeSeriesSource

#: data.sensors key -> "module:Class" of its reader.
SENSORS = {
    "sentinel2_theia": "i2dl.io.sensors.theia:Sentinel2Theia",
    "sentinel2_sen2cor": "i2dl.io.sensors.sen2cor:Sentinel2Sen2Cor",
    "landsat8_n2a": "i2dl.io.sensors.landsat8:Landsat8N2A",
    "landsat5_n2a": "i2dl.io.sensors.landsat8:Landsat5N2A",
    "sentinel2_l3a": "i2dl.io.sensors.theia:Sentinel2L3A",
    "landsat8_theia": "i2dl.io.sensors.theia:Landsat8Theia",
    "stac": "i2dl.io.sensors.stac:StacSeries",
}


def open_stack(opts: Mapping[str, Any], tile: str | None = None) -> TimeSeriesRaster:
    """Open a GeoTIFF stack from its options; ``{tile}`` in its paths becomes ``tile``.

    Args:
        opts: ``raster``, and optionally ``dates_file``, ``band_names`` and ``masks``
            (plain containers, not OmegaConf nodes).
        tile: the tile name put in place of ``{tile}``; None leaves the paths as they are.

    Returns:
        The opened stack (close it, or use ``with``).

    Raises:
        InputFileNotFoundError, InputDataError, ConfigError: see
            :func:`i2dl.io.raster.open_time_series`.
    """

    def fmt(value: Any) -> Any:
        return str(value).format(tile=tile) if tile is not None and value is not None else value

    masks = []
    for m in opts.get("masks") or ():
        masks.append(fmt(m) if isinstance(m, str) else {**m, "path": fmt(m["path"])})
    return open_time_series(
        fmt(opts["raster"]),
        dates_file=fmt(opts.get("dates_file")),
        band_names=opts.get("band_names"),
        masks=masks,
    )


def open_sensor(
    name: str,
    opts: Mapping[str, Any] | None,
    tile: str | None,
    start_date: dt.date | None = None,
    end_date: dt.date | None = None,
) -> TimeSeriesSource:
    """Open the reader of one ``data.sensors`` entry for one tile.

    Args:
        name: the entry's key: a name of :data:`SENSORS`, or ``stack`` (also any name
            whose options hold ``kind: stack``) for a GeoTIFF stack.
        opts: the entry's options (plain containers), passed to the reader.
        tile: the tile to read (None only for a stack without ``{tile}`` in its paths).
        start_date: first acquisition date kept (sensors only); None: no bound.
        end_date: last acquisition date kept (sensors only); None: no bound.

    Returns:
        The reader (close it, or use ``with``).

    Raises:
        ConfigError: unknown sensor name, or bad options.
        InputFileNotFoundError, InputDataError: unreadable or inconsistent inputs.
    """
    opts = dict(opts or {})
    if name == "stack" or opts.pop("kind", None) == "stack":
        return open_stack(opts, tile)
    if name not in SENSORS:
        raise ConfigError(
            f"unknown sensor data.sensors.{name}; known sensors: "
            f"{', '.join(sorted(SENSORS))} (or `stack` for a GeoTIFF stack)"
        )
    module, cls = SENSORS[name].split(":")
    reader = getattr(import_module(module), cls)
    source: TimeSeriesSource = reader(tile=tile, start_date=start_date, end_date=end_date, **opts)
    return source
