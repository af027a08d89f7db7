"""Gradual magnitude pruning during fine-tuning, with the cubic schedule.

Zhu and Gupta ("To prune, or not to prune: exploring the efficacy of pruning
for model compression", 2017, arXiv 1710.01878) raise the sparsity of each
prunable weight from ``s_i`` to ``s_f`` over ``n`` pruning steps, one every
``dt`` training steps from step ``t0``:

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3,
    t in {t0, t0 + dt, ..., t0 + n * dt},

pruning fast while the network is still redundant and slowly near the end.
At each pruning step the entries of smallest magnitude are set to zero.
Radiya-Dixit and Wang ("How fine can fine-tuning be?", AISTATS 2020, arXiv
2004.14129) use such sparsified fine-tuning to show that good task solutions
lie among sparse versions of the pre-trained model.

Pruned entries are zero and stay zero: after every optimiser step they are
written back to zero, so they are never updated. This combines with any
update mask (a FISH mask, for instance): the mask says which entries train,
the pruner which entries are zero; :meth:`MagnitudePruner.restrict` drops the
pruned entries from an update mask when a fixed mask is wanted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .masks import Mask, head_names, parameter_shapes
from .masks.mask import compile_patterns
from .training import SparseParameters, TrainStats, cycle_batches, task_loss, train_steps

__all__ = [
    "DEFAULT_PRUNABLE",
    "CubicSchedule",
    "MagnitudePruner",
    "cubic_sparsity",
    "magnitude_keep",
    "prunable_parameters",
    "train_with_pruning",
]

logger = logging.getLogger(__name__)

#: The encoder's numbered blocks of a BERT-style model.
DEFAULT_PRUNABLE: tuple[str, ...] = (r"encoder\.layer\.\d+",)

Scope = Literal["layer", "global"]


def _check_fraction(key: str, value: object, *, closed: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (0.0 <= value <= 1.0) or (not closed and value == 1.0):  # type: ignore[operator]
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"{key} must be in {interval}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def cubic_sparsity(
    step: int,
    *,
    initial: float,
    final: float,
    begin: int,
    num_prunings: int,
    every: int,
) -> float:
    """The target sparsity at training step ``step`` (Zhu and Gupta, 2017).

    ``initial`` before ``begin`` (``t0``), ``final`` from ``begin +
    num_prunings x every`` on, and in between the cubic value at the last
    pruning step reached: ``s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3`` with
    ``t`` rounded down to ``t0 + j dt``.

    Raises
    ------
    ValueError
        On a sparsity outside [0, 1), a negative ``begin``, or
        ``num_prunings`` / ``every`` below 1.
    """
    s_i = _check_fraction("initial sparsity", initial, closed=False)
    s_f = _check_fraction("final sparsity", final, closed=False)
    if not isinstance(begin, int) or begin < 0:
        raise ValueError(f"begin step must be an integer >= 0, got {begin!r}")
    if not isinstance(num_prunings, int) or num_prunings < 1:
        raise ValueError(f"num_prunings must be an integer >= 1, got {num_prunings!r}")
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"pruning frequency (every) must be an integer >= 1, got {every!r}")
    if step < begin:
        return s_i
    j = min((step - begin) // every, num_prunings)
    if j == 0:
        return s_i  # exactly, not s_f + (s_i - s_f)
    if j == num_prunings:
        return s_f
    return s_f + (s_i - s_f) * (1.0 - j / num_prunings) ** 3


@dataclass(frozen=True)
class CubicSchedule:
    """Zhu and Gupta's schedule as an object.

    Attributes
    ----------
    initial, final
        Sparsity ``s_i`` and ``s_f``, in [0, 1).
    begin
        ``t0``: the first pruning step (0-based training step).
    num_prunings
        ``n``: pruning steps after ``t0`` (the last at ``t0 + n dt``).
    every
        ``dt``: training steps between pruning steps.
    """

    initial: float = 0.0
    final: float = 0.5
    begin: int = 0
    num_prunings: int = 10
    every: int = 10

    def __post_init__(self) -> None:
        cubic_sparsity(
            self.begin,
            initial=self.initial,
            final=self.final,
            begin=self.begin,
            num_prunings=self.num_prunings,
            every=self.every,
        )

    @property
    def end(self) -> int:
        """``t0 + n dt``: the last pruning step."""
        return self.begin + self.num_prunings * self.every

    def sparsity(self, step: int) -> float:
        return cubic_sparsity(
            step,
            initial=self.initial,
            final=self.final,
            begin=self.begin,
            num_prunings=self.num_prunings,
            every=self.every,
        )

    def is_pruning_step(self, step: int) -> bool:
        """Steps ``t0, t0 + dt, ..., t0 + n dt``."""
        return self.begin <= step <= self.end and (step - self.begin) % self.every == 0


def prunable_parameters(
    model: nn.Module,
    patterns: tuple[str, ...] = DEFAULT_PRUNABLE,
    *,
    matrices_only: bool = True,
    head_patterns: tuple[str, ...] = ("classifier", "fc", "head"),
) -> list[str]:
    """Parameters matching ``patterns`` (whole dotted components), outside the head.

    Raises
    ------
    ValueError
        If none matches.
    """
    regex = compile_patterns(patterns)
    heads = set(head_names(parameter_shapes(model), head_patterns))
    names = [
        n
        for n, p in model.named_parameters()
        if regex is not None
        and regex.search(n)
        and n not in heads
        and (p.dim() >= 2 or not matrices_only)
    ]
    if not names:
        raise ValueError(f"prunable patterns {list(patterns)!r} match no parameter of the model")
    return names


def _smallest(scores: Tensor, count: int) -> Tensor:
    """Flat positions of the ``count`` smallest scores (ties: earlier index first)."""
    return torch.argsort(scores, stable=True)[:count]


@torch.no_grad()
def magnitude_keep(
    tensors: Mapping[str, Tensor],
    sparsity: float,
    keep: Mapping[str, Tensor] | None = None,
    *,
    scope: Scope = "layer",
) -> dict[str, Tensor]:
    """Boolean keep-sets with ``round(sparsity x numel)`` entries pruned.

    Pruning is monotone: entries already pruned in ``keep`` stay pruned and
    count towards the target; among the rest, the smallest ``|value|`` go
    first (ties: earlier flat index first). ``scope="layer"`` prunes each
    tensor to ``sparsity``; ``"global"`` ranks all tensors together.

    Raises
    ------
    ValueError
        On a sparsity outside [0, 1], an unknown scope, or a ``keep`` of the
        wrong names or shapes.
    """
    s = _check_fraction("sparsity", sparsity)
    if scope not in ("layer", "global"):
        raise ValueError(f"pruning scope must be 'layer' or 'global', got {scope!r}")
    if keep is not None:
        if set(keep) != set(tensors):
            raise ValueError("keep-sets must name exactly the pruned tensors")
        for n, t in tensors.items():
            if keep[n].shape != t.shape:
                raise ValueError(f"keep-set of {n!r} has shape {tuple(keep[n].shape)}")

    def score(n: str) -> Tensor:
        v = tensors[n].detach().abs().reshape(-1).float().cpu()
        if keep is not None:
            v = torch.where(keep[n].reshape(-1).cpu(), v, torch.full_like(v, -math.inf))
        return v

    out: dict[str, Tensor] = {}
    if scope == "layer":
        for n, t in tensors.items():
            flat = torch.ones(t.numel(), dtype=torch.bool)
            flat[_smallest(score(n), int(round(s * t.numel())))] = False
            out[n] = flat.view(t.shape).to(t.device)
        return out
    names = list(tensors)
    scores = torch.cat([score(n) for n in names])
    flat = torch.ones(scores.numel(), dtype=torch.bool)
    flat[_smallest(scores, int(round(s * scores.numel())))] = False
    offset = 0
    for n in names:
        t = tensors[n]
        out[n] = flat[offset : offset + t.numel()].view(t.shape).to(t.device)
        offset += t.numel()
    return out


class MagnitudePruner:
    """Gradual magnitude pruning of some of a model's parameters.

    Parameters
    ----------
    model
        The model pruned in place.
    schedule
        The cubic schedule of target sparsities.
    names
        Parameters to prune (see :func:`prunable_parameters`).
    scope
        ``layer`` (each tensor to the target, as Zhu and Gupta) or ``global``.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: CubicSchedule,
        names: Iterable[str],
        *,
        scope: Scope = "layer",
    ) -> None:
        params = dict(model.named_parameters())
        self.names = list(names)
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ValueError(f"prunable parameter {missing[0]!r} is not in the model")
        if not self.names:
            raise ValueError("nothing to prune: no parameter names given")
        if scope not in ("layer", "global"):
            raise ValueError(f"pruning scope must be 'layer' or 'global', got {scope!r}")
        self.model = model
        self.schedule = schedule
        self.scope: Scope = scope
        self.params = {n: params[n] for n in self.names}
        self.keep: dict[str, Tensor] = {
            n: torch.ones_like(p, dtype=torch.bool) for n, p in self.params.items()
        }
        self.target = 0.0

    def prune_to(self, sparsity: float) -> None:
        """Prune (monotonically) to ``sparsity`` and zero the pruned entries."""
        self.keep = magnitude_keep(self.params, sparsity, self.keep, scope=self.scope)
        self.target = sparsity
        self.enforce()

    def step(self, t: int) -> bool:
        """At a pruning step of the schedule, prune to its target; True if it did."""
        if not self.schedule.is_pruning_step(t):
            return False
        self.prune_to(self.schedule.sparsity(t))
        logger.info("step %d: pruned to sparsity %.4f", t, self.sparsity())
        return True

    @torch.no_grad()
    def enforce(self) -> None:
        """Write zero into every pruned entry."""
        for n, p in self.params.items():
            p.masked_fill_(~self.keep[n], 0.0)

    def sparsity(self) -> float:
        """Fraction of the prunable entries pruned."""
        total = sum(k.numel() for k in self.keep.values())
        pruned = sum(int((~k).sum()) for k in self.keep.values())
        return pruned / total if total else 0.0

    def sparsity_by_parameter(self) -> dict[str, float]:
        return {n: float((~k).double().mean()) for n, k in self.keep.items()}

    def restrict(self, mask: Mask) -> Mask:
        """``mask`` without the pruned entries (an update mask that never touches them)."""
        indices = {}
        for name, idx in mask.indices.items():
            if name in self.keep:
                flat = self.keep[name].reshape(-1).cpu()
                idx = idx[flat[idx]]
            indices[name] = idx
        return Mask(indices, mask.shapes)


def train_with_pruning(
    sparse: SparseParameters,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Any],
    pruner: MagnitudePruner,
    *,
    steps: int,
    device: torch.device,
    start: int = 0,
    grad_clip: float = 0.0,
    amp: bool = False,
    loss_fn: Any = task_loss,
) -> TrainStats:
    """Train ``steps`` steps through :func:`train_steps`, pruning on the schedule.

    Training step ``t`` runs from ``start`` to ``start + steps - 1``. Before
    step ``t`` the pruner prunes if ``t`` is a pruning step; after each step the
    pruned entries are written back to zero, so an update mask that overlaps
    them never moves them.
    """
    if steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if sparse.model is not pruner.model:
        raise ValueError("the pruner and the sparse parameters belong to different models")
    stream = cycle_batches(batches)
    total_loss, examples = 0.0, 0
    for t in range(start, start + steps):
        # 1. prune on the schedule (the trained leaves follow the model).
        if pruner.step(t):
            sparse.sync_from_model()
        # 2. one ordinary sparse step.
        stats = train_steps(
            sparse,
            optimizer,
            stream,
            steps=1,
            device=device,
            grad_clip=grad_clip,
            amp=amp,
            loss_fn=loss_fn,
        )
        # 3. pruned entries are zero whatever the optimiser did.
        pruner.enforce()
        sparse.sync_from_model()
        total_loss += stats.mean_loss * stats.examples
        examples += stats.examples
    return TrainStats(steps=steps, examples=examples, mean_loss=total_loss / max(1, examples))
