"""``supermask``: the trainable entries of a :class:`SupermaskModel`.

Supermask training (Radiya-Dixit and Wang, AISTATS 2020, arXiv 2004.14129)
trains one score per masked weight and the task head; the pre-trained
weights stay frozen. As a :class:`~fish_fl.masks.Mask` over the wrapper's
parameters this is every score and every head entry, so the one sparse
training loop (:func:`fish_fl.training.train_steps`) trains a supermask, and
its ``k``-vector (scores then head, in mask order) is what a federated client
sends when it sends score updates.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from ..masks import Mask, MaskSpec, parameter_shapes, register_mask_builder
from .layer import SupermaskModel

__all__ = ["build_supermask_mask"]


@register_mask_builder("supermask", trains="learned")
def build_supermask_mask(model: nn.Module, spec: MaskSpec, data: Iterable[Any] | None) -> Mask:
    """Every score and every head entry of a :class:`SupermaskModel`.

    The head is the wrapper's (``SupermaskConfig.head_patterns``);
    ``spec.density`` and ``spec.head_patterns`` are not used.

    Raises
    ------
    ValueError
        If ``model`` is not a :class:`SupermaskModel`.
    """
    if not isinstance(model, SupermaskModel):
        raise ValueError(
            f"the supermask mask needs a SupermaskModel (fish_fl.supermask), got {type(model).__name__}"
        )
    shapes = parameter_shapes(model)
    full = Mask.full(shapes)
    keep = model.score_parameter_names() + model.head_parameter_names()
    return Mask({n: full.indices[n] for n in keep}, shapes)
