"""The flat dense network on the gap-filled, flattened pixel series: iota2's MLP and ANN.

Counterpart of iota2's ``MLPClassifier`` and ``ANN`` deep-learning networks, which are one
network with other defaults: the series is gap-filled onto its date grid (linear
interpolation in time of invalid dates, as iota2 does before its non-sequential
classifiers, see :mod:`i2dl.features.gapfill`), flattened to one vector of ``T * C``
values, and encoded by a stack of fully connected layers; a
:class:`models.head.ClassifierHead` with ``hidden=[]`` (one ``Linear(hidden[-1], K)``)
classifies the encoding. The layer layout and defaults below are i2dl's (they were not
copied from iota2's source).

The two configs of :class:`MLP` (``configs/model/mlp.yaml`` and ``configs/model/ann.yaml``),
both followed by the head ``Linear(last hidden width, K)``:

==============  ==========================================  =========================
                ``model=mlp`` (the class defaults)          ``model=ann``
==============  ==========================================  =========================
hidden widths   ``(256, 128)``: two hidden layers            ``(128,)``: one layer
hidden block    Linear → BatchNorm1d → ReLU → Dropout        Linear → ReLU
batch norm      on (``batch_norm=True``)                     off (``batch_norm=False``)
dropout         0.2 after every hidden layer                 0.0 (none)
parameters      51,328 + head 645 (T=68, C=1, K=5)           8,832 + head 645
==============  ==========================================  =========================

The MLP is the deeper, regularised one (batch norm and dropout make it less prone to
over-fit a few thousand pixels with a wide ``T * C`` input); the ANN is the shallow
un-regularised baseline, faster to train, works with a training batch of one pixel (no
batch norm) and is a sanity check for the deeper networks.

Dimension names: ``B`` batch (pixels), ``T`` dates, ``C`` input channels, ``D`` output
width (``out_dim``), ``K`` classes.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.layers import FlatDenseNet

__all__ = ["MLP"]


class MLP(FlatDenseNet):
    """Fully connected encoder of the gap-filled flattened series (iota2 MLP and ANN).

    Pipeline (after iota2's ``MLPClassifier``): linear gap-filling of invalid dates in
    time (:func:`i2dl.features.gapfill.linear_gapfill`), flatten ``(B, T, C) -> (B, T * C)``,
    then for each width ``w`` in ``hidden``: ``Linear -> BatchNorm1d(w) -> ReLU ->
    Dropout`` (without ``BatchNorm1d`` if not ``batch_norm``, without ``Dropout`` if
    ``dropout == 0``); output ``(B, D)`` with ``D = out_dim = hidden[-1]`` (``T * C`` if
    ``hidden`` is empty). iota2's classifier is this encoder followed by
    ``ClassifierHead(out_dim, K, hidden=[])``, i.e. ``Linear(hidden[-1], K)``.

    Masking: the values at invalid dates are never read (NaN included); those dates take
    the interpolated value, so the days of invalid dates matter (they are the times to
    interpolate at). A pixel without any valid date is encoded from a zero series.

    Parameter count of the MLP config (the defaults, ``hidden=(256, 128)``, batch norm):
    encoder ``(T*C*256 + 256) + 2*256 + (256*128 + 128) + 2*128``, i.e. 51,328 for
    ``T=68, C=1`` and 148,352 for ``T=149, C=3`` (Formosat-2); with the head
    ``128*K + K``, 51,973 for ``T=68, C=1, K=5`` and 150,029 for ``T=149, C=3, K=13``.
    The first layer dominates and grows with ``T * C``.

    Parameter count of the ANN config (``hidden=(128,)``, no batch norm, no dropout):
    encoder ``T*C*128 + 128``, i.e. 8,832 for ``T=68, C=1`` and 57,344 for ``T=149, C=3``;
    with the head ``128*K + K``, 9,477 for ``T=68, C=1, K=5`` and 59,021 for
    ``T=149, C=3, K=13``.

    Attributes:
        out_dim: width ``D`` of the output features, ``hidden[-1]`` (or ``T * C``).

    Note:
        With ``batch_norm=True``, BatchNorm1d needs more than one sample per training
        batch (PyTorch raises ValueError on a training batch of size 1).
    """

    def __init__(
        self,
        in_channels: int,
        n_dates: int,
        hidden: Sequence[int] = (256, 128),
        batch_norm: bool = True,
        dropout: float = 0.2,
    ) -> None:
        """Build the encoder.

        Args:
            in_channels: input channels ``C`` per date (bands and/or indices).
            n_dates: number of dates ``T`` of every series; forward refuses another ``T``.
            hidden: hidden layer widths (empty: the encoder only gap-fills and
                flattens, and a linear head classifies the series).
            batch_norm: BatchNorm1d after each hidden Linear layer.
            dropout: dropout probability after each hidden ReLU, in ``[0, 1)``.

        Raises:
            i2dl.errors.ConfigError: (a ``ValueError``) on a non-positive or non-int size
                or width, a non-bool ``batch_norm``, or ``dropout`` outside ``[0, 1)``.
        """
        super().__init__(in_channels, n_dates, hidden, batch_norm, dropout)
