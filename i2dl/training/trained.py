"""The trained models of a run folder, loaded for evaluation and maps."""

from __future__ import annotations

from pathlib import Path

from i2dl.errors import StoreError
from i2dl.io.layout import trained_model_dirs
from i2dl.samples.store import StoreInfo
from i2dl.training.build import load_classifier
from models import Classifier


def load_models(out: Path, which: str) -> tuple[dict[int | None, Classifier], StoreInfo]:
    """Every trained model of a run: ``{None: model}``, or ``{region: model}``.

    Args:
        out: the run folder.
        which: ``best``, ``last`` or a checkpoint path (:func:`i2dl.io.layout.checkpoint_path`).

    Returns:
        The models by eco-region (``None`` without eco-regions) and the store's attributes.

    Raises:
        StoreError: fit has not run in ``out``.
    """
    models: dict[int | None, Classifier] = {}
    info: StoreInfo | None = None
    for region, model_dir in trained_model_dirs(out).items():
        models[region], info = load_classifier(model_dir, which)
    if info is None:  # trained_model_dirs yields at least the run folder
        raise StoreError(f"no trained model in {out}; run `python -m i2dl fit` first")
    return models, info
