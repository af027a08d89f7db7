"""Masks: the :class:`Mask` object and the registry of mask builders.

Builders register themselves on import; each lives in its own module.
"""

from . import bitfit, dense, fish, layers, magnitude, random  # noqa: F401  (registration)
from .mask import Mask, ParameterStats, block_of, compile_patterns
from .registry import (
    MaskBuilder,
    MaskCheck,
    MaskScorer,
    available_builders,
    available_scorers,
    build_mask,
    check_mask_spec,
    has_mask_check,
    head_names,
    parameter_shapes,
    register_mask_builder,
    register_mask_check,
    register_mask_scorer,
    score_parameters,
    topk_mask,
    what_it_trains,
)
from .spec import DEFAULT_HEAD_PATTERNS, MaskSpec

__all__ = [
    "DEFAULT_HEAD_PATTERNS",
    "Mask",
    "MaskBuilder",
    "MaskCheck",
    "MaskScorer",
    "check_mask_spec",
    "has_mask_check",
    "available_scorers",
    "register_mask_scorer",
    "score_parameters",
    "MaskSpec",
    "ParameterStats",
    "available_builders",
    "block_of",
    "build_mask",
    "compile_patterns",
    "head_names",
    "parameter_shapes",
    "register_mask_builder",
    "register_mask_check",
    "topk_mask",
    "what_it_trains",
]
