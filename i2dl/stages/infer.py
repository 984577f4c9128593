"""Stage ``infer``: classify the data's raster(s) chunk by chunk -> ``<run>/maps/``."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from i2dl.errors import ConfigError, StoreError
from i2dl.features.source import data_tiles, open_source, uses_sensors
from i2dl.io.geotiff import mosaic
from i2dl.io.layout import (
    FINAL_DIR,
    MAPS_DIR,
    checkpoint_path,
    read_fit_state,
    run_dir,
    stage_logging,
    trained_model_dirs,
)
from i2dl.io.sensors.base import TimeSeriesSource
from i2dl.io.vector import burn_window
from i2dl.maps.cluster import dask_client, dask_engine
from i2dl.maps.engine import (
    SKLEARN_BATCH_SIZE,
    InferenceResult,
    PredictFn,
    WindowClassifier,
    classify_raster,
    local_engine,
    region_boundary_weights,
    resolve_batch_size,
    resolve_device,
)
from i2dl.maps.preview import write_map_preview
from i2dl.maps.products import write_map_products
from i2dl.maps.quality import write_smoothed, write_uncertainty
from i2dl.obia import classify_segments, obia_settings
from i2dl.samples.regions import read_regions
from i2dl.samples.store import StoreInfo
from i2dl.stages.evaluate import load_models
from models import Classifier, SklearnClassifier

log = logging.getLogger(__name__)


def _stamp(path: Path) -> dict[str, Any]:
    """Path, size and modification time of a file."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def resume_key(cfg: DictConfig, out: Path, device: str, tile: str | None) -> str:
    """What the maps of a tile depend on, for :func:`i2dl.maps.engine.classify_raster`'s resume.

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


@dataclass(frozen=True)
class TileJob:
    """Everything needed to classify the windows of one tile, in plain (picklable) values.

    Used by the local engine and sent to Dask workers (:mod:`i2dl.maps.cluster`), which open the
    tile and load the model(s) from the run folder themselves.

    Attributes:
        run: the run folder (holds the trained model(s)).
        data: the ``data`` config, resolved to plain containers.
        sampling: the ``sampling`` config (eco-region file and field).
        tile: the tile, or None for a single raster.
        ckpt: ``infer.ckpt``; device: ``infer.device``; batch_size: ``infer.batch_size``;
        amp: ``infer.amp``; write_proba: ``infer.write_proba``.
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
    key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        payload = json.dumps(
            {k: v for k, v in self.__dict__.items() if k != "key"}, sort_keys=True, default=str
        )
        object.__setattr__(self, "key", hashlib.sha256(payload.encode()).hexdigest())

    def open(self) -> TimeSeriesSource:
        """Open the tile's time series (a new reader: one per thread)."""
        return open_source(self.data, self.tile)

    def classifier(
        self,
        series: TimeSeriesSource,
        loaded: tuple[dict[int | None, Classifier], StoreInfo] | None = None,
    ) -> WindowClassifier:
        """The tile's window classifier: model(s) on the device, eco-region of each pixel.

        Args:
            series: the opened tile (its grid places the eco-regions).
            loaded: the run's models and store info when already loaded; None loads them.

        Raises:
            StoreError: no trained model in the run folder.
        """
        models, info = loaded or load_models(Path(self.run), self.ckpt)
        device = resolve_device(self.device)
        predicts = {r: m.to(device).predict_proba for r, m in models.items()}
        region_index: Any = None
        boundary: Any = None
        predict: PredictFn | dict[int, PredictFn]
        if None in predicts:
            predict = predicts[None]
        else:
            predict = {int(r): p for r, p in predicts.items() if r is not None}
            regions = read_regions(
                self.sampling["region_file"], self.sampling["region_field"], series.crs
            )
            region_index = functools.partial(
                burn_window, regions, regions["region"].to_numpy(), series.transform
            )
            if self.boundary_buffer > 0:
                boundary = functools.partial(
                    region_boundary_weights, regions, regions["region"].to_numpy(),
                    series.transform, series.width, series.height,
                    self.boundary_buffer / abs(series.transform.a),
                )
        if self.batch_size == "auto" and all(isinstance(m, SklearnClassifier)
                                             for m in models.values()):
            batch_size = SKLEARN_BATCH_SIZE
        else:
            batch_size = resolve_batch_size(self.batch_size, device, info.n_dates)
        return WindowClassifier(
            info, predict, device, batch_size, self.amp, self.write_proba, region_index,
            boundary,
        )


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


def _engine_context(icfg: DictConfig) -> Any:
    """A Dask client for ``infer.engine=dask``, nothing for ``local``."""
    engine = str(icfg.get("engine", "local"))
    if engine == "local":
        return nullcontext(None)
    if engine != "dask":
        raise ConfigError(f"infer.engine={engine!r}: use local or dask")
    dcfg = icfg.get("dask") or {}
    return dask_client(
        dcfg.get("address") or None,
        int(dcfg.get("n_workers", 2)),
        int(dcfg.get("threads_per_worker", 1)),
        bool(dcfg.get("processes", True)),
    )


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


def _segment_maps(cfg: DictConfig, out: Path, models: dict[int | None, Classifier],
                  info: StoreInfo, pixel_options: Any) -> InferenceResult:
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


def run(cfg: DictConfig) -> InferenceResult | None:
    """Classify the data's raster(s) by block windows with the trained model(s).

    One tile: ``maps/classif.tif``, ``confidence.tif``, ``PixelsValidity.tif`` (+
    ``proba.tif``). Several tiles (``data.list_tile``): ``maps/<tile>/…`` per tile. In both
    cases iota2's final products: ``final/Classif_Seed_<seed>.tif``,
    ``final/Confidence_Seed_<seed>.tif``, ``final/PixelsValidity.tif`` (and
    ``final/Proba_Seed_<seed>.tif`` with ``write_proba``), the mosaic of the tiles. With
    eco-regions, each region's pixels are classified by its own model and
    pixels in no region are nodata. Next to each map: a preview picture, a colour-indexed
    copy, the label table and a QGIS style. With ``infer.resume=true`` (default) a killed
    infer run again computes only the windows it had not finished (see
    :func:`i2dl.maps.engine.classify_raster`).

    Returns:
        The written maps (the mosaic with several tiles), or None when the data has no
        raster to map (a pixel table).

    Raises:
        StoreError: no trained model in the run folder.
        i2dl.errors.I2dlError: unreadable rasters (see :func:`i2dl.maps.engine.classify_raster`).
    """
    out = run_dir(cfg)
    with stage_logging(out, "infer"):
        if not cfg.data.get("raster") and not uses_sensors(cfg.data):
            log.info("data %s has no raster (data.raster): no map to write", cfg.data.get("name"))
            return None
        icfg = cfg.infer
        kinds = list(icfg.get("uncertainty") or [])
        smoothing = icfg.get("smoothing") or {}
        smooth = bool(smoothing.get("enabled", False))
        if (kinds or smooth) and not icfg.write_proba:
            raise ConfigError(
                f"infer.uncertainty={kinds} / infer.smoothing.enabled={smooth} are computed "
                "from the probability map: add infer.write_proba=true"
            )
        models, info = load_models(out, icfg.ckpt)
        device = resolve_device(str(icfg.device))
        tiles: list[str | None] = list(data_tiles(cfg.data)) or [None]
        multi = len(tiles) > 1
        results = {}
        if obia_settings(cfg) is not None:
            return _segment_maps(cfg, out, models, info, kinds or smooth)
        plain = {name: OmegaConf.to_container(cfg[name], resolve=True)
                 for name in ("data", "sampling")}
        with ExitStack() as stack:
            client = stack.enter_context(_engine_context(icfg))
            for tile in tiles:
                maps = out / MAPS_DIR / tile if multi and tile else out / MAPS_DIR
                job = TileJob(
                    str(out), plain["data"], plain["sampling"], tile,  # type: ignore[arg-type]
                    str(icfg.ckpt), str(icfg.device), icfg.batch_size, bool(icfg.amp),
                    bool(icfg.write_proba), boundary_buffer(icfg),
                )
                with job.open() as series:
                    if client is None:
                        engine = local_engine(
                            series, job.classifier(series, (models, info)),
                            int(icfg.get("reader_threads", 1)), int(icfg.get("read_ahead", 2)),
                            job.open,
                        )
                    else:
                        engine = dask_engine(client, job)
                    results[tile] = classify_raster(
                        series,
                        info,
                        {} if None not in models else models[None].predict_proba,
                        maps,
                        device,
                        chunk_size=int(icfg.chunk_size),
                        write_proba=bool(icfg.write_proba),
                        resume_key=(
                            resume_key(cfg, out, str(device), tile)
                            if icfg.get("resume", True) else None
                        ),
                        engine=engine,
                    )
                if kinds:
                    proba = results[tile].proba
                    assert proba is not None  # write_proba checked above
                    for kind, path in write_uncertainty(proba, maps, kinds).items():
                        log.info("uncertainty (%s): %s", kind, path)
                if smooth:
                    proba = results[tile].proba
                    assert proba is not None  # write_proba checked above
                    smoothed = write_smoothed(
                        proba, maps, info.class_codes, int(smoothing.get("window_size", 7)),
                        float(smoothing.get("smoothness", 20.0)), int(icfg.chunk_size),
                    )
                    log.info("Bayesian smoothing: %s", ", ".join(map(str, smoothed.values())))
                _map_extras(cfg, info, results[tile], maps)
        if not results:
            raise StoreError(f"data {cfg.data.get('name')}: no tile to classify")
        seed = cfg.seed if cfg.seed is not None else 0
        final = out / FINAL_DIR
        parts = list(results.values())
        # iota2's final products: the mosaic of the tiles (a copy of the one tile's maps)
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
        log.info("final products of %d tile(s): %s", len(tiles), final)
        if not multi:
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
