"""``fish``: global top-k of the diagonal Fisher information.

FISH Mask (Sung, Nair and Raffel, NeurIPS 2021, arXiv:2111.09839): score each
parameter by its diagonal empirical Fisher over ``N`` calibration examples and
keep the ``k`` highest-scoring entries over the whole model, the task head
always kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from ..fisher import fisher_diagonal
from .registry import register_mask_scorer
from .spec import MaskSpec


@register_mask_scorer("fish")
def fish_scores(model: nn.Module, spec: MaskSpec, data: Iterable[Any] | None) -> dict[str, Tensor]:
    """Diagonal Fisher of every parameter (all are scored, frozen or not)."""
    if data is None:
        raise ValueError("the fish mask needs calibration data (batches of (inputs, targets))")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        return fisher_diagonal(
            model,
            data,
            n_samples=spec.fisher_samples,
            kind=spec.fisher_kind,  # type: ignore[arg-type]
            likelihood=spec.fisher_likelihood,  # type: ignore[arg-type]
        )
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
