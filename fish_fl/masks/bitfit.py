"""``bitfit``: train only the bias terms (BitFit, Ben Zaken et al., 2021) and the head."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from .mask import Mask
from .registry import head_names, parameter_shapes, register_mask_builder
from .spec import MaskSpec


@register_mask_builder("bitfit", trains="tensors")
def build_bitfit_mask(model: nn.Module, spec: MaskSpec, data: Iterable[Any] | None) -> Mask:
    shapes = parameter_shapes(model)
    keep = set(head_names(shapes, spec.head_patterns))
    keep.update(n for n in shapes if n.rsplit(".", 1)[-1] == "bias")
    if not keep:
        raise ValueError("bitfit: the model has no bias parameters and no head")
    full = Mask.full(shapes)
    return Mask({n: full.indices[n] for n in keep}, shapes)
