"""Classifier networks and the shared Lightning module of i2dl.

* :class:`LTAE`: Lightweight Temporal Attention Encoder (Garnot & Landrieu 2020) for
  single-pixel time series, ``net(x, days, mask) -> logits``;
* :class:`MLPClassifier`, :class:`ANN`: deep / shallow fully connected networks on the
  gap-filled flattened series (iota2 ``MLPClassifier`` / ``ANN``);
* :class:`SimpleSelfAttention`: one self-attention layer over dates (iota2
  ``SimpleSelfAttentionClassifier``);
* :class:`TempCNN`: temporal convolutional network (Pelletier et al. 2019);
* :class:`SITSClassifier`: Lightning module owning loss, optimiser, scheduler, metrics;
* :func:`criterion_monitor`: ``(metric key, mode)`` of a model-selection criterion.
"""

from models.ann import ANN
from models.base import CRITERIA, SITSClassifier, criterion_monitor
from models.ltae import LTAE, positional_encoding
from models.mlp import MLPClassifier
from models.ssa import SimpleSelfAttention
from models.tempcnn import TempCNN

__all__ = [
    "ANN",
    "CRITERIA",
    "LTAE",
    "MLPClassifier",
    "SITSClassifier",
    "SimpleSelfAttention",
    "TempCNN",
    "criterion_monitor",
    "positional_encoding",
]
