"""What every trained i2dl classifier offers, and the model-selection criteria.

:class:`Classifier` is the protocol that evaluation and inference call (deep networks,
deep ensembles and scikit-learn estimators implement it); :data:`CRITERIA` and
:func:`criterion_monitor` name the selection-split metric that chooses a checkpoint
(iota2's ``model_selection_criterion``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from i2dl.errors import ConfigError

__all__ = ["CRITERIA", "Classifier", "criterion_monitor"]

#: Model-selection criteria: name -> (logged metric key, optimisation mode).
CRITERIA: dict[str, tuple[str, str]] = {
    "fscore": ("selection/fscore", "max"),
    "oa": ("selection/oa", "max"),
    "kappa": ("selection/kappa", "max"),
    "loss": ("selection/loss", "min"),
}

@runtime_checkable
class Classifier(Protocol):
    """What evaluation and inference call on any trained i2dl classifier.

    Deep networks (:class:`SITSClassifier`) and scikit-learn estimators
    (:class:`models.sklearn_backends.SklearnClassifier`) both implement it; both are built
    from their Hydra config by ``hydra.utils.instantiate`` (:mod:`i2dl.training.build`).
    """

    n_classes: int

    def predict_proba(self, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
        """Class probabilities of a batch of pixel series.

        Args:
            x: (B, T, C) float32, series normalised by the store statistics.
            days: (B, T) int64, days since the reference date.
            mask: (B, T) bool, True = valid observation.

        Returns:
            (B, K) float32 probabilities, column k = class index k.
        """
        ...

    def load_weights(self, path: str | Path) -> None:
        """Restore the fitted state saved at ``path`` by the fitting stage."""
        ...

    def to(self, device: Any) -> Any:
        """Move to a device (a no-op for CPU-only estimators); returns the model."""
        ...


def criterion_monitor(criterion: str) -> tuple[str, str]:
    """Metric key and mode to monitor for a model-selection criterion.

    Used for ``ModelCheckpoint(monitor=..., mode=...)``, ``EarlyStopping`` and
    ``ReduceLROnPlateau``. The metrics are those of iota2's deep-learning model
    selection: overall accuracy, Cohen's kappa (Cohen 1960, "A coefficient of agreement
    for nominal scales"), macro F1-score, validation loss.

    Args:
        criterion: one of ``"fscore"``, ``"oa"``, ``"kappa"``, ``"loss"``.

    Returns:
        ``(key, mode)``, e.g. ``("selection/fscore", "max")`` or ``("selection/loss", "min")``.

    Raises:
        i2dl.errors.ConfigError: (a ``ValueError``) if ``criterion`` is not one of the
            allowed names.
    """
    try:
        return CRITERIA[criterion]
    except (KeyError, TypeError):
        raise ConfigError(
            f"model_selection_criterion={criterion!r} is not allowed; choose one of "
            f"{sorted(CRITERIA)}"
        ) from None
