"""``layers``: keep or drop whole parameters by name.

Includes the exclusion sets of "How fine can fine-tuning be? Learning
efficient language models" (Radiya-Dixit and Wang, AISTATS 2020, Table 3):
fine-tuning all of BERT except the key projections, except the two deepest
encoder blocks, or except the word embeddings, stays as accurate as full
fine-tuning.

Presets (``spec.layers_preset``):

``no-key``
    drop every attention key projection.
``no-deepest-2``
    drop the two deepest encoder blocks.
``no-word-embeddings``
    drop the word embeddings.
``no-all-three``
    all three exclusions at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch import nn

from .mask import Mask, compile_patterns
from .registry import parameter_shapes, register_mask_builder, register_mask_check
from .spec import MaskSpec

_KEY = r"attention\.self\.key"
_WORD_EMBEDDINGS = r"embeddings\.word_embeddings"
_BLOCK = re.compile(r"(?:^|\.)(?:encoder\.layer|layers?|h|blocks?)\.(\d+)\.")


def deepest_blocks(names: Iterable[str], count: int) -> list[str]:
    """Name patterns of the ``count`` deepest numbered blocks (``encoder.layer.N``)."""
    found: dict[int, str] = {}
    for name in names:
        m = _BLOCK.search(name)
        if m:
            prefix = m.group(0).lstrip(".")
            found[int(m.group(1))] = re.escape(prefix.rstrip("."))
    if not found:
        raise ValueError("layers preset needs numbered blocks (e.g. encoder.layer.N); none found")
    return [found[i] for i in sorted(found)[-count:]]


#: Named exclusion sets of the ``layers`` builder (the Table 3 ablations, see the module docstring).
LAYERS_PRESETS: tuple[str, ...] = ("no-all-three", "no-deepest-2", "no-key", "no-word-embeddings")


def preset_exclusions(preset: str, names: list[str]) -> tuple[str, ...]:
    presets = {
        "no-key": lambda: [_KEY],
        "no-deepest-2": lambda: deepest_blocks(names, 2),
        "no-word-embeddings": lambda: [_WORD_EMBEDDINGS],
        "no-all-three": lambda: [_KEY, _WORD_EMBEDDINGS, *deepest_blocks(names, 2)],
    }
    if preset not in presets:
        raise ValueError(
            f"unknown layers preset {preset!r}; available: {', '.join(sorted(presets))}"
        )
    return tuple(presets[preset]())


def kept_parameters(names: list[str], spec: MaskSpec) -> set[str]:
    """Names of the parameters a ``layers`` mask keeps whole (the head included)."""
    exclude = spec.exclude + (
        preset_exclusions(spec.layers_preset, names) if spec.layers_preset else ()
    )
    if not spec.include and not exclude:
        raise ValueError("layers mask needs include or exclude patterns, or a layers_preset")
    inc, exc = compile_patterns(spec.include), compile_patterns(exclude)
    keep = {
        n
        for n in names
        if (inc is None or inc.search(n)) and not (exc is not None and exc.search(n))
    }
    for pattern in spec.exclude + spec.include:
        regex = compile_patterns((pattern,))
        if regex is not None and not any(regex.search(n) for n in names):
            raise ValueError(f"layers pattern {pattern!r} matches no parameter of the model")
    head = compile_patterns(spec.head_patterns)
    keep.update(n for n in names if head is not None and head.search(n))
    return keep


@register_mask_check("layers")
def check_layers_spec(names: list[str], spec: MaskSpec) -> None:
    kept_parameters(names, spec)


@register_mask_builder("layers", trains="tensors")
def build_layers_mask(model: nn.Module, spec: MaskSpec, data: Iterable[Any] | None) -> Mask:
    shapes = parameter_shapes(model)
    keep = kept_parameters(list(shapes), spec)
    full = Mask.full(shapes)
    return Mask({n: full.indices[n] for n in keep}, shapes)
