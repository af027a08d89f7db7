"""The run-configuration keys of IA3 training (``mask-method=ia3``).

Composed into :class:`~fish_fl.config.RunConfig` by :mod:`fish_fl.methods.keys`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.keys import meta as _meta

__all__ = ["IA3Keys"]


@dataclass(frozen=True)
class IA3Keys:
    """Keys of ``mask-method=ia3`` (ignored by every other method)."""

    ia3_targets: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "module names (or dotted suffixes) whose activations IA3 rescales (empty: peft's "
            "defaults for the model type, e.g. key, value and output.dense for BERT; every "
            "convolution of a ResNet)"
        ),
    )
    ia3_feedforward: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "of those, the feed-forward modules, rescaled on their input (empty with empty "
            "ia3-targets: peft's defaults; otherwise none)"
        ),
    )
