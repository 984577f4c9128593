"""Temporal convolutional neural network (TempCNN) for pixel time series.

Source: C. Pelletier, G. I. Webb and F. Petitjean, "Temporal Convolutional Neural
Network for the Classification of Satellite Image Time Series", Remote Sensing 11(5):523,
2019, doi:10.3390/rs11050523. The paper's architecture: three 1-D
convolution layers of 64 filters of size 5 along time, each followed by batch
normalisation, ReLU and dropout (rate 0.2); the feature maps are flattened and fed to
one fully connected layer of 256 units (batch norm, ReLU, dropout), then a softmax
layer. The paper trains it with Adam and an L2 weight decay of 1e-6
(``configs/model/tempcnn.yaml``).

Convolutions need regularly sampled, complete series: the input is gap-filled first,
invalid dates taking the value linearly interpolated in time (as iota2 does before its
non-sequential classifiers, :mod:`models.gapfill`). The flattened layer has ``filters[-1] * T``
inputs, so the network is built for one number of dates ``T``.

Dimension names: ``B`` batch (pixels), ``T`` dates, ``C`` input channels, ``K`` classes,
``F`` convolution filters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import Tensor, nn

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
    """TempCNN classifier of the gap-filled pixel series (Pelletier et al. 2019).

    Pipeline per pixel:

    1. linear gap-filling of invalid dates in time, ``(B, T, C) -> (B, C, T)``;
    2. for each ``F`` in ``filters``: ``Conv1d(kernel_size, padding="same") ->
       BatchNorm1d(F) -> ReLU -> Dropout``, keeping the length ``T``;
    3. flatten to ``(B, F * T)``;
    4. ``Linear(F * T, dense) -> BatchNorm1d -> ReLU -> Dropout``;
    5. ``Linear(dense, K)`` logits (the paper's softmax is in the loss).

    Masking: the values at invalid dates are never read (NaN included); those dates take
    the interpolated value, so the days of invalid dates matter (they are the times to
    interpolate at). A pixel without any valid date is classified from a zero series.

    Parameter count of the default config (``filters=(64, 64, 64)``, ``kernel_size=5``,
    ``dense=256``): convolutions ``(C*64*5 + 64) + 2 * (64*64*5 + 64)`` plus ``3 * 2*64``
    batch norm, dense ``(64*T*256 + 256) + 2*256``, output ``256*K + K``, i.e. 1,158,021
    for ``T=68, C=1, K=5`` and 2,487,821 for ``T=149, C=3, K=13`` (Formosat-2); the
    dense layer holds most of them and grows with ``T``.

    Note:
        BatchNorm1d needs more than one sample per training batch (PyTorch raises
        ValueError on a training batch of size 1).
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        n_dates: int,
        filters: Sequence[int] = (64, 64, 64),
        kernel_size: int = 5,
        dense: int = 256,
        dropout: float = 0.2,
    ) -> None:
        """Build the network.

        Args:
            in_channels: input channels ``C`` per date (bands and/or indices).
            n_classes: number of classes ``K``.
            n_dates: number of dates ``T`` of every series; forward refuses another ``T``.
            filters: filters of each convolution layer (three layers of 64 in the paper).
            kernel_size: length of the convolution kernels, in dates (5 in the paper).
            dense: width of the fully connected layer (256 in the paper).
            dropout: dropout probability after every layer but the last, in ``[0, 1)``
                (0.2 in the paper).

        Raises:
            i2dl.errors.ConfigError: (a ``ValueError``) on a non-positive or non-int size,
                an empty ``filters``, or ``dropout`` outside ``[0, 1)``.
        """
        super().__init__()
        owner = type(self).__name__
        check_positive_int(owner, "in_channels", in_channels)
        check_positive_int(owner, "n_classes", n_classes)
        check_positive_int(owner, "n_dates", n_dates)
        widths = check_widths(owner, "filters", filters, allow_empty=False)
        check_positive_int(owner, "kernel_size", kernel_size)
        check_positive_int(owner, "dense", dense)
        p = check_dropout(owner, dropout)

        self.in_channels = in_channels
        self.n_classes = n_classes
        self.n_dates = n_dates
        self.filters = tuple(widths)
        self.kernel_size = kernel_size

        convs: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True):
            convs += [
                nn.Conv1d(c_in, c_out, kernel_size, padding="same"),
                nn.BatchNorm1d(c_out),
                nn.ReLU(),
                nn.Dropout(p),
            ]
        self.convs = nn.Sequential(*convs)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            *dense_block(widths[-1] * n_dates, dense, batch_norm=True, dropout=p),
            nn.Linear(dense, n_classes),
        )
        log.debug(
            "%s: T=%d C=%d K=%d filters=%s kernel=%d dense=%d, %d parameters",
            owner,
            n_dates,
            in_channels,
            n_classes,
            widths,
            kernel_size,
            dense,
            sum(q.numel() for q in self.parameters()),
        )

    def forward(self, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
        """Classify a batch of pixel time series.

        Args:
            x: ``(B, T, C)`` float32, normalised features (unitless); values at invalid
                dates are ignored (replaced by interpolation).
            days: ``(B, T)`` int64 or float, days since the reference date,
                non-decreasing along ``T`` (used to interpolate invalid dates).
            mask: ``(B, T)`` bool, True = valid observation.

        Returns:
            ``(B, K)`` float32 logits.

        Raises:
            ValueError: if ``x`` is not ``(B, n_dates, in_channels)`` floating point
                ("this network was built for T=..."), or ``days``/``mask`` is not
                ``(B, T)``, or ``mask`` is not bool.
        """
        check_forward_inputs(type(self).__name__, x, days, mask, self.in_channels, self.n_dates)
        z = gapfilled(x, days, mask).transpose(1, 2)  # (B, C, T)
        return self.classifier(self.convs(z))  # (B, K)
