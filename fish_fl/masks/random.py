"""``random``: a uniformly random mask of the same budget (the paper's baseline)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .mask import Mask
from .registry import parameter_shapes, register_mask_builder, topk_mask
from .spec import MaskSpec


@register_mask_builder("random")
def build_random_mask(model: nn.Module, spec: MaskSpec, data: Iterable[Any] | None) -> Mask:
    gen = torch.Generator().manual_seed(spec.seed)
    shapes = parameter_shapes(model)
    scores = {n: torch.rand(s, generator=gen) for n, s in shapes.items()}
    return topk_mask(scores, shapes, spec.density, spec.head_patterns)
