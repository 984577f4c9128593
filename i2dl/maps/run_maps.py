"""The maps of a run: every tile classified, its quality maps and products, the mosaic.

What ``python -m i2dl infer`` does once the trained models are loaded (the stage,
:mod:`i2dl.stages.infer`, only reads the config and loads them): one :class:`TileJob` per
tile, classified by the local window engine or on Dask (:func:`i2dl.maps.engine.write_maps`),
then per tile the uncertainty and smoothed maps (``infer.uncertainty``,
``infer.smoothing``), the preview and colour products, and at the end iota2's final
products, the mosaic of the tiles in ``final/``. With ``obia.enabled`` the segments are
classified instead (:func:`i2dl.builders.obia.classify_segments`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from i2dl.builders.obia import classify_segments, obia_settings
from i2dl.errors import ConfigError, StoreError
from i2dl.features.source import data_tiles, open_source
from i2dl.io.geotiff import mosaic, to_cog
from i2dl.io.layout import FINAL_DIR, MAPS_DIR, checkpoint_path, read_fit_state, trained_model_dirs
from i2dl.io.sensors.base import TimeSeriesSource
from i2dl.io.vector import burn_window
from i2dl.maps.boundary import region_boundary_weights
from i2dl.maps.cluster import dask_engine, infer_runner
from i2dl.maps.device import resolve_batch_size, resolve_device
from i2dl.maps.engine import (
    InferenceResult,
    PredictFn,
    WindowClassifier,
    local_engine,
    write_maps,
)
from i2dl.maps.preview import write_map_preview
from i2dl.maps.products import write_map_products
from i2dl.maps.quality import write_smoothed, write_uncertainty
from i2dl.samples.regions import read_regions
from i2dl.samples.store import StoreInfo

log = logging.getLogger(__name__)

#: The trained models of a run by eco-region (``None``: one model), each with
#: ``.to(device)`` and ``predict_proba(x, days, mask)`` (:class:`models.Classifier`).
Models = Mapping[int | None, Any]
#: ``load(run, ckpt) -> (models, store info)``: loads a run's trained models (a module-level
#: function, so that a job pickles for Dask workers), e.g.
#: :func:`i2dl.training.trained.load_models`.
LoadModels = Callable[[Path, str], tuple[Models, StoreInfo]]


def _stamp(path: Path) -> dict[str, Any]:
    """Path, size and modification time of a file."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def resume_key(cfg: DictConfig, out: Path, device: str, tile: str | None) -> str:
    """What the maps of a tile depend on, for :func:`i2dl.maps.engine.write_maps`'s resume.

    The checkpoint files used (path, size, modification time) with their fit
    fingerprints, the data config (raster, masks, dates), the ``infer`` settings, the
    device and the tile.
    """
    models = {}
    for region, model_dir in trained_model_dirs(out).items():
        state = read_fit_state(model_dir) or {}
        models[str(region)] = {
            "ckpt": _stamp(checkpoint_path(model_dir, str(cfg.infer.ckpt))),
            "fit": state.get("fingerprint"),
        }
    payload = {
        "models": models,
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "infer": OmegaConf.to_container(cfg.infer, resolve=True),
        "device": device,
        "tile": tile,
        "regions": [cfg.sampling.get("region_file"), cfg.sampling.get("region_field")],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def data_paths(node: Any) -> list[str]:
    """Every string of a (plain) ``data`` config: the candidate input files of the maps.

    :func:`i2dl.maps.engine.write_maps` keeps only the existing paths among them (masks,
    dates file, sensor folders...) and puts their size and modification time in the
    resume key, so that a changed input never leaves stale windows in a resumed map.
    """
    if isinstance(node, str):
        return [node]
    if isinstance(node, Mapping):
        return [p for value in node.values() for p in data_paths(value)]
    if isinstance(node, list | tuple):
        return [p for value in node for p in data_paths(value)]
    return []


def _function_name(fn: Callable[..., Any] | None) -> str | None:
    return None if fn is None else f"{fn.__module__}.{fn.__qualname__}"


@dataclass(frozen=True)
class TileJob:
    """Everything needed to classify the windows of one tile, in plain (picklable) values.

    Used by the local engine and sent to Dask workers (:mod:`i2dl.maps.cluster`), which open the
    tile and load the model(s) from the run folder themselves (with ``load``).

    Attributes:
        run: the run folder (holds the trained model(s)).
        data: the ``data`` config, resolved to plain containers.
        sampling: the ``sampling`` config (eco-region file and field).
        tile: the tile, or None for a single raster.
        ckpt: ``infer.ckpt``; device: ``infer.device``; batch_size: ``infer.batch_size``,
        resolved here only (:func:`i2dl.maps.device.resolve_batch_size`);
        amp: ``infer.amp``; write_proba: ``infer.write_proba``.
        boundary_buffer: ``infer.boundary_fusion.buffer`` when enabled, CRS units; 0 = off.
        load: loads the run's models (:data:`LoadModels`); None = they are always passed
            to :meth:`classifier`.
        auto_batch_size: what ``batch_size=auto`` means for these models (scikit-learn:
            :data:`i2dl.maps.device.SKLEARN_BATCH_SIZE`); None = chosen per device.
    """

    run: str
    data: dict[str, Any]
    sampling: dict[str, Any]
    tile: str | None
    ckpt: str
    device: str
    batch_size: int | str
    amp: bool
    write_proba: bool
    boundary_buffer: float = 0.0
    load: LoadModels | None = None
    auto_batch_size: int | None = None
    key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        plain = {k: v for k, v in self.__dict__.items() if k not in ("key", "load")}
        plain["load"] = _function_name(self.load)
        payload = json.dumps(plain, sort_keys=True, default=str)
        object.__setattr__(self, "key", hashlib.sha256(payload.encode()).hexdigest())

    def open(self) -> TimeSeriesSource:
        """Open the tile's time series (a new reader: one per thread)."""
        return open_source(self.data, self.tile)

    def classifier(
        self, series: TimeSeriesSource, loaded: tuple[Models, StoreInfo] | None = None,
    ) -> WindowClassifier:
        """The tile's window classifier: model(s) on the device, eco-region of each pixel.

        Args:
            series: the opened tile (its grid places the eco-regions).
            loaded: the run's models and store info when already loaded; None loads them
                with ``load``.

        Raises:
            StoreError: no trained model in the run folder.
            ConfigError: a bad ``batch_size``, or neither ``loaded`` nor ``load``.
        """
        if loaded is None and self.load is None:
            raise ConfigError("TileJob.classifier needs the loaded models or a `load` function")
        models, info = loaded or self.load(Path(self.run), self.ckpt)  # type: ignore[misc]
        device = resolve_device(self.device)
        predicts = {r: m.to(device).predict_proba for r, m in models.items()}
        region_index: Any = None
        boundary: Any = None
        predict: PredictFn | dict[int, PredictFn]
        if None in predicts:
            predict = predicts[None]
        else:
            predict = {int(r): p for r, p in predicts.items() if r is not None}
            region_index, boundary = self._regions(series)
        if self.batch_size == "auto" and self.auto_batch_size is not None:
            batch_size = self.auto_batch_size
        else:
            batch_size = resolve_batch_size(self.batch_size, device, info.n_dates)
        return WindowClassifier(
            info, predict, device, batch_size, self.amp, self.write_proba, region_index,
            boundary,
        )

    def _regions(self, series: TimeSeriesSource) -> tuple[Any, Any]:
        """The eco-region of each pixel of a window, and the boundary weights (or None)."""
        regions = read_regions(self.sampling["region_file"], self.sampling["region_field"],
                               series.crs)
        values = regions["region"].to_numpy()
        region_index = functools.partial(burn_window, regions, values, series.transform)
        boundary = None
        if self.boundary_buffer > 0:
            boundary = functools.partial(
                region_boundary_weights, regions, values, series.transform, series.width,
                series.height, self.boundary_buffer / abs(series.transform.a),
            )
        return region_index, boundary


def boundary_buffer(icfg: DictConfig) -> float:
    """``infer.boundary_fusion.buffer`` (CRS units, metres) when enabled, else 0.

    Raises:
        ConfigError: enabled with a buffer that is not positive.
    """
    node = icfg.get("boundary_fusion") or {}
    if not node.get("enabled", False):
        return 0.0
    buffer = float(node.get("buffer", 0) or 0)
    if buffer <= 0:
        raise ConfigError(f"infer.boundary_fusion.buffer must be > 0 (metres), got {buffer}")
    return buffer


def probability_products(icfg: DictConfig) -> tuple[list[str], DictConfig | dict, bool]:
    """``infer.uncertainty`` kinds, the ``infer.smoothing`` node and whether it is enabled.

    Raises:
        ConfigError: uncertainty or smoothing asked for without ``infer.write_proba``.
    """
    kinds = list(icfg.get("uncertainty") or [])
    smoothing = icfg.get("smoothing") or {}
    smooth = bool(smoothing.get("enabled", False))
    if (kinds or smooth) and not icfg.write_proba:
        raise ConfigError(
            f"infer.uncertainty={kinds} / infer.smoothing.enabled={smooth} are computed "
            "from the probability map: add infer.write_proba=true"
        )
    return kinds, smoothing, smooth


def _map_extras(cfg: DictConfig, info: StoreInfo, result: InferenceResult, maps: Path) -> None:
    """The preview picture, colour-indexed copy, label table and QGIS style of a map."""
    preview = write_map_preview(
        result.classif, maps / "classif_preview.png", info.class_codes, info.class_names,
    )
    log.info("map preview: %s", preview)
    products = write_map_products(
        result.classif, info.class_codes, info.class_names,
        colour_table=cfg.data.get("colour_table") or None,
    )
    log.info("map products: %s", ", ".join(str(p) for p in products.values()))


def _segment_maps(cfg: DictConfig, out: Path, models: Models, info: StoreInfo,
                  pixel_options: Any) -> InferenceResult:
    """OBIA (``obia.enabled``): every segment classified, maps + ``segments.gpkg``.

    Raises:
        ConfigError: uncertainty / smoothing asked for (pixel maps only), or eco-regions.
        StoreError: the store is not an OBIA store.
    """
    if pixel_options:
        raise ConfigError("infer.uncertainty and infer.smoothing apply to pixel maps; "
                          "drop them with obia.enabled=true")
    if None not in models:
        raise ConfigError("obia.enabled does not support eco-region models yet")
    meta = info.attrs.get("obia")
    if not meta:
        raise StoreError(f"store {info.path} holds pixels, not segments: run prepare with "
                         "obia.enabled=true")
    maps = out / MAPS_DIR
    with open_source(cfg.data) as series:
        result = classify_segments(
            series, Path(meta["segments"]), meta["stats_used"], info,
            models[None].predict_proba, maps, info.class_names,
            chunk_size=int(cfg.infer.chunk_size),
        )
    log.info("OBIA maps: %s, %s, %s", result.classif, result.confidence,
             maps / "segments.gpkg")
    _map_extras(cfg, info, result, maps)
    seed = cfg.seed if cfg.seed is not None else 0
    final = out / FINAL_DIR
    mosaic([result.classif], final / f"Classif_Seed_{seed}.tif")
    mosaic([result.confidence], final / f"Confidence_Seed_{seed}.tif")
    return result


def _probability_maps(icfg: DictConfig, info: StoreInfo, result: InferenceResult,
                      maps: Path) -> None:
    """The uncertainty and smoothed maps of a tile, from its probability map."""
    kinds, smoothing, smooth = probability_products(icfg)
    if kinds:
        assert result.proba is not None  # write_proba checked by probability_products
        for kind, path in write_uncertainty(result.proba, maps, kinds).items():
            log.info("uncertainty (%s): %s", kind, path)
    if smooth:
        assert result.proba is not None  # write_proba checked by probability_products
        smoothed = write_smoothed(
            result.proba, maps, info.class_codes, int(smoothing.get("window_size", 7)),
            float(smoothing.get("smoothness", 20.0)), int(icfg.chunk_size),
        )
        log.info("Bayesian smoothing: %s", ", ".join(map(str, smoothed.values())))


def _tile_maps(
    cfg: DictConfig, out: Path, models: Models, info: StoreInfo, load: LoadModels,
    auto_batch_size: int | None, tiles: list[str | None], device: torch.device,
) -> dict[str | None, InferenceResult]:
    """Classify every tile (local engine or Dask) with its quality maps and products."""
    icfg = cfg.infer
    multi = len(tiles) > 1
    plain = {name: OmegaConf.to_container(cfg[name], resolve=True)
             for name in ("data", "sampling")}
    results = {}
    with ExitStack() as stack:
        runner = stack.enter_context(infer_runner(cfg, out))
        for tile in tiles:
            maps = out / MAPS_DIR / tile if multi and tile else out / MAPS_DIR
            job = TileJob(
                str(out), plain["data"], plain["sampling"], tile,  # type: ignore[arg-type]
                str(icfg.ckpt), str(icfg.device), icfg.batch_size, bool(icfg.amp),
                bool(icfg.write_proba), boundary_buffer(icfg), load, auto_batch_size,
            )
            with job.open() as series:
                if runner is None:
                    engine = local_engine(
                        series, job.classifier(series, (models, info)),
                        int(icfg.get("reader_threads", 1)), int(icfg.get("read_ahead", 2)),
                        job.open,
                    )
                else:
                    engine = dask_engine(runner, job, tile or str(cfg.data.get("name", "tile")))
                results[tile] = write_maps(
                    series, info, engine, maps, str(device),
                    chunk_size=int(icfg.chunk_size),
                    write_proba=bool(icfg.write_proba),
                    resume_key=(
                        resume_key(cfg, out, str(device), tile)
                        if icfg.get("resume", True) else None
                    ),
                    by_region=None not in models,
                    inputs=data_paths(plain["data"]),
                )
            _probability_maps(icfg, info, results[tile], maps)
            _map_extras(cfg, info, results[tile], maps)
    return results


def _final_products(cfg: DictConfig, out: Path, results: Mapping[str | None, InferenceResult],
                    device: torch.device) -> InferenceResult:
    """iota2's final products: the mosaic of the tiles (a copy of the one tile's maps)."""
    seed = cfg.seed if cfg.seed is not None else 0
    final = out / FINAL_DIR
    parts = list(results.values())
    classif = mosaic([r.classif for r in parts], final / f"Classif_Seed_{seed}.tif")
    conf = mosaic([r.confidence for r in parts], final / f"Confidence_Seed_{seed}.tif")
    validity = None
    if all(r.validity is not None for r in parts):
        validity = mosaic([r.validity for r in parts],  # type: ignore[misc]
                          final / "PixelsValidity.tif")
    proba = None
    if all(r.proba is not None for r in parts):
        proba = mosaic([r.proba for r in parts],  # type: ignore[misc]
                       final / f"Proba_Seed_{seed}.tif")
    log.info("final products of %d tile(s): %s", len(parts), final)
    if cfg.infer.get("cog", True):
        for r in parts:
            cog_maps(r)
        cog_maps(InferenceResult(classif=classif, confidence=conf, proba=proba, n_pixels=0,
                                 n_nodata=0, device="", validity=validity))
    if len(parts) == 1:
        return parts[0]
    return InferenceResult(
        classif=classif,
        confidence=conf,
        proba=proba,
        n_pixels=sum(r.n_pixels for r in parts),
        n_nodata=sum(r.n_nodata for r in parts),
        device=str(device),
        validity=validity,
    )


def cog_maps(result: InferenceResult) -> None:
    """Rewrite a result's maps as COGs (:func:`i2dl.io.geotiff.to_cog`).

    Overviews of the class map by mode; of the confidence, probabilities and valid-date
    counts by average.
    """
    to_cog(result.classif, "categorical")
    for path in (result.confidence, result.proba, result.validity):
        if path is not None:
            to_cog(path, "continuous")


def write_run_maps(
    cfg: DictConfig, out: Path, models: Models, info: StoreInfo, load: LoadModels,
    auto_batch_size: int | None = None,
) -> InferenceResult:
    """Every map of a run from its loaded models: tiles, quality maps, products, mosaic.

    One tile: ``maps/classif.tif``, ``confidence.tif``, ``PixelsValidity.tif`` (+
    ``proba.tif``). Several tiles (``data.list_tile``): ``maps/<tile>/…`` per tile. In both
    cases iota2's final products ``final/Classif_Seed_<seed>.tif``,
    ``final/Confidence_Seed_<seed>.tif``, ``final/PixelsValidity.tif`` (and
    ``final/Proba_Seed_<seed>.tif`` with ``write_proba``), the mosaic of the tiles.

    Args:
        cfg: the job's config (``data``, ``sampling``, ``infer``, ``obia``, ``seed``).
        out: the run folder.
        models: the run's trained models by eco-region (:data:`Models`).
        info: the sample store's attributes.
        load: how Dask workers load the models (:data:`LoadModels`).
        auto_batch_size: what ``infer.batch_size=auto`` means for these models; None =
            chosen per device.

    Returns:
        The written maps (the mosaic with several tiles).

    Raises:
        ConfigError: bad ``infer`` settings (see :func:`probability_products`,
            :func:`boundary_buffer`).
        StoreError: no tile to classify, or an OBIA run on a pixel store.
        i2dl.errors.I2dlError: unreadable rasters (see :func:`i2dl.maps.engine.write_maps`).
    """
    kinds, _, smooth = probability_products(cfg.infer)
    device = resolve_device(str(cfg.infer.device))
    tiles: list[str | None] = list(data_tiles(cfg.data)) or [None]
    if obia_settings(cfg) is not None:
        return _segment_maps(cfg, out, models, info, kinds or smooth)
    results = _tile_maps(cfg, out, models, info, load, auto_batch_size, tiles, device)
    if not results:
        raise StoreError(f"data {cfg.data.get('name')}: no tile to classify")
    return _final_products(cfg, out, results, device)
