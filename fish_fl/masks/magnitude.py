"""``magnitude``: keep the entries of largest absolute value."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from .mask import Mask
from .registry import parameter_shapes, register_mask_builder, topk_mask
from .spec import MaskSpec


@register_mask_builder("magnitude")
def build_magnitude_mask(model: nn.Module, spec: MaskSpec, data: Iterable[Any] | None) -> Mask:
    scores = {n: p.detach().abs() for n, p in model.named_parameters()}
    return topk_mask(scores, parameter_shapes(model), spec.density, spec.head_patterns)
