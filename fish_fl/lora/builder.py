"""``lora``: the trained LoRA tensors of a ``peft`` model and its task head.

Importing :mod:`fish_fl.lora` registers it. The model is the run's base as
:class:`~fish_fl.lora.method.LoraMethod` wraps it; the builder keeps every
adapter tensor left trainable (``lora_A`` and ``lora_B`` with FedIT, only
``lora_B`` with FFA-LoRA) and the head, whole. ``spec.density`` is not used
here (with ``lora-r=0`` it sets the rank).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from ..adapters import adapter_mask, check_adapter_names
from ..masks import Mask, MaskSpec, register_mask_builder, register_mask_check

__all__ = ["build_lora_mask"]


@register_mask_builder("lora", trains="tensors")
def build_lora_mask(model: nn.Module, spec: MaskSpec, data: Iterable[Any] | None) -> Mask:
    """Every trainable LoRA tensor and every head entry (see the module docstring)."""
    return adapter_mask(model, spec)


@register_mask_check("lora")
def check_lora_names(names: list[str], spec: MaskSpec) -> None:
    check_adapter_names(names, spec, ".lora_")
