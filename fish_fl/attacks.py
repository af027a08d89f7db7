"""Hostile clients: the attacks a robust server is tested and benchmarked against.

A hostile node runs the honest node's code and then lies in one of three
places: the data it trains on, the ``num-examples`` it reports, or the update
it sends. Each attack is a registered :class:`Attack` whose hooks default to
the honest behaviour, so an attack overrides only what it changes, and a node
that is not hostile never calls any of them (the honest path is the same
code, bit for bit). With ``Δ`` the node's honest update (the ``k``-vector it
would have sent), ``‖·‖`` the L2 norm and ``B`` the server's
``max-update-norm``:

- ``sign-flip`` sends ``−s Δ`` (``s`` = ``attack-scale``, default 1); e.g. Li et
  al., "RSA: Byzantine-Robust Stochastic Aggregation Methods for Distributed
  Learning from Heterogeneous Datasets", AAAI 2019.
- ``scale`` sends ``Δ`` rescaled to a norm ``N`` just under the server's bound:
  ``attack-norm``, else ``m B`` (``m`` = ``attack-margin``, 0.99), else
  ``m f ‖Δ‖`` with ``f`` = ``norm-factor``, just under the adaptive bound when
  the node's norm is the round's median ("explicit boosting", Bhagoji et al.,
  "Analyzing Federated Learning through an Adversarial Lens", ICML 2019).
- ``inflate-examples`` reports ``attack-examples`` (10⁹) examples; its update
  is honest.
- ``label-flip`` trains on the labels ``y → C − 1 − y`` of its ``C`` classes
  (Tolpegin et al., "Data Poisoning Attacks Against Federated Learning
  Systems", ESORICS 2020).
- ``noise`` sends ``N(0, σ² I_k)`` with ``σ`` = ``attack-noise-std``; with ``σ = 0``
  a Gaussian direction of norm ``s ‖Δ‖`` (the "Gaussian" Byzantine worker of
  Blanchard et al., NeurIPS 2017).
- ``collude``: every colluder sends the same ``−N d / ‖d‖``, ``N`` =
  ``attack-norm`` or ``m B``, where ``d`` is the drift of the received
  ``k``-vector from the base (the sum of the server's steps so far: where the
  honest majority is taking the model); before there is any drift (the first
  round on a base) ``d`` is a Gaussian direction drawn from a generator
  seeded by the round's seed alone. Fang et al., "Local Model Poisoning
  Attacks to Byzantine-Robust Federated Learning", USENIX Security 2020,
  likewise craft updates against the direction of change.

The colluders never talk to each other: the drift and the round's seed are
the same on every node (the server sends one seed a round, and with one
shared mask every node receives the same ``k``-vector), so each computes the
same vector on its own. Randomness always comes from a passed
:class:`torch.Generator`: :class:`NodeRound` carries one seeded by the round's
seed and the node's partition (``own``: differs between nodes) and one seeded
by the round's seed alone (``shared``: the same on every node).

The suite exists to show what the server's defences do (the weight cap, the
norm bounds, the robust rules of :mod:`fish_fl.federation.robust`); nothing
here is used by an honest run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

from . import protocol as P
from .codec import UpdateCodec

if TYPE_CHECKING:
    from .data.batch import Batch
    from .tasks.base import LabelSpace

__all__ = [
    "ATTACKS",
    "UPDATE_ATTACKS",
    "Attack",
    "AttackConfig",
    "FlippedLabels",
    "NodeRound",
    "collusion_update",
    "flip_labels",
    "gaussian_update",
    "hostile_node",
    "register_attack",
    "scale_to_norm",
    "sign_flip",
]

# Keep an attack's draws apart from the training's and the local DP noise's draws.
_OWN_SALT = 0xA77A_C0DE
_SHARED_SALT = 0xC011_0DE5
_SEED_RANGE = 2**63


# --------------------------------------------------------------------------------
# The attacks themselves: pure functions
# --------------------------------------------------------------------------------
def sign_flip(update: Tensor, scale: float = 1.0) -> Tensor:
    """``−scale · update`` (exactly ``−update`` for ``scale = 1``)."""
    return update.neg() if scale == 1.0 else update * -scale


def scale_to_norm(update: Tensor, norm: float) -> Tensor:
    """``update`` rescaled to L2 norm ``norm`` (computed in float64); a zero update stays zero."""
    if not (math.isfinite(norm) and norm >= 0):
        raise ValueError(f"target norm must be a finite number >= 0, got {norm}")
    current = float(update.double().norm())
    if current == 0.0:
        return update.float().clone()
    return (update.double() * (norm / current)).float()


def flip_labels(targets: Tensor, num_labels: int) -> Tensor:
    """Class ``y`` becomes ``num_labels − 1 − y``; refuses regression targets."""
    if targets.is_floating_point() or num_labels < 2:
        raise ValueError(
            f"label flipping needs class labels (num_labels >= 2, integer targets); got "
            f"num_labels={num_labels}, targets of dtype {targets.dtype}"
        )
    return (num_labels - 1) - targets


def gaussian_update(k: int, std: float, generator: torch.Generator) -> Tensor:
    """``k`` independent ``N(0, std²)`` values, float32."""
    return (torch.randn(k, generator=generator, dtype=torch.float64) * std).float()


def collusion_update(drift: Tensor, norm: float, generator: torch.Generator) -> Tensor:
    """``−norm · drift / ‖drift‖``; a Gaussian direction from ``generator`` when ``drift`` is zero.

    Every colluder passes the same ``drift`` and a generator in the same state,
    so every colluder gets the same vector.
    """
    if float(drift.double().norm()) > 0:
        return scale_to_norm(drift.neg(), norm)
    return scale_to_norm(gaussian_update(drift.numel(), 1.0, generator), norm)


class FlippedLabels:
    """Re-iterable batches of ``batches`` with their class labels flipped (:func:`flip_labels`)."""

    def __init__(self, batches: Iterable[Batch], num_labels: int) -> None:
        self.batches, self.num_labels = batches, num_labels

    def __iter__(self) -> Iterator[Batch]:
        for inputs, targets in self.batches:
            yield inputs, flip_labels(targets, self.num_labels)


# --------------------------------------------------------------------------------
# Configuration and the registry
# --------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttackConfig:
    """Which partitions attack, and how (the ``attack-*`` keys, see :class:`AttackKeys`).

    Attributes
    ----------
    name
        ``none`` or a registered attack (:data:`ATTACKS`).
    attackers
        The hostile partition ids.
    num_clients
        Partitions of the run (every attacker id must be below it).
    scale
        ``sign-flip``: the multiplier of ``−Δ``; ``noise`` without a std: the
        noise's norm in units of ``‖Δ‖``.
    norm
        ``scale``, ``collude``: the crafted update's norm (0: from the server's bound).
    margin
        The fraction of the server's bound a ``scale`` or ``collude`` update is sized to.
    noise_std
        ``noise``: the std of every coordinate (0: a norm of ``scale ‖Δ‖`` instead).
    examples
        ``inflate-examples``: the ``num-examples`` claimed.
    max_update_norm, norm_factor
        The server's bounds (``max-update-norm``, ``norm-factor``), which the
        attacker knows: they are in the run config every node receives.
    """

    name: str = "none"
    attackers: tuple[int, ...] = ()
    num_clients: int = 1
    scale: float = 1.0
    norm: float = 0.0
    margin: float = 0.99
    noise_std: float = 0.0
    examples: int = 10**9
    max_update_norm: float = 0.0
    norm_factor: float = 10.0

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {self.name!r}")
        if self.name == "none":
            return
        if not self.attackers:
            raise ValueError(f"attack={self.name} needs at least one attacker (attackers >= 1)")
        if len(set(self.attackers)) != len(self.attackers):
            raise ValueError(f"attacker-ids repeat a partition: {list(self.attackers)}")
        outside = [a for a in self.attackers if not 0 <= a < self.num_clients]
        if outside:
            raise ValueError(
                f"attackers {outside} are not partitions of num-clients={self.num_clients} "
                f"(ids 0 to {self.num_clients - 1})"
            )
        if not 0.0 < self.margin <= 1.0:
            raise ValueError(f"attack-margin={self.margin} must be in (0, 1]")
        _ATTACKS[self.name].check(self)

    @property
    def bound(self) -> float:
        """The norm a ``scale`` or ``collude`` update aims at when it is fixed (0: none is)."""
        if self.norm > 0:
            return self.norm
        return self.margin * self.max_update_norm


@dataclass(frozen=True)
class NodeRound:
    """What a hostile node knows when it crafts its update.

    Attributes
    ----------
    honest
        The update it would send honestly (float32, as the server would decode it).
    drift
        The received ``k``-vector minus the base's values at the mask: the sum
        of the server's steps since the base was set, the same on every node.
    own
        A generator seeded by the round's seed and the node's partition.
    shared
        A generator seeded by the round's seed alone: the same on every node.
    """

    honest: Tensor
    drift: Tensor
    own: torch.Generator
    shared: torch.Generator

    @classmethod
    def of(
        cls,
        honest: Tensor,
        received: Tensor,
        at_mask: Tensor,
        round_seed: int,
        partition: int,
    ) -> NodeRound:
        """The view of the node of ``partition`` that ``received`` values where its base held ``at_mask``."""
        if at_mask.shape != received.shape:
            raise ValueError(
                f"the mask picks {at_mask.numel()} base values, the node received {received.numel()}"
            )
        own = torch.Generator().manual_seed(
            (round_seed * 7919 + partition) % _SEED_RANGE ^ _OWN_SALT
        )
        shared = torch.Generator().manual_seed(round_seed % _SEED_RANGE ^ _SHARED_SALT)
        return cls(honest, received.float() - at_mask.float(), own, shared)


class Attack:
    """One hostile node's behaviour; each hook defaults to the honest one.

    Subclasses set :attr:`crafts_update` when they replace the update (the run's
    method must then send the plain ``k``-vector update), check their keys in
    :meth:`check`, and register with :func:`register_attack`.
    """

    name: ClassVar[str] = ""
    #: Whether :meth:`craft` replaces the honest update.
    crafts_update: ClassVar[bool] = False

    def __init__(self, config: AttackConfig, partition: int) -> None:
        self.config, self.partition = config, partition

    @classmethod
    def check(cls, config: AttackConfig) -> None:
        """Raise ``ValueError`` on keys this attack cannot honour."""

    def training_batches(self, batches: Iterable[Batch], labels: LabelSpace) -> Iterable[Batch]:
        """The batches the node trains on."""
        return batches

    def claimed_examples(self, honest: int) -> int:
        """The ``num-examples`` the node reports."""
        return honest

    def craft(self, node: NodeRound) -> Tensor:
        """The update the node sends."""
        return node.honest

    def reply(
        self, arrays: dict[str, np.ndarray], codec: UpdateCodec, node: Callable[[Tensor], NodeRound]
    ) -> dict[str, np.ndarray]:
        """The reply's arrays with the crafted update in place of the honest one.

        ``node`` builds the :class:`NodeRound` from the decoded honest update
        (only called by an attack that crafts one, so the others send the
        honest bytes untouched).
        """
        if not self.crafts_update:
            return arrays
        honest = codec.decode(arrays[P.UPDATE])
        return {**arrays, P.UPDATE: codec.encode(self.craft(node(honest)))}


_A = TypeVar("_A", bound=type[Attack])
_ATTACKS: dict[str, type[Attack]] = {}


def register_attack(name: str) -> Callable[[_A], _A]:
    """Class decorator: the attack ``name`` (a value of the ``attack`` key)."""

    def decorate(cls: _A) -> _A:
        if name in _ATTACKS or name == "none":
            raise ValueError(f"attack {name!r} is already registered")
        cls.name = name
        _ATTACKS[name] = cls
        return cls

    return decorate


@register_attack("sign-flip")
class SignFlip(Attack):
    crafts_update = True

    def craft(self, node: NodeRound) -> Tensor:
        return sign_flip(node.honest, self.config.scale)


@register_attack("scale")
class Scale(Attack):
    crafts_update = True

    @classmethod
    def check(cls, config: AttackConfig) -> None:
        if config.bound <= 0 and config.norm_factor <= 0:
            raise ValueError(
                "attack=scale aims just under the server's bound, and this run has none "
                "(max-update-norm=0, norm-factor=0); set attack-norm"
            )

    def craft(self, node: NodeRound) -> Tensor:
        c = self.config
        if c.bound > 0:
            return scale_to_norm(node.honest, c.bound)
        # The adaptive bound is norm-factor x the median norm; the node's own norm stands in.
        return scale_to_norm(
            node.honest, c.margin * c.norm_factor * float(node.honest.double().norm())
        )


@register_attack("inflate-examples")
class InflateExamples(Attack):
    def claimed_examples(self, honest: int) -> int:
        return self.config.examples


@register_attack("label-flip")
class LabelFlip(Attack):
    def training_batches(self, batches: Iterable[Batch], labels: LabelSpace) -> Iterable[Batch]:
        if labels.regression:
            raise ValueError("attack=label-flip needs class labels; this task is a regression")
        return FlippedLabels(batches, labels.num_labels)


@register_attack("noise")
class Noise(Attack):
    crafts_update = True

    def craft(self, node: NodeRound) -> Tensor:
        k = node.honest.numel()
        if self.config.noise_std > 0:
            return gaussian_update(k, self.config.noise_std, node.own)
        norm = self.config.scale * float(node.honest.double().norm())
        return scale_to_norm(gaussian_update(k, 1.0, node.own), norm)


@register_attack("collude")
class Collude(Attack):
    crafts_update = True

    @classmethod
    def check(cls, config: AttackConfig) -> None:
        if len(config.attackers) < 2:
            raise ValueError(
                f"attack=collude needs at least 2 attackers, got {len(config.attackers)}"
            )
        if config.bound <= 0:
            raise ValueError(
                "attack=collude needs a norm every colluder knows: set max-update-norm "
                "(the colluders aim at attack-margin x it) or attack-norm"
            )

    def craft(self, node: NodeRound) -> Tensor:
        return collusion_update(node.drift, self.config.bound, node.shared)


#: ``attack`` choices.
ATTACKS: tuple[str, ...] = ("none", *_ATTACKS)
#: Attacks that replace the update (they need a method whose reply is the plain update).
UPDATE_ATTACKS: tuple[str, ...] = tuple(n for n, a in _ATTACKS.items() if a.crafts_update)


def hostile_node(config: AttackConfig, partition: int) -> Attack | None:
    """The attack the node of ``partition`` plays; ``None`` for an honest node."""
    if config.name == "none" or partition not in config.attackers:
        return None
    return _ATTACKS[config.name](config, partition)
