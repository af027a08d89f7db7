"""Federated supermasks: what a client sends and how the server folds it in.

Supermask training (Radiya-Dixit and Wang, "How fine can fine-tuning be?",
AISTATS 2020, arXiv 2004.14129) run across clients. The server holds a
:class:`SupermaskModel`; its trainable entries, under the ``supermask`` mask,
are the scores and the task head, and they travel in the usual ``k``-vector
(mask order: the head first, then the scores, as the wrapper lists its
parameters). Clients train both locally and reply in one of two ways:

``scores``
    The whole ``k``-vector update (score and head deltas), float32; the server
    combines it like any sparse update (sum or example-weighted mean).
``mask``
    A binary mask sampled from the client's trained scores, packed 1 bit per
    masked weight, plus the head's update. The server's new keep probability
    is the example-weighted mean of the sampled masks and its new scores the
    clamped logit of it, as in federated probabilistic masks (FedPM: Isik et
    al., "Sparse random networks for communication-efficient federated
    learning", ICLR 2023); the head's updates are averaged as usual.

With sampled masks the new scores depend on the last round's masks and
weights alone, so the server can send those instead of the float32 scores:
``n`` bits per masked weight for ``n`` clients per round, and the node
rebuilds exactly the server's scores (:func:`values_from_masks`, checked by
:func:`scores_fingerprint`). Before the first aggregation the scores are the
initial ones, which every node holds in its base.

Everything here is framework-free; the Flower strategy and client call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..masks import Mask
from .layer import SupermaskModel
from .pack import aggregate_sampled_masks, pack_mask, packed_size, sample_mask, unpack_mask

__all__ = [
    "DOWNLINKS",
    "UPLINKS",
    "SupermaskLayout",
    "combine_sampled_masks",
    "scores_fingerprint",
    "values_from_masks",
]

#: What a client sends up: a sampled binary mask (1 bit per weight) or score updates.
UPLINKS = ("mask", "scores")
#: How the server sends the scores down: the last round's sampled masks, or float32 scores.
DOWNLINKS = ("masks", "scores")


@dataclass(frozen=True)
class SupermaskLayout:
    """Where the scores and the head sit in the ``k``-vector of a supermask mask.

    Attributes
    ----------
    k
        Length of the ``k``-vector (every score and head entry).
    score_positions
        Positions of the scores in the ``k``-vector, in the order of
        :meth:`SupermaskModel.score_vector`.
    head_positions
        Positions of the head entries, in mask order.
    """

    k: int
    score_positions: Tensor
    head_positions: Tensor

    @classmethod
    def of(cls, wrapper: SupermaskModel, mask: Mask) -> SupermaskLayout:
        """The layout of ``mask`` (the ``supermask`` mask) over ``wrapper``.

        Raises
        ------
        ValueError
            If the mask does not keep exactly every score and head entry.
        """
        scores = wrapper.score_parameter_names()
        heads = set(wrapper.head_parameter_names())
        kept = {name for name, _, _ in mask.segments()}
        if kept != set(scores) | heads or any(
            mask.indices[n].numel() != mask.numel(n) for n in kept
        ):
            raise ValueError(
                "the supermask layout needs a mask that keeps exactly every score and head entry"
            )
        segments = {name: (idx.numel(), offset) for name, idx, offset in mask.segments()}

        def positions(names: Sequence[str]) -> Tensor:
            parts = [torch.arange(off, off + n) for n, off in (segments[m] for m in names)]
            return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

        head_order = [n for n in mask.names if n in heads]
        return cls(mask.k, positions(scores), positions(head_order))

    @property
    def num_scores(self) -> int:
        return int(self.score_positions.numel())

    @property
    def num_head(self) -> int:
        return int(self.head_positions.numel())

    @property
    def packed_bytes(self) -> int:
        """Bytes of a packed sampled mask: ``ceil(num_scores / 8)``."""
        return packed_size(self.num_scores)

    def scores(self, values: Tensor) -> Tensor:
        """The score part of a ``k``-vector, in score-vector order."""
        return values[self.score_positions]

    def head(self, values: Tensor) -> Tensor:
        """The head part of a ``k``-vector."""
        return values[self.head_positions]

    def sample_packed(self, values: Tensor, generator: torch.Generator) -> np.ndarray:
        """A mask drawn from ``Bernoulli(sigmoid(scores))`` of ``values``, packed."""
        return pack_mask(sample_mask(self.scores(values), generator))

    def unpack(self, packed: np.ndarray) -> Tensor:
        """Check and unpack a client's sampled mask (raises ``ValueError`` if malformed)."""
        return unpack_mask(packed, self.num_scores)


def scores_fingerprint(values: Tensor, layout: SupermaskLayout) -> str:
    """A short hash of the score part of a ``k``-vector (float32 bytes)."""
    import hashlib

    data = layout.scores(values).detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(data.tobytes()).hexdigest()[:16]


def values_from_masks(
    base_values: Tensor,
    layout: SupermaskLayout,
    head: Tensor,
    packed: Sequence[np.ndarray],
    weights: Sequence[float],
    *,
    max_score: float = 5.0,
) -> Tensor:
    """The ``k``-vector a node rebuilds from a mask downlink.

    Parameters
    ----------
    base_values
        The ``k``-vector of the node's base (its scores are the initial ones).
    head
        The head's current values, ``num_head`` of them.
    packed, weights
        The sampled masks of the server's last aggregation and their weights;
        empty before the first one (the scores are then the base's).

    Raises
    ------
    ValueError
        On a wrong-sized head or a malformed mask.
    """
    if base_values.numel() != layout.k:
        raise ValueError(f"base values have {base_values.numel()} entries, the layout {layout.k}")
    if head.numel() != layout.num_head:
        raise ValueError(f"head has {head.numel()} values, the layout {layout.num_head}")
    out = base_values.clone().float()
    out[layout.head_positions] = head.float()
    if len(packed):
        _, scores = aggregate_sampled_masks(
            list(packed), layout.num_scores, list(weights), max_score=max_score
        )
        out[layout.score_positions] = scores
    return out


def combine_sampled_masks(
    values: Tensor,
    layout: SupermaskLayout,
    packed: Sequence[np.ndarray],
    head_delta: Tensor,
    weights: Sequence[float],
    *,
    max_score: float = 5.0,
) -> Tensor:
    """The server's new ``k``-vector after a round of sampled masks.

    Parameters
    ----------
    values
        The ``k``-vector the clients were sent.
    layout
        Where scores and head sit in it.
    packed
        One packed sampled mask per accepted client.
    head_delta
        The combined update of the head (already aggregated), ``num_head`` values.
    weights
        Per client (``num-examples``): the weights of the mean of the masks.
    max_score
        Clamp of the new scores (the wrapper's initial high score).

    Raises
    ------
    ValueError
        On a wrong-sized head update, a malformed mask or bad weights.
    """
    if values.numel() != layout.k:
        raise ValueError(f"values have {values.numel()} entries, the layout {layout.k}")
    if head_delta.numel() != layout.num_head:
        raise ValueError(f"head update has {head_delta.numel()} values, the head {layout.num_head}")
    _, scores = aggregate_sampled_masks(
        list(packed), layout.num_scores, list(weights), max_score=max_score
    )
    out = values.clone().float()
    out[layout.score_positions] = scores
    out[layout.head_positions] += head_delta.float()
    return out
