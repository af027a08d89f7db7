"""Server optimisers on the aggregated ``k``-vector: FedAvgM, FedAdam, FedYogi.

The method's ``combine`` gives the new global ``k``-vector ``y``; with a
server optimiser the server treats ``Δ = y − x`` (``x`` the current global
``k``-vector) as a pseudo-gradient and steps ``x`` with it instead, as in
Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2),
and, for ``avgm``, Hsu et al., "Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification", 2019:

- ``avgm``:  ``m ← β m + Δ``;  ``x ← x + η m``
- ``adam``:  ``m ← β₁ m + (1 − β₁) Δ``;  ``v ← β₂ v + (1 − β₂) Δ²``;
  ``x ← x + η m / (√v + τ)``
- ``yogi``:  as ``adam`` but ``v ← v − (1 − β₂) Δ² sign(v − Δ²)``

with ``m`` starting at 0 and ``v`` at ``τ²`` (the paper's ``v₋₁ ≥ τ²``), and,
as in the paper, no bias correction. ``none`` keeps ``y`` as it is.

The state (``m``, ``v``, the steps taken and the mask version it belongs to)
is O(k) and lives in :attr:`ServerState.extra <fish_fl.federation.state.ServerState>`
under :data:`PREFIX`, so the checkpoint saves and restores it with the rest.
When the mask changes (warm-up to sparse, a refresh) the ``k``-vector's
coordinates mean other entries: the state of an older mask version is
dropped and the optimiser starts afresh.

:meth:`ServerOptimizer.step` is pure: it returns the new values and the new
state, and the caller writes the state only when the round is accepted, so
a skipped round leaves the optimiser as it was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PREFIX", "SERVER_OPTIMIZERS", "ServerOptimizer", "ServerOptimizerConfig"]

#: ``server-optimizer`` choices.
SERVER_OPTIMIZERS: tuple[str, ...] = ("none", "avgm", "adam", "yogi")

#: Names of the optimiser's tensors in ``ServerState.extra``.
PREFIX = "extra/server-optimizer/"
_M, _V = PREFIX + "m", PREFIX + "v"
_STEPS, _VERSION = PREFIX + "steps", PREFIX + "mask-version"

#: ``server-lr`` when it is left at 0: FedAvgM's plain step, and a step for the
#: adaptive ones that moves an entry by at most about 0.01 per round.
DEFAULT_LR = {"none": 1.0, "avgm": 1.0, "adam": 1e-2, "yogi": 1e-2}


@dataclass(frozen=True)
class ServerOptimizerConfig:
    """Server optimiser settings.

    Attributes
    ----------
    name
        ``none``, ``avgm``, ``adam`` or ``yogi``.
    lr
        Server learning rate ``η`` (0: :data:`DEFAULT_LR` of ``name``).
    momentum
        ``avgm``'s ``β``.
    beta1, beta2
        ``adam`` and ``yogi``'s decay rates.
    tau
        ``adam`` and ``yogi``'s adaptivity ``τ``.
    """

    name: str = "none"
    lr: float = 0.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.name not in SERVER_OPTIMIZERS:
            raise ValueError(
                f"server-optimizer must be one of {', '.join(SERVER_OPTIMIZERS)}, got {self.name!r}"
            )
        for key in ("lr", "momentum", "beta1", "beta2", "tau"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"server-{key} must be a finite number >= 0, got {value!r}")
        for key in ("momentum", "beta1", "beta2"):
            if getattr(self, key) >= 1:
                raise ValueError(f"server-{key} must be < 1, got {getattr(self, key)!r}")
        if self.name in ("adam", "yogi") and self.tau == 0:
            raise ValueError(f"server-optimizer={self.name} needs server-tau > 0, got 0")

    @property
    def step_size(self) -> float:
        """``η``: ``lr``, or the optimiser's default when ``lr`` is 0."""
        return self.lr if self.lr > 0 else DEFAULT_LR[self.name]


class ServerOptimizer:
    """Steps the global ``k``-vector with the round's pseudo-gradient."""

    def __init__(self, config: ServerOptimizerConfig) -> None:
        self.config = config

    @property
    def active(self) -> bool:
        return self.config.name != "none"

    def step(
        self, values: Tensor, combined: Tensor, extra: Mapping[str, Tensor], mask_version: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The new global ``k``-vector and the optimiser's new state.

        Parameters
        ----------
        values
            The current global ``k``-vector ``x``.
        combined
            What the method combined the round's replies into, ``x + Δ``.
        extra
            The server's ``extra`` tensors, holding the optimiser's last state.
        mask_version
            The current mask version; a state of another version is dropped.

        Returns
        -------
        (new_values, state)
            ``state`` is to be written into ``extra`` if the round is accepted
            (empty for ``none``).
        """
        if not self.active:
            return combined, {}
        c = self.config
        x = values.float()
        delta = combined.float() - x
        m, v, steps = self._state(extra, mask_version, int(x.numel()))
        eta = c.step_size
        if c.name == "avgm":
            m = c.momentum * m + delta
            new = x + eta * m
        else:
            m = c.beta1 * m + (1.0 - c.beta1) * delta
            sq = delta * delta
            if c.name == "adam":
                v = c.beta2 * v + (1.0 - c.beta2) * sq
            else:  # yogi: v moves towards Δ² by at most (1 − β₂) Δ² a step
                v = v - (1.0 - c.beta2) * sq * torch.sign(v - sq)
            new = x + eta * m / (v.sqrt() + c.tau)
        state = {
            _M: m,
            _STEPS: torch.tensor([steps + 1], dtype=torch.int64),
            _VERSION: torch.tensor([mask_version], dtype=torch.int64),
        }
        if c.name != "avgm":
            state[_V] = v
        return new, state

    def _state(
        self, extra: Mapping[str, Tensor], mask_version: int, k: int
    ) -> tuple[Tensor, Tensor, int]:
        """``(m, v, steps)`` of this mask version, or a fresh start."""
        fresh = (
            torch.zeros(k),
            torch.full((k,), self.config.tau**2),
            0,
        )
        version = extra.get(_VERSION)
        if version is None or int(version.reshape(-1)[0]) != mask_version:
            return fresh
        m = extra.get(_M)
        v = fresh[1] if self.config.name == "avgm" else extra.get(_V)
        if m is None or v is None or m.shape != (k,) or v.shape != (k,) or _STEPS not in extra:
            shapes = [None if t is None else tuple(t.shape) for t in (m, v)]
            raise ValueError(
                f"the server optimiser's state does not fit the {k}-entry mask of version "
                f"{mask_version} (m, v: {shapes})"
            )
        return m.float(), v.float(), int(extra[_STEPS].reshape(-1)[0])

    @staticmethod
    def steps(extra: Mapping[str, Tensor]) -> int:
        """Steps taken since the optimiser last started afresh (0 if never)."""
        t = extra.get(_STEPS)
        return 0 if t is None else int(t.reshape(-1)[0])
