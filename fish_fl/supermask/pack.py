"""Federated supermasks: 1-bit mask packing and the server's aggregation math.

Framework-free functions for federated supermask training. Each client
trains its local copy of the scores (Radiya-Dixit and Wang, "How fine can
fine-tuning be?", AISTATS 2020, arXiv 2004.14129) and may send a binary mask
sampled from its scores, packed 1 bit per entry (:func:`pack_mask`); the
server takes the (example-weighted) mean of the clients' masks as the new
keep probability and turns it back into scores with a clamped logit, as in
federated probabilistic masks (FedPM: Isik et al., "Sparse random networks
for communication-efficient federated learning", ICLR 2023) --
:func:`aggregate_sampled_masks`. Score updates need nothing here: they travel
and are combined like any sparse update (:mod:`fish_fl.supermask.federated`).

All vectors are flat, laid out as :meth:`SupermaskModel.score_vector`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .layer import sample_bernoulli

__all__ = [
    "aggregate_sampled_masks",
    "bits_per_parameter",
    "mean_of_masks",
    "pack_mask",
    "packed_size",
    "sample_mask",
    "scores_from_probabilities",
    "unpack_mask",
]


def packed_size(numel: int) -> int:
    """Bytes of a packed mask of ``numel`` entries: ``ceil(numel / 8)``."""
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    return (numel + 7) // 8


def pack_mask(mask: Tensor) -> np.ndarray:
    """Pack a binary mask (any shape, flattened) into ``uint8``, 1 bit per entry.

    Entry ``i`` is bit ``i % 8`` (least significant first) of byte ``i // 8``;
    the padding bits of the last byte are zero.

    Raises
    ------
    ValueError
        If the mask holds a value other than 0 and 1.
    """
    flat = torch.as_tensor(mask).detach().reshape(-1).cpu()
    if flat.dtype != torch.bool:
        if not bool(((flat == 0) | (flat == 1)).all()):
            raise ValueError("pack_mask needs a binary mask (only 0 and 1)")
        flat = flat != 0
    return np.packbits(flat.numpy(), bitorder="little")


def unpack_mask(packed: np.ndarray | bytes | bytearray | memoryview, numel: int) -> Tensor:
    """The boolean mask of ``numel`` entries packed by :func:`pack_mask`.

    Raises
    ------
    ValueError
        If the payload is not ``ceil(numel / 8)`` bytes or a padding bit is set.
    """
    raw = (
        np.frombuffer(bytes(packed), dtype=np.uint8)
        if not isinstance(packed, np.ndarray)
        else packed
    )
    raw = raw.reshape(-1)
    if raw.dtype != np.uint8:
        raise ValueError(f"a packed mask must be uint8 bytes, got dtype {raw.dtype}")
    if raw.size != packed_size(numel):
        raise ValueError(
            f"a packed mask of {numel} entries has {packed_size(numel)} bytes, got {raw.size}"
        )
    bits = np.unpackbits(raw, bitorder="little")
    if bits[numel:].any():
        raise ValueError("packed mask has padding bits set (corrupt or wrong numel)")
    return torch.from_numpy(bits[:numel].astype(bool))


def sample_mask(scores: Tensor, generator: torch.Generator) -> Tensor:
    """A boolean mask drawn from ``Bernoulli(sigmoid(scores))``, seeded by ``generator``."""
    return sample_bernoulli(torch.sigmoid(torch.as_tensor(scores).detach().float()), generator)


def _weights(count: int, weights: Sequence[float] | None) -> Tensor:
    if count == 0:
        raise ValueError("nothing to aggregate: no client reply")
    if weights is None:
        return torch.full((count,), 1.0 / count, dtype=torch.float64)
    if len(weights) != count:
        raise ValueError(f"{count} replies but {len(weights)} weights")
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all zero, got {list(weights)!r}")
    return w / w.sum()


def mean_of_masks(masks: Sequence[Tensor], weights: Sequence[float] | None = None) -> Tensor:
    """The (weighted) mean of binary masks: the new keep probability per entry (float32).

    Raises
    ------
    ValueError
        On no masks, masks of different sizes, or bad weights.
    """
    w = _weights(len(masks), weights)
    flat = [torch.as_tensor(m).reshape(-1) for m in masks]
    if any(m.numel() != flat[0].numel() for m in flat):
        raise ValueError(f"masks have different sizes: {sorted({m.numel() for m in flat})}")
    total = torch.zeros(flat[0].numel(), dtype=torch.float64)
    for wi, m in zip(w, flat, strict=True):
        total += wi * m.to(torch.float64)
    return total.clamp_(0.0, 1.0).to(torch.float32)


def scores_from_probabilities(probs: Tensor, max_score: float = 5.0) -> Tensor:
    """Scores with ``sigmoid(score) = p``, clamped to ``[-max_score, max_score]``.

    A probability of 0 or 1 (every client agreed) maps to ``-max_score`` or
    ``+max_score``, the same bounds as a fresh supermask's initial scores, so
    entries can still change in later rounds.

    Raises
    ------
    ValueError
        If ``max_score`` is not a positive finite number, or a probability is
        outside ``[0, 1]``.
    """
    if not isinstance(max_score, (int, float)) or not math.isfinite(max_score) or max_score <= 0:
        raise ValueError(f"max_score must be a finite number > 0, got {max_score!r}")
    p = torch.as_tensor(probs).double()
    if not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError("probabilities must lie in [0, 1]")
    return torch.logit(p).clamp(-max_score, max_score).to(torch.float32)


def aggregate_sampled_masks(
    packed: Sequence[np.ndarray | bytes],
    numel: int,
    weights: Sequence[float] | None = None,
    *,
    max_score: float = 5.0,
) -> tuple[Tensor, Tensor]:
    """Server step for sampled masks: unpack, average, and turn into scores.

    Parameters
    ----------
    packed
        One packed mask per client (:func:`pack_mask`).
    numel
        Entries per mask (``SupermaskModel.numel_maskable``).
    weights
        Per client, e.g. ``num-examples``; default equal.
    max_score
        Clamp of the new scores (see :func:`scores_from_probabilities`).

    Returns
    -------
    (probabilities, scores)
        The new keep probability and the scores to broadcast, float32.
    """
    probs = mean_of_masks([unpack_mask(p, numel) for p in packed], weights)
    return probs, scores_from_probabilities(probs, max_score)


def bits_per_parameter(payload_bytes: int, numel: int) -> float:
    """Bits sent per masked parameter: ``8 x payload_bytes / numel``.

    A packed mask costs ``8 x ceil(numel / 8) / numel`` (1 plus padding); a
    float32 score update 32.
    """
    if numel <= 0:
        raise ValueError(f"numel must be > 0, got {numel}")
    if payload_bytes < 0:
        raise ValueError(f"payload_bytes must be >= 0, got {payload_bytes}")
    return 8.0 * payload_bytes / numel
