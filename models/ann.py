"""Shallow artificial neural network on the gap-filled, flattened pixel series.

Counterpart of iota2's ``ANN`` deep-learning network: the simplest network baseline,
one hidden fully connected layer on the series gap-filled onto its date grid (linear
interpolation in time of invalid dates, see :mod:`i2dl.features.gapfill`) and flattened to
``T * C`` values; a :class:`models.head.ClassifierHead` with ``hidden=[]`` (one
``Linear(hidden[-1], K)``) classifies the encoding. The layer layout and defaults below
are i2dl's (they were not copied from iota2's source).

ANN versus MLPClassifier (:mod:`models.mlp`), both encoders of the same flattened
gap-filled input, both followed by the head ``Linear(last hidden width, K)``:

==============  ==========================================  =========================
                ANN (this module)                           MLPClassifier
==============  ==========================================  =========================
hidden widths   ``(128,)``: one hidden layer                 ``(256, 128)``: two
hidden block    Linear → ReLU                                Linear → BatchNorm1d →
                                                             ReLU → Dropout
batch norm      off (``batch_norm=False``)                   on (``batch_norm=True``)
dropout         0.0 (none)                                   0.2 after every hidden
parameters      8,832 + head 645 (T=68, C=1, K=5)            51,328 + head 645
==============  ==========================================  =========================

Both take the same options (``hidden``, ``batch_norm``, ``dropout``); the choice is
about defaults only. The ANN is shallow and un-regularised: fast, works with a training
batch of one pixel (no batch norm), a baseline that the deeper networks should beat; on
small training sets with a wide ``T * C`` input it over-fits sooner than the MLP.

Dimension names: ``B`` batch (pixels), ``T`` dates, ``C`` input channels, ``D`` output
width (``out_dim``), ``K`` classes.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.layers import FlatDenseNet

__all__ = ["ANN"]


class ANN(FlatDenseNet):
    """Shallow fully connected encoder of the gap-filled flattened series.

    Pipeline (after iota2's ``ANN``): linear gap-filling of invalid dates in time
    (:func:`i2dl.features.gapfill.linear_gapfill`), flatten ``(B, T, C) -> (B, T * C)``, then
    for each width ``w`` in ``hidden``: ``Linear -> ReLU`` (plus ``BatchNorm1d`` before
    the ReLU if ``batch_norm``, ``Dropout`` after it if ``dropout > 0``); output
    ``(B, D)`` with ``D = out_dim = hidden[-1]`` (``T * C`` if ``hidden`` is empty).
    iota2's classifier is this encoder followed by ``ClassifierHead(out_dim, K,
    hidden=[])``, i.e. ``Linear(hidden[-1], K)``.

    Masking: the values at invalid dates are never read (NaN included); those dates take
    the interpolated value, so the days of invalid dates matter (they are the times to
    interpolate at). A pixel without any valid date is encoded from a zero series.

    Parameter count of the default config (``hidden=(128,)``, no batch norm): encoder
    ``T*C*128 + 128``, i.e. 8,832 for ``T=68, C=1`` and 57,344 for ``T=149, C=3``
    (Formosat-2); with the head ``128*K + K``, 9,477 for ``T=68, C=1, K=5`` and 59,021
    for ``T=149, C=3, K=13``.

    Attributes:
        out_dim: width ``D`` of the output features, ``hidden[-1]`` (or ``T * C``).
    """

    def __init__(
        self,
        in_channels: int,
        n_dates: int,
        hidden: Sequence[int] = (128,),
        batch_norm: bool = False,
        dropout: float = 0.0,
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
