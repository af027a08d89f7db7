"""A method's wire: what a node is sent, what it replies, how replies are checked and combined.

The default, :class:`SparseMethod`, is the FISH Mask protocol that every mask
builder (``fish``, ``random``, ``magnitude``, ``bitfit``, ``layers``,
``dense``) uses: the node receives its ``k`` masked values, trains them and
replies with the ``k``-vector of its update; the server combines the updates
(sum or example-weighted mean) into the global ``k``-vector. A method that
sends or combines something else subclasses it and overrides only what
changes (as Flower's ``FedProx`` overrides one step of ``FedAvg``), and
registers itself with :func:`fish_fl.methods.register_method`.

The server half is called by the strategy, the node half by the ClientApp;
neither half knows Flower: arrays are NumPy arrays, and a reply's arrays
arrive as :class:`~fish_fl.federation.wire.ArrayView` to be decoded safely.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import protocol as P
from ..aggregate import ClientUpdate, aggregate_updates
from ..codec import UpdateCodec
from ..federation.privacy import local_privatise
from ..federation.wire import ArrayView
from ..ledger import paper_message_bytes
from ..masks import Mask
from ..training import SparseParameters, make_optimizer

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..federation.state import ServerState
    from ..federation.sync import Sent

__all__ = ["SparseMethod", "TrainReply"]

# Keeps the local DP noise apart from the training's own draws of the same seed.
_LOCAL_NOISE_SALT = 0x5EED_D1FF


@dataclass
class TrainReply:
    """One accepted training reply, decoded and bounded."""

    node_id: int
    delta: Tensor  # float32, the update in the wire's layout (``update_length`` values)
    positions: Tensor  # the node's mask positions in the server's k-vector
    weight: float  # the examples it counts for, capped by the server
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def update(self) -> ClientUpdate:
        return ClientUpdate(self.delta, self.positions, self.weight)


class SparseMethod:
    """Sparse training under a fixed mask: ``k`` values down, ``k`` values up."""

    #: Run keys besides model, task, width and seed that change the model a node builds.
    model_keys: tuple[str, ...] = ()
    #: Whether a training reply is the node's plain ``k``-vector update (``delta``), so
    #: that client-level DP can clip and noise it (``dp-mode``).
    plain_updates: bool = True
    #: Extra columns of the terminal's round table: (title, width).
    log_columns: tuple[tuple[str, int], ...] = ()

    #: Extra columns of a sweep's summary: (key, title, format) of :meth:`report_stats`.
    report_columns: tuple[tuple[str, str, str], ...] = ()
    #: A sentence under a sweep's summary explaining :attr:`report_columns`.
    report_note: str = ""

    @classmethod
    def log_cells(cls, row: dict[str, Any]) -> list[str]:
        """The round row's cells of :attr:`log_columns` (from the row's method entry)."""
        return []

    @classmethod
    def report_stats(cls, rows: list[dict[str, Any]], run_dir: Path | None) -> dict[str, float]:
        """A finished run's figures for :attr:`report_columns` (its log rows, its folder)."""
        return {}

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    # -- configuration ---------------------------------------------------------
    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        """Raise :class:`~fish_fl.config.ConfigError` on keys this method cannot honour."""

    # -- the model ---------------------------------------------------------------
    def wrap_model(self, model: nn.Module, *, vision: bool) -> nn.Module:
        """The model the federation trains, built around the task's model."""
        return model

    def model_numel(self, model: nn.Module) -> int:
        """Parameters of the model a user deploys (full-model equivalents count against it)."""
        return sum(p.numel() for p in model.parameters())

    def describe(self, model: nn.Module) -> str:
        """One line on what the wrapped ``model`` trains, for a run's opening lines ("" for none)."""
        return ""

    # -- export -------------------------------------------------------------------
    def export_base(self) -> nn.Module:
        """The model a delta of this run applies to (the unwrapped base by default)."""
        from ..task import build_base_model

        return build_base_model(self.config)

    def deployable(self, model: nn.Module) -> nn.Module:
        """The full model a user deploys, from :meth:`export_base` with the delta applied."""
        return model

    def export_files(self, trained: nn.Module, folder: Path) -> list[Path]:
        """Files ``fish-fl export`` writes into ``folder`` besides the delta (none by default)."""
        return []

    # -- server: what goes down ---------------------------------------------------
    def value_arrays(self, values: Tensor, state: ServerState) -> dict[str, np.ndarray]:
        """The arrays that carry a node's current masked ``values``."""
        return {P.VALUES: values.numpy()}

    def value_config(self, values: Tensor, state: ServerState) -> dict[str, Any]:
        """Config entries that go with them."""
        return {}

    def paper_bytes(self, k: int, total: int, *, value_bytes: int = 4) -> int:
        """The paper's accounting of a message of ``k`` values (values and indices)."""
        return paper_message_bytes(k, total, value_bytes=value_bytes)

    # -- server: what comes up -------------------------------------------------------
    def reply_arrays(self) -> set[str]:
        """Arrays a training reply carries besides ``buffers``."""
        return {P.UPDATE}

    def update_length(self, sent: Sent, state: ServerState) -> int:
        """Values in a reply's ``update``."""
        return sent.k

    def decode_extra(
        self, arrays: Mapping[str, ArrayView], state: ServerState
    ) -> dict[str, np.ndarray]:
        """Decode and check the arrays beyond ``update`` and ``buffers`` (raise ``ValueError``)."""
        return {}

    def combine(self, state: ServerState, replies: list[TrainReply]) -> Tensor:
        """The new global ``k``-vector from the accepted, bounded replies."""
        assert state.plan is not None
        updates = [r.update() for r in replies]
        return state.values + aggregate_updates(
            updates, state.plan.union.k, self.config.aggregation_config()
        )

    def round_info(self, state: ServerState, row: Mapping[str, Any]) -> dict[str, Any]:
        """Entries this method adds to a round's row of ``metrics.jsonl``."""
        return {}

    def finish(
        self, model: nn.Module, evaluate: Any, run_dir: Any
    ) -> tuple[nn.Module, dict[str, Any]]:
        """After the last round: the model to export, and entries for the summary."""
        return model, {}

    # -- node -------------------------------------------------------------------------
    def node_values(
        self,
        model: nn.Module,
        mask: Mask,
        values: Tensor,
        cfg: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
    ) -> Tensor:
        """The node's ``k``-vector from a message (``model`` holds the base)."""
        return values

    def node_optimizer(
        self, sparse: SparseParameters, model: nn.Module, round_lr: float
    ) -> torch.optim.Optimizer:
        """The node's optimiser for this round, at the round's learning rate."""
        optimizer = make_optimizer(sparse, self.config.optimizer_config())
        for group in optimizer.param_groups:
            group["lr"] = round_lr
        return optimizer

    def before_training(self, model: nn.Module, device: torch.device, seed: int) -> None:
        """Seed what the method draws during training (inside the round's RNG fork)."""

    def node_reply(
        self,
        trained: Tensor,
        received: Tensor,
        model: nn.Module,
        mask: Mask,
        seed: int,
        codec: UpdateCodec,
    ) -> dict[str, np.ndarray]:
        """The arrays of the training reply (besides ``buffers``).

        Under ``dp-mode=local`` the update is clipped and noised here, before
        it is encoded, from a generator seeded by the round's ``seed``.
        """
        delta = trained - received
        privacy = self.config.privacy_config()
        if privacy.mode == "local":
            generator = torch.Generator().manual_seed(seed ^ _LOCAL_NOISE_SALT)
            delta = local_privatise(delta, privacy, generator)
        return {P.UPDATE: codec.encode(delta)}
