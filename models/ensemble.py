"""Deep ensembles: one classifier made of N trained networks whose probabilities are averaged.

Source: B. Lakshminarayanan, A. Pritzel and C. Blundell, "Simple and Scalable Predictive
Uncertainty Estimation using Deep Ensembles", NeurIPS 2017: networks of the same
architecture trained from different random initialisations (and batch orders), their
class probabilities averaged. The forest that i2dl's networks are compared with is itself
an average of 100 trees; an ensemble of a few networks is the deep counterpart (issue 20).

The members are :class:`models.SITSClassifier` modules built from the same model config;
they differ only in their seed (``fit`` trains member ``i`` with seed
``seed + MEMBER_SEED_STRIDE * i``, each with its own checkpoint selection and, when
enabled, its own refit). The ensemble is saved as one checkpoint whose ``state_dict``
holds ``members.<i>.<key>`` entries (tensors only: it loads with
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from i2dl.errors import ConfigError, StoreError
from models.base import SITSClassifier

__all__ = ["MEMBER_SEED_STRIDE", "DeepEnsemble", "member_seed"]

#: member ``i`` of an ensemble is trained with ``seed + MEMBER_SEED_STRIDE * i``
MEMBER_SEED_STRIDE = 10_000


def member_seed(seed: int, index: int) -> int:
    """The seed of member ``index`` of the ensemble of a run of seed ``seed``.

    Member 0 keeps the run's seed, so an ensemble's first member is the single network
    the same run would train without an ensemble.
    """
    return int(seed) + MEMBER_SEED_STRIDE * int(index)


class DeepEnsemble(nn.Module):
    """Average of the class probabilities of N trained networks.

    Implements the :class:`models.base.Classifier` protocol (``predict_proba``,
    ``load_weights``, ``to``) used by evaluate and infer, so an ensemble is evaluated and
    mapped like any model; ``maps/confidence.tif`` is then the largest averaged
    probability.

    Attributes:
        members: the N networks, in member order.
        n_classes: number of classes ``K`` (the same for every member).
    """

    def __init__(self, members: Sequence[SITSClassifier]) -> None:
        """Wrap trained (or to-be-loaded) networks.

        Args:
            members: at least one :class:`~models.SITSClassifier`, all with the same
                ``n_classes``.

        Raises:
            i2dl.errors.ConfigError: (a ``ValueError``) no member, a member that is not a
                ``SITSClassifier``, or members with different class counts.
        """
        super().__init__()
        if not members:
            raise ConfigError("DeepEnsemble: an ensemble needs at least one member network")
        bad = [type(m).__name__ for m in members if not isinstance(m, SITSClassifier)]
        if bad:
            raise ConfigError(
                f"DeepEnsemble: members must be deep networks (models.SITSClassifier), got "
                f"{bad}; scikit-learn models are ensembles already"
            )
        classes = {m.n_classes for m in members}
        if len(classes) != 1:
            raise ConfigError(f"DeepEnsemble: members disagree on the class count {classes}")
        self.members = nn.ModuleList(members)
        self.n_classes = members[0].n_classes

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
        """Log of the averaged probabilities (usable as logits: same argmax and softmax).

        Args:
            x: ``(B, T, C)`` float32 input features.
            days: ``(B, T)`` int64 or float, days since the reference date.
            mask: ``(B, T)`` bool, True = valid observation.

        Returns:
            ``(B, K)`` float32, ``log(mean_i softmax(member_i(x)))``.
        """
        probs = torch.stack([torch.softmax(m(x, days, mask).float(), -1) for m in self.members])
        return probs.mean(0).clamp_min(torch.finfo(torch.float32).tiny).log()

    def predict_proba(self, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
        """Averaged class probabilities, in eval mode and without gradients.

        Args:
            x: ``(B, T, C)`` float32 input features.
            days: ``(B, T)`` int64 or float, days since the reference date.
            mask: ``(B, T)`` bool, True = valid observation.

        Returns:
            ``(B, K)`` float32, the mean of the members' softmax outputs (rows sum to 1).

        Raises:
            ValueError: propagated from a member on badly shaped input.
        """
        return self.member_probas(x, days, mask).mean(0)

    def member_probas(self, x: Tensor, days: Tensor, mask: Tensor) -> Tensor:
        """Each member's class probabilities: ``(N, B, K)`` float32 (for member reports)."""
        nets = [m for m in self.members if isinstance(m, SITSClassifier)]  # all of them
        return torch.stack([m.predict_proba(x, days, mask) for m in nets])

    def save(self, path: str | Path) -> Path:
        """Write the members' weights as one checkpoint (tensors and plain values only).

        Returns:
            ``path``.
        """
        path = Path(path)
        torch.save({"state_dict": self.state_dict(), "n_members": len(self)}, path)
        return path

    def load_weights(self, path: str | Path) -> None:
        """Load a checkpoint written by :meth:`save`.

        Raises:
            StoreError: no such file, an unreadable file, pickled objects (refused), or
                weights that do not fit these members (another config or member count).
        """
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"ensemble checkpoint {path} not found; run `python -m i2dl fit`")
        try:
            ckpt: Any = torch.load(path, map_location="cpu", weights_only=True)
            state = dict(ckpt["state_dict"])
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError,
                TypeError) as exc:
            raise StoreError(
                f"ensemble checkpoint {path} cannot be read ({exc}); fit the model again"
            ) from None
        for i, member in enumerate(self.members):
            # the loss weights of training (a buffer) are restored whatever each member has
            member.class_weights = state.pop(f"members.{i}.class_weights", None)
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.endswith(".class_weights")]
            if missing or unexpected:
                raise RuntimeError(f"missing keys {missing[:5]}, unexpected {unexpected[:5]}")
        except RuntimeError as exc:
            raise StoreError(
                f"ensemble checkpoint {path} does not match {len(self)} members of the "
                f"network of model.yaml ({exc}); fit the model again"
            ) from None
        self.eval()
