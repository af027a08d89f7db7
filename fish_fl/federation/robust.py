"""Robust aggregation of ``n`` updates of the same ``k`` coordinates.

With one shared mask every client sends the same ``k`` coordinates, so the
classic Byzantine-robust rules apply to the ``k``-vector as they stand, at a
fraction of their dense cost (``k`` is 0.5% of the model for MiniLM):

- ``median``: the coordinate-wise median (Yin et al., "Byzantine-Robust
  Distributed Learning: Towards Optimal Statistical Rates", ICML 2018); for
  an even ``n`` the mean of the two middle values, as ``numpy.median``.
  O(n k log n).
- ``trimmed-mean``: per coordinate, drop the ``floor(beta n)`` largest and
  smallest values and average the rest (Yin et al. 2018), as
  ``scipy.stats.trim_mean``. O(n k log n).
- ``krum``: the update whose ``n - f - 2`` nearest neighbours are closest in
  squared L2 distance (Blanchard et al., "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent", NeurIPS 2017); needs ``n >= 2f + 3``.
  O(n² k) for the pairwise distances.
- ``multi-krum``: the mean of the ``m`` updates with the lowest Krum scores
  (the same paper; ``m = n - f`` by default).

Every rule here is unweighted: one reply, one vote (a claimed example count
is what an attacker would inflate). Distances are accumulated in float64 over
chunks of coordinates, and sorting is done chunk by chunk, so the extra
memory stays bounded whatever ``k`` is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "AGGREGATIONS",
    "ROBUST_AGGREGATIONS",
    "Aggregation",
    "coordinate_median",
    "krum_scores",
    "krum_select",
    "robust_aggregate",
    "trimmed_mean",
]

#: Rules that treat every reply alike and need every reply on the same coordinates.
ROBUST_AGGREGATIONS: tuple[str, ...] = ("median", "trimmed-mean", "krum", "multi-krum")
#: ``aggregation`` choices.
AGGREGATIONS: tuple[str, ...] = ("sum", "mean", *ROBUST_AGGREGATIONS)

# Elements per chunk when sorting or multiplying (64 MiB of float32).
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Aggregation:
    """How a round's updates are combined.

    Attributes
    ----------
    name
        One of :data:`AGGREGATIONS`.
    trim_beta
        ``trimmed-mean``: the fraction cut from each end, in ``[0, 0.5)``.
    krum_f
        ``krum``, ``multi-krum``: the number of hostile replies tolerated.
    multi_krum_m
        ``multi-krum``: how many updates are averaged (0: ``n - f``).
    """

    name: str = "mean"
    trim_beta: float = 0.1
    krum_f: int = 1
    multi_krum_m: int = 0

    def __post_init__(self) -> None:
        if self.name not in AGGREGATIONS:
            raise ValueError(
                f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.name!r}"
            )
        if not 0.0 <= self.trim_beta < 0.5:
            raise ValueError(f"trim-beta={self.trim_beta} must be in [0, 0.5)")
        if self.krum_f < 0:
            raise ValueError(f"krum-f={self.krum_f} must be >= 0")
        if self.multi_krum_m < 0:
            raise ValueError(f"multi-krum-m={self.multi_krum_m} must be >= 0")

    @property
    def robust(self) -> bool:
        return self.name in ROBUST_AGGREGATIONS

    def min_replies(self) -> int:
        """The fewest replies the rule is defined for."""
        if self.name in ("krum", "multi-krum"):
            return max(2 * self.krum_f + 3, self.multi_krum_m if self.name == "multi-krum" else 0)
        return 1

    def check_replies(self, n: int) -> str | None:
        """Why ``n`` replies are too few for this rule (``None``: enough)."""
        need = self.min_replies()
        if n >= need:
            return None
        if self.name in ("krum", "multi-krum"):
            detail = f"n >= 2 krum-f + 3 = {2 * self.krum_f + 3}"
            if self.name == "multi-krum" and self.multi_krum_m > 2 * self.krum_f + 3:
                detail = f"n >= multi-krum-m = {self.multi_krum_m}"
            return f"{self.name} with krum-f={self.krum_f} needs {detail} replies, got {n}"
        return f"{self.name} needs at least {need} replies, got {n}"


def _step(n: int) -> int:
    """Coordinates per chunk of ``n`` rows."""
    return max(1, _CHUNK_ELEMENTS // max(n, 1))


def _rows(updates: Tensor) -> tuple[int, int]:
    if updates.dim() != 2 or updates.shape[0] == 0:
        raise ValueError(
            f"expected a non-empty [n, k] stack of updates, got {tuple(updates.shape)}"
        )
    return int(updates.shape[0]), int(updates.shape[1])


def coordinate_median(updates: Tensor) -> Tensor:
    """The coordinate-wise median of ``updates`` ``[n, k]`` (mean of the middle two for even ``n``)."""
    n, k = _rows(updates)
    out = torch.empty(k, dtype=torch.float32)
    lo, hi = (n - 1) // 2, n // 2
    step = _step(n)
    for start in range(0, k, step):
        s = updates[:, start : start + step].sort(dim=0).values.double()
        out[start : start + step] = ((s[lo] + s[hi]) / 2).float()
    return out


def trimmed_mean(updates: Tensor, beta: float) -> Tensor:
    """Per coordinate, the mean after dropping ``floor(beta n)`` values from each end."""
    n, k = _rows(updates)
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"trim-beta={beta} must be in [0, 0.5)")
    cut = int(math.floor(beta * n))
    out = torch.empty(k, dtype=torch.float32)
    step = _step(n)
    for start in range(0, k, step):
        s = updates[:, start : start + step].sort(dim=0).values
        out[start : start + step] = s[cut : n - cut].double().mean(0).float()
    return out


def _squared_distances(updates: Tensor) -> Tensor:
    """``[n, n]`` squared L2 distances, ``|a|² + |b|² - 2 a·b`` accumulated in float64."""
    n, k = _rows(updates)
    gram = torch.zeros(n, n, dtype=torch.float64)
    step = _step(n)
    for start in range(0, k, step):
        c = updates[:, start : start + step].double()
        gram += c @ c.T
    sq = gram.diagonal().clone()
    return (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0.0)


def krum_scores(updates: Tensor, f: int) -> Tensor:
    """Each update's Krum score: the sum of squared distances to its ``n - f - 2`` nearest others."""
    n, _ = _rows(updates)
    if n < 2 * f + 3:
        raise ValueError(
            f"krum with krum-f={f} needs n >= 2 krum-f + 3 = {2 * f + 3} updates, got {n}"
        )
    dist = _squared_distances(updates)
    dist.fill_diagonal_(math.inf)  # an update is not its own neighbour
    nearest = dist.sort(dim=1).values[:, : n - f - 2]
    return nearest.sum(1)


def krum_select(updates: Tensor, f: int, m: int = 1) -> Tensor:
    """Indices of the ``m`` updates with the lowest Krum scores (ties: the lower index)."""
    n, _ = _rows(updates)
    if not 1 <= m <= n:
        raise ValueError(f"cannot select {m} of {n} updates")
    scores = krum_scores(updates, f)
    return torch.sort(scores, stable=True).indices[:m]


def robust_aggregate(updates: Tensor, rule: Aggregation) -> Tensor:
    """The robust combination of ``updates`` ``[n, k]`` under ``rule``: a float32 ``[k]``."""
    n, _ = _rows(updates)
    reason = rule.check_replies(n)
    if reason is not None:
        raise ValueError(reason)
    if rule.name == "median":
        return coordinate_median(updates)
    if rule.name == "trimmed-mean":
        return trimmed_mean(updates, rule.trim_beta)
    if rule.name == "krum":
        return updates[int(krum_select(updates, rule.krum_f, 1)[0])].float().clone()
    if rule.name == "multi-krum":
        m = rule.multi_krum_m or n - rule.krum_f
        chosen = krum_select(updates, rule.krum_f, m)
        return updates[chosen].double().mean(0).float()
    raise ValueError(f"{rule.name!r} is not a robust aggregation")
