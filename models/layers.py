"""Building blocks shared by the i2dl pixel-series networks.

Argument checks (raising :class:`i2dl.errors.ConfigError`), the forward-input shape check
every network runs first, dense blocks (also used by :class:`models.head.ClassifierHead`),
and the gap-filled flat input used by the networks that need every date on a fixed grid
(:class:`models.MLP`, in its ``mlp`` and ``ann`` configs, and :class:`models.TempCNN`).

Dimension names: ``B`` batch (pixels), ``T`` dates, ``C`` input channels, ``D`` encoder
output width, ``K`` classes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from i2dl.errors import ConfigError
from i2dl.features.gapfill import linear_gapfill

log = logging.getLogger(__name__)

__all__ = [
    "FlatDenseNet",
    "check_dropout",
    "check_forward_inputs",
    "check_positive_int",
    "check_widths",
    "dense_block",
    "gapfilled",
    "zero_invalid",
]


def check_positive_int(owner: str, name: str, value: object) -> int:
    """Return ``value`` if it is a positive int (bool excluded).

    Args:
        owner: class name used in the message, e.g. ``"TempCNN"``.
        name: parameter name used in the message.
        value: the value to check.

    Returns:
        ``value`` unchanged.

    Raises:
        i2dl.errors.ConfigError: (a ``ValueError``) if ``value`` is not a positive int.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{owner}: `{name}` must be a positive int, got {value!r}")
    return value


def check_period(owner: str, value: object) -> float:
    """Return the positional-encoding ``period`` (days) as a float if it is a number > 0.

    Args:
        owner: class name used in the message.
        value: the period of the sinusoidal encoding of the day offset, in days.

    Returns:
        ``float(value)``.

    Raises:
        i2dl.errors.ConfigError: (a ``ValueError``) if ``value`` is not a number > 0.
    """
    try:
        period = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        period = float("nan")
    if isinstance(value, bool) or not period > 0:
        raise ConfigError(
            f"{owner}: `period` (positional encoding period, days) must be a number > 0, "
            f"got {value!r}; the L-TAE paper uses 1000"
        )
    return period


def check_dropout(owner: str, value: object, name: str = "dropout") -> float:
    """Return ``value`` as a float if it is a probability in ``[0, 1)``.

    Args:
        owner: class name used in the message.
        value: the dropout probability.
        name: parameter name used in the message.

    Returns:
        ``float(value)``.

    Raises:
        i2dl.errors.ConfigError: (a ``ValueError``) if ``value`` is not a number in
            ``[0, 1)``.
    """
    try:
        p = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{owner}: `{name}` must be a number in [0, 1), got {value!r}") from None
    if isinstance(value, bool) or not 0.0 <= p < 1.0:
        raise ConfigError(f"{owner}: `{name}` must be in [0, 1), got {value!r}")
    return p


def check_widths(owner: str, name: str, widths: object, allow_empty: bool = True) -> list[int]:
    """Return ``widths`` as a list of positive ints.

    Args:
        owner: class name used in the message.
        name: parameter name used in the message.
        widths: a sequence of layer widths (a Hydra ``ListConfig`` is accepted).
        allow_empty: whether an empty sequence is allowed.

    Returns:
        The widths as a ``list[int]``.

    Raises:
        i2dl.errors.ConfigError: (a ``ValueError``) if ``widths`` is not a sequence
            (a single int or a string is refused), holds a non-positive or non-int
            value, or is empty while ``allow_empty`` is False.
    """
    if isinstance(widths, (str, bytes, int, float)):
        raise ConfigError(
            f"{owner}: `{name}` must be a list of widths such as [256, 128], got {widths!r}"
        )
    try:
        out = list(widths)  # type: ignore[call-overload]
    except TypeError:
        raise ConfigError(
            f"{owner}: `{name}` must be a list of widths such as [256, 128], got {widths!r}"
        ) from None
    if not out and not allow_empty:
        raise ConfigError(f"{owner}: `{name}` must list at least one width, got {widths!r}")
    for k, w in enumerate(out):
        check_positive_int(owner, f"{name}[{k}]", w)
    return out


def check_forward_inputs(
    owner: str,
    x: Tensor,
    days: Tensor,
    mask: Tensor,
    in_channels: int,
    n_dates: int | None = None,
) -> None:
    """Raise ValueError if the forward inputs have wrong shapes or dtypes.

    Args:
        owner: class name used in the messages.
        x: expected ``(B, T, C)`` floating point.
        days: expected ``(B, T)``.
        mask: expected ``(B, T)`` bool.
        in_channels: the ``C`` the network was built for.
        n_dates: the ``T`` the network was built for, or None when any ``T`` is accepted.

    Raises:
        ValueError: if ``x`` is not 3-D or not floating point, its ``C`` differs from
            ``in_channels``, its ``T`` differs from ``n_dates`` (when given), ``days`` or
            ``mask`` is not ``x.shape[:2]``, or ``mask`` is not bool.
    """
    if x.ndim != 3:
        raise ValueError(
            f"{owner}: `x` must have shape (B, T, C), got {x.ndim}-D shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{owner}: `x` must be a float tensor, got dtype {x.dtype}")
    if x.shape[-1] != in_channels:
        raise ValueError(
            f"{owner}: `x` has C={x.shape[-1]} channels (shape {tuple(x.shape)}) but the "
            f"network was built with in_channels={in_channels}; rebuild it with "
            f"in_channels={x.shape[-1]} or fix the input features"
        )
    if n_dates is not None and x.shape[1] != n_dates:
        raise ValueError(
            f"{owner}: this network was built for T={n_dates} dates (n_dates); got x with "
            f"T={x.shape[1]} (shape {tuple(x.shape)}). Its weights depend on the number of "
            f"dates: infer on the date grid used for training, or rebuild it with "
            f"n_dates={x.shape[1]}"
        )
    if tuple(days.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"{owner}: `days` shape {tuple(days.shape)} must equal x.shape[:2] = "
            f"{tuple(x.shape[:2])} (B, T)"
        )
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"{owner}: `mask` shape {tuple(mask.shape)} must equal x.shape[:2] = "
            f"{tuple(x.shape[:2])} (B, T)"
        )
    if mask.dtype != torch.bool:
        raise ValueError(
            f"{owner}: `mask` must be a bool tensor (True = valid date), got dtype "
            f"{mask.dtype}; pass mask.bool() if it holds 0/1"
        )


def zero_invalid(x: Tensor, mask: Tensor) -> Tensor:
    """Set ``x`` to 0 at invalid dates, so NaN or garbage there cannot propagate.

    Args:
        x: ``(B, T, C)`` float.
        mask: ``(B, T)`` bool, True = valid.

    Returns:
        ``(B, T, C)`` tensor of ``x``'s dtype, zero where ``mask`` is False.
    """
    return torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


def gapfilled(x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
    """The series with invalid dates linearly interpolated in time, as float32.

    iota2 gap-fills every series onto its date grid before its non-sequential
    classifiers see it; see :func:`i2dl.features.gapfill.linear_gapfill`. Values at invalid
    dates are zeroed first, so they have no effect (NaN included); the days of invalid
    dates are used, as the dates to interpolate at.

    Args:
        x: ``(B, T, C)`` float, normalised features.
        days: ``(B, T)`` int64 or float, days since the reference date, non-decreasing.
        mask: ``(B, T)`` bool, True = valid.

    Returns:
        ``(B, T, C)`` float32; a series without any valid date becomes zeros.
    """
    return linear_gapfill(zero_invalid(x.float(), mask), days, mask)


def dense_block(w_in: int, w_out: int, batch_norm: bool, dropout: float) -> list[nn.Module]:
    """Linear, optional BatchNorm1d, ReLU, optional Dropout.

    Args:
        w_in: input width.
        w_out: output width.
        batch_norm: insert ``BatchNorm1d(w_out)`` after the Linear layer.
        dropout: dropout probability; no Dropout module when 0.

    Returns:
        The modules, in order, to splice into an ``nn.Sequential``. Parameters:
        ``w_in * w_out + w_out`` plus ``2 * w_out`` with batch norm.
    """
    layers: list[nn.Module] = [nn.Linear(w_in, w_out)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(w_out))
    layers.append(nn.ReLU())
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers


class FlatDenseNet(nn.Module):
    """Fully connected encoder of the gap-filled, flattened series.

    The implementation of :class:`models.MLP` (iota2's ``MLPClassifier`` and ``ANN`` are its two
    configs, ``configs/model/mlp.yaml`` and ``ann.yaml``). Pipeline: gap-fill invalid dates by
    linear interpolation in time (:func:`gapfilled`), flatten ``(B, T, C) -> (B, T * C)`` in
    date-major order (date 0 channels, then date 1 channels, ...), then one :func:`dense_block` per
    hidden width. The output, of width :attr:`out_dim` (``hidden[-1]``, or ``T * C`` when ``hidden``
    is empty), goes to a :class:`models.head.ClassifierHead`; with ``hidden=[]`` in the head,
    encoder plus head is the former classifier ending in ``Linear(hidden[-1], K)``.

    Parameter count: with widths ``w_0 = T * C, w_1, ..., w_L`` (``hidden``),
    ``sum_i (w_i * w_{i+1} + w_{i+1})`` plus ``2 * sum(hidden)`` with batch norm
    (BatchNorm1d weight and bias; running statistics are buffers).

    Attributes:
        out_dim: width ``D`` of the output features.

    Note:
        With ``batch_norm=True``, a training batch of size 1 raises ValueError
        (PyTorch BatchNorm1d).
    """

    def __init__(
        self,
        in_channels: int,
        n_dates: int,
        hidden: Sequence[int],
        batch_norm: bool,
        dropout: float,
    ) -> None:
        """Build the encoder.

        Args:
            in_channels: input channels ``C`` per date.
            n_dates: number of dates ``T`` of every input series (fixed: the first layer
                has ``T * C`` inputs).
            hidden: widths of the hidden layers (may be empty: the encoder then only
                gap-fills and flattens, and has no parameters).
            batch_norm: BatchNorm1d after each hidden Linear layer.
            dropout: dropout probability after each hidden ReLU, in ``[0, 1)``.

        Raises:
            i2dl.errors.ConfigError: (a ``ValueError``) on a non-positive or non-int size
                or width, a non-bool ``batch_norm``, or ``dropout`` outside ``[0, 1)``.
        """
        super().__init__()
        owner = type(self).__name__
        check_positive_int(owner, "in_channels", in_channels)
        check_positive_int(owner, "n_dates", n_dates)
        widths = check_widths(owner, "hidden", hidden)
        p = check_dropout(owner, dropout)
        if not isinstance(batch_norm, bool):
            raise ConfigError(f"{owner}: `batch_norm` must be true or false, got {batch_norm!r}")
        self.in_channels = in_channels
        self.n_dates = n_dates
        self.hidden = tuple(widths)
        self.batch_norm = batch_norm
        self.dropout = p
        all_widths = [n_dates * in_channels, *widths]
        self.out_dim: int = all_widths[-1]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(all_widths[:-1], all_widths[1:], strict=True):
            layers += dense_block(w_in, w_out, batch_norm, p)
        self.layers = nn.Sequential(*layers)
        log.debug(
            "%s: T=%d C=%d hidden=%s batch_norm=%s dropout=%s, D=%d, %d parameters",
            owner,
            n_dates,
            in_channels,
            widths,
            batch_norm,
            p,
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
            ``(B, D)`` float32 features, ``D = out_dim``. A series without any valid
            date is all zeros after gap-filling, so its features are finite but carry no
            information.

        Raises:
            ValueError: if ``x`` is not ``(B, n_dates, in_channels)`` floating point
                ("this network was built for T=..."), or ``days``/``mask`` is not
                ``(B, T)``, or ``mask`` is not bool.
        """
        check_forward_inputs(type(self).__name__, x, days, mask, self.in_channels, self.n_dates)
        z = gapfilled(x, days, mask).reshape(x.shape[0], -1)  # (B, T * C)
        return self.layers(z)
