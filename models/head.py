"""Classification head shared by every i2dl pixel-series network.

Each network of :mod:`models` is an encoder ``(x, days, mask) -> (B, D)`` features with
``D = encoder.out_dim``; one :class:`ClassifierHead` maps those features to ``K`` logits.
The split follows the L-TAE paper (Garnot & Landrieu 2020, arXiv:2007.00586), whose
temporal encoder is followed by a separate MLP decoder, and lets every encoder be trained
with the same kind of head.

Dimension names: ``B`` batch (pixels), ``D`` feature width (``in_features``), ``K``
classes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import Tensor, nn

from i2dl.errors import ConfigError
from models.layers import check_dropout, check_positive_int, check_widths, dense_block

log = logging.getLogger(__name__)

__all__ = ["ClassifierHead"]


class ClassifierHead(nn.Module):
    """Dense classifier of encoder features: hidden dense blocks, then a Linear to ``K``.

    Layers, in order (:attr:`layers`): for each width ``w`` in ``hidden``,
    ``Linear -> BatchNorm1d(w)`` (if ``batch_norm``) ``-> ReLU -> Dropout`` (only if
    ``dropout > 0``); then ``Linear(hidden[-1] or in_features, K)``. With an empty
    ``hidden`` it is a single linear layer and ``batch_norm``/``dropout`` have no effect.

    Parameter count: with widths ``w_0 = in_features, w_1, ..., w_L`` (``hidden``) and
    ``w_{L+1} = K``, ``sum_i (w_i * w_{i+1} + w_{i+1})`` plus ``2 * sum(hidden)`` with
    batch norm (running statistics are buffers).

    Note:
        With ``batch_norm=True`` and a non-empty ``hidden``, a training batch of size 1
        raises ValueError (PyTorch BatchNorm1d).
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        hidden: Sequence[int] = (),
        batch_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        """Build the head.

        Args:
            in_features: width ``D`` of the features, the encoder's ``out_dim``.
            n_classes: number of classes ``K`` (width of the logits).
            hidden: widths of the hidden layers, possibly empty (a Hydra ``ListConfig``
                is accepted).
            batch_norm: BatchNorm1d after each hidden Linear layer.
            dropout: dropout probability after each hidden ReLU, in ``[0, 1)``; 0 adds
                no Dropout module.

        Raises:
            i2dl.errors.ConfigError: (a ``ValueError``) on a non-positive or non-int
                ``in_features``, ``n_classes`` or width, a non-bool ``batch_norm``, or
                ``dropout`` outside ``[0, 1)``.
        """
        super().__init__()
        owner = type(self).__name__
        check_positive_int(owner, "in_features", in_features)
        check_positive_int(owner, "n_classes", n_classes)
        widths = check_widths(owner, "hidden", hidden)
        if not isinstance(batch_norm, bool):
            raise ConfigError(
                f"{owner}: `batch_norm` must be true or false, got {batch_norm!r}"
            )
        p = check_dropout(owner, dropout)
        self.in_features = in_features
        self.n_classes = n_classes
        self.hidden = tuple(widths)
        self.batch_norm = batch_norm
        self.dropout = p
        all_widths = [in_features, *widths]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(all_widths[:-1], all_widths[1:], strict=True):
            layers += dense_block(w_in, w_out, batch_norm, p)
        layers.append(nn.Linear(all_widths[-1], n_classes))
        self.layers = nn.Sequential(*layers)
        log.debug(
            "%s: D=%d K=%d hidden=%s batch_norm=%s dropout=%s, %d parameters",
            owner,
            in_features,
            n_classes,
            widths,
            batch_norm,
            p,
            sum(q.numel() for q in self.parameters()),
        )

    def forward(self, features: Tensor) -> Tensor:
        """Logits of a batch of encoder features.

        Args:
            features: ``(B, D)`` float32, the output of an encoder, ``D = in_features``.

        Returns:
            ``(B, K)`` float32 logits (unnormalised class scores).

        Raises:
            ValueError: if ``features`` is not 2-D with ``in_features`` columns.
        """
        if features.ndim != 2 or features.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: `features` must have shape (B, {self.in_features})"
                f" (in_features), got {tuple(features.shape)}; build the head with "
                f"in_features=encoder.out_dim"
            )
        return self.layers(features)
