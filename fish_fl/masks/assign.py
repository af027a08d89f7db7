"""Which mask each client trains: one shared mask, or disjoint masks.

The server keeps one *union* mask whose ``k``-vector holds every trained
value. Each client slot trains a sub-mask of it; ``positions`` maps the
slot's own mask order into the union's ``k``-vector (mask orders are
compatible: a sub-mask's entries appear in the union in the same order).

Disjoint masks follow appendix A of the FISH Mask paper (Sung et al., 2021):
rank the top ``M x k`` entries by score and deal them out round-robin, rank
``r`` to client ``r mod M``, so every client gets an equally important share.
The task head is trained by every client.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .mask import Mask
from .registry import head_names, topk_mask

__all__ = ["MaskPlan", "disjoint_plan", "shared_plan"]


@dataclass(frozen=True)
class MaskPlan:
    """The union mask and, per client slot, its mask and positions in the union."""

    union: Mask
    slots: tuple[tuple[Mask, Tensor], ...]

    @property
    def num_slots(self) -> int:
        return len(self.slots)

    def slot(self, i: int) -> tuple[Mask, Tensor]:
        return self.slots[i % len(self.slots)]


def shared_plan(mask: Mask) -> MaskPlan:
    """Every client trains the same mask."""
    return MaskPlan(mask, ((mask, torch.arange(mask.k)),))


def _positions(union: Mask, sub: Mask) -> Tensor:
    parts = []
    for name, idx, offset in union.segments():
        keep = torch.isin(idx, sub.indices[name])
        parts.append(torch.nonzero(keep).view(-1) + offset)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def disjoint_plan(
    scores: dict[str, Tensor],
    shapes: dict[str, tuple[int, ...]],
    density: float,
    num_slots: int,
    head_patterns: tuple[str, ...],
) -> MaskPlan:
    """Disjoint masks of ``density`` each (the head shared), dealt out by score rank.

    Raises
    ------
    ValueError
        If ``density x num_slots`` exceeds 1, or for anything
        :func:`topk_mask` rejects.
    """
    if num_slots < 1:
        raise ValueError(f"num_slots must be >= 1, got {num_slots}")
    if density * num_slots > 1:
        raise ValueError(f"disjoint masks need density x clients <= 1, got {density} x {num_slots}")
    total = sum(int(torch.Size(s).numel()) for s in shapes.values())
    heads = set(head_names(shapes, head_patterns))
    head_size = sum(int(torch.Size(shapes[n]).numel()) for n in heads)
    k = max(1, round(density * total))
    body_k = k - head_size
    if body_k < 0:
        raise ValueError(
            f"the task head ({head_size} entries) is larger than the budget k={k} per client"
        )
    union_k = head_size + body_k * num_slots
    union = topk_mask(scores, shapes, union_k / total, head_patterns)
    # Rank the union's body entries by score (ties: mask order), deal round-robin.
    names = [n for n, idx, _ in union.segments() if n not in heads]
    flat_scores = (
        torch.cat([scores[n].reshape(-1)[union.indices[n]].float() for n in names])
        if names
        else torch.zeros(0)
    )
    order = torch.argsort(flat_scores, descending=True, stable=True)
    owner = torch.empty_like(order)
    owner[order] = torch.arange(order.numel()) % num_slots
    slots = []
    for j in range(num_slots):
        indices: dict[str, Tensor] = {n: union.indices[n] for n in heads}
        offset = 0
        for n in names:
            idx = union.indices[n]
            indices[n] = idx[owner[offset : offset + idx.numel()] == j]
            offset += idx.numel()
        sub = Mask(indices, shapes)
        slots.append((sub, _positions(union, sub)))
    return MaskPlan(union, tuple(slots))
