"""Open the time-series source described by the ``data`` config group.

Two kinds of ``data`` configs feed the same ``prepare`` and ``infer`` code:

- a **stack**: ``data.raster`` (a date-major GeoTIFF), ``data.dates_file``,
  ``data.band_names``, ``data.masks`` (:func:`i2dl.io.sources.open_stack`);
- **sensors**: ``data.sensors`` maps a sensor name (``sentinel2_theia``,
  ``sentinel2_sen2cor``, ``landsat8_n2a``, ``sentinel1``, ``stack``) to its options, with
  ``data.tile`` (or the first of ``data.list_tile``), ``start_date``/``end_date``, ``gapfilling``,
  ``indices``, ``keep_bands``, ``user_features`` and ``external_features``
  (:class:`i2dl.features.stack.FeatureStack`), as iota2 reads sensor folders per tile.

Both are read on the tile's own grid, or, with ``data.proj`` and/or
``data.spatial_resolution`` (iota2's ``chain.proj`` and ``chain.spatial_resolution``), on
the run's output grid (:func:`output_grid`): every tile reprojected onto one CRS and pixel
lattice, so that tiles of several UTM zones give one map. Each window is warped from the
tile's pixels covering it (:class:`i2dl.features.stack.WarpedSeries`; with sensors, each
sensor and the user features by the feature stack): values by ``data.resampling``
(bilinear; nearest for class rasters), validity masks by nearest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from i2dl.errors import ConfigError
from i2dl.features.external import load_functions
from i2dl.features.stack import FeatureStack, WarpedSeries
from i2dl.io.raster import as_date
from i2dl.io.sensors.base import TimeSeriesSource
from i2dl.io.sensors.common import Grid, target_grid
from i2dl.io.sensors.sentinel1 import open_sentinel1
from i2dl.io.sensors.userfeat import UserFeatures
from i2dl.io.sources import open_sensor, open_stack

log = logging.getLogger(__name__)

def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


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


def open_source(data: Mapping[str, Any], tile: str | None = None) -> TimeSeriesSource:
    """Open the time-series source of a ``data`` config.

    Args:
        data: the ``data`` config node.
        tile: with sensors, the tile to open (default: ``data.tile`` or the first tile);
            with a stack, the name put in place of ``{tile}`` in its paths.

    Returns:
        A :class:`i2dl.io.sensors.base.TimeSeriesSource` (close it, or use ``with``): a
        :class:`~i2dl.io.raster.TimeSeriesRaster` or a
        :class:`~i2dl.features.stack.FeatureStack`.

    Raises:
        ConfigError: unknown sensor name, no tile, bad options.
        InputFileNotFoundError, InputDataError: unreadable or inconsistent inputs.
    """
    if not uses_sensors(data):
        options = stack_feature_options(data)
        if not options:
            device = str(data.get("features_device") or "cpu")
            if device not in ("cpu", "auto"):
                log.warning("data.features_device=%s has no effect: this stack (data.raster) "
                            "has no index or external feature to compute; set data.indices "
                            "or data.external_features, or leave it at cpu", device)
            series = open_stack(_plain(data), tile)
            try:
                grid = output_grid(data, series, tile)
                if grid is None:
                    return series
                return WarpedSeries(series, grid, str(data.get("resampling") or "bilinear"))
            except BaseException:
                series.close()
                raise
        # a stack with feature options: the stack is the one "sensor" of a feature stack,
        # so the options are applied, never dropped (no gap-filling unless asked)
        plain = dict(_plain(data))
        stack = {k: plain[k] for k in ("raster", "dates_file", "band_names", "masks")
                 if plain.get(k) is not None}
        routed = {**plain, "sensors": {"stack": stack},
                  "gapfilling": plain.get("gapfilling") or {"enabled": False}}
        return open_feature_stack(routed, tile)
    return open_feature_stack(data, tile)


def output_grid(data: Mapping[str, Any], grid: Any, tile: str | None = None) -> Grid | None:
    """The grid a tile is read on: ``data.proj`` at ``data.spatial_resolution``.

    iota2's ``chain.proj`` and ``chain.spatial_resolution`` put every tile on one output
    grid; here the tile's footprint in ``proj`` snapped to multiples of the resolution
    (:func:`i2dl.io.sensors.common.target_grid`), so the tiles share one pixel lattice.
    ``proj: null`` keeps the tile's CRS, ``spatial_resolution: null`` its pixel size.

    Args:
        data: the ``data`` config node.
        grid: the tile's own grid (``crs``, ``transform``, ``width``, ``height``).
        tile: the tile, for messages.

    Returns:
        The output grid, or None when the tile is read on its own grid (both keys null,
        or the output grid is the tile's).

    Raises:
        ConfigError: a bad ``proj`` or ``spatial_resolution``.
        InputDataError: ``proj`` is set and the tile has no CRS.
    """
    proj, res = data.get("proj") or None, data.get("spatial_resolution")
    if proj is None and res is None:
        return None
    own = Grid(grid.crs, grid.transform, grid.width, grid.height)
    path = getattr(grid, "path", "the series")
    where = f"tile {tile} ({path})" if tile else str(path)
    out = target_grid(own, proj, res, where)
    return None if out.same_as(own) else out


#: ``data`` options that compute features on top of the input series
FEATURE_OPTIONS = ("indices", "gapfilling", "user_features", "external_features")


def stack_feature_options(data: Mapping[str, Any]) -> list[str]:
    """The feature options a ``data`` config sets (``gapfilling`` only when enabled)."""
    found = []
    for key in FEATURE_OPTIONS:
        value = _plain(data.get(key))
        if key == "gapfilling":
            if isinstance(value, Mapping) and value.get("enabled", True):
                found.append(key)
        elif value:
            found.append(key)
    return found


def open_feature_stack(data: Mapping[str, Any], tile: str | None = None) -> FeatureStack:
    """Build the :class:`~i2dl.features.stack.FeatureStack` of one tile (see module doc).

    Args:
        data: the ``data`` config node, with ``sensors``.
        tile: the tile to open; None: ``data.tile`` or the first of ``data.list_tile``.

    Returns:
        The feature stack (close it, or use ``with``); the readers opened for it are
        closed when building it fails.

    Raises:
        ConfigError: no tile, unknown sensor name, bad dates or options.
        InputFileNotFoundError, InputDataError: unreadable or inconsistent inputs.
    """
    tiles = data_tiles(data)
    tile = tile or (tiles[0] if tiles else None)
    stack_only = set(_plain(data["sensors"])) == {"stack"}
    if tile is None and not stack_only:
        raise ConfigError("data.sensors needs data.tile (or data.list_tile): the tile to read")
    start = as_date(data.get("start_date"), "data.start_date")
    end = as_date(data.get("end_date"), "data.end_date")
    sensors: dict[str, Any] = {}
    try:
        for name, opts in _plain(data["sensors"]).items():
            if name == "sentinel1":  # one series per orbit direction, each with its dates
                if tile is None:
                    raise ConfigError("data.sensors.sentinel1 needs data.tile: the tile to read")
                sensors.update(open_sentinel1(dict(opts or {}), tile, start, end))
            else:
                sensors[name] = open_sensor(name, opts, tile, start, end)
        reference = data.get("reference_sensor") or next(iter(sensors), None)
        grid = (output_grid(data, sensors[reference], tile) if reference in sensors
                else None)
        user = None
        if data.get("user_features"):
            if tile is None:
                raise ConfigError(
                    "data.user_features reads <root>/<tile>/: set data.tile (the tile folder "
                    "name) for this stack")
            user = UserFeatures(tile=tile, **_plain(data["user_features"]))
        external = None
        ext = _plain(data.get("external_features"))
        if ext:
            external = (
                load_functions(ext.get("module"), ext.get("functions") or []),
                int(ext.get("chunk_padding", 0)),
            )
        return FeatureStack(
            sensors,
            reference=data.get("reference_sensor"),
            gapfilling=_plain(data.get("gapfilling")),
            indices=_plain(data.get("indices")) or (),
            keep_bands=bool(data.get("keep_bands", True)),
            device=str(data.get("features_device", "cpu")),
            user_features=user,
            external=external,
            concat_mode=bool((ext or {}).get("concat_mode", True)),
            no_data_value=(ext or {}).get("no_data_value"),
            start_date=start,
            end_date=end,
            path=f"{data.get('name', 'sensors')}:{tile}",
            grid=grid,
            resampling=str(data.get("resampling") or "bilinear"),
        )
    except BaseException:
        for src in sensors.values():
            src.close()
        raise
