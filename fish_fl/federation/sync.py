"""Node sync: what each node holds, what it must be sent, and how it applies it.

The protocol keeps traffic at ``k`` values a round by sending everything
else once. A node holds up to three things the server must track:

- the run config (sent as JSON on first contact);
- a *base* model, by version and fingerprint (version 0 every node builds
  itself; later versions are sent as a full flat vector, or as a *patch*: the
  final values of the node's previous mask, when the node holds the previous
  base and mask, which turns its old base into the new one);
- a mask, by version and fingerprint (sent when the node lacks this version).

Server half, :class:`ServerSync`: a :class:`NodeRecord` per node, updated only
from sound replies (:meth:`ServerSync.confirm`) or a node's typed status
(:meth:`ServerSync.forget`), and :meth:`ServerSync.sync_part` that gives the
arrays and config entries a node lacks. Node half, :func:`resolve`: from a
message and the node's :class:`NodeState`, the base and mask it refers to,
raising :class:`~fish_fl.protocol.NodeError` with a status code the server
acts on. Both halves are framework-free; the round trip is tested without
Flower.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from .. import protocol as P
from ..checkpoint import state_fingerprint
from ..masks import Mask
from .state import ServerState

__all__ = [
    "BaseLookup",
    "NodeRecord",
    "NodeState",
    "Sent",
    "ServerSync",
    "SyncPart",
    "flat_fingerprint",
    "resolve",
]


# -- server half ------------------------------------------------------------------
@dataclass
class NodeRecord:
    """What the server knows a node holds."""

    slot: int
    has_config: bool = False
    base_version: int = 0
    mask_version: int = 0


@dataclass(frozen=True)
class Sent:
    """What one node was sent this round, to check its reply against."""

    slot: int
    mask_version: int
    base_version: int
    k: int
    positions: Tensor
    values: Tensor
    nbytes: int = 0  # the serialised message, as the server measured it


@dataclass(frozen=True)
class SyncPart:
    """The arrays and config entries that bring a node to the server's base and mask."""

    arrays: dict[str, np.ndarray]
    config: dict[str, Any]
    mask: Mask | None  # the node's mask (None for a query)
    positions: Tensor  # the mask's positions in the server's k-vector


class ServerSync:
    """The server's record of every node, and what each must be sent."""

    def __init__(self, run_config_json: str) -> None:
        self.run_config_json = run_config_json
        self.nodes: dict[int, NodeRecord] = {}

    def record(self, node_id: int) -> NodeRecord:
        if node_id not in self.nodes:
            self.nodes[node_id] = NodeRecord(slot=len(self.nodes))
        return self.nodes[node_id]

    def _base_arrays(self, rec: NodeRecord, state: ServerState) -> dict[str, np.ndarray]:
        if rec.base_version == state.base_version:
            return {}
        if (
            rec.base_version == state.base_version - 1
            and rec.mask_version == state.prev_mask_version
            and state.prev_plan is not None
        ):
            _, positions = state.prev_plan.slot(rec.slot)
            return {P.BASE_PATCH: state.prev_values[positions].numpy()}
        return {P.BASE: state.base_flat().numpy()}

    def sync_part(self, node_id: int, state: ServerState, *, with_mask: bool = True) -> SyncPart:
        """What ``node_id`` lacks of the current base (and mask, ``with_mask``)."""
        rec = self.record(node_id)
        arrays = self._base_arrays(rec, state)
        cfg: dict[str, Any] = {
            P.CFG_BASE_VERSION: state.base_version,
            P.CFG_BASE_FINGERPRINT: state.base_fingerprint,
        }
        if not rec.has_config:
            cfg[P.CFG_RUN_CONFIG] = self.run_config_json
        if not with_mask:
            return SyncPart(arrays, cfg, None, torch.zeros(0, dtype=torch.long))
        assert state.plan is not None
        mask, positions = state.plan.slot(rec.slot)
        if rec.mask_version != state.mask_version:
            arrays[P.MASK] = np.frombuffer(mask.to_bytes(), dtype=np.uint8).copy()
        cfg[P.CFG_MASK_VERSION] = state.mask_version
        cfg[P.CFG_MASK_FINGERPRINT] = mask.fingerprint
        return SyncPart(arrays, cfg, mask, positions)

    def confirm(self, node_id: int, sent: Sent) -> None:
        """A sound reply: the node holds the config, base and mask it was sent."""
        rec = self.record(node_id)
        rec.has_config = True
        rec.base_version, rec.mask_version = sent.base_version, sent.mask_version

    def confirm_base(self, node_id: int, sent: Sent) -> None:
        """A sound reply to a query: the node holds the config and base (its mask as before)."""
        rec = self.record(node_id)
        rec.has_config = True
        rec.base_version = sent.base_version

    def forget(self, node_id: int, status: P.Status | None) -> None:
        """A node's status says it lost something: send it again next time."""
        if node_id not in self.nodes or status is None:
            return
        rec = self.nodes[node_id]
        if status == P.Status.MISSING_BASE:
            rec.base_version, rec.mask_version = -1, 0
        elif status == P.Status.MISSING_MASK:
            rec.mask_version = 0
        elif status == P.Status.NO_RUN_CONFIG:
            rec.has_config = False


# -- node half ----------------------------------------------------------------------
@dataclass(frozen=True)
class NodeState:
    """What a node keeps between messages (small: no model, no data)."""

    run_config: str | None = None
    base_version: int | None = None
    base_fingerprint: str | None = None
    mask_bytes: bytes | None = None
    mask_version: int | None = None
    mask_fingerprint: str | None = None

    @property
    def mask(self) -> Mask | None:
        return None if self.mask_bytes is None else Mask.from_bytes(self.mask_bytes)


class BaseLookup(Protocol):
    """Where a node finds base models by fingerprint."""

    def get(self, fingerprint: str) -> Tensor | None: ...

    def put(self, fingerprint: str, flat: Tensor, *, to_disk: bool = True) -> None: ...


def flat_fingerprint(flat: Tensor, shapes: Mapping[str, tuple[int, ...]]) -> str:
    """The fingerprint of the parameters a flat float32 vector holds."""
    total = sum(int(torch.Size(s).numel()) for s in shapes.values())
    if flat.numel() != total:
        raise P.NodeError(
            P.Status.BAD_MESSAGE, f"base has {flat.numel()} values, the model has {total}"
        )
    views, offset = {}, 0
    for name, shape in shapes.items():
        n = int(torch.Size(shape).numel())
        views[name] = flat[offset : offset + n].view(shape)
        offset += n
    return state_fingerprint(views)


def _array(arrays: Mapping[str, np.ndarray], key: str) -> Tensor:
    return torch.from_numpy(np.asarray(arrays[key]).astype(np.float32, copy=True))


def resolve(
    cfg: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    state: NodeState,
    bases: BaseLookup,
    shapes: Mapping[str, tuple[int, ...]],
    initial_base: Callable[[], Tensor],
    *,
    with_mask: bool = True,
    held: tuple[str, Callable[[], Tensor]] | None = None,
) -> tuple[NodeState, Tensor | None, Mask | None]:
    """Apply a message's sync part: the node's new state, its base and its mask.

    ``initial_base`` builds the version-0 base (the model every node builds
    itself). ``held`` is the fingerprint of a base the node's model already
    holds and a way to read it off as a flat vector: when the message refers
    to that base, the base returned is None (nothing to load) and no copy of
    it is made. Raises :class:`~fish_fl.protocol.NodeError` when the node lacks
    what the message refers to (``MISSING_BASE``, ``MISSING_MASK``,
    ``NO_RUN_CONFIG``) or what it received does not match its fingerprint.
    """
    # 1. The run config: in the message on first contact, else kept.
    text = cfg.get(P.CFG_RUN_CONFIG)
    if isinstance(text, str):
        state = replace(state, run_config=text)
    elif state.run_config is None:
        raise P.NodeError(P.Status.NO_RUN_CONFIG, "node has no run config; send run-config first")

    # 2. The base, by fingerprint: received whole, patched, built, or kept.
    version = int(cfg[P.CFG_BASE_VERSION])
    fingerprint = str(cfg[P.CFG_BASE_FINGERPRINT])
    flat: Tensor | None
    if P.BASE in arrays:
        flat = _array(arrays, P.BASE)
        _check(flat, fingerprint, shapes, "received base")
        bases.put(fingerprint, flat)
    elif P.BASE_PATCH in arrays:
        old = None
        if state.base_fingerprint:
            if held is not None and held[0] == state.base_fingerprint:
                old = held[1]()
            else:
                old = bases.get(state.base_fingerprint)
            if old is None and state.base_version == 0:
                old = initial_base()
                _check(old, state.base_fingerprint, shapes, "the base model this node builds")
        old_mask = state.mask
        if old is None or old_mask is None:
            raise P.NodeError(
                P.Status.MISSING_BASE, "cannot patch: previous base or mask not on this node"
            )
        patch = _array(arrays, P.BASE_PATCH)
        positions = old_mask.flat_positions()
        if patch.numel() != positions.numel():
            raise P.NodeError(
                P.Status.BAD_MESSAGE,
                f"base patch has {patch.numel()} values for a mask of {positions.numel()}",
            )
        flat = old.clone()
        flat[positions] = patch
        _check(flat, fingerprint, shapes, "patched base")
        bases.put(fingerprint, flat)
    elif held is not None and held[0] == fingerprint:
        flat = None  # the model holds it
    elif version == 0:
        own = bases.get(fingerprint)
        if own is None:
            own = initial_base()
            _check(own, fingerprint, shapes, "the base model this node builds")
            bases.put(fingerprint, own, to_disk=False)
        flat = own
    else:
        got = bases.get(fingerprint)
        if got is None:
            raise P.NodeError(
                P.Status.MISSING_BASE, f"base version {version} ({fingerprint}) not on this node"
            )
        flat = got
    state = replace(state, base_version=version, base_fingerprint=fingerprint)
    if not with_mask:
        return state, flat, None

    # 3. The mask, by version and fingerprint: received or kept.
    mask_version = int(cfg[P.CFG_MASK_VERSION])
    mask_fp = str(cfg[P.CFG_MASK_FINGERPRINT])
    if P.MASK in arrays:
        data = np.asarray(arrays[P.MASK], dtype=np.uint8).tobytes()
        try:
            mask = Mask.from_bytes(data)
        except ValueError as e:
            raise P.NodeError(P.Status.BAD_MESSAGE, f"received mask: {e}") from None
        if mask.fingerprint != mask_fp:
            raise P.NodeError(
                P.Status.BAD_MESSAGE,
                f"received mask has fingerprint {mask.fingerprint}, expected {mask_fp}",
            )
        state = replace(state, mask_bytes=data, mask_version=mask_version, mask_fingerprint=mask_fp)
        return state, flat, mask
    stored = state.mask
    if stored is None or state.mask_version != mask_version or stored.fingerprint != mask_fp:
        raise P.NodeError(P.Status.MISSING_MASK, f"mask version {mask_version} not on this node")
    return state, flat, stored


def _check(
    flat: Tensor, fingerprint: str, shapes: Mapping[str, tuple[int, ...]], what: str
) -> None:
    got = flat_fingerprint(flat, shapes)
    if got != fingerprint:
        raise P.NodeError(
            P.Status.BAD_MESSAGE, f"{what} has fingerprint {got}, the server's is {fingerprint}"
        )
