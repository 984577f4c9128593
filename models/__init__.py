"""Classifier networks and the shared Lightning module of i2dl.

* :class:`LTAE`: Lightweight Temporal Attention Encoder (Garnot & Landrieu 2020) for
  single-pixel time series, ``net(x, days, mask) -> logits``;
* :class:`SITSClassifier`: Lightning module owning loss, optimiser, scheduler, metrics;
* :func:`criterion_monitor`: ``(metric key, mode)`` of a model-selection criterion.
"""

from models.base import CRITERIA, SITSClassifier, criterion_monitor
from models.ltae import LTAE, positional_encoding

__all__ = ["CRITERIA", "LTAE", "SITSClassifier", "criterion_monitor", "positional_encoding"]
