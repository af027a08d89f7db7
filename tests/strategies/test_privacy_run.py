"""Client-level DP end to end: the real strategy and client handlers on an in-process grid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from fish_fl.config import RunConfig
from fish_fl.runlog import RunRecorder
from tests.flower_harness import InProcessGrid, make_strategy, tiny_vision_config
from tests.tiny_models import TinyPlainNet

DELTA = 1e-5


@pytest.fixture(autouse=True)
def _plain_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every side builds a BatchNorm-free network (DP refuses BatchNorm buffers).

    The nodes get a fresh process cache: another test's model for the same
    model keys must not be taken for this one.
    """
    from clients import client_app
    from clients.runtime import Runtime

    def build(config: RunConfig) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            return TinyPlainNet()

    monkeypatch.setattr("fish_fl.task.build_base_model", build)
    monkeypatch.setattr(client_app, "runtime", Runtime())
    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))


def _config(shared_data: Path, **changes: object) -> RunConfig:
    values: dict[str, object] = {
        "num_clients": 4,
        "clients_per_round": 2,
        "dp_mode": "central",
        "dp_clip": 0.05,
        "dp_delta": DELTA,
        "density": 0.2,
        "fisher_samples": 16,
        "local_steps": 2,
    }
    values.update(changes)
    return tiny_vision_config(shared_data, **values)


def _epsilons(z: float, q: float, rounds: int) -> list[float]:
    """Opacus's own RDP accountant, stepped once per round."""
    accountant, out = RDPAccountant(), []
    for _ in range(rounds):
        accountant.step(noise_multiplier=z, sample_rate=q)
        out.append(accountant.get_epsilon(delta=DELTA))
    return out


def _run(config: RunConfig, tmp_path: Path) -> tuple[list[dict], object]:
    recorder = RunRecorder(tmp_path / "run", config, stream=None)
    strategy = make_strategy(config, recorder)
    strategy.start(InProcessGrid(config.num_clients))
    return recorder.rows, strategy


def test_epsilon_per_round_is_the_accountants(shared_data: Path, tmp_path: Path) -> None:
    rows, _ = _run(_config(shared_data, rounds=3, dp_noise_multiplier=1.1), tmp_path)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert all(r["replies"] == 2 and r["rejected"] == 0 for r in rows[1:])
    want = _epsilons(1.1, 0.5, 3)
    got = [r["epsilon"] for r in rows[1:]]
    assert got == pytest.approx(want, rel=1e-12) and got == sorted(got) and got[0] > 0
    assert all(r["dp_delta"] == DELTA for r in rows[1:])
    # The noise on the sum is z*C, on every round.
    assert all(r["dp_noise_std"] == pytest.approx(1.1 * 0.05) for r in rows[1:])


def test_the_run_stops_before_the_target_epsilon(shared_data: Path, tmp_path: Path) -> None:
    z, target = 1.1, 4.5
    want = _epsilons(z, 0.5, 10)
    last = max(i for i, e in enumerate(want, start=1) if e <= target)
    assert 1 <= last < 10  # the target falls inside the run
    config = _config(shared_data, rounds=10, dp_noise_multiplier=z, dp_target_epsilon=target)
    rows, strategy = _run(config, tmp_path)
    assert strategy.stopped_by_budget  # type: ignore[attr-defined]
    assert rows[-1]["round"] == last and rows[-1]["epsilon"] <= target < want[last]
    assert rows[-1]["score"] is not None  # the last round is evaluated


def test_a_solved_noise_multiplier_spends_the_target(shared_data: Path, tmp_path: Path) -> None:
    rows, strategy = _run(_config(shared_data, rounds=3, dp_target_epsilon=6.0), tmp_path)
    assert not strategy.stopped_by_budget  # type: ignore[attr-defined]
    assert rows[-1]["round"] == 3
    assert 6.0 * 0.98 <= rows[-1]["epsilon"] <= 6.0


def test_local_dp_reports_the_same_epsilon(shared_data: Path, tmp_path: Path) -> None:
    config = _config(shared_data, rounds=2, dp_mode="local", dp_noise_multiplier=1.1)
    rows, _ = _run(config, tmp_path)
    assert [r["epsilon"] for r in rows[1:]] == pytest.approx(_epsilons(1.1, 0.5, 2), rel=1e-12)
    # Both replies came back noised by the nodes: the server adds nothing of its own.
    assert all(r["dp_noise_std"] == 0 for r in rows[1:])
