"""Temporal convolutional neural network (TempCNN) for pixel time series.

Source: C. Pelletier, G. I. Webb and F. Petitjean, "Temporal Convolutional Neural
Network for the Classification of Satellite Image Time Series", Remote Sensing 11(5):523,
2019, doi:10.3390/rs11050523. The paper's architecture: three 1-D
convolution layers of 64 filters of size 5 along time, each followed by batch
normalisation, ReLU and dropout (rate 0.2); the feature maps are flattened and fed to
one fully connected layer of 256 units (batch norm, ReLU, dropout), then a softmax
layer. The paper trains it with Adam and an L2 regularisation rate of 1e-6;
``configs/model/tempcnn.yaml`` keeps that rate as AdamW's (decoupled) weight decay, in
the training recipe of every deep network (:class:`models.SITSClassifier`).
:class:`TempCNN` is the encoder up to and including
the fully connected layer, so that one dropout rate covers every layer as in the paper;
the final ``Linear(256, K)`` is a :class:`models.head.ClassifierHead` with
``hidden=[]``.

Convolutions need regularly sampled, complete series: the input is gap-filled first,
invalid dates taking the value linearly interpolated in time (as iota2 does before its
non-sequential classifiers, :mod:`i2dl.features.gapfill`). The flattened layer has
``filters[-1] * T`` inputs, so the network is built for one number of dates ``T``.

Dimension names: ``B`` batch (pixels), ``T`` dates, ``C`` input channels, ``K`` classes,
``F`` convolution filters, ``D`` output width (``out_dim``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import Tensor, nn

from i2dl.errors import ConfigError
from models.layers import (
    check_dropout,
    check_forward_inputs,
    check_positive_int,
    check_widths,
    dense_block,
    gapfilled,
)

log = logging.getLogger(__name__)

__all__ = ["TempCNN"]


class TempCNN(nn.Module):
    """TempCNN encoder of the gap-filled pixel series (Pelletier et al. 2019).

    Pipeline per pixel:

    1. linear gap-filling of invalid dates in time, ``(B, T, C) -> (B, C, T)``;
    2. for each ``F`` in ``filters``: ``Conv1d(kernel_size, padding="same") ->
       BatchNorm1d(F) -> ReLU -> Dropout``, keeping the length ``T``;
    3. flatten to ``(B, F * T)``;
    4. ``Linear(F * T, dense) -> BatchNorm1d -> ReLU -> Dropout`` (skipped when
       ``dense`` is None);
    5. output ``(B, D)`` features, ``D = out_dim = dense`` (``F * T`` without the
       dense layer).

    The paper's classifier is this encoder followed by ``ClassifierHead(out_dim, K,
    hidden=[])``, i.e. ``Linear(dense, K)`` logits (the paper's softmax is in the loss).
    With ``dense=None`` the same network is ``ClassifierHead(out_dim, K, hidden=[256],
    batch_norm=True, dropout=0.2)``.

    Masking: the values at invalid dates are never read (NaN included); those dates take
    the interpolated value, so the days of invalid dates matter (they are the times to
    interpolate at). A pixel without any valid date is encoded from a zero series.

    Parameter count of the default config (``filters=(64, 64, 64)``, ``kernel_size=5``,
    ``dense=256``): convolutions ``(C*64*5 + 64) + 2 * (64*64*5 + 64)`` plus ``3 * 2*64``
    batch norm, dense ``(64*T*256 + 256) + 2*256``, i.e. 1,156,736 for ``T=68, C=1`` and
    2,484,480 for ``T=149, C=3`` (Formosat-2); with the head ``256*K + K``, 1,158,021
    for ``T=68, C=1, K=5`` and 2,487,821 for ``T=149, C=3, K=13``. The dense layer
    holds most of them and grows with ``T``.

    Attributes:
        out_dim: width ``D`` of the output features, ``dense`` (or ``filters[-1] * T``).

    Note:
        BatchNorm1d needs more than one sample per training batch (PyTorch raises
        ValueError on a training batch of size 1).
    """

    def __init__(
        self,
        in_channels: int,
        n_dates: int,
        filters: Sequence[int] = (64, 64, 64),
        kernel_size: int = 5,
        dense: int | None = 256,
        dropout: float = 0.2,
    ) -> None:
        """Build the encoder.

        Args:
            in_channels: input channels ``C`` per date (bands and/or indices).
            n_dates: number of dates ``T`` of every series; forward refuses another ``T``.
            filters: filters of each convolution layer (three layers of 64 in the paper).
            kernel_size: length of the convolution kernels, in dates (5 in the paper).
            dense: width of the fully connected layer (256 in the paper), or None to end
                the encoder at the flattened feature maps (put the dense layer in the
                head instead).
            dropout: dropout probability after every convolution and the dense layer,
                in ``[0, 1)`` (0.2 in the paper).

        Raises:
            i2dl.errors.ConfigError: (a ``ValueError``) on a non-positive or non-int size,
                an empty ``filters``, ``dense`` neither None nor a positive int, or
                ``dropout`` outside ``[0, 1)``.
        """
        super().__init__()
        owner = type(self).__name__
        check_positive_int(owner, "in_channels", in_channels)
        check_positive_int(owner, "n_dates", n_dates)
        widths = check_widths(owner, "filters", filters, allow_empty=False)
        check_positive_int(owner, "kernel_size", kernel_size)
        if dense is not None:
            try:
                check_positive_int(owner, "dense", dense)
            except ConfigError as err:
                raise ConfigError(f"{err} (or null for no dense layer)") from None
        p = check_dropout(owner, dropout)

        self.in_channels = in_channels
        self.n_dates = n_dates
        self.filters = tuple(widths)
        self.kernel_size = kernel_size
        self.dense = dense
        self.dropout = p

        convs: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True):
            convs += [
                nn.Conv1d(c_in, c_out, kernel_size, padding="same"),
                nn.BatchNorm1d(c_out),
                nn.ReLU(),
                nn.Dropout(p),
            ]
        self.convs = nn.Sequential(*convs)
        flat = widths[-1] * n_dates
        fc: list[nn.Module] = [nn.Flatten()]  # (B, F, T) -> (B, F * T)
        if dense is not None:
            fc += dense_block(flat, dense, batch_norm=True, dropout=p)
        self.fc = nn.Sequential(*fc)
        self.out_dim: int = flat if dense is None else dense
        log.debug(
            "%s: T=%d C=%d filters=%s kernel=%d dense=%s, D=%d, %d parameters",
            owner,
            n_dates,
            in_channels,
            widths,
            kernel_size,
            dense,
            self.out_dim,
            sum(q.numel() for q in self.parameters()),
        )

    def forward(self, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
        """Encode a batch of pixel time series.

        Args:
            x: ``(B, T, C)`` float32, normalised features (unitless); values at invalid
                dates are ignored (replaced by interpolation).
            days: ``(B, T)`` int64 or float, days since the reference date,
                non-decreasing along ``T`` (used to interpolate invalid dates).
            mask: ``(B, T)`` bool, True = valid observation.

        Returns:
            ``(B, D)`` float32 features, ``D = out_dim``.

        Raises:
            ValueError: if ``x`` is not ``(B, n_dates, in_channels)`` floating point
                ("this network was built for T=..."), or ``days``/``mask`` is not
                ``(B, T)``, or ``mask`` is not bool.
        """
        check_forward_inputs(type(self).__name__, x, days, mask, self.in_channels, self.n_dates)
        z = gapfilled(x, days, mask).transpose(1, 2)  # (B, C, T)
        return self.fc(self.convs(z))  # (B, D)
