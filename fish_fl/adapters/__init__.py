"""What ``peft``-backed methods share: seeded wrapping, the adapter mask, the adapter export.

A method that trains a ``peft`` adapter has its own folder (its keys, its
builder, its wire: a subclass of :class:`AdapterMethod` that says how to
build the ``peft`` config). ``peft`` itself is imported only when a model is
wrapped.
"""

from .method import ADAPTER_FOLDER, AdapterMethod
from .peft_wrap import (
    adapter_mask,
    adapter_parameter_names,
    base_numel,
    check_adapter_names,
    check_targets,
    conv_targets,
    default_targets,
    head_module_names,
    merged,
    save_adapter,
    wrap_with_adapter,
)

__all__ = [
    "ADAPTER_FOLDER",
    "AdapterMethod",
    "adapter_mask",
    "adapter_parameter_names",
    "base_numel",
    "check_adapter_names",
    "check_targets",
    "conv_targets",
    "default_targets",
    "head_module_names",
    "merged",
    "save_adapter",
    "wrap_with_adapter",
]
