"""The server's state between rounds: the global model, its mask plan and its base.

Nodes rebuild the model from a *base* they hold (version 0: the model every
node builds itself; each later version: the global model when the mask
changed, after dense warm-up rounds or at a mask refresh) plus the ``k``
masked values the server sends every round. :class:`ServerState` keeps what
that needs: the current plan and values, the base's version and fingerprint,
and, to rebuild the base exactly or patch a node's old one, the plan and
values at the time the base was taken and before the last change.

Everything a checkpoint holds is here (see :mod:`strategies.state`); the
strategy keeps nothing else that outlives a round.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .. import protocol as P
from ..checkpoint import state_fingerprint
from ..ledger import CommLedger
from ..masks.assign import MaskPlan

__all__ = ["ServerState"]

logger = logging.getLogger(__name__)


def _empty() -> Tensor:
    return torch.zeros(0)


@dataclass
class ServerState:
    """What the server keeps between rounds."""

    model: nn.Module
    ledger: CommLedger
    rng: random.Random
    initial_fingerprint: str
    initial_flat: Tensor
    base_fingerprint: str
    run_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    plan: MaskPlan | None = None
    values: Tensor = field(default_factory=_empty)
    mask_version: int = 0
    phase: str = "sparse"
    base_version: int = 0
    # The base at the current version is the current model with the entries
    # of ``base_plan`` reset to ``base_values``.
    base_plan: MaskPlan | None = None
    base_values: Tensor = field(default_factory=_empty)
    prev_plan: MaskPlan | None = None
    prev_mask_version: int = 0
    prev_values: Tensor = field(default_factory=_empty)
    stopped_by_budget: bool = False
    skipped_in_a_row: int = 0
    # Norms of the last accepted round's updates and buffer changes: the
    # reference of the adaptive norm bound (see :mod:`fish_fl.federation.guard`).
    norm_reference: list[float] = field(default_factory=list)
    buffer_reference: list[float] = field(default_factory=list)
    # Tensors the run's method keeps besides (names start with ``extra/``).
    extra: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def initial(cls, model: nn.Module, *, seed: int, model_numel: int) -> ServerState:
        fingerprint = state_fingerprint(dict(model.named_parameters()))
        return cls(
            model=model,
            ledger=CommLedger(model_numel),
            rng=random.Random(seed),
            initial_fingerprint=fingerprint,
            initial_flat=P.flat_parameters(model),
            base_fingerprint=fingerprint,
        )

    @property
    def total(self) -> int:
        return int(self.initial_flat.numel())

    def set_plan(self, plan: MaskPlan) -> None:
        """A new mask version; the base plan is reset to it."""
        self.plan = plan
        self.mask_version += 1
        self.values = plan.union.gather(self.model)
        self.base_plan, self.base_values = plan, self.values.clone()

    def new_base(self) -> None:
        """The global model becomes the base nodes rebuild from."""
        self.prev_plan = self.plan
        self.prev_mask_version = self.mask_version
        self.prev_values = self.values.clone()
        self.base_version += 1
        self.base_fingerprint = state_fingerprint(dict(self.model.named_parameters()))
        self.base_plan, self.base_values = self.plan, self.values.clone()

    def base_flat(self) -> Tensor:
        """The exact base: the current model with the trained entries reset to the base's."""
        params = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        if self.base_plan is not None:
            self.base_plan.union.scatter(params, self.base_values)
        return torch.cat([t.reshape(-1).float().cpu() for t in params.values()])

    def apply_values(self, values: Tensor) -> None:
        """Write a new global ``k``-vector into the model."""
        assert self.plan is not None
        self.values = values
        self.plan.union.scatter(self.model, values)
