"""In a simulation a node's ``context.state`` holds fingerprints, not the mask or optimiser state.

The driver holds every simulated node's context, so whatever a node keeps
there grows the driver with the number of nodes sampled. There a node keeps
its mask in the process's mask store (and the machine's disk cache) and its
optimiser state on disk only; the run must be the same bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.common.serde import recorddict_to_proto

from clients import client_app
from clients import runtime as node_runtime
from fish_fl import protocol as P
from fish_fl.runlog import RunRecorder
from tests.flower_harness import InProcessGrid, make_strategy, tiny_vision_config


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))


def _simulated(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    monkeypatch.setattr(node_runtime, "small_node_state", lambda config: on)
    monkeypatch.setattr(client_app, "small_node_state", lambda config: on)
    node_runtime.runtime.masks.memory.clear()


def _run(shared_data: Path, **changes: object) -> tuple[torch.Tensor, InProcessGrid]:
    config = tiny_vision_config(shared_data, rounds=3, optimizer="adamw", lr=0.01, **changes)
    strategy = make_strategy(config)
    grid = InProcessGrid(2)
    strategy.start(grid)
    return strategy.values.clone(), grid


def _state_bytes(grid: InProcessGrid) -> list[int]:
    return [recorddict_to_proto(c.state).ByteSize() for c in grid.contexts.values()]


def test_simulated_nodes_keep_only_fingerprints_and_the_run_is_unchanged(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _simulated(monkeypatch, False)
    kept, kept_grid = _run(shared_data)
    _simulated(monkeypatch, True)
    small, small_grid = _run(shared_data)
    # The optimiser state did carry over between rounds (from disk): without it
    # the run differs.
    fresh, _ = _run(shared_data, persist_optimizer=False)

    assert torch.equal(kept, small)
    assert not torch.equal(small, fresh)
    for ctx in kept_grid.contexts.values():
        assert node_runtime.NODE_MASK in ctx.state and node_runtime.NODE_OPTIM in ctx.state
    for ctx in small_grid.contexts.values():
        assert node_runtime.NODE_MASK not in ctx.state
        assert node_runtime.NODE_OPTIM not in ctx.state
        assert node_runtime.NODE_STATE in ctx.state
    # The run config (a few KB of JSON) is what is left; the mask and the AdamW
    # state of the tiny model are several times that.
    assert max(_state_bytes(small_grid)) < 8_000
    assert min(_state_bytes(kept_grid)) > 3 * max(_state_bytes(small_grid))


def test_only_a_simulation_on_a_local_ray_keeps_node_state_small(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fish_fl.config import RunConfig

    local, cluster = RunConfig(), RunConfig.from_mapping({"ray-address": "auto"})
    monkeypatch.delenv("FISH_FL_SIMULATION", raising=False)
    assert not node_runtime.small_node_state(local)  # a real node keeps its own context
    monkeypatch.setenv("FISH_FL_SIMULATION", "1")
    assert node_runtime.small_node_state(local)
    assert not node_runtime.small_node_state(cluster)  # the state follows the node


def test_a_simulated_node_that_lost_its_mask_is_sent_it_again(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _simulated(monkeypatch, True)
    config = tiny_vision_config(shared_data, rounds=4)
    recorder = RunRecorder(tmp_path / "run", config, stream=None)
    strategy = make_strategy(config, recorder)
    grid = InProcessGrid(2)
    original = grid.send_and_receive

    def forgetful(messages, *, timeout=None):  # every process and disk lost the mask
        messages = list(messages)
        if messages and int(messages[0].content.config_records["config"]["server-round"]) == 3:
            node_runtime.runtime.masks.memory.clear()
            for f in (tmp_path / "cache" / "masks").iterdir():
                f.unlink()
        return original(messages, timeout=timeout)

    grid.send_and_receive = forgetful  # type: ignore[method-assign]
    strategy.start(grid)
    down = {(t.round, t.node): t.keys for t in grid.traffic if t.direction == "down"}
    replies = {r["round"]: r["replies"] for r in recorder.rows}
    assert all(P.MASK not in down[(r, n)] for r in (2, 3) for n in (1000, 1001))
    assert replies[3] == 0  # both nodes said MISSING_MASK ...
    assert all(P.MASK in down[(4, n)] for n in (1000, 1001))  # ... and were sent it again
    assert replies[4] == 2
