"""``ia3``: the IA3 scaling vectors of a ``peft`` model and its task head."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from ..adapters import adapter_mask, check_adapter_names
from ..masks import Mask, MaskSpec, register_mask_builder, register_mask_check

__all__ = ["build_ia3_mask"]


@register_mask_builder("ia3", trains="tensors")
def build_ia3_mask(model: nn.Module, spec: MaskSpec, data: Iterable[Any] | None) -> Mask:
    """Every IA3 vector and every head entry, whole; ``spec.density`` is not used."""
    return adapter_mask(model, spec)


@register_mask_check("ia3")
def check_ia3_names(names: list[str], spec: MaskSpec) -> None:
    check_adapter_names(names, spec, ".ia3_")
