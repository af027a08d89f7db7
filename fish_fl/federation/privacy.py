"""Client-level differential privacy on the ``k``-vector: DP-FedAvg.

McMahan et al., "Learning Differentially Private Recurrent Language Models",
ICLR 2018, with adaptive clipping from Andrew et al., "Differentially Private
Learning with Adaptive Clipping", NeurIPS 2021. Each round ``m`` of ``N``
clients are sampled; each reply's update ``Δᵢ`` (its ``k``-vector: with one
shared mask every client sends the same ``k`` coordinates, so noise is
needed on ``k`` entries only) is clipped to norm ``C``,

    Δ̃ᵢ = Δᵢ · min(1, C / ‖Δᵢ‖₂),

and the server releases

    sum:  Σᵢ Δ̃ᵢ + N(0, σ² I)          mean:  (Σᵢ Δ̃ᵢ + N(0, σ² I)) / m

with ``σ = z C`` and the fixed denominator ``m`` (the number sampled, not the
number that answered, so a reply's presence changes the sum by at most ``C``).

- ``central``: the server clips and adds the noise (it sees the clear updates).
- ``local``: each client clips its own update and adds ``N(0, σ²/m · I)``, so
  the sum of ``m`` replies carries the same variance ``σ²``; the server
  tops the noise up by ``σ² (m − r)/m`` when only ``r < m`` replies are
  combined. The epsilon reported is that of the released model, as in the
  central case; against the server itself each reply is a Gaussian mechanism
  of multiplier ``z / √m`` without sampling amplification.

Adaptive clipping (``dp-clip-quantile`` γ > 0, central only): the server
counts the replies within the bound, ``b = Σᵢ 1[‖Δᵢ‖ ≤ C]``, releases
``b̃ = (b + N(0, σ_b²)) / m`` and sets ``C ← C · exp(−η (b̃ − γ))``. The count is
a second Gaussian query; the update noise is then ``z_Δ = (z⁻² − (2σ_b)⁻²)^(-1/2)``
so that the two together cost what one query of multiplier ``z`` costs
(Andrew et al., Theorem 1).

Accounting is Opacus's (``RDPAccountant`` or ``PRVAccountant``), one step per
round of the sampled Gaussian mechanism at ``q = m / N``. The sampler draws
exactly ``m`` clients without replacement, whereas the accountants analyse
Poisson sampling at rate ``q``; this is the usual approximation of DP-FedAvg
implementations. With ``dp-target-epsilon`` and no ``dp-noise-multiplier``,
``z`` is solved before training (Opacus's ``get_noise_multiplier``) so that
``rounds`` rounds spend the target.

State that must survive a resume (the accountant's history of
``(z, q, steps)`` and the current clip norm) is stored as float64 tensors in
:attr:`ServerState.extra <fish_fl.federation.state.ServerState>` under
:data:`PREFIX`. :meth:`Privacy.combine` is pure: it returns the new state.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DP_ACCOUNTANTS",
    "DP_MODES",
    "PREFIX",
    "Privacy",
    "PrivacyConfig",
    "clip_update",
    "local_privatise",
    "solve_noise_multiplier",
]

DP_MODES: tuple[str, ...] = ("off", "central", "local")
DP_ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")

#: Names of the privacy state in ``ServerState.extra``.
PREFIX = "extra/dp/"
_HISTORY, _CLIP = PREFIX + "history", PREFIX + "clip"


@functools.lru_cache(maxsize=32)
def solve_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """The noise multiplier with which ``steps`` rounds spend ``target_epsilon`` (Opacus)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=0.01 * target_epsilon,
        )
    )


@dataclass(frozen=True)
class PrivacyConfig:
    """DP-FedAvg settings, from the ``dp-*`` keys and the federation's size.

    Attributes
    ----------
    mode
        ``off``, ``central`` or ``local``.
    clip
        ``C``, the bound on a reply's update norm (the initial one when adaptive).
    noise_multiplier
        ``z`` (0: solved from ``target_epsilon``).
    delta
        The ``δ`` of the reported ``(ε, δ)``.
    target_epsilon
        Stop before a round would take ``ε`` above it (0: no target).
    clip_quantile
        ``γ`` of adaptive clipping (0: fixed ``C``).
    clip_lr
        ``η`` of adaptive clipping (geometric step).
    clip_count_noise
        ``σ_b`` of the clipped count (0: ``m / 20``, Andrew et al.'s choice).
    accountant
        ``rdp`` or ``prv`` (Opacus).
    clients_per_round, num_clients, rounds
        ``m``, ``N`` and the rounds ``z`` is solved for.
    """

    mode: str = "off"
    clip: float = 1.0
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    target_epsilon: float = 0.0
    clip_quantile: float = 0.0
    clip_lr: float = 0.2
    clip_count_noise: float = 0.0
    accountant: str = "rdp"
    clients_per_round: int = 1
    num_clients: int = 1
    rounds: int = 1

    def __post_init__(self) -> None:
        if self.mode not in DP_MODES:
            raise ValueError(f"dp-mode must be one of {', '.join(DP_MODES)}, got {self.mode!r}")
        if self.accountant not in DP_ACCOUNTANTS:
            raise ValueError(f"dp-accountant must be rdp or prv, got {self.accountant!r}")
        if not 0 < self.clients_per_round <= self.num_clients:
            raise ValueError(
                f"{self.clients_per_round} clients per round of {self.num_clients} clients"
            )
        if self.mode == "off":
            return
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"dp-clip={self.clip} must be positive")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp-delta={self.delta} must be in (0, 1)")
        if self.noise_multiplier <= 0 and self.target_epsilon <= 0:
            raise ValueError(
                f"dp-mode={self.mode} needs dp-noise-multiplier > 0 or dp-target-epsilon > 0 "
                "(to solve the noise multiplier for)"
            )
        if not 0 <= self.clip_quantile < 1:
            raise ValueError(f"dp-clip-quantile={self.clip_quantile} must be in [0, 1)")
        if self.adaptive and self.mode == "local":
            raise ValueError(
                "dp-clip-quantile (adaptive clipping) needs dp-mode=central: in local mode "
                "each client clips to a fixed dp-clip before the server sees anything"
            )
        if self.adaptive:
            z, sb = self.noise_multiplier_total, self.count_noise
            if not z < 2 * sb:
                raise ValueError(
                    f"adaptive clipping needs the noise multiplier z={z:.4g} below twice the "
                    f"count noise 2 sigma_b={2 * sb:.4g} (raise dp-clip-count-noise)"
                )
        if self.target_epsilon > 0 and self.noise_multiplier > 0:
            first = self.epsilon_of([(self.noise_multiplier, self.sample_rate, 1)])
            if first > self.target_epsilon:
                raise ValueError(
                    f"one round at dp-noise-multiplier={self.noise_multiplier} already spends "
                    f"epsilon={first:.4g} > dp-target-epsilon={self.target_epsilon}"
                )

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def adaptive(self) -> bool:
        return self.clip_quantile > 0

    @property
    def sample_rate(self) -> float:
        """``q = m / N``."""
        return self.clients_per_round / self.num_clients

    @property
    def noise_multiplier_total(self) -> float:
        """``z``: as given, or solved so that ``rounds`` rounds spend ``target_epsilon``."""
        if self.noise_multiplier > 0:
            return self.noise_multiplier
        return solve_noise_multiplier(
            self.target_epsilon, self.delta, self.sample_rate, self.rounds, self.accountant
        )

    @property
    def count_noise(self) -> float:
        """``σ_b``, the noise on the count of unclipped replies."""
        return self.clip_count_noise if self.clip_count_noise > 0 else self.clients_per_round / 20

    @property
    def update_noise_multiplier(self) -> float:
        """``z_Δ``: ``z`` itself, or what is left of it beside the count query."""
        z = self.noise_multiplier_total
        if not self.adaptive:
            return z
        return (z**-2 - (2 * self.count_noise) ** -2) ** -0.5

    def epsilon_of(self, history: Sequence[tuple[float, float, int]]) -> float:
        """Epsilon at ``delta`` of an accountant history ``[(z, q, steps), ...]``."""
        if not history:
            return 0.0
        accountant = _accountant(self.accountant, history)
        return float(accountant.get_epsilon(delta=self.delta))


def _accountant(kind: str, history: Sequence[tuple[float, float, int]]) -> Any:
    from opacus.accountants import PRVAccountant, RDPAccountant

    accountant = RDPAccountant() if kind == "rdp" else PRVAccountant()
    accountant.history = [(float(z), float(q), int(n)) for z, q, n in history]
    return accountant


def clip_update(delta: Tensor, clip: float) -> tuple[Tensor, float]:
    """``delta · min(1, clip / ‖delta‖)`` and ``delta``'s norm (float64 throughout)."""
    d = delta.double()
    norm = float(d.norm())
    if not math.isfinite(norm):
        raise ValueError("update norm is not finite")
    return (d * (clip / norm) if norm > clip else d), norm


def local_privatise(delta: Tensor, config: PrivacyConfig, generator: torch.Generator) -> Tensor:
    """A client's update under ``dp-mode=local``: clipped to ``C``, plus ``N(0, (zC)²/m)``."""
    clipped, _ = clip_update(delta, config.clip)
    std = config.noise_multiplier_total * config.clip / math.sqrt(config.clients_per_round)
    noise = torch.randn(clipped.shape, generator=generator, dtype=torch.float64) * std
    return (clipped + noise).float()


@dataclass(frozen=True)
class DPRound:
    """What one round's private combination did, for its row."""

    clip: float  # the bound this round used
    noise_std: float  # std of the noise on the sum of updates
    clipped: int  # replies whose update was scaled down (central)
    next_clip: float


class Privacy:
    """The server half of DP-FedAvg: clip, sum, add noise, account."""

    def __init__(self, config: PrivacyConfig) -> None:
        if not config.enabled:
            raise ValueError("Privacy needs dp-mode central or local")
        self.config = config

    # -- state in ServerState.extra ----------------------------------------------
    def history(self, extra: Mapping[str, Tensor]) -> list[tuple[float, float, int]]:
        rows = extra.get(_HISTORY)
        if rows is None:
            return []
        return [(float(z), float(q), int(n)) for z, q, n in rows.tolist()]

    def clip(self, extra: Mapping[str, Tensor]) -> float:
        """The clip norm of the next round."""
        c = extra.get(_CLIP)
        return self.config.clip if c is None else float(c[0])

    def steps(self, extra: Mapping[str, Tensor]) -> int:
        return sum(n for _, _, n in self.history(extra))

    def epsilon(self, extra: Mapping[str, Tensor]) -> float:
        """Epsilon at ``delta`` spent so far."""
        return self.config.epsilon_of(self.history(extra))

    def epsilon_after_next(self, extra: Mapping[str, Tensor]) -> float:
        """Epsilon if one more round were run."""
        return self.config.epsilon_of(_step(self.history(extra), self._step_entry()))

    def target_reached(self, extra: Mapping[str, Tensor]) -> bool:
        """Whether one more round would take epsilon above the target."""
        target = self.config.target_epsilon
        return target > 0 and self.epsilon_after_next(extra) > target * (1 + 1e-9)

    def _step_entry(self) -> tuple[float, float]:
        return self.config.noise_multiplier_total, self.config.sample_rate

    # -- one round --------------------------------------------------------------------
    def combine(
        self,
        deltas: Sequence[Tensor],
        positions: Sequence[Tensor],
        k: int,
        extra: Mapping[str, Tensor],
        generator: torch.Generator,
        *,
        mean: bool,
    ) -> tuple[Tensor, dict[str, Tensor], DPRound]:
        """The private combined delta of a round's replies, the new state and a summary.

        ``deltas[i]`` sits at ``positions[i]`` of the ``k``-vector. The noise
        covers all ``k`` coordinates; the result is float32.
        """
        cfg = self.config
        m = cfg.clients_per_round
        if len(deltas) > m:
            raise ValueError(f"{len(deltas)} replies from {m} sampled clients")
        clip = self.clip(extra)
        total = torch.zeros(k, dtype=torch.float64)
        clipped = within = 0
        for delta, pos in zip(deltas, positions, strict=True):
            if cfg.mode == "central":
                d, norm = clip_update(delta, clip)
                clipped += norm > clip
                within += norm <= clip
            else:  # local: already clipped and noised on the node
                d = delta.double()
            total.index_add_(0, pos, d)
        # 1. Noise on the sum: all of it (central), or the share of the missing replies (local).
        std = cfg.update_noise_multiplier * clip
        if cfg.mode == "local":
            std = cfg.noise_multiplier_total * clip * math.sqrt(max(m - len(deltas), 0) / m)
        if std > 0:
            total += torch.randn(k, generator=generator, dtype=torch.float64) * std
        if mean:
            total /= m
        # 2. Adaptive clipping: a noisy count of the replies within the bound.
        next_clip = clip
        if cfg.adaptive:
            count_noise = float(torch.randn((), generator=generator, dtype=torch.float64))
            noisy = (within + cfg.count_noise * count_noise) / m
            next_clip = clip * math.exp(-cfg.clip_lr * (noisy - cfg.clip_quantile))
        # 3. Account for the round.
        history = _step(self.history(extra), self._step_entry())
        state = {
            _HISTORY: torch.tensor(history, dtype=torch.float64).reshape(-1, 3),
            _CLIP: torch.tensor([next_clip], dtype=torch.float64),
        }
        return total.float(), state, DPRound(clip, std, clipped, next_clip)


def _step(
    history: list[tuple[float, float, int]], entry: tuple[float, float]
) -> list[tuple[float, float, int]]:
    """``history`` after one more step at ``(z, q)`` (merged as Opacus merges its own)."""
    z, q = entry
    if history and history[-1][0] == z and history[-1][1] == q:
        return [*history[:-1], (z, q, history[-1][2] + 1)]
    return [*history, (z, q, 1)]
