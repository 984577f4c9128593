"""Sensors of one tile combined into one feature time series (iota2's feature pipeline).

For every window read, in order (iota2 ``sensors_data_interpolation``, spectral indices,
``userFeat``, ``external_features``):

1. each sensor is read on the grid of the **reference sensor**, or on the run's output
   grid with ``data.proj``/``data.spatial_resolution`` (iota2 ``chain.proj``,
   :func:`i2dl.features.source.output_grid`); other grids are resampled on the fly with
   ``rasterio.warp.reproject``: bilinear for reflectances, nearest for validity, and so
   are the user features;
2. its spectral indices are appended (``indices``, ``keep_bands``); optical sensors only,
   Sentinel-1 series (``sentinel1_asc``/``sentinel1_des``) have none;
3. with gap-filling (``gapfilling.enabled``), each sensor's valid observations are
   linearly interpolated onto the common date grid (every ``temporal_resolution`` days
   from the first to the last acquisition of all sensors, or the union of their dates).
   Each series is interpolated from its own acquisitions only, so Sentinel-1 ascending,
   Sentinel-1 descending and Sentinel-2 are gap-filled apart, as iota2 interpolates S1
   apart from S2, and then concatenated per date (iota2 concatenates S1 features to S2
   features; here on one shared date grid, so that the temporal models see aligned
   dates). Without gap-filling (attention models), a single sensor keeps its raw dates and
   validity mask; several sensors keep the **union of their raw dates**: each sensor's
   channels are interpolated at the dates it did not acquire (never zeros), and a date is
   valid where some sensor observed the pixel then;
4. the sensors' channels are concatenated (names prefixed by the sensor name when there
   are several) and one **common validity mask** is applied: a pixel is kept only where
   every sensor has at least one valid observation (iota2's ``MaskCommunSL``);
5. date-independent channels are appended, repeated on every date: user features
   (DEM, slope, …) and the outputs of the user's external-feature functions, computed on
   the window enlarged by ``chunk_padding`` pixels so that neighbourhood filters have no
   seams.

The result satisfies :class:`i2dl.io.sensors.base.TimeSeriesSource`, so ``prepare`` and
``infer`` read it exactly like a GeoTIFF stack. :func:`i2dl.features.source.open_source`
builds it from the ``data`` config.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds

from i2dl.errors import ConfigError
from i2dl.features.backend import device_module, to_module, to_numpy
from i2dl.features.external import apply_external
from i2dl.features.gapfill import gapfill, regular_grid
from i2dl.features.indices import compute_indices
from i2dl.io.raster import days_since
from i2dl.io.sensors.base import RasterReader
from i2dl.io.sensors.common import resolve_window

log = logging.getLogger(__name__)

#: sensor config name -> band-role table of :data:`i2dl.features.indices.SENSOR_ROLES`.
INDEX_SENSOR = {
    "sentinel2_theia": "sentinel2",
    "sentinel2_sen2cor": "sentinel2",
    "landsat8_n2a": "landsat8",
    "landsat8_theia": "landsat8",
    "sentinel2_l3a": "sentinel2",
    "landsat5_n2a": "landsat5",
}


def _grid_window(src: Any, ref: Any, window: Window) -> Window:
    """The window of ``src``'s grid covering ``window`` of ``ref``'s grid, with a margin.

    The margin covers the resampling kernel: 1 source pixel, plus the ratio of the pixel
    sizes when ``ref``'s pixels are larger (GDAL widens its kernels when it downsamples).
    """
    left, bottom, right, top = window_bounds(window, ref.transform)
    if src.crs is not None and ref.crs is not None and src.crs != ref.crs:
        left, bottom, right, top = transform_bounds(ref.crs, src.crs, left, bottom, right, top)
    win = from_bounds(left, bottom, right, top, src.transform)
    scale = max(win.width / max(float(window.width), 1.0),
                win.height / max(float(window.height), 1.0), 1.0)
    pad = 1 + int(np.ceil(scale))
    col0 = max(int(np.floor(win.col_off)) - pad, 0)
    row0 = max(int(np.floor(win.row_off)) - pad, 0)
    col1 = min(int(np.ceil(win.col_off + win.width)) + pad, src.width)
    row1 = min(int(np.ceil(win.row_off + win.height)) + pad, src.height)
    return Window(col0, row0, max(col1 - col0, 0), max(row1 - row0, 0))


def _same_grid(a: Any, b: Any) -> bool:
    return (a.crs == b.crs and a.transform == b.transform and a.width == b.width
            and a.height == b.height)


def warp_options(src: Any, ref: Any) -> dict[str, Any]:
    """GDAL warp options that make a warped window equal that window of a whole-grid warp.

    The exact transformer (``tolerance`` 0; GDAL's approximation moves sampling points by
    up to 1/8 px from one window to the next) and, when both grids are in the same unit,
    a constant resampling factor (``XSCALE``/``YSCALE``: GDAL otherwise computes it per
    chunk from the chunk's bounding boxes, so a rotated chunk reads as a downsampling and
    its bilinear kernel widens).

    Args:
        src: the source grid (``crs``, ``transform``).
        ref: the output grid (``crs``, ``transform``).

    Returns:
        Keyword arguments of :func:`rasterio.warp.reproject`.
    """
    options: dict[str, Any] = {"tolerance": 0.0}
    a, b = src.crs, ref.crs
    if a is None or b is None or a == b or (a.is_projected and b.is_projected
                                             and a.linear_units == b.linear_units):
        options["XSCALE"] = abs(src.transform.a) / abs(ref.transform.a)
        options["YSCALE"] = abs(src.transform.e) / abs(ref.transform.e)
    return options


def read_on_grid(
    src: Any, ref: Any, window: Window, resampling: Resampling = Resampling.bilinear,
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``src`` resampled onto ``window`` of ``ref``'s grid.

    The source pixels covering the window (plus the kernel's margin) are read and warped
    by GDAL (``rasterio.warp.reproject``, exact transformer): the values by ``resampling``,
    each date's invalid observations (clouds, nodata) left out of the interpolation, the
    validity by nearest, so a window equals the same window of a whole-grid warp.

    Args:
        src: a source (``read(window) -> x (H,W,T,C), valid (H,W,T)``) on any grid.
        ref: the reference grid (crs, transform, width, height).
        window: window of the reference grid.
        resampling: for the values: bilinear (reflectances, continuous values) or
            nearest (class rasters).

    Returns:
        ``x`` (h, w, T, C) float32 resampled (0 where invalid), ``valid`` (h, w, T) bool
        nearest-resampled (False outside ``src``).
    """
    if _same_grid(src, ref):
        return src.read(window)
    h, w = int(window.height), int(window.width)
    t, c = src.n_dates, src.n_channels
    dst_transform = ref.transform * ref.transform.translation(window.col_off, window.row_off)
    x_out = np.zeros((t * c, h, w), dtype=np.float32)
    v_out = np.zeros((t, h, w), dtype=np.uint8)
    swin = _grid_window(src, ref, window)
    if swin.width == 0 or swin.height == 0:
        return x_out.reshape(t, c, h, w).transpose(2, 3, 0, 1), v_out.transpose(1, 2, 0) > 0
    x, valid = src.read(swin)
    src_transform = src.transform * src.transform.translation(swin.col_off, swin.row_off)
    common = {"src_transform": src_transform, "src_crs": src.crs or ref.crs,
              "dst_transform": dst_transform, "dst_crs": ref.crs or src.crs,
              **warp_options(src, ref)}
    xs = np.where(valid[..., None], x, np.nan).transpose(2, 3, 0, 1).reshape(t * c, *x.shape[:2])
    reproject(xs, x_out, resampling=resampling, src_nodata=np.nan, dst_nodata=np.nan, **common)
    reproject(valid.transpose(2, 0, 1).astype(np.uint8), v_out, resampling=Resampling.nearest,
              **common)
    x_out = x_out.reshape(t, c, h, w).transpose(2, 3, 0, 1)
    v = (v_out.transpose(1, 2, 0) > 0) & ~np.isnan(x_out).any(axis=-1)
    return np.nan_to_num(x_out, nan=0.0), v


class WarpedSeries(RasterReader):
    """A time series read on another grid: iota2's ``chain.proj``/``spatial_resolution``.

    Every window is read from ``source`` (its pixels covering the window) and warped onto
    ``grid`` by :func:`read_on_grid`: values by ``resampling`` with the invalid
    observations left out, validity by nearest; pixels of ``grid`` outside the source
    are invalid at every date.

    Args:
        source: the time series on its own grid (a GeoTIFF stack, a sensor reader).
        grid: the output grid (``crs``, ``transform``, ``width``, ``height``), e.g.
            :func:`i2dl.io.sensors.common.target_grid` of the source's grid.
        resampling: a :class:`rasterio.enums.Resampling` name for the values:
            ``bilinear`` (reflectances, continuous values) or ``nearest`` (class rasters).

    Raises:
        ConfigError: unknown ``resampling``.
    """

    def __init__(self, source: Any, grid: Any, resampling: str = "bilinear") -> None:
        self.resampling = resampling_method(resampling)
        self.source = source
        self.path = source.path
        self.dates = list(source.dates)
        self.band_names = list(source.band_names)
        self.crs, self.transform = grid.crs, grid.transform
        self.width, self.height = grid.width, grid.height
        self.nodata = None

    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``x`` (h, w, T, C) float32 (0 where invalid), ``valid`` (h, w, T) bool.

        Raises:
            ValueError: the window is fractional or outside the grid.
        """
        win = resolve_window(window, self.width, self.height, self.path)
        return read_on_grid(self.source, self, win, self.resampling)

    def close(self) -> None:
        """Close the source."""
        self.source.close()


def resampling_method(name: str) -> Resampling:
    """The :class:`rasterio.enums.Resampling` of ``data.resampling``.

    Raises:
        ConfigError: not a resampling method of GDAL's warper.
    """
    if name not in Resampling.__members__ or name == "gauss":
        raise ConfigError(
            f"data.resampling={name!r} is not a resampling method; use bilinear "
            "(reflectances, continuous values), nearest (class rasters) or cubic"
        )
    return Resampling[name]


class _StaticSeries:
    """Date-independent features (``read_static``) as a one-date series (:func:`read_on_grid`)."""

    def __init__(self, features: Any) -> None:
        self.features = features
        self.crs, self.transform = features.crs, features.transform
        self.width, self.height = features.width, features.height
        self.n_dates, self.n_channels = 1, len(features.names)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        x, valid = self.features.read_static(window)
        return x[:, :, None, :], valid[:, :, None]


class FeatureStack(RasterReader):
    """Sensors + indices + gap-filling + user and external features of one tile.

    Args:
        sensors: sensor name -> source (THEIA, Sen2Cor, Landsat-8, or a GeoTIFF stack).
        reference: the sensor whose grid is used (iota2: the first sensor declared).
        gapfilling: ``{"enabled": bool, "temporal_resolution": int days | None}``; None
            resolution = the union of the sensors' dates.
        indices: spectral indices per sensor (names of :mod:`i2dl.features.indices`).
        keep_bands: keep the raw bands next to the indices.
        user_features: ``UserFeatures``-like object with ``read_static(window) ->
            (array (H,W,F), valid (H,W))`` and ``names``, or None.
        external: ``(functions, chunk_padding)`` from
            :func:`i2dl.features.external.load_functions`, or None.
        concat_mode: iota2's ``external_features.concat_mode``: True appends the
            external features to the sensor features; False keeps only the date-
            independent features (user and external), the sensor channels being used to
            compute them but not output.
        no_data_value: iota2's ``external_features.no_data_value``: an external feature
            equal to it marks the pixel invalid (as a NaN does); None = only NaN/inf.
        start_date, end_date: limits of the date grid.
        path: name used in messages.
        device: where indices and external features are computed (``data.features_device``):
            ``cpu`` (NumPy), ``cuda`` (CuPy) or ``auto``; see :mod:`i2dl.features.backend`.
            Reading and gap-filling stay on the CPU; the features come back as NumPy.
        grid: the grid the features are computed on (``crs``, ``transform``, ``width``,
            ``height``; :func:`i2dl.features.source.output_grid`), every sensor and the
            user features resampled onto it; None = the reference sensor's grid.
        resampling: how values are resampled onto it (``data.resampling``): ``bilinear``
            (reflectances, continuous values) or ``nearest``; validity is always nearest.

    Raises:
        ConfigError: no sensor, unknown reference, unknown ``resampling``, or
            ``device=cuda`` without CuPy and a GPU.
    """

    def __init__(
        self,
        sensors: Mapping[str, Any],
        reference: str | None = None,
        gapfilling: Mapping[str, Any] | None = None,
        indices: Sequence[str] = (),
        keep_bands: bool = True,
        user_features: Any = None,
        external: tuple[list, int] | None = None,
        concat_mode: bool = True,
        no_data_value: float | None = None,
        start_date: dt.date | None = None,
        end_date: dt.date | None = None,
        path: str | Path = "sensors",
        device: str = "cpu",
        grid: Any = None,
        resampling: str = "bilinear",
    ) -> None:
        self.xp = device_module(device)
        self.resampling = resampling_method(resampling)
        if not sensors:
            raise ConfigError("data.sensors is empty: declare at least one sensor")
        self.sensors = dict(sensors)
        self.reference = reference or next(iter(self.sensors))
        if self.reference not in self.sensors:
            raise ConfigError(
                f"data.reference_sensor={self.reference!r} is not one of the declared sensors "
                f"{list(self.sensors)}"
            )
        gap = dict(gapfilling or {})
        self.gapfill = bool(gap.get("enabled", True))
        # several sensors without gap-filling: their raw dates are merged (see read)
        self._merge_raw = not self.gapfill and len(self.sensors) > 1
        self.indices = list(indices or [])
        self.keep_bands = keep_bands
        self.user_features = user_features
        self.functions, self.padding = external if external else ([], 0)
        self.concat_mode = bool(concat_mode)
        self.no_data_value = None if no_data_value is None else float(no_data_value)
        if not self.concat_mode and not self.functions:
            raise ConfigError("external_features.concat_mode=false keeps only the external "
                              "features: name at least one function")
        self.path = path
        ref = self.sensors[self.reference]
        on = ref if grid is None else grid
        self.crs, self.transform = on.crs, on.transform
        self.width, self.height = on.width, on.height
        self.nodata = None

        all_dates = sorted({d for s in self.sensors.values() for d in s.dates})
        if self.gapfill:
            res = gap.get("temporal_resolution")
            self.dates = (
                regular_grid(all_dates, int(res), start_date, end_date) if res else all_dates
            )
        else:
            self.dates = all_dates if self._merge_raw else list(ref.dates)
        self._origin = min(all_dates) if all_dates else dt.date(2000, 1, 1)
        self.band_names = self._channel_names()

    def _sensor_channels(self, name: str) -> list[str]:
        src = self.sensors[name]
        names = list(src.band_names)
        if self._indices_for(name):
            _, names = compute_indices(
                np.zeros((1, len(names)), np.float32), names, self.indices, self.keep_bands,
                sensor=INDEX_SENSOR.get(name, "sentinel2"),
            )
        prefix = f"{name}_" if len(self.sensors) > 1 else ""
        return [f"{prefix}{n}" for n in names]

    def _channel_names(self) -> list[str]:
        dated = [n for s in self.sensors for n in self._sensor_channels(s)]
        return (dated if self.concat_mode else []) + self.static_names

    @property
    def static_names(self) -> list[str]:
        """The date-independent channels (user, then external features).

        They come last in :attr:`band_names`, one value per pixel repeated on every date
        of ``read``'s ``(H, W, T, C)`` output; the store records them
        (``static_channels``) so that the models take each once
        (:class:`models.SklearnClassifier`, :class:`models.SITSClassifier`).
        """
        names = list(self.user_features.names) if self.user_features is not None else []
        return names + list(self._external_names or [])

    @property
    def _external_names(self) -> list[str]:
        if not self.functions:
            return []
        if not hasattr(self, "_ext_names"):
            # run the functions once on a small window to learn their output names
            win = Window(0, 0, min(8, self.width), min(8, self.height))
            self._ext_names = self._external(win)[1]
        return self._ext_names

    def close(self) -> None:
        """Close every sensor and the user features."""
        for src in self.sensors.values():
            src.close()
        if self.user_features is not None and hasattr(self.user_features, "close"):
            self.user_features.close()

    def _sensor_block(self, name: str, window: Window) -> tuple[np.ndarray, np.ndarray]:
        src = self.sensors[name]
        x, valid = read_on_grid(src, self, window, self.resampling)
        if self._indices_for(name):
            x, _ = compute_indices(to_module(x, self.xp), list(src.band_names), self.indices,
                                   self.keep_bands, sensor=INDEX_SENSOR.get(name, "sentinel2"))
            x = to_numpy(x)
        if self.gapfill:
            x, valid = gapfill(
                x, valid, days_since(src.dates, self._origin), days_since(self.dates, self._origin)
            )
        elif self._merge_raw:
            # raw dates of several sensors: this sensor's values are interpolated at the other
            # sensors' dates (never left as zeros), but only its own valid acquisitions count
            # as observations in the validity mask (combined over sensors in _dynamic)
            own = days_since(src.dates, self._origin)
            target = days_since(self.dates, self._origin)
            observed = np.zeros((*valid.shape[:-1], len(self.dates)), bool)
            observed[..., np.searchsorted(target, own)] = valid
            x, _ = gapfill(x, valid, own, target)
            valid = observed
        return x.astype(np.float32, copy=False), valid

    def _static_features(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """The user features of a window of the grid: (h, w, F) float32, valid (h, w) bool.

        Resampled onto the grid (``resampling``, validity nearest) when they are on another.
        """
        user = self.user_features
        if not hasattr(user, "transform") or _same_grid(user, self):
            feats, valid = user.read_static(window)
            return feats, valid
        feats, valid = read_on_grid(_StaticSeries(user), self, window, self.resampling)
        return feats[:, :, 0], valid[:, :, 0]

    def _indices_for(self, name: str) -> bool:
        """Spectral indices apply to optical sensors, not to Sentinel-1 backscatter."""
        return bool(self.indices) and not name.startswith("sentinel1")

    def _padded(self, window: Window) -> tuple[Window, int, int]:
        """``window`` enlarged by ``chunk_padding`` (clipped to the grid), and its offset.

        Returns:
            The padded window, and the row and column offsets of ``window`` inside it.
        """
        pad = self.padding if self.functions else 0
        r0 = max(int(window.row_off) - pad, 0)
        c0 = max(int(window.col_off) - pad, 0)
        r1 = min(int(window.row_off + window.height) + pad, self.height)
        c1 = min(int(window.col_off + window.width) + pad, self.width)
        return Window(c0, r0, c1 - c0, r1 - r0), int(window.row_off) - r0, int(window.col_off) - c0

    def _external(self, window: Window) -> tuple[np.ndarray, list[str]]:
        """External features of a window (computed on the padded window, then cropped)."""
        big, ri, ci = self._padded(window)
        x, _ = self._dynamic(big)
        feats, names = apply_external(to_module(x, self.xp), self._dynamic_names(), self.dates,
                                      self.functions)
        return to_numpy(feats[ri : ri + int(window.height), ci : ci + int(window.width)]), names

    def _dynamic_names(self) -> list[str]:
        return [n for s in self.sensors for n in self._sensor_channels(s)]

    def _dynamic(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        parts, valids = [], []
        for name in self.sensors:
            x, v = self._sensor_block(name, window)
            parts.append(x)
            valids.append(v)
        x = np.concatenate(parts, axis=-1)
        footprint = np.logical_and.reduce([v.any(axis=-1) for v in valids])  # MaskCommunSL
        if len(valids) == 1:
            valid = valids[0]
        elif self._merge_raw:  # a date is an observation of the sensor(s) acquired then
            valid = np.logical_or.reduce(valids)
        else:
            valid = np.logical_and.reduce(valids)
        valid = valid & footprint[..., None]
        return x, valid

    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read the feature series of a window.

        The sensors are read once, on the window enlarged by ``chunk_padding`` when there
        are external features (their neighbourhood filters see the pixels around it).

        Returns:
            ``x`` (H, W, T, C) float32 (C = :attr:`band_names`), 0 where invalid, and
            ``valid`` (H, W, T) bool: False where a sensor masks the date or any feature
            is NaN or +-inf.
        """
        if window is None:
            window = Window(0, 0, self.width, self.height)
        h, w = int(window.height), int(window.width)
        big, ri, ci = self._padded(window)
        xb, vb = self._dynamic(big)
        x, valid = xb[ri : ri + h, ci : ci + w], vb[ri : ri + h, ci : ci + w]
        statics = []
        if self.user_features is not None:
            feats, fvalid = self._static_features(window)
            statics.append(feats)
            valid = valid & fvalid[..., None]
        if self.functions:
            feats, _ = apply_external(to_module(xb, self.xp), self._dynamic_names(), self.dates,
                                      self.functions)
            feats = to_numpy(feats[ri : ri + h, ci : ci + w]).astype(np.float32)
            if self.no_data_value is not None:  # iota2 no_data_value: not computable there
                feats = np.where(feats == self.no_data_value, np.nan, feats)
            statics.append(feats)
        if statics:
            s = np.concatenate(statics, axis=-1).astype(np.float32)
            s = np.broadcast_to(s[:, :, None, :], (*x.shape[:3], s.shape[-1]))
            x = np.concatenate([x, s] if self.concat_mode else [s], axis=-1)
        else:
            x = x.copy()
        valid = valid & np.isfinite(x).all(axis=-1)  # NaN or +-inf (e.g. a user feature)
        x[~valid] = 0.0
        return np.ascontiguousarray(x, dtype=np.float32), valid
