"""Classifiers of i2dl: temporal encoders, one classification head, one Lightning module.

* encoders ``(x, days, mask) -> (B, D)`` features: :class:`LTAE` (Garnot & Landrieu 2020),
  :class:`SimpleSelfAttention` (iota2 ``SimpleSelfAttentionClassifier``), :class:`TempCNN`
  (Pelletier et al. 2019), :class:`MLP` (iota2 ``MLPClassifier`` and ``ANN``, two configs
  of one network on the gap-filled flattened series);
* :class:`ClassifierHead`: the shared head, ``(B, D) -> (B, K)`` logits;
* :class:`SITSClassifier`: Lightning module (encoder + head) owning loss, optimiser,
  scheduler and metrics;
* :class:`SklearnClassifier`: scikit-learn estimators on the same samples;
* :class:`DeepEnsemble`: N trained networks whose class probabilities are averaged;
* :class:`Classifier`: the protocol both implement, ``predict_proba(x, days, mask)``;
* :func:`criterion_monitor`: ``(metric key, mode)`` of a model-selection criterion.
"""

from models.base import CRITERIA, Classifier, SITSClassifier, criterion_monitor
from models.ensemble import DeepEnsemble, member_seed
from models.head import ClassifierHead
from models.ltae import LTAE, positional_encoding
from models.mlp import MLP
from models.sklearn_backends import CalibratedSVC, SklearnClassifier
from models.ssa import SimpleSelfAttention
from models.tempcnn import TempCNN

__all__ = [
    "CRITERIA",
    "LTAE",
    "CalibratedSVC",
    "Classifier",
    "ClassifierHead",
    "DeepEnsemble",
    "MLP",
    "SITSClassifier",
    "SimpleSelfAttention",
    "SklearnClassifier",
    "TempCNN",
    "criterion_monitor",
    "member_seed",
    "positional_encoding",
]
