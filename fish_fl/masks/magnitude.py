"""``magnitude``: keep the entries of largest absolute value."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from .registry import register_mask_scorer
from .spec import MaskSpec


@register_mask_scorer("magnitude")
def magnitude_scores(
    model: nn.Module, spec: MaskSpec, data: Iterable[Any] | None
) -> dict[str, Tensor]:
    """Absolute values of the weights."""
    return {n: p.detach().abs() for n, p in model.named_parameters()}
