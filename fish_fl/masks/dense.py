"""``dense``: every entry trainable (dense training is the mask of density 1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from .mask import Mask
from .registry import parameter_shapes, register_mask_builder
from .spec import MaskSpec


@register_mask_builder("dense", trains="all")
def build_dense_mask(model: nn.Module, spec: MaskSpec, data: Iterable[Any] | None) -> Mask:
    return Mask.full(parameter_shapes(model))
