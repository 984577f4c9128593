"""STAC input: a time series of Cloud-Optimized GeoTIFF assets listed by a STAC catalogue.

:class:`StacSeries` (``data.sensors.stac``) reads the items of a local STAC JSON file (an
ItemCollection, one Item, or a Catalog/Collection and every item under it) or of a STAC
API search (``pystac-client``, the optional extra ``stac``) and gives the series the
product-folder readers give: C bands, T acquisition dates, a validity mask, on one grid,
read by windows.

- **bands**: i2dl names (``B02`` ... ``B12``, ``B8A``, Sen2Cor's spelling, which
  :mod:`i2dl.features.indices` reads as ``B2`` ...) mapped to asset keys by
  :data:`DEFAULT_ASSETS`, the keys of the common Sentinel-2 L2A collections (Planetary
  Computer, Earth Search v0: ``B02``, ``SCL``; Earth Search v1: ``blue``, ``scl``);
  ``assets`` adds or replaces entries.
- **values**: ``raw * scale + offset``, with ``scale``, ``offset`` and ``nodata`` from the
  asset's ``raster:bands`` (STAC raster extension; or its STAC 1.1 ``bands`` form), else
  1, 0 and the file's nodata tag; the ``scale``/``offset`` options override them.
- **dates**: the UTC day of each item's ``datetime`` (``start_datetime`` when null), one
  date per day: the items of a day (adjacent tiles, two passes) are mosaicked
  (``same_day="mosaic"``: a pixel takes the first item, by time then id, that observes
  it validly; odc-stac's ``groupby`` does the same by solar day), or the first item only
  is kept (``same_day="first"``).
- **validity**: invalid where a band has no data (nodata, NaN, outside the asset's
  footprint) or where the mask asset (``mask.assets``, default the scene classification
  layer ``SCL``/``scl``) holds one of ``mask.invalid_values``: by default sits' classes
  for Sentinel-2 L2A (``interp_values`` of its AWS source: 0 no data, 1 defective,
  2 dark area/shadows, 3 cloud shadows, 8-9 clouds, 10 cirrus, 11 snow). A cloud-mask
  asset works the same way (``invalid_values: [1]``, ``valid_values`` or ``invalid_bits``).
- **grid**: the first item's finest requested band, or ``grid`` (``{crs, bounds,
  resolution}`` or ``{like: raster}``). An asset on the grid is read by rasterio windowed
  reads (GDAL fetches only the COG blocks under the window); any other (20 m bands or
  SCL, another UTM zone) through a ``WarpedVRT`` onto the grid (``resampling`` for bands,
  nearest for the mask), which also reads only the blocks it needs.

``data.tile`` keeps the items whose tile id (``grid:code``, ``s2:mgrs_tile``, ``mgrs:*``
or ``tile`` property) is that MGRS tile; items without one are kept, and a tile name that
is not an MGRS id filters nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pystac
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from i2dl.errors import ConfigError, InputDataError, InputFileNotFoundError
from i2dl.io.raster import as_date
from i2dl.io.sensors.base import RasterReader
from i2dl.io.sensors.common import Grid, default_max_open, in_range, normalize_tile, short_list

log = logging.getLogger(__name__)

#: i2dl band name -> asset keys tried in order (PC / Earth Search v0, then Earth Search v1).
DEFAULT_ASSETS: dict[str, tuple[str, ...]] = {
    "B01": ("B01", "coastal"), "B02": ("B02", "blue"), "B03": ("B03", "green"),
    "B04": ("B04", "red"), "B05": ("B05", "rededge1"), "B06": ("B06", "rededge2"),
    "B07": ("B07", "rededge3"), "B08": ("B08", "nir"), "B8A": ("B8A", "nir08"),
    "B09": ("B09", "nir09"), "B11": ("B11", "swir16"), "B12": ("B12", "swir22"),
}  # fmt: skip
#: The ten bands iota2 stacks for Sentinel-2, in its order (the default ``bands``).
DEFAULT_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: Asset keys of the scene classification layer (the default mask).
DEFAULT_MASK_ASSETS: tuple[str, ...] = ("SCL", "scl")
#: SCL classes read as invalid by default: sits' ``interp_values`` for Sentinel-2 L2A.
DEFAULT_INVALID_SCL: tuple[int, ...] = (0, 1, 2, 3, 8, 9, 10, 11)
#: How the items of one day are combined.
SAME_DAY = ("mosaic", "first")
#: GDAL options for remote COGs (no directory listing per open); ``gdal_env`` adds to them.
DEFAULT_GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


@dataclass(frozen=True)
class AssetRef:
    """One asset to read: where it is, what it is, and how its values scale."""

    item_id: str
    key: str
    href: str
    scale: float
    offset: float
    nodata: float | None

    def what(self) -> str:
        """``asset 'red' of item 'S2A_...' (href)`` for messages."""
        return f"asset {self.key!r} of item {self.item_id!r} ({self.href})"


@dataclass(frozen=True)
class _ItemPlan:
    item_id: str
    bands: tuple[AssetRef, ...]  # one per channel
    mask: AssetRef | None


@dataclass(frozen=True)
class MaskRule:
    """Which values of the mask asset (``assets``: keys tried in order) are invalid.

    One rule applies: ``invalid_bits`` (bit positions, 0 = least significant, invalid when
    set), else ``valid_values`` (every other value is invalid), else ``invalid_values``
    (default: sits' SCL classes).
    """

    assets: tuple[str, ...] = DEFAULT_MASK_ASSETS
    invalid_values: tuple[int, ...] = DEFAULT_INVALID_SCL
    valid_values: tuple[int, ...] | None = None
    invalid_bits: tuple[int, ...] | None = None

    @classmethod
    def from_options(cls, opts: Mapping[str, Any] | None) -> MaskRule | None:
        """The rule of the ``mask`` option (None: no mask asset, validity from nodata only).

        Raises:
            ConfigError: an unknown key, or values that are not integers.
        """
        if opts is None:
            return None
        unknown = set(opts) - {"assets", "invalid_values", "valid_values", "invalid_bits"}
        if unknown:
            raise ConfigError(f"data.sensors.stac.mask has unknown keys {sorted(unknown)}; use "
                              "assets, invalid_values, valid_values or invalid_bits")
        assets = opts.get("assets") or DEFAULT_MASK_ASSETS
        kw: dict[str, Any] = {"assets": (assets,) if isinstance(assets, str)
                              else tuple(map(str, assets))}
        for key in ("invalid_values", "valid_values", "invalid_bits"):
            value = opts.get(key)
            try:
                if value is not None:
                    kw[key] = tuple(int(v) for v in ([value] if isinstance(value, int) else value))
            except (TypeError, ValueError):
                raise ConfigError(f"data.sensors.stac.mask.{key}={value!r} must be a list of "
                                  "integers") from None
        return cls(**kw)

    def invalid(self, values: np.ndarray) -> np.ndarray:
        """Boolean array, True where ``values`` (integers of the mask asset) are invalid."""
        if self.invalid_bits is not None:
            bits = sum(1 << b for b in self.invalid_bits)
            return (values.astype(np.int64) & bits) != 0
        if self.valid_values is not None:
            return ~np.isin(values, self.valid_values)
        return np.isin(values, self.invalid_values)


def load_items(path: str | Path) -> list[pystac.Item]:
    """The items of a local STAC JSON file, in file order, relative asset hrefs made absolute.

    ``path`` holds an ItemCollection (``FeatureCollection``), one Item (``Feature``), or a
    Catalog/Collection (every item under it, links followed).

    Raises:
        InputFileNotFoundError: the file does not exist.
        InputDataError: the file is not STAC JSON (the parse error is given).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(
            f"STAC file {path} (data.sensors.stac.items) does not exist; give a saved "
            "ItemCollection JSON, or set items: null and search: {url: ...} to search an API"
        )
    try:
        kind = json.loads(path.read_text()).get("type")
        if kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_file(str(path)).items)
        elif kind == "Feature":
            items = [pystac.Item.from_file(str(path))]
        else:  # a Catalog or Collection: every item under it
            root = pystac.read_file(str(path))
            items = list(root.get_items(recursive=True)) if isinstance(root, pystac.Catalog) \
                else []
    except (ValueError, KeyError, TypeError, AttributeError, pystac.STACError) as exc:
        raise InputDataError(
            f"{path} is not a STAC ItemCollection, Item or Catalog: {exc}; save the search "
            "result with pystac (ItemCollection.save_object)"
        ) from None
    base = path.resolve().parent
    for item in items:
        for asset in item.assets.values():
            asset.href = _absolute_href(asset, base)
    return items


def _absolute_href(asset: pystac.Asset, base: Path) -> str:
    """The asset's href, resolved against its item's self link, else the JSON's folder."""
    href = asset.get_absolute_href() or asset.href
    if "://" in href or href.startswith("/"):
        return href
    return str(base / href)


def search_items(
    search: Mapping[str, Any], tile: str | None, start: dt.date | None, end: dt.date | None,
    max_cloud_cover: float | None,
) -> list[pystac.Item]:
    """The items found by a STAC API search (``pystac-client``; needs the network).

    Args:
        search: ``url`` (``https://earth-search.aws.element84.com/v1``), ``collections``
            (default ``sentinel-2-l2a``), optionally ``bbox`` (lon/lat), ``datetime``
            (default ``start/end``), ``query`` (STAC query extension), ``tile_property``
            (default ``grid:code``, Earth Search's; ``s2:mgrs_tile`` on Planetary
            Computer), ``max_items`` (default 2000), ``save_items`` (a path where the
            ItemCollection found is written, to rerun offline); other keys go to
            ``Client.search``.
        tile: the MGRS tile asked for (None or a non-MGRS name: no tile condition).
        start: first day (inclusive), or None.
        end: last day (inclusive), or None.
        max_cloud_cover: ``eo:cloud_cover`` upper bound in percent, or None.

    Raises:
        ConfigError: ``pystac-client`` is not installed, or ``url`` is missing.
        InputDataError: the API cannot be reached or answers with an error.
    """
    try:
        from pystac_client import Client
    except ImportError:
        raise ConfigError("data.sensors.stac.search needs pystac-client: pip install -e "
                          '".[stac]" (or give a saved ItemCollection JSON as items)') from None
    opts = dict(search)
    url = opts.pop("url", None)
    if not url:
        raise ConfigError("data.sensors.stac.search.url is missing: the STAC API to search")
    query = dict(opts.pop("query", None) or {})
    if max_cloud_cover is not None:
        query["eo:cloud_cover"] = {"lte": float(max_cloud_cover)}
    prop = str(opts.pop("tile_property", "grid:code"))
    if (mgrs := _mgrs(tile)) is not None:
        query[prop] = {"eq": f"MGRS-{mgrs[1:]}" if prop == "grid:code" else mgrs[1:]}
    when = opts.pop("datetime", None) or f"{start or '..'}/{end or '..'}"
    save = opts.pop("save_items", None)
    try:
        found = Client.open(str(url)).search(
            collections=opts.pop("collections", "sentinel-2-l2a"), bbox=opts.pop("bbox", None),
            datetime=when, query=query or None, max_items=int(opts.pop("max_items", 2000)), **opts,
        ).item_collection()
    except (OSError, pystac.STACError, ValueError) as exc:
        raise InputDataError(f"STAC search of {url} failed: {exc}; check the URL, the "
                             "collection name and the network") from None
    if save:
        found.save_object(dest_href=str(save))
        log.info("%d STAC items of %s saved to %s", len(found), url, save)
    return list(found.items)


def _mgrs(tile: str | None) -> str | None:
    """``T31TCJ`` for an MGRS tile id, None for None or any other name."""
    ok = tile is not None and re.fullmatch(r"T?\d{2}[A-Z]{3}", tile.strip().upper())
    return normalize_tile(str(tile)) if ok else None


def item_tile(item: pystac.Item) -> str | None:
    """The item's MGRS tile (``T31TCJ``) from its properties, or None when it has none."""
    p = item.properties
    value = p.get("s2:mgrs_tile") or p.get("tile")
    code = p.get("grid:code")
    if isinstance(code, str) and code.upper().startswith("MGRS-"):
        value = code[5:]
    if value is None and p.get("mgrs:utm_zone") is not None:
        value = (f"{int(p['mgrs:utm_zone']):02d}{p.get('mgrs:latitude_band', '')}"
                 f"{p.get('mgrs:grid_square', '')}")
    return _mgrs(str(value)) if value is not None else None


def item_date(item: pystac.Item) -> dt.date:
    """The UTC day of the item's ``datetime`` (``start_datetime`` when it is null).

    Raises:
        InputDataError: the item has neither.
    """
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise InputDataError(f"STAC item {item.id!r} has no datetime nor start_datetime")
    return (when.astimezone(dt.timezone.utc) if when.tzinfo is not None else when).date()


def select_items(
    items: Iterable[pystac.Item], tile: str | None, start: dt.date | None,
    end: dt.date | None, max_cloud_cover: float | None,
) -> list[pystac.Item]:
    """The items of the tile, in the date range and under the cloud cover, by time then id.

    Raises:
        InputDataError: no item is left (the message says which condition removed them).
    """
    items = list(items)
    if not items:
        raise InputDataError("the STAC ItemCollection is empty: nothing to read")
    mgrs = _mgrs(tile)
    kept = [i for i in items if mgrs is None or item_tile(i) in (None, mgrs)]
    if not kept:
        tiles = sorted({str(item_tile(i)) for i in items})
        raise InputDataError(f"no STAC item of tile {mgrs}: the items are of tiles "
                             f"{short_list(tiles)}; set data.tile to one of them")
    dated = [i for i in kept if in_range(item_date(i), start, end)]
    if not dated:
        raise InputDataError(f"no STAC item between {start or 'the start'} and "
                             f"{end or 'the end'}: their dates go from "
                             f"{min(map(item_date, kept))} to {max(map(item_date, kept))}")
    if max_cloud_cover is not None:
        cover = [i for i in dated if float(i.properties.get("eo:cloud_cover", 0.0))
                 <= float(max_cloud_cover)]
        if not cover:
            raise InputDataError(f"every STAC item has eo:cloud_cover above max_cloud_cover="
                                 f"{max_cloud_cover}; raise it or set it to null")
        dated = cover
    return sorted(dated, key=lambda i: (item_date(i), str(i.datetime), i.id))


def raster_meta(asset: pystac.Asset) -> tuple[float | None, float | None, float | None]:
    """``(scale, offset, nodata)`` of an asset's first band, None for what is not given.

    From ``raster:bands[0]`` (STAC raster extension 1.x), else from ``bands[0]`` or the
    asset with ``raster:scale``/``raster:offset``/``nodata`` (STAC 1.1).
    """
    fields = asset.extra_fields
    band = (fields.get("raster:bands") or [{}])[0]
    if band:
        return band.get("scale"), band.get("offset"), band.get("nodata")
    band = {**fields, **((fields.get("bands") or [{}])[0])}
    return band.get("raster:scale"), band.get("raster:offset"), band.get("nodata")


def target_grid(spec: Mapping[str, Any]) -> Grid:
    """The grid given by ``grid``: ``{like: raster}`` or ``{crs, bounds, resolution}``.

    ``bounds`` is ``[left, bottom, right, top]`` in ``crs`` units; ``resolution`` a pixel
    size (or ``[x, y]``); the grid starts at ``(left, top)`` and covers the bounds.

    Raises:
        ConfigError: neither form, or a non-positive resolution or empty bounds.
        InputFileNotFoundError: ``like`` cannot be opened.
    """
    if spec.get("like"):
        return _grid_of(str(spec["like"]), "data.sensors.stac.grid.like")
    try:
        left, bottom, right, top = (float(v) for v in spec["bounds"])
        res = spec["resolution"]
        rx, ry = (float(res), float(res)) if isinstance(res, int | float) else map(float, res)
        crs = rasterio.crs.CRS.from_user_input(spec["crs"])
    except (KeyError, TypeError, ValueError, rasterio.errors.CRSError) as exc:
        raise ConfigError(f"data.sensors.stac.grid={dict(spec)} is not {{like: raster}} nor "
                          f"{{crs, bounds: [left, bottom, right, top], resolution}} ({exc})"
                          ) from None
    width, height = math.ceil((right - left) / rx - 1e-9), math.ceil((top - bottom) / ry - 1e-9)
    if rx <= 0 or ry <= 0 or width <= 0 or height <= 0:
        raise ConfigError(f"data.sensors.stac.grid={dict(spec)} gives an empty grid")
    return Grid(crs, Affine(rx, 0.0, left, 0.0, -ry, top), width, height)


def _grid_of(href: str, what: str) -> Grid:
    """The grid of a raster, opened briefly; InputFileNotFoundError naming ``what``."""
    try:
        with rasterio.open(href) as src:
            return Grid.of(src)
    except rasterio.errors.RasterioIOError as exc:
        raise InputFileNotFoundError(f"cannot open {what}: {exc}") from None


class _AssetPool:
    """Open assets (a dataset, or a WarpedVRT onto the grid), least recently used closed."""

    def __init__(self, grid: Grid, max_open: int | None) -> None:
        self.grid = grid
        self.max_open = max_open or default_max_open()
        self._open: OrderedDict[tuple[str, Resampling], tuple[Any, Any]] = OrderedDict()

    def get(self, ref: AssetRef, resampling: Resampling) -> Any:
        """The asset as a dataset on the grid (raises InputFileNotFoundError if unopenable)."""
        key = (ref.href, resampling)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key][1]
        try:
            src = rasterio.open(ref.href)
        except rasterio.errors.RasterioIOError as exc:
            raise InputFileNotFoundError(f"cannot open {ref.what()}: {exc}; check the href "
                                         "(signed URLs expire: search again), the network, or "
                                         "leave the item out") from None
        view = src
        if not Grid.of(src).same_as(self.grid):
            nodata = {"src_nodata": ref.nodata, "nodata": ref.nodata} if ref.nodata is not None \
                else ({} if src.nodata is not None else {"add_alpha": True})
            view = WarpedVRT(src, crs=self.grid.crs, transform=self.grid.transform,
                             width=self.grid.width, height=self.grid.height,
                             resampling=resampling, **nodata)
        self._open[key] = (view, src)
        while len(self._open) > self.max_open:
            for dataset in self._open.popitem(last=False)[1]:
                dataset.close()  # the VRT, then its file (closing twice does nothing)
        return view

    def close(self) -> None:
        """Close every open asset."""
        for pair in self._open.values():
            for dataset in pair:
                dataset.close()
        self._open.clear()


class StacSeries(RasterReader):
    """A time series read from STAC items (``data.sensors.stac``; a TimeSeriesSource).

    See the module documentation for the bands, values, dates, validity and grid.

    Args:
        tile: the tile (``data.tile``): selects the items of that MGRS tile.
        start_date: first acquisition day kept (inclusive); None: no bound.
        end_date: last acquisition day kept (inclusive); None: no bound.
        items: a local STAC JSON file (ItemCollection, Item, Catalog); or None with
            ``search``.
        search: a STAC API search (:func:`search_items`), used when ``items`` is None.
        bands: the channels, names of the asset table; None: :data:`DEFAULT_BANDS`.
        assets: band name -> asset key (or keys tried in order), over
            :data:`DEFAULT_ASSETS` (e.g. ``{NDVI: ndvi}``).
        mask: ``{assets, invalid_values | valid_values | invalid_bits}`` (see
            :class:`MaskRule`); default the SCL with sits' classes; None: no mask asset.
        max_cloud_cover: items with a larger ``eo:cloud_cover`` (percent) are left out.
        same_day: ``mosaic`` or ``first`` (see the module documentation).
        grid: the target grid (:func:`target_grid`); None: the first item's finest band.
        resampling: rasterio ``Resampling`` name for bands off the grid.
        scale: multiplies the raw values; None: the asset's ``raster:bands`` scale, else 1.
        offset: added after scaling; None: the asset's ``raster:bands`` offset, else 0.
        gdal_env: GDAL options for opening and reading (``AWS_NO_SIGN_REQUEST: YES``, ...).
        max_open: most assets kept open at once (None: half the process's file limit).

    Attributes:
        path: the JSON file or the API URL. items: the items read, by time then id.
        dates: T acquisition days. band_names: C bands. crs, transform, width, height: grid.

    Raises:
        ConfigError: bad options (neither ``items`` nor ``search``, unknown band, bad
            ``same_day`` or ``resampling``), or ``search`` without ``pystac-client``.
        InputFileNotFoundError: the JSON file or an asset cannot be opened.
        InputDataError: no item left, an item lacks a band or mask asset.
    """

    def __init__(
        self, tile: str | None = None, start_date: dt.date | str | None = None,
        end_date: dt.date | str | None = None, items: str | Path | None = None,
        search: Mapping[str, Any] | None = None, bands: Sequence[str] | None = None,
        assets: Mapping[str, str | Sequence[str]] | None = None,
        mask: Mapping[str, Any] | None = MappingProxyType({}),
        max_cloud_cover: float | None = None, same_day: str = "mosaic",
        grid: Mapping[str, Any] | None = None, resampling: str = "bilinear",
        scale: float | None = None, offset: float | None = None,
        gdal_env: Mapping[str, Any] | None = None, max_open: int | None = None,
    ) -> None:
        if same_day not in SAME_DAY:
            raise ConfigError(f"data.sensors.stac.same_day={same_day!r}; use one of {SAME_DAY}")
        try:
            self.resampling = Resampling[str(resampling)]
        except KeyError:
            names = ", ".join(r.name for r in Resampling)
            raise ConfigError(f"data.sensors.stac.resampling={resampling!r} is not a rasterio "
                              f"Resampling name ({names})") from None
        self.gdal_env = {**DEFAULT_GDAL_ENV, **dict(gdal_env or {})}
        start, end = as_date(start_date, "start_date"), as_date(end_date, "end_date")
        self.mask_rule = MaskRule.from_options(mask)
        table = {**DEFAULT_ASSETS, **{str(k): (v,) if isinstance(v, str) else tuple(v)
                                      for k, v in (assets or {}).items()}}
        self.band_names = [str(b) for b in (bands or DEFAULT_BANDS)]
        unknown = [b for b in self.band_names if b not in table]
        if unknown:
            raise ConfigError(f"data.sensors.stac.bands {unknown} are not in the asset table "
                              f"{sorted(table)}; add them: assets: {{{unknown[0]}: <asset key>}}")
        with rasterio.Env(**self.gdal_env):
            if items is not None:
                self.path: Any = Path(items)
                found = load_items(items)
            elif search:
                self.path = search.get("url")
                found = search_items(search, tile, start, end, max_cloud_cover)
            else:
                raise ConfigError("data.sensors.stac needs items (a local STAC JSON file) or "
                                  "search: {url: ..., collections: ...} (a STAC API)")
            self.items = select_items(found, tile, start, end, max_cloud_cover)
            plans = [self._plan(i, table, scale, offset) for i in self.items]
            self._days = self._group(plans, same_day)
            self.dates = [d for d, _ in self._days]
            # the grid asked for, or the finest band asset of the first item (first of ties)
            self.grid = target_grid(grid) if grid else min(
                (_grid_of(r.href, r.what()) for r in plans[0].bands),
                key=lambda g: g.res[0] * g.res[1])
        self.crs, self.transform = self.grid.crs, self.grid.transform
        self.width, self.height = self.grid.width, self.grid.height
        self._pool = _AssetPool(self.grid, max_open)

    def _plan(self, item: pystac.Item, table: Mapping[str, tuple[str, ...]],
              scale: float | None, offset: float | None) -> _ItemPlan:
        def ref(keys: Sequence[str], what: str) -> AssetRef:
            key = next((k for k in keys if k in item.assets), None)
            if key is None:
                fix = "mask.assets (or mask: null)" if what == "the mask" else "assets"
                raise InputDataError(
                    f"STAC item {item.id!r} has no asset {' or '.join(map(repr, keys))} for "
                    f"{what}; its assets are {short_list(sorted(item.assets))}. Name one of "
                    f"them in data.sensors.stac.{fix}, or leave the item out")
            asset = item.assets[key]
            s, o, nodata = raster_meta(asset)
            s, o = (s, o) if what == "the mask" else (scale if scale is not None else s,
                                                     offset if offset is not None else o)
            return AssetRef(item.id, key, asset.href, 1.0 if s is None else float(s),
                            0.0 if o is None else float(o),
                            None if nodata is None else float(nodata))

        rule = self.mask_rule
        bands = tuple(ref(table[b], f"band {b}") for b in self.band_names)
        return _ItemPlan(item.id, bands, ref(rule.assets, "the mask") if rule else None)

    def _group(self, plans: list[_ItemPlan], same_day: str
               ) -> list[tuple[dt.date, list[_ItemPlan]]]:
        days: dict[dt.date, list[_ItemPlan]] = {}
        for item, plan in zip(self.items, plans, strict=True):
            days.setdefault(item_date(item), []).append(plan)
        for day, group in days.items():
            if len(group) > 1:
                log.info("%s: %d STAC items on %s (%s), %s", self.path, len(group), day,
                         ", ".join(p.item_id for p in group),
                         "mosaicked" if same_day == "mosaic" else "the first kept")
                if same_day == "first":
                    del group[1:]
        return sorted(days.items())

    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read a window of every acquisition day.

        Args:
            window: whole-pixel window of the grid; None reads the whole grid.

        Returns:
            ``x`` (H, W, T, C) float32, ``raw * scale + offset`` (reflectance for
            Sentinel-2 L2A assets with ``raster:bands``), NaN where no item of the day has
            data, and ``valid`` (H, W, T) bool, True where an item of the day has data in
            every band and its mask value is valid.

        Raises:
            ValueError: the window is fractional or outside the grid.
            InputFileNotFoundError: an asset cannot be opened.
            InputDataError: an asset cannot be read in the window (item and asset named).
        """
        win, x, valid = self.start_read(window)
        with rasterio.Env(**self.gdal_env):
            for t, (_, group) in enumerate(self._days):
                values, ok = self._read_item(group[0], win)
                for plan in group[1:]:  # mosaic: fill what the earlier items left invalid
                    more, more_ok = self._read_item(plan, win)
                    fill = (~ok & more_ok) | (np.isnan(values).any(-1) & ~np.isnan(more).any(-1))
                    values[fill] = more[fill]
                    ok |= more_ok
                x[:, :, t, :] = values
                valid[:, :, t] = ok
        return x, valid

    def _read_item(self, plan: _ItemPlan, win: Window) -> tuple[np.ndarray, np.ndarray]:
        """``values`` (h, w, C) float32 (NaN where no data) and ``valid`` (h, w) of an item."""
        h, w = int(win.height), int(win.width)
        values = np.empty((h, w, len(plan.bands)), np.float32)
        for c, ref in enumerate(plan.bands):
            raw, nodata = self._read_asset(ref, win, self.resampling)
            scaled = raw.astype(np.float32) * np.float32(ref.scale) + np.float32(ref.offset)
            values[:, :, c] = np.where(nodata, np.float32(np.nan), scaled)
        valid = np.logical_not(np.isnan(values).any(axis=-1))
        if plan.mask is not None and self.mask_rule is not None:
            raw, nodata = self._read_asset(plan.mask, win, Resampling.nearest)
            valid &= ~nodata & ~self.mask_rule.invalid(raw)
        return values, valid

    def _read_asset(self, ref: AssetRef, win: Window, resampling: Resampling
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw values (h, w) of band 1 of an asset and where they are no data (h, w) bool."""
        src = self._pool.get(ref, resampling)
        try:
            raw = src.read(1, window=win)
            nodata = src.read_masks(1, window=win) == 0
        except rasterio.errors.RasterioIOError as exc:
            raise InputDataError(f"cannot read window {win} of {ref.what()}: {exc}") from None
        nodata |= ~np.isfinite(raw) if raw.dtype.kind == "f" else False
        if ref.nodata is not None and not math.isnan(ref.nodata):
            nodata |= raw == ref.nodata
        return raw, nodata

    def close(self) -> None:
        """Close every open asset."""
        self._pool.close()
