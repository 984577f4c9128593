"""Stage ``infer``: classify the data's raster(s) chunk by chunk -> ``<run>/maps/``."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from i2dl.features.source import uses_sensors
from i2dl.io.layout import run_dir, stage_logging
from i2dl.maps.device import SKLEARN_BATCH_SIZE
from i2dl.maps.engine import InferenceResult
from i2dl.maps.run_maps import probability_products, write_run_maps
from i2dl.training.trained import load_models
from models import SklearnClassifier

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> InferenceResult | None:
    """Classify the data's raster(s) by block windows with the trained model(s).

    The maps, their quality maps and products and the final mosaic are written by
    :func:`i2dl.maps.run_maps.write_run_maps`. With eco-regions, each region's pixels are
    classified by its own model and pixels in no region are nodata. Next to each map: a
    preview picture, a colour-indexed copy, the label table and a QGIS style. With
    ``infer.resume=true`` (default) a killed infer run again computes only the windows it
    had not finished (see :func:`i2dl.maps.engine.write_maps`).

    Returns:
        The written maps (the mosaic with several tiles), or None when the data has no
        raster to map (a pixel table).

    Raises:
        ConfigError: uncertainty or smoothing without ``infer.write_proba``, and the other
            bad ``infer`` settings.
        StoreError: no trained model in the run folder.
        i2dl.errors.I2dlError: unreadable rasters (see :func:`i2dl.maps.engine.write_maps`).
    """
    out = run_dir(cfg)
    with stage_logging(out, "infer"):
        if not cfg.data.get("raster") and not uses_sensors(cfg.data):
            log.info("data %s has no raster (data.raster): no map to write", cfg.data.get("name"))
            return None
        probability_products(cfg.infer)  # refuse bad options before loading the models
        models, info = load_models(out, cfg.infer.ckpt)
        # scikit-learn models: large batches (each predict_proba call starts its workers)
        sklearn = all(isinstance(m, SklearnClassifier) for m in models.values())
        return write_run_maps(cfg, out, models, info, load_models,
                              SKLEARN_BATCH_SIZE if sklearn else None)
