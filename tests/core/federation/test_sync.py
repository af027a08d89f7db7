"""Node sync without Flower: the server half says what to send, the node half applies it.

A round trip over several rounds with a mask change, a base change and a
node that loses what it held, checked against what the server holds.
"""

from __future__ import annotations

import pytest
import torch

from fish_fl import protocol as P
from fish_fl.federation.state import ServerState
from fish_fl.federation.sync import NodeState, ServerSync, flat_fingerprint, resolve
from fish_fl.masks import Mask, MaskSpec, build_mask, parameter_shapes
from fish_fl.masks.assign import shared_plan
from tests.tiny_models import TinyConvNet


class Store:
    """A node's base store: a dict (the Flower runtime keeps them in memory and on disk)."""

    def __init__(self) -> None:
        self.bases: dict[str, torch.Tensor] = {}

    def get(self, fingerprint: str) -> torch.Tensor | None:
        return self.bases.get(fingerprint)

    def put(self, fingerprint: str, flat: torch.Tensor, *, to_disk: bool = True) -> None:
        self.bases[fingerprint] = flat.clone()


def _random_plan(model: torch.nn.Module, seed: int):  # type: ignore[no-untyped-def]
    spec = MaskSpec(method="random", density=0.2, head_patterns=("fc",), seed=seed)
    return shared_plan(build_mask(model, spec))


class Node:
    """One node: its state, its store, and the model it builds itself."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.state = NodeState()
        self.store = Store()
        self.shapes = shapes
        self.built = 0

    def initial(self) -> torch.Tensor:
        self.built += 1
        return P.flat_parameters(_model())

    def apply(self, part):  # type: ignore[no-untyped-def]
        self.state, base, mask = resolve(
            part.config, part.arrays, self.state, self.store, self.shapes, self.initial
        )
        return base, mask


def _model() -> TinyConvNet:
    """The model every node builds itself: seeded, as the task's models are."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return TinyConvNet()


def _server() -> tuple[ServerState, ServerSync]:
    model = _model()
    state = ServerState.initial(
        model, seed=0, model_numel=sum(p.numel() for p in model.parameters())
    )
    return state, ServerSync('{"run": 1}')


def _train(state: ServerState, step: float) -> None:
    """What a round does to the server: new masked values."""
    state.apply_values(state.values + step)


def test_round_trip_over_mask_and_base_changes() -> None:
    state, sync = _server()
    node = Node(parameter_shapes(state.model))

    # Round 1: first contact; the run config and the mask travel, the base does not
    # (version 0: the node builds the model itself).
    state.set_plan(_random_plan(state.model, seed=1))
    part = sync.sync_part(7, state)
    assert P.CFG_RUN_CONFIG in part.config and P.MASK in part.arrays
    assert P.BASE not in part.arrays and P.BASE_PATCH not in part.arrays
    base, mask = node.apply(part)
    assert torch.equal(base, state.base_flat()) and node.built == 1
    assert mask is not None and mask.fingerprint == state.plan.union.fingerprint  # type: ignore[union-attr]
    sent = _sent(sync, 7, state)
    sync.confirm(7, sent)
    _train(state, 0.25)

    # Round 2: nothing but the values; the node builds nothing again.
    part = sync.sync_part(7, state)
    assert part.arrays == {} and P.CFG_RUN_CONFIG not in part.config
    base, mask = node.apply(part)
    assert node.built == 1 and torch.equal(base, state.base_flat())
    sync.confirm(7, _sent(sync, 7, state))

    # Round 3: a refresh. The global model becomes the base: the node patches its old
    # base with its mask's final values, and gets the new mask.
    state.new_base()
    state.set_plan(_random_plan(state.model, seed=2))
    part = sync.sync_part(7, state)
    assert set(part.arrays) == {P.BASE_PATCH, P.MASK}
    assert part.arrays[P.BASE_PATCH].size == mask.k  # type: ignore[union-attr]
    base, mask = node.apply(part)
    assert torch.equal(base, state.base_flat())
    assert torch.equal(base, P.flat_parameters(state.model))  # the base is the global model
    sync.confirm(7, _sent(sync, 7, state))

    # Round 4: a new node joins after the base changed: it needs the whole base.
    other = Node(parameter_shapes(state.model))
    part = sync.sync_part(8, state)
    assert P.BASE in part.arrays and P.MASK in part.arrays
    base, _ = other.apply(part)
    assert torch.equal(base, state.base_flat()) and other.built == 0


def test_node_that_lost_its_state_says_so_and_is_sent_it_again() -> None:
    state, sync = _server()
    node = Node(parameter_shapes(state.model))
    state.set_plan(_random_plan(state.model, seed=1))
    node.apply(sync.sync_part(3, state))
    sync.confirm(3, _sent(sync, 3, state))
    state.new_base()  # a base only the server and this node hold
    state.set_plan(_random_plan(state.model, seed=2))
    node.apply(sync.sync_part(3, state))
    sync.confirm(3, _sent(sync, 3, state))

    # The node restarts: no config, no base, no mask.
    node.state, node.store = NodeState(), Store()
    with pytest.raises(P.NodeError) as err:
        node.apply(sync.sync_part(3, state))
    assert err.value.status == P.Status.NO_RUN_CONFIG
    sync.forget(3, err.value.status)
    node.state = NodeState(run_config='{"run": 1}')
    with pytest.raises(P.NodeError) as err:
        node.apply(sync.sync_part(3, state))
    assert err.value.status == P.Status.MISSING_BASE
    sync.forget(3, err.value.status)
    part = sync.sync_part(3, state)
    assert {P.BASE, P.MASK} <= set(part.arrays) and P.CFG_RUN_CONFIG in part.config
    base, mask = node.apply(part)
    assert torch.equal(base, state.base_flat()) and mask is not None


def test_missing_mask_status() -> None:
    state, sync = _server()
    node = Node(parameter_shapes(state.model))
    state.set_plan(_random_plan(state.model, seed=1))
    node.apply(sync.sync_part(1, state))
    sync.confirm(1, _sent(sync, 1, state))
    node.state = NodeState(
        run_config=node.state.run_config,
        base_version=node.state.base_version,
        base_fingerprint=node.state.base_fingerprint,
    )
    with pytest.raises(P.NodeError) as err:
        node.apply(sync.sync_part(1, state))
    assert err.value.status == P.Status.MISSING_MASK
    sync.forget(1, err.value.status)
    assert P.MASK in sync.sync_part(1, state).arrays


@pytest.mark.parametrize("what", ["base", "mask"])
def test_a_tampered_download_is_refused_by_fingerprint(what: str) -> None:
    state, sync = _server()
    state.set_plan(_random_plan(state.model, seed=1))
    state.new_base()
    node = Node(parameter_shapes(state.model))
    part = sync.sync_part(1, state)
    if what == "base":
        part.arrays[P.BASE] = part.arrays[P.BASE].copy()
        part.arrays[P.BASE][0] += 1.0
    else:
        other = Mask.from_bytes(part.arrays[P.MASK].tobytes())
        part.config[P.CFG_MASK_FINGERPRINT] = "0" * 16
        assert other.k > 0
    with pytest.raises(P.NodeError) as err:
        node.apply(part)
    assert err.value.status == P.Status.BAD_MESSAGE and "fingerprint" in err.value.reason


def test_flat_fingerprint_is_the_models() -> None:
    from fish_fl.checkpoint import state_fingerprint

    model = TinyConvNet()
    flat = P.flat_parameters(model)
    assert flat_fingerprint(flat, parameter_shapes(model)) == state_fingerprint(
        dict(model.named_parameters())
    )
    with pytest.raises(P.NodeError):
        flat_fingerprint(flat[:-1], parameter_shapes(model))


def _sent(sync: ServerSync, node_id: int, state: ServerState):  # type: ignore[no-untyped-def]
    from fish_fl.federation.sync import Sent

    rec = sync.record(node_id)
    assert state.plan is not None
    mask, positions = state.plan.slot(rec.slot)
    return Sent(rec.slot, state.mask_version, state.base_version, mask.k, positions, state.values)
