"""The run-configuration keys of supermask training (``mask-method=supermask``).

Composed into :class:`~fish_fl.config.RunConfig` by :mod:`fish_fl.methods.keys`;
:func:`fish_fl.supermask.method.supermask_config` turns them into a
:class:`~fish_fl.supermask.config.SupermaskConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.keys import meta as _meta
from .federated import DOWNLINKS, UPLINKS

__all__ = ["SupermaskKeys"]


@dataclass(frozen=True)
class SupermaskKeys:
    """Keys of ``mask-method=supermask`` (ignored by every other method)."""

    supermask_uplink: str = field(
        default="mask",
        metadata=_meta(
            "supermask clients send a sampled binary mask (1 bit per weight) or score updates",
            choices=UPLINKS,
        ),
    )
    supermask_downlink: str = field(
        default="auto",
        metadata=_meta(
            "the server sends the last round's sampled masks (1 bit per weight per client) "
            "or float32 scores (auto: masks when the uplink is masks and under 32 clients a round)",
            choices=("auto", *DOWNLINKS),
        ),
    )
    supermask_initial_sparsity: float = field(
        default=0.0,
        metadata=_meta("fraction of each masked weight that starts off (smallest |w|)", min=0.0),
    )
    supermask_score_lr: float = field(
        default=0.2,
        metadata=_meta("learning rate of the supermask scores (lr: the head's)", gt=0.0),
    )
    supermask_maskable: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "name patterns of the masked weights (empty: the encoder blocks, or a ResNet's convolutions)",
            patterns=True,
        ),
    )
    supermask_eval: str = field(
        default="threshold",
        metadata=_meta(
            "mask of the centralised evaluation: the most likely (threshold) or the expected one",
            choices=("threshold", "expected"),
        ),
    )
    supermask_eval_samples: int = field(
        default=3, metadata=_meta("sampled masks scored after the last round", min=0)
    )
