"""Open the time-series source described by the ``data`` config group.

Two kinds of ``data`` configs feed the same ``prepare`` and ``infer`` code:

- a **stack**: ``data.raster`` (a date-major GeoTIFF), ``data.dates_file``,
  ``data.band_names``, ``data.masks`` (:func:`i2dl.io.raster.open_time_series`);
- **sensors**: ``data.sensors`` maps a sensor name (``sentinel2_theia``,
  ``sentinel2_sen2cor``, ``landsat8_n2a``, ``stack``) to its options, with ``data.tile``
  (or the first of ``data.list_tile``), ``start_date``/``end_date``, ``gapfilling``,
  ``indices``, ``keep_bands``, ``user_features`` and ``external_features``
  (:class:`i2dl.io.sensors.stack.FeatureStack`), as iota2 reads sensor folders per tile.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from i2dl.errors import ConfigError
from i2dl.io.raster import open_time_series, parse_date

log = logging.getLogger(__name__)

#: data.sensors key -> "module:Class" of its reader.
SENSORS = {
    "sentinel2_theia": "i2dl.io.sensors.theia:Sentinel2Theia",
    "sentinel2_sen2cor": "i2dl.io.sensors.sen2cor:Sentinel2Sen2Cor",
    "landsat8_n2a": "i2dl.io.sensors.landsat8:Landsat8N2A",
}


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _date(value: Any) -> dt.date | None:
    if value in (None, ""):
        return None
    return value if isinstance(value, dt.date) else parse_date(str(value))


def data_tiles(data: Mapping[str, Any]) -> list[str]:
    """The tiles of a sensors config: ``list_tile`` (list or space-separated) or ``tile``."""
    tiles = data.get("list_tile") or data.get("tile")
    if tiles is None:
        return []
    if isinstance(tiles, str):
        return tiles.split()
    return [str(t) for t in tiles]


def uses_sensors(data: Mapping[str, Any]) -> bool:
    """True when the ``data`` config reads sensor products rather than a stack/table."""
    return bool(data.get("sensors"))


def open_source(data: Mapping[str, Any], tile: str | None = None) -> Any:
    """Open the time-series source of a ``data`` config.

    Args:
        data: the ``data`` config node.
        tile: with sensors, the tile to open (default: ``data.tile`` or the first tile).

    Returns:
        A :class:`i2dl.io.sensors.base.TimeSeriesSource` (close it, or use ``with``).

    Raises:
        ConfigError: unknown sensor name, no tile, bad options.
        InputFileNotFoundError, InputDataError: unreadable or inconsistent inputs.
    """
    if not uses_sensors(data):
        return _open_stack(_plain(data), tile)
    return open_feature_stack(data, tile)


def _open_stack(opts: Mapping[str, Any], tile: str | None) -> Any:
    """A GeoTIFF stack; ``{tile}`` in its paths is replaced by the tile name."""

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


def open_feature_stack(data: Mapping[str, Any], tile: str | None = None) -> Any:
    """Build the :class:`~i2dl.io.sensors.stack.FeatureStack` of one tile (see module doc)."""
    from importlib import import_module

    from i2dl.io.sensors.stack import FeatureStack

    tiles = data_tiles(data)
    tile = tile or (tiles[0] if tiles else None)
    if tile is None:
        raise ConfigError("data.sensors needs data.tile (or data.list_tile): the tile to read")
    start, end = _date(data.get("start_date")), _date(data.get("end_date"))
    sensors: dict[str, Any] = {}
    try:
        for name, opts in _plain(data["sensors"]).items():
            opts = dict(opts or {})
            if name == "stack" or opts.pop("kind", None) == "stack":
                sensors[name] = _open_stack(opts, tile)
                continue
            if name not in SENSORS:
                raise ConfigError(
                    f"unknown sensor data.sensors.{name}; known sensors: "
                    f"{', '.join(sorted(SENSORS))} (or `stack` for a GeoTIFF stack)"
                )
            module, cls = SENSORS[name].split(":")
            reader = getattr(import_module(module), cls)
            sensors[name] = reader(tile=tile, start_date=start, end_date=end, **opts)
        user = None
        if data.get("user_features"):
            from i2dl.io.sensors.userfeat import UserFeatures

            user = UserFeatures(tile=tile, **_plain(data["user_features"]))
        external = None
        ext = _plain(data.get("external_features"))
        if ext:
            from i2dl.features.external import load_functions

            external = (
                load_functions(ext["module"], ext.get("functions") or []),
                int(ext.get("chunk_padding", 0)),
            )
        return FeatureStack(
            sensors,
            reference=data.get("reference_sensor"),
            gapfilling=_plain(data.get("gapfilling")),
            indices=_plain(data.get("indices")) or (),
            keep_bands=bool(data.get("keep_bands", True)),
            user_features=user,
            external=external,
            start_date=start,
            end_date=end,
            path=f"{data.get('name', 'sensors')}:{tile}",
        )
    except BaseException:
        for src in sensors.values():
            src.close()
        raise
