"""The run-configuration keys of LoRA training (``mask-method=lora``).

Composed into :class:`~fish_fl.config.RunConfig` by :mod:`fish_fl.methods.keys`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.keys import meta as _meta

__all__ = ["VARIANTS", "LoraKeys"]

#: ``fedit``: A and B both trained and averaged; ``ffa``: A frozen from the seed, B only.
VARIANTS: tuple[str, ...] = ("ffa", "fedit")


@dataclass(frozen=True)
class LoraKeys:
    """Keys of ``mask-method=lora`` (ignored by every other method)."""

    lora_r: int = field(
        default=8,
        metadata=_meta(
            "LoRA rank (0: the rank whose trained entries are closest to density x the model's size)",
            min=0,
        ),
    )
    lora_alpha: float = field(
        default=16.0,
        metadata=_meta("LoRA scaling numerator: the update is (alpha / r) B A", gt=0.0),
    )
    lora_dropout: float = field(
        default=0.0,
        metadata=_meta("dropout on the LoRA branch's input", min=0.0, max=0.99),
    )
    lora_targets: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "module names (or dotted suffixes) that get adapters (empty: peft's defaults for the "
            "model type, e.g. query and value for BERT; every convolution of a ResNet)"
        ),
    )
    lora_variant: str = field(
        default="ffa",
        metadata=_meta(
            "ffa: A frozen from the seed, only B trained and sent (exact average); "
            "fedit: A and B trained and averaged separately",
            choices=VARIANTS,
        ),
    )
