"""The mask schedule: dense warm-up, the first mask, periodic refresh.

``warmup-rounds`` dense rounds come first (every entry trained: a full
mask); the mask is computed at the first sparse round, and again every
``mask-refresh`` rounds after it. At each change after the first, the global
model becomes the new base nodes rebuild from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ..masks import build_mask, parameter_shapes, score_parameters, topk_mask
from ..masks.assign import MaskPlan, disjoint_plan, shared_plan

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["Transition", "compute_plan", "transition"]


class Transition(Enum):
    """What happens to the mask at the start of a round."""

    NONE = "none"
    WARMUP = "dense (warm-up)"  # round 1 of a run with warm-up rounds: a full mask
    FIRST = "first"  # the first sparse round: the mask is computed
    REFRESH = "refresh"  # a refresh round: new base, new mask


def transition(rnd: int, warmup_rounds: int, mask_refresh: int) -> Transition:
    """The transition at the start of round ``rnd`` (1-based)."""
    if rnd == 1 and warmup_rounds > 0:
        return Transition.WARMUP
    sparse_round = rnd - warmup_rounds
    if sparse_round == 1:
        return Transition.FIRST
    if mask_refresh > 0 and sparse_round > 1 and (sparse_round - 1) % mask_refresh == 0:
        return Transition.REFRESH
    return Transition.NONE


def compute_plan(
    model: nn.Module,
    config: RunConfig,
    calibration: Iterable[Any] | None,
    client_scores: Callable[[], dict[str, Tensor]] | None,
) -> MaskPlan:
    """The run's mask plan: one shared mask, or disjoint masks per client slot.

    ``client_scores`` asks the clients for their Fisher (``mask-source=clients``).
    """
    spec = config.mask_spec()
    shapes = parameter_shapes(model)
    if config.mask_source == "clients":
        if client_scores is None:
            raise ValueError("mask-source=clients needs the clients' scores")
        scores = client_scores()
    elif config.mask_assignment == "disjoint":
        scores = score_parameters(model, spec, calibration)
    else:
        return shared_plan(build_mask(model, spec, calibration))
    if config.mask_assignment == "disjoint":
        return disjoint_plan(
            scores, shapes, config.density, config.num_clients, config.head_patterns
        )
    return shared_plan(topk_mask(scores, shapes, config.density, config.head_patterns))
