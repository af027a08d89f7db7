"""``random``: a uniformly random mask of the same budget (the paper's baseline)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .registry import parameter_shapes, register_mask_scorer
from .spec import MaskSpec


@register_mask_scorer("random")
def random_scores(
    model: nn.Module, spec: MaskSpec, data: Iterable[Any] | None
) -> dict[str, Tensor]:
    """Uniform random scores from a generator seeded with ``spec.seed``."""
    gen = torch.Generator().manual_seed(spec.seed)
    return {n: torch.rand(s, generator=gen) for n, s in parameter_shapes(model).items()}
