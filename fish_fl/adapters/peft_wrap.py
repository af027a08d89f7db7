"""PEFT adapters as masks: what every ``peft``-backed method shares.

A method built on this wraps the task's model with ``peft.get_peft_model`` (LoRA,
IA3, ...). The wrapped model's parameters are the base's, frozen, plus the
adapter's; the method's mask keeps the adapter tensors the method trains and
the task head, so the one training loop, the sparse wire (``k`` values down,
a ``k``-vector up), the ledger, checkpoints and resume are those of every
other method. Every node must build the identical wrapped base: the adapter
is initialised from the run seed (:func:`wrap_with_adapter`).

The head stays the base model's own module, trained through the mask, not
one of peft's ``modules_to_save`` (which would keep two copies of it). Only
when an adapter folder is written for ``peft.PeftModel.from_pretrained`` does
the head become a module to save (:func:`save_adapter`), so that the folder
alone rebuilds the federated model.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..masks import Mask, MaskSpec, head_names, parameter_shapes

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel

__all__ = [
    "adapter_mask",
    "check_adapter_names",
    "adapter_parameter_names",
    "base_numel",
    "check_targets",
    "conv_targets",
    "default_targets",
    "head_module_names",
    "merged",
    "save_adapter",
    "wrap_with_adapter",
]


def default_targets(model: nn.Module, mapping: Mapping[str, Sequence[str]]) -> list[str]:
    """peft's default target modules for a Hugging Face model; every convolution otherwise.

    ``mapping`` is one of peft's ``TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING``.
    """
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    if model_type in mapping:
        return list(mapping[model_type])
    return conv_targets(model)


def conv_targets(model: nn.Module) -> list[str]:
    """Every ungrouped 2-d convolution, by full module name (a ResNet's stem and blocks)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1]


def check_targets(model: nn.Module, config: PeftConfig, key: str) -> list[str]:
    """The modules ``config`` targets; a one-line ``ValueError`` when it targets none.

    The error names ``key`` (the run key that set the targets) and a sample of
    the model's module names, so the fix is in the message.
    """
    from peft.tuners.tuners_utils import check_target_module_exists

    matched = [n for n, _ in model.named_modules() if n and check_target_module_exists(config, n)]
    if not matched:
        leaves = dict.fromkeys(
            ".".join(n.split(".")[-2:])
            if re.fullmatch(r"\d+|dense", n.split(".")[-1])
            else n.split(".")[-1]
            for n, m in model.named_modules()
            if n and not list(m.children())
        )
        sample = ", ".join(list(leaves)[:12])
        targets = sorted(config.target_modules) if config.target_modules else []  # type: ignore[attr-defined]
        raise ValueError(
            f"{key}={targets} matches no module of the model; its modules include: {sample}"
        )
    return matched


def wrap_with_adapter(
    model: nn.Module,
    config: PeftConfig,
    *,
    seed: int,
    redraw: Sequence[str] = (),
    freeze: Sequence[str] = (),
) -> PeftModel:
    """``peft.get_peft_model`` made a function of ``seed``.

    peft draws random adapter tensors (LoRA's ``A``) from the global
    generator; the tensors named by the fragments in ``redraw`` are drawn
    again from ``torch.Generator().manual_seed(seed)`` with peft's own
    distribution (Kaiming-uniform, ``a = sqrt(5)``), parameter by parameter in
    name order, and the global generator is left as it was. Tensors peft sets
    to constants (zero, one) keep them. ``freeze`` lists fragments whose
    tensors the method does not train: they are set not to require
    gradients, so the method's mask leaves them out.
    """
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        wrapped = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if any(f".{part}." in name for part in redraw) and not p.is_meta:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=gen)
    for name, p in wrapped.named_parameters():
        if any(f".{part}." in name for part in freeze):
            p.requires_grad_(False)
    return wrapped


def _is_adapter(model: PeftModel, name: str) -> bool:
    return f".{model.base_model.prefix}" in name


def adapter_parameter_names(model: nn.Module) -> list[str]:
    """The adapter tensors a method trains: peft's trainable adapter parameters, in model order."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise ValueError(f"an adapter mask needs a peft.PeftModel, got {type(model).__name__}")
    return [n for n, p in model.named_parameters() if _is_adapter(model, n) and p.requires_grad]


def base_numel(model: nn.Module) -> int:
    """Entries of the model without its adapter (what full-model equivalents count)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return sum(p.numel() for p in model.parameters())
    return sum(p.numel() for n, p in model.named_parameters() if not _is_adapter(model, n))


def adapter_mask(model: nn.Module, spec: MaskSpec) -> Mask:
    """Every trainable adapter tensor and the task head, whole; the base outside.

    Raises
    ------
    ValueError
        If ``model`` is not a ``peft.PeftModel``, has no trainable adapter
        tensor, or no parameter matches ``spec.head_patterns``.
    """
    shapes = parameter_shapes(model)
    adapter = adapter_parameter_names(model)
    if not adapter:
        raise ValueError("the model has no trainable adapter tensor")
    heads = [n for n in head_names(shapes, spec.head_patterns) if n not in adapter]
    if not heads:
        raise ValueError(f"no parameter matches the head patterns {list(spec.head_patterns)}")
    full = Mask.full(shapes)
    keep = set(adapter) | set(heads)
    return Mask({n: full.indices[n] for n in shapes if n in keep}, shapes)


def check_adapter_names(names: list[str], spec: MaskSpec, fragment: str) -> None:
    """Pre-flight: the wrapped model has adapter tensors (``fragment``) and a head."""
    if not any(fragment in n for n in names):
        raise ValueError(f"the wrapped model has no {fragment.strip('.')} tensors")
    shapes: dict[str, tuple[int, ...]] = {n: () for n in names}
    if not head_names(shapes, spec.head_patterns):
        raise ValueError(f"no parameter matches the head patterns {list(spec.head_patterns)}")


def head_module_names(model: nn.Module, head_patterns: Iterable[str]) -> list[str]:
    """Modules of the base model that hold the head's parameters ."""
    shapes = parameter_shapes(model)
    return sorted({n.rsplit(".", 1)[0] for n in head_names(shapes, tuple(head_patterns))})


def save_adapter(trained: PeftModel, head_patterns: Iterable[str], folder: Path) -> Path:
    """Write ``trained``'s adapter and head as a folder ``peft.PeftModel.from_pretrained`` loads.

    A copy of ``trained`` without its adapter (``unload``: the base, with the
    trained head) is wrapped again with the run's adapter config plus the head
    as a module to save; the trained adapter tensors are copied in by name and
    ``save_pretrained`` writes it. Loading the folder onto the run's base then
    rebuilds the federated model.
    """
    from peft import get_peft_model

    base = copy.deepcopy(trained).unload()
    heads = head_module_names(base, head_patterns)
    config = _copy_config(trained.peft_config["default"], modules_to_save=heads)
    with torch.random.fork_rng(devices=[]):
        out = get_peft_model(base, config)
    with torch.no_grad():
        target = dict(out.named_parameters())
        for name, p in trained.named_parameters():
            if _is_adapter(trained, name):
                target[name].copy_(p)
    folder.mkdir(parents=True, exist_ok=True)
    out.save_pretrained(str(folder))
    return folder


def _copy_config(config: PeftConfig, **changes: Any) -> PeftConfig:
    values = config.to_dict()
    values.update(changes)
    values.pop("peft_type", None)
    return type(config)(
        **{k: v for k, v in values.items() if k in type(config).__dataclass_fields__}
    )


def merged(model: nn.Module) -> nn.Module:
    """The base model with the adapter folded into its weights (``merge_and_unload``)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model
