"""Typed, validated options of supermask training.

Supermask training follows "How fine can fine-tuning be? Learning efficient
language models" (Radiya-Dixit and Wang, AISTATS 2020, arXiv 2004.14129),
which learns a binary mask over frozen pre-trained weights in the manner of
Zhou et al. (2019, "Deconstructing lottery tickets").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..masks.spec import DEFAULT_HEAD_PATTERNS

__all__ = ["DEFAULT_MASKABLE", "SupermaskConfig"]

#: The encoder's numbered blocks of a BERT-style model (``bert.encoder.layer.N``).
DEFAULT_MASKABLE: tuple[str, ...] = (r"encoder\.layer\.\d+",)


@dataclass(frozen=True)
class SupermaskConfig:
    """How a supermask is laid over a model and trained.

    Attributes
    ----------
    maskable
        Name patterns of the masked parameters (matched as whole dotted
        components, like mask head patterns). Default: the encoder blocks.
    matrices_only
        Mask only parameters with two or more dimensions (weight matrices),
        not biases or LayerNorm weights.
    head_patterns
        Parameters of the task head: never masked, trained normally.
    initial_sparsity
        Fraction of each maskable parameter that starts *off*: the entries of
        smallest magnitude get ``score_low``, the others ``score_high``.
    score_high, score_low
        Initial scores of kept and dropped entries (the paper: +5 and -5, so
        probabilities of about 0.9933 and 0.0067).
    score_lr
        Learning rate of the scores, trained by Adam (about 0.2; much smaller
        rates leave the mask where it started, the paper's Appendix C).
    head_lr
        Learning rate of the task head (AdamW).
    head_weight_decay
        Weight decay of the head's weights.
    seed
        Seed of the wrapper's sampling generator when none is passed.
    """

    maskable: tuple[str, ...] = DEFAULT_MASKABLE
    matrices_only: bool = True
    head_patterns: tuple[str, ...] = DEFAULT_HEAD_PATTERNS
    initial_sparsity: float = 0.0
    score_high: float = 5.0
    score_low: float = -5.0
    score_lr: float = 0.2
    head_lr: float = 1e-3
    head_weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("maskable", "head_patterns"):
            value = getattr(self, key)
            if isinstance(value, str):
                object.__setattr__(self, key, (value,) if value else ())
            elif not all(isinstance(p, str) for p in value):
                raise ValueError(f"supermask {key} must be a list of strings, got {value!r}")
            else:
                object.__setattr__(self, key, tuple(value))
        if not self.maskable:
            raise ValueError("supermask maskable patterns are empty: nothing would be masked")
        if not _finite(self.initial_sparsity) or not 0.0 <= self.initial_sparsity < 1.0:
            raise ValueError(
                f"supermask initial_sparsity must be in [0, 1), got {self.initial_sparsity!r}"
            )
        if not (_finite(self.score_high) and _finite(self.score_low)):
            raise ValueError(
                f"supermask scores must be finite, got high={self.score_high!r} low={self.score_low!r}"
            )
        if self.score_low >= self.score_high:
            raise ValueError(
                f"supermask score_low={self.score_low!r} must be below score_high={self.score_high!r}"
            )
        for key in ("score_lr", "head_lr"):
            value = getattr(self, key)
            if not _finite(value) or value <= 0:
                raise ValueError(f"supermask {key} must be a finite number > 0, got {value!r}")
        if not _finite(self.head_weight_decay) or self.head_weight_decay < 0:
            raise ValueError(
                f"supermask head_weight_decay must be >= 0, got {self.head_weight_decay!r}"
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"supermask seed must be an integer >= 0, got {self.seed!r}")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
