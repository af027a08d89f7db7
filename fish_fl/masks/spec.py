"""Typed, validated options shared by the mask builders."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["DEFAULT_HEAD_PATTERNS", "MaskSpec"]

DEFAULT_HEAD_PATTERNS: tuple[str, ...] = ("classifier", "fc", "head")


@dataclass(frozen=True)
class MaskSpec:
    """What mask to build.

    Attributes
    ----------
    method
        Registry name of the builder: ``fish``, ``random``, ``magnitude``,
        ``bitfit``, ``layers`` or ``dense`` (see :func:`available_builders`).
    density
        Fraction of all parameters kept, in (0, 1]; ``k = round(density x
        total)``. Used by ``fish``, ``random`` and ``magnitude``; ``bitfit``
        and ``layers`` keep whole parameters and ignore it.
    head_patterns
        Name patterns of the new task head, always kept and counted inside
        the budget. A pattern matches whole dotted components: ``fc`` matches
        ``fc.weight``, not ``fc1.weight``; regex syntax is allowed.
    seed
        Seed of the builder's ``torch.Generator`` (``random``).
    fisher_samples
        ``N``, examples averaged by the Fisher estimate (``fish``).
    fisher_kind
        ``empirical`` (true labels, the paper's choice) or ``true``.
    fisher_likelihood
        ``auto``, ``categorical`` or ``gaussian`` (single-output regression).
    layers_preset
        ``layers`` builder: a named exclusion set (see the ``layers`` module).
    include, exclude
        ``layers`` builder: keep parameters matching ``include`` (all when
        empty), then drop those matching ``exclude``.
    """

    method: str = "fish"
    density: float = 0.005
    head_patterns: tuple[str, ...] = DEFAULT_HEAD_PATTERNS
    seed: int = 0
    fisher_samples: int = 256
    fisher_kind: str = "empirical"
    fisher_likelihood: str = "auto"
    layers_preset: str = ""
    include: tuple[str, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if (
            not isinstance(self.density, (int, float))
            or not math.isfinite(self.density)
            or not (0.0 < self.density <= 1.0)
        ):
            raise ValueError(f"mask density must be in (0, 1], got {self.density!r}")
        if not isinstance(self.fisher_samples, int) or self.fisher_samples <= 0:
            raise ValueError(
                f"fisher_samples must be a positive integer, got {self.fisher_samples!r}"
            )
        if self.fisher_kind not in ("empirical", "true"):
            raise ValueError(f"fisher_kind must be 'empirical' or 'true', got {self.fisher_kind!r}")
        if self.fisher_likelihood not in ("auto", "categorical", "gaussian"):
            raise ValueError(
                "fisher_likelihood must be 'auto', 'categorical' or 'gaussian', "
                f"got {self.fisher_likelihood!r}"
            )
        for key in ("head_patterns", "include", "exclude"):
            value = getattr(self, key)
            if isinstance(value, str):
                object.__setattr__(self, key, (value,) if value else ())
            elif not all(isinstance(p, str) for p in value):
                raise ValueError(f"{key} must be a list of strings, got {value!r}")
            else:
                object.__setattr__(self, key, tuple(value))
