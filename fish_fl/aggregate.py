"""Combining client updates of the ``k`` masked values.

Each update is a delta in its client's mask order plus that mask's positions
in the server's ``k``-vector (all positions when every client shares one
mask). ``sum`` adds the deltas, as the FISH Mask paper does for its two
workers; ``mean`` averages them weighted by the clients' example counts,
position by position over the clients that train it. The robust rules
(``median``, ``trimmed-mean``, ``krum``, ``multi-krum``, see
:mod:`fish_fl.federation.robust`) count every reply once and need every
update on the same positions (one shared mask).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .federation.robust import Aggregation, robust_aggregate

__all__ = ["ClientUpdate", "aggregate_updates", "average_buffers"]


@dataclass(frozen=True)
class ClientUpdate:
    """One client's contribution."""

    delta: Tensor  # float32 [k_client]
    positions: Tensor  # int64 [k_client], into the server's k-vector
    weight: float  # examples behind the update

    def __post_init__(self) -> None:
        if self.delta.shape != self.positions.shape:
            raise ValueError(
                f"update has {self.delta.numel()} values for {self.positions.numel()} positions"
            )
        if not self.weight > 0:
            raise ValueError(f"update weight must be positive, got {self.weight}")


def aggregate_updates(
    updates: Sequence[ClientUpdate], k: int, mode: str | Aggregation = "mean"
) -> Tensor:
    """The combined delta for the server's ``k``-vector.

    ``mode`` is an :class:`~fish_fl.federation.robust.Aggregation` or its
    name (with that rule's default settings). Positions no client trained get 0.
    """
    rule = mode if isinstance(mode, Aggregation) else Aggregation(mode)
    if not updates:
        raise ValueError("no update to aggregate")
    if rule.robust:
        return _robust(updates, k, rule)
    mode = rule.name
    total = torch.zeros(k, dtype=torch.float64)
    weight = torch.zeros(k, dtype=torch.float64)
    for u in updates:
        w = 1.0 if mode == "sum" else float(u.weight)
        total.index_add_(0, u.positions, u.delta.double() * w)
        weight.index_add_(0, u.positions, torch.full_like(u.delta, w, dtype=torch.float64))
    if mode == "mean":
        total = torch.where(weight > 0, total / weight.clamp_min(1e-300), total)
    return total.float()


def _robust(updates: Sequence[ClientUpdate], k: int, rule: Aggregation) -> Tensor:
    positions = updates[0].positions
    if any(not torch.equal(u.positions, positions) for u in updates[1:]):
        raise ValueError(
            f"aggregation={rule.name} needs every update on the same positions (a shared mask)"
        )
    combined = robust_aggregate(torch.stack([u.delta.float() for u in updates]), rule)
    out = torch.zeros(k, dtype=torch.float32)
    out[positions] = combined
    return out


def average_buffers(buffers: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Example-weighted mean of dense buffers (BatchNorm statistics)."""
    if not buffers:
        raise ValueError("no buffers to average")
    if len(weights) != len(buffers):
        raise ValueError(f"{len(weights)} weights for {len(buffers)} buffers")
    if not all(isinstance(w, (int, float)) and math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"buffer weights must be finite and positive, got {list(weights)}")
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    stacked = torch.stack([b.double() for b in buffers])
    return ((stacked * w.view(-1, 1)).sum(0) / w.sum()).float()
