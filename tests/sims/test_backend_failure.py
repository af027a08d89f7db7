"""A simulation backend that fails ends the run at once, with its reason, not after round-timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from flwr.app import Message

from tests.core.test_preflight import tiny_cifar, tiny_vision


class SilentGrid:
    """Takes messages and never answers; counts the looks for replies."""

    def __init__(self) -> None:
        self.pulls = 0

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        self.pulls += 1
        return []

    def get_node_ids(self) -> list[int]:
        return [1, 2]


def test_aborted_grid_stops_waiting_at_once() -> None:
    from strategies.abort import AbortableGrid, AbortSignal
    from strategies.fish_strategy import RunFailed

    signal = AbortSignal()
    grid = AbortableGrid(SilentGrid(), signal)  # type: ignore[arg-type]
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            grid.send_and_receive([object(), object()], timeout=3600)  # type: ignore[list-item]
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=wait)
    t0 = time.monotonic()
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()  # still waiting for replies
    signal.abort("the simulation backend failed: ValueError: no actor")
    thread.join(timeout=5)
    assert not thread.is_alive() and time.monotonic() - t0 < 2
    assert isinstance(outcome[0], RunFailed)
    assert str(outcome[0]) == "the simulation backend failed: ValueError: no actor"
    with pytest.raises(RunFailed, match="no actor"):
        grid.get_node_ids()


def test_grid_without_abort_waits_out_its_timeout() -> None:
    from strategies.abort import AbortableGrid, AbortSignal

    silent = SilentGrid()
    grid = AbortableGrid(silent, AbortSignal())  # type: ignore[arg-type]
    t0 = time.monotonic()
    assert list(grid.send_and_receive([object()], timeout=0.5)) == []  # type: ignore[list-item]
    assert 0.5 <= time.monotonic() - t0 < 1.5
    assert silent.pulls >= 3
    assert list(grid.get_node_ids()) == [1, 2]


@pytest.mark.parametrize("failure", ["backend", "interrupt"])
def test_simulate_stops_a_waiting_server_app_when_the_backend_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """Flower's run_simulation, played without Ray: the backend fails while the ServerApp waits."""
    import flwr.simulation
    from flwr.app import Context, RecordDict

    from sims.simulate import simulate
    from strategies.fish_strategy import RunFailed
    from tests.flower_harness import set_identity

    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))
    set_identity()  # what run_simulation does before it starts the ServerApp
    grid = SilentGrid()
    waiting = threading.Event()
    push = grid.push_messages

    def push_and_flag(messages: Iterable[Message]) -> list[str]:
        waiting.set()
        return push(messages)

    grid.push_messages = push_and_flag  # type: ignore[method-assign]
    server: list[threading.Thread] = []
    server_error: list[BaseException] = []

    def run_simulation(*, server_app: object, **kwargs: object) -> None:
        def main() -> None:  # as Flower's ServerApp thread: keep the error, end quietly
            context = Context(1, 0, {}, RecordDict(), {})
            try:
                server_app(grid=grid, context=context)  # type: ignore[operator]
            except BaseException as e:
                server_error.append(e)

        server.append(threading.Thread(target=main))
        server[0].start()
        assert waiting.wait(60), f"the ServerApp never sent round 1: {server_error}"
        if failure == "interrupt":
            raise KeyboardInterrupt
        raise RuntimeError("An error was encountered. Ending simulation.") from ValueError(
            "ActorPool is empty."
        )

    monkeypatch.setattr(flwr.simulation, "run_simulation", run_simulation)
    config = tiny_vision(tiny_cifar(tmp_path / "cifar.npz"), round_timeout=600.0)
    run_dir = tmp_path / "run"
    expected = KeyboardInterrupt if failure == "interrupt" else RuntimeError
    t0 = time.monotonic()
    with pytest.raises(expected) as info:
        simulate(config, run_dir)
    assert time.monotonic() - t0 < 60
    assert not server[0].is_alive()  # simulate waited for the ServerApp to stop
    assert isinstance(server_error[0], RunFailed)
    if failure == "backend":
        reason = "the simulation backend failed: ValueError: ActorPool is empty."
        assert str(info.value) == reason and str(server_error[0]) == reason
    else:
        assert "interrupted" in str(server_error[0])
    assert not run_dir.exists()  # it failed before round 1


@pytest.mark.slow
def test_backend_without_room_for_a_client_ends_the_run_promptly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray builds no actor for a client asking for more GPUs than exist: the run ends in seconds.

    Pre-flight would refuse the request, so the test makes it see one more GPU
    than Ray does; the ServerApp, already waiting for round 1's replies with
    round-timeout=600, must stop, remove its folder and let the process go.
    """
    from sims.simulate import simulate

    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))
    gpus = torch.cuda.device_count() + 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    config = tiny_vision(
        tiny_cifar(tmp_path / "cifar.npz"), client_num_gpus=float(gpus), round_timeout=600.0
    )
    run_dir = tmp_path / "run"
    before = {t for t in threading.enumerate() if not t.daemon}
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        simulate(config, run_dir)
    elapsed = time.monotonic() - t0
    assert "the simulation backend failed" in str(info.value)
    assert "ActorPool is empty" in str(info.value)
    assert elapsed < 120, f"the run took {elapsed:.0f}s to end"
    left = [t.name for t in threading.enumerate() if not t.daemon and t not in before]
    assert not left, f"threads still running after the run ended: {left}"
    assert not run_dir.exists()
