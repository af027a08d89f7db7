"""One registry of mask builders, keyed by name.

A builder is a function ``(model, spec, data) -> Mask``. Adding a method means
adding one module that calls :func:`register_mask_builder`; no other builder
changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .mask import Mask, compile_patterns
from .spec import MaskSpec

__all__ = [
    "MaskBuilder",
    "MaskCheck",
    "MaskScorer",
    "check_mask_spec",
    "has_mask_check",
    "register_mask_check",
    "available_scorers",
    "register_mask_scorer",
    "score_parameters",
    "TRAINS",
    "available_builders",
    "what_it_trains",
    "build_mask",
    "head_names",
    "parameter_shapes",
    "register_mask_builder",
    "topk_mask",
]

logger = logging.getLogger(__name__)

MaskBuilder = Callable[[nn.Module, MaskSpec, Iterable[Any] | None], Mask]
MaskScorer = Callable[[nn.Module, MaskSpec, Iterable[Any] | None], dict[str, Tensor]]
#: ``(parameter names, spec) -> None``, raising ValueError on a spec the model cannot take.
MaskCheck = Callable[[list[str], MaskSpec], None]
_BUILDERS: dict[str, MaskBuilder] = {}
_SCORERS: dict[str, MaskScorer] = {}
_CHECKS: dict[str, MaskCheck] = {}
_TRAINS: dict[str, str] = {}

#: What a builder's mask trains: a ``share`` of the entries set by the density,
#: whole ``tensors`` (the density is ignored), ``all`` entries, or a ``learned``
#: mask over frozen weights. Reports and plots describe a run by it.
TRAINS: tuple[str, ...] = ("share", "tensors", "all", "learned")


def register_mask_builder(
    name: str, *, trains: str = "share"
) -> Callable[[MaskBuilder], MaskBuilder]:
    """Decorator adding a builder to the registry under ``name`` (``trains``: see :data:`TRAINS`)."""
    if trains not in TRAINS:
        raise ValueError(f"trains={trains!r}; expected one of {', '.join(TRAINS)}")

    def decorate(fn: MaskBuilder) -> MaskBuilder:
        if name in _BUILDERS:
            raise ValueError(f"mask builder {name!r} is already registered")
        _BUILDERS[name] = fn
        _TRAINS[name] = trains
        return fn

    return decorate


def register_mask_check(name: str) -> Callable[[MaskCheck], MaskCheck]:
    """Decorator adding the check of builder ``name`` that needs only parameter names.

    Pre-flight runs it on the model's names before any weights or data are
    loaded, so a spec the model cannot take fails before the run starts.
    """

    def decorate(fn: MaskCheck) -> MaskCheck:
        if name in _CHECKS:
            raise ValueError(f"mask check {name!r} is already registered")
        _CHECKS[name] = fn
        return fn

    return decorate


def has_mask_check(method: str) -> bool:
    return method in _CHECKS


def check_mask_spec(names: list[str], spec: MaskSpec) -> None:
    """Run the registered check of ``spec.method`` (if any) on a model's parameter names."""
    check = _CHECKS.get(spec.method)
    if check is not None:
        check(names, spec)


def register_mask_scorer(name: str) -> Callable[[MaskScorer], MaskScorer]:
    """Decorator for a per-entry score function; registers the top-k builder too.

    The builder ``name`` keeps the head and the highest-scoring entries (see
    :func:`topk_mask`); the scores themselves stay available through
    :func:`score_parameters`, e.g. for disjoint masks.
    """

    def decorate(fn: MaskScorer) -> MaskScorer:
        def builder(model: nn.Module, spec: MaskSpec, data: Iterable[Any] | None) -> Mask:
            return topk_mask(
                fn(model, spec, data), parameter_shapes(model), spec.density, spec.head_patterns
            )

        builder.__doc__ = fn.__doc__
        register_mask_builder(name)(builder)
        _SCORERS[name] = fn
        return fn

    return decorate


def available_builders() -> list[str]:
    return sorted(_BUILDERS)


def available_scorers() -> list[str]:
    return sorted(_SCORERS)


def what_it_trains(name: str) -> str:
    """What the builder ``name`` trains (:data:`TRAINS`); ``share`` for a name not registered."""
    return _TRAINS.get(name, "share")


def score_parameters(
    model: nn.Module, spec: MaskSpec, data: Iterable[Any] | None = None
) -> dict[str, Tensor]:
    """Per-entry scores of a scored method (``fish``, ``random``, ``magnitude``)."""
    try:
        scorer = _SCORERS[spec.method]
    except KeyError:
        raise ValueError(
            f"mask method {spec.method!r} has no per-entry scores; scored methods: "
            f"{', '.join(available_scorers())}"
        ) from None
    return scorer(model, spec, data)


def build_mask(model: nn.Module, spec: MaskSpec, data: Iterable[Any] | None = None) -> Mask:
    """Build the mask ``spec.method`` describes for ``model``.

    Raises
    ------
    ValueError
        For an unknown method, or anything the builder rejects.
    """
    try:
        builder = _BUILDERS[spec.method]
    except KeyError:
        raise ValueError(
            f"unknown mask method {spec.method!r}; available: {', '.join(available_builders())}"
        ) from None
    mask = builder(model, spec, data)
    mask.check(model)
    logger.info("built %s mask: %s", spec.method, mask)
    return mask


def parameter_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter of the model, in the model's order (the mask order)."""
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def head_names(shapes: dict[str, tuple[int, ...]], patterns: tuple[str, ...]) -> list[str]:
    """Parameters of the task head: names matching any of ``patterns``."""
    regex = compile_patterns(patterns)
    return [n for n in shapes if regex is not None and regex.search(n)]


def budget(total: int, density: float) -> int:
    """``k = round(density x total)``, at least 1."""
    return max(1, int(round(density * total)))


def topk_mask(
    scores: dict[str, Tensor],
    shapes: dict[str, tuple[int, ...]],
    density: float,
    head_patterns: tuple[str, ...],
) -> Mask:
    """Keep the head whole, then the largest scores globally until ``k`` entries.

    Ties at the threshold are broken deterministically: the entry earlier in
    mask order (parameter order, then flat index) wins.

    Raises
    ------
    ValueError
        On non-finite scores, a missing score, or a head larger than ``k``.
    """
    total = sum(int(torch.Size(s).numel()) for s in shapes.values())
    k = budget(total, density)
    heads = set(head_names(shapes, head_patterns))
    if not heads:
        logger.warning("no parameter matches the head patterns %s", head_patterns)
    head_size = sum(int(torch.Size(shapes[n]).numel()) for n in heads)
    if head_size > k:
        raise ValueError(
            f"the task head ({head_size} entries: {', '.join(sorted(heads))}) is larger than "
            f"the budget k={k} (density {density} of {total}); raise the density"
        )
    body = [n for n in shapes if n not in heads]
    for name in body:
        if name not in scores:
            raise ValueError(f"no score for parameter {name!r}")
        if tuple(scores[name].shape) != shapes[name]:
            raise ValueError(
                f"score of {name!r} has shape {tuple(scores[name].shape)}, expected {shapes[name]}"
            )
        if not torch.isfinite(scores[name]).all():
            raise ValueError(f"scores of parameter {name!r} are not finite")
    indices: dict[str, Tensor] = {
        n: torch.arange(int(torch.Size(shapes[n]).numel())) for n in heads
    }
    m = k - head_size
    if m > 0 and body:
        flat = torch.cat([scores[n].detach().reshape(-1).float().cpu() for n in body])
        m = min(m, flat.numel())
        threshold = torch.kthvalue(flat, flat.numel() - m + 1).values
        above = flat > threshold
        need = m - int(above.sum())
        ties = torch.nonzero(flat == threshold).view(-1)[:need]
        keep = above
        keep[ties] = True
        offset = 0
        for name in body:
            n = int(torch.Size(shapes[name]).numel())
            indices[name] = torch.nonzero(keep[offset : offset + n]).view(-1)
            offset += n
    return Mask(indices, shapes)
