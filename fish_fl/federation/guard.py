"""Bounds the server puts on every reply before it is combined.

No reply is taken on trust:

- **Weight.** A reply's ``num-examples`` decides its share of a mean. The
  server caps it at ``weight_cap``: the ``max-client-examples`` key, else the
  largest partition of the server's own split of the data (it knows every
  partition's size), else the lower median of the round's claims. A client
  claiming 10^12 examples weighs no more than the biggest honest one.
- **Norm.** With ``max-update-norm`` set, an update above it is rejected or
  clipped (``norm-policy``). Without it the bound is adaptive: ``norm-factor``
  times the lower median of the norms of this round's updates and of the last
  accepted round's. The lower median is an honest norm whenever at most half
  of the replies are hostile (with two clients: the smaller of the two), so a
  single huge update cannot set its own bound. BatchNorm buffers get the same
  treatment on their change from the global buffers.

Everything is computed in float64 from the decoded values; the happy path
is unchanged bit for bit (no honest update is near the bounds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["NormBound", "cap_weight", "lower_median", "norm_bound"]


def lower_median(values: Sequence[float]) -> float:
    """The lower median (for an even count, the smaller middle value)."""
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def cap_weight(claimed: int, cap: float) -> tuple[float, bool]:
    """The weight a reply gets, and whether its claim was cut down."""
    if claimed <= cap:
        return float(claimed), False
    return float(cap), True


@dataclass(frozen=True)
class NormBound:
    """The bound on one round's norms: ``limit`` (``inf``: none) and where it came from."""

    limit: float
    source: str  # "max-update-norm", "adaptive" or "none"
    policy: str  # "reject" or "clip"

    def check(self, norm: float) -> tuple[bool, float]:
        """``(accepted, scale)``: scale multiplies an accepted update (1 unless clipped)."""
        if not math.isfinite(norm):
            return False, 1.0
        if norm <= self.limit:
            return True, 1.0
        if self.policy == "clip":
            return True, self.limit / norm
        return False, 1.0

    def describe(self, norm: float) -> str:
        if self.source == "max-update-norm":
            return f"norm {norm:.4g} exceeds max-update-norm={self.limit:g}"
        return f"norm {norm:.4g} exceeds the adaptive bound {self.limit:.4g} (norm-factor x median)"


def norm_bound(
    norms: Sequence[float],
    reference: Sequence[float],
    *,
    fixed: float,
    factor: float,
    policy: str,
) -> NormBound:
    """The bound of a round whose replies have ``norms``.

    ``fixed > 0`` is an explicit bound; otherwise ``factor`` times the lower
    median of ``norms`` and ``reference`` (the last accepted round's norms),
    over the finite ones; ``factor <= 0`` switches the adaptive bound off.
    """
    if fixed > 0:
        return NormBound(fixed, "max-update-norm", policy)
    pool = [n for n in (*norms, *reference) if math.isfinite(n)]
    if factor <= 0 or not pool:
        return NormBound(math.inf, "none", policy)
    return NormBound(factor * lower_median(pool), "adaptive", policy)
