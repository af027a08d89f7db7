"""The attack suite on a federation: each hostile reply is what it claims, and the rule matters.

The real strategy and the real client handlers on an in-process grid of five
tiny-ResNet clients; partition 0 (node 1000) is hostile through the run
config's ``attack`` keys, never through a tamper hook. The grid's hook only
records what every node sent. Data order and dropout are seeded by round and
partition, so an honest node sends the same bytes in every run of the same
config: the honest run is the reference each attack is compared with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Message

from clients import client_app
from fish_fl import protocol as P
from fish_fl.attacks import scale_to_norm
from fish_fl.config import RunConfig
from strategies.fish_strategy import FishMaskStrategy
from tests.flower_harness import InProcessGrid, make_strategy, tiny_vision_config

CLIENTS = 5
ATTACKER = 1000  # node of partition 0


@dataclass
class Run:
    strategy: FishMaskStrategy
    updates: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # (round, node)
    examples: dict[tuple[int, int], int] = field(default_factory=dict)
    sent: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # values sent down
    labels: list[list[int]] = field(default_factory=list)  # trained on, per train call

    def update(self, node: int, rnd: int = 1) -> torch.Tensor:
        return self.updates[(rnd, node)]

    @property
    def combined(self) -> torch.Tensor:
        """The round's combined update (one round, no server optimiser)."""
        return (self.strategy.values - self.strategy.state.base_values).double()


def _config(shared_data: Path, **changes: Any) -> RunConfig:
    values: dict[str, Any] = {
        "num-clients": CLIENTS,
        "rounds": 1,
        "local-steps": 2,
        "batch-size": 8,
        "image-size": 16,
        "fisher-samples": 16,
        "eval-examples": 16,
    }
    values.update({k.replace("_", "-"): v for k, v in changes.items()})
    return tiny_vision_config(shared_data, **values)


class _Recorded:
    """Batches passed through to training, their labels recorded as they are drawn."""

    def __init__(self, batches: Any, into: list[int]) -> None:
        self.batches, self.into = batches, into

    def __iter__(self) -> Iterator[Any]:
        for inputs, targets in self.batches:
            self.into.extend(int(y) for y in targets)
            yield inputs, targets


_RUNS: dict[str, Run] = {}


def _run(config: RunConfig) -> Run:
    """The run of ``config``, run once per module."""
    key = config.to_json()
    if key not in _RUNS:
        _RUNS[key] = _start(config)
    return _RUNS[key]


def _start(config: RunConfig) -> Run:
    strategy = make_strategy(config)
    run = Run(strategy)
    real = client_app.train_steps

    def recording(sparse, optimizer, batches, **kwargs):  # type: ignore[no-untyped-def]
        run.labels.append([])
        return real(sparse, optimizer, _Recorded(batches, run.labels[-1]), **kwargs)

    def record(rnd: int, node: int, msg: Message, reply: Message) -> Message | None:
        if msg.metadata.message_type != "train" or not reply.has_content():
            return None
        arrays = reply.content.array_records[P.ARRAYS]
        run.updates[(rnd, node)] = torch.from_numpy(arrays[P.UPDATE].numpy().copy())
        run.examples[(rnd, node)] = int(reply.content.metric_records[P.METRICS][P.NUM_EXAMPLES])  # type: ignore[arg-type]
        values = msg.content.array_records[P.ARRAYS][P.VALUES].numpy().copy()
        run.sent[(rnd, node)] = torch.from_numpy(values)
        return None

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client_app, "train_steps", recording)
        strategy.start(InProcessGrid(CLIENTS, tamper=record))
    return run


def _norm(t: torch.Tensor) -> float:
    return float(t.double().norm())


def _honest_nodes() -> list[int]:
    return [1000 + p for p in range(1, CLIENTS)]


@pytest.fixture(scope="module")
def honest(shared_data: Path) -> Run:
    """Every node honest (``attack=none``): the reference."""
    return _run(_config(shared_data))


@pytest.fixture(scope="module")
def bound(honest: Run) -> float:
    """A fixed max-update-norm of ten times the largest honest norm."""
    return 10 * max(_norm(honest.update(n)) for n in range(1000, 1000 + CLIENTS))


def _assert_honest_nodes_unchanged(run: Run, honest: Run) -> None:
    for node in _honest_nodes():
        assert torch.equal(run.update(node), honest.update(node)), node
        assert run.examples[(1, node)] == honest.examples[(1, node)], node


# -- each attack's reply ----------------------------------------------------------------
def test_sign_flip_sends_minus_the_honest_update_exactly(shared_data: Path, honest: Run) -> None:
    run = _run(_config(shared_data, attack="sign-flip"))
    assert torch.equal(run.update(ATTACKER), -honest.update(ATTACKER))
    _assert_honest_nodes_unchanged(run, honest)
    assert run.strategy._stats.rejected == 0


def test_scaled_update_lands_just_under_the_bound_and_is_accepted(
    shared_data: Path, honest: Run, bound: float
) -> None:
    run = _run(_config(shared_data, attack="scale", max_update_norm=bound, aggregation="mean"))
    crafted = run.update(ATTACKER)
    assert 0.99 * bound * (1 - 1e-6) <= _norm(crafted) <= 0.99 * bound * (1 + 1e-6) < bound
    cosine = torch.nn.functional.cosine_similarity(
        crafted.double(), honest.update(ATTACKER).double(), dim=0
    )
    assert float(cosine) == pytest.approx(1.0, abs=1e-6)
    stats = run.strategy._stats
    assert (stats.rejected, stats.clipped, stats.norm_bound) == (0, 0, bound)
    _assert_honest_nodes_unchanged(run, honest)
    # Accepted: the example-weighted mean counts it at its full size.
    weights = {n: float(run.examples[(1, n)]) for n in range(1000, 1000 + CLIENTS)}
    expected = sum(weights[n] * run.update(n).double() for n in weights) / sum(weights.values())
    torch.testing.assert_close(run.combined, expected, rtol=0, atol=1e-6)


def test_inflated_examples_weigh_no_more_than_the_servers_cap(
    shared_data: Path, honest: Run
) -> None:
    run = _run(_config(shared_data, attack="inflate-examples"))
    assert run.examples[(1, ATTACKER)] == 10**9
    assert torch.equal(run.update(ATTACKER), honest.update(ATTACKER))  # the update is honest
    _assert_honest_nodes_unchanged(run, honest)
    assert run.strategy._stats.capped == [ATTACKER]
    cap = run.strategy.partition_max
    assert cap is not None and cap < 100  # the largest of five partitions of 368 examples
    weights = {n: float(run.examples[(1, n)]) for n in _honest_nodes()}
    weights[ATTACKER] = float(cap)
    expected = sum(weights[n] * run.update(n).double() for n in weights) / sum(weights.values())
    torch.testing.assert_close(run.combined, expected, rtol=0, atol=1e-6)
    # With its claim believed, the attacker's update would be the whole combination.
    assert _norm(run.combined - run.update(ATTACKER).double()) > 0.1 * _norm(run.combined)


def test_label_flip_trains_on_flipped_labels(shared_data: Path, honest: Run) -> None:
    run = _run(_config(shared_data, attack="label-flip"))
    # The nodes train in partition order; CIFAR-10 has 10 classes.
    assert len(run.labels) == len(honest.labels) == CLIENTS
    clean = honest.labels[0]
    assert len(clean) == 2 * 8 and len(set(clean)) > 2  # local-steps x batch-size
    assert run.labels[0] == [9 - y for y in clean]
    assert run.labels[1:] == honest.labels[1:]
    assert not torch.equal(run.update(ATTACKER), honest.update(ATTACKER))
    _assert_honest_nodes_unchanged(run, honest)


def test_noise_has_the_requested_std(shared_data: Path, honest: Run) -> None:
    run = _run(_config(shared_data, attack="noise", attack_noise_std=0.01, attackers=2))
    for node in (1000, 1001):
        noise = run.update(node).double()
        k = noise.numel()
        assert k > 1000
        # The sample std of k Gaussians is within 5 of its standard errors (0.01 / sqrt(2k)).
        assert abs(float(noise.std()) - 0.01) < 5 * 0.01 / (2 * k) ** 0.5
        assert abs(float(noise.mean())) < 5 * 0.01 / k**0.5
    assert not torch.equal(run.update(1000), run.update(1001))  # each draws its own
    for node in _honest_nodes()[1:]:
        assert torch.equal(run.update(node), honest.update(node))


def test_colluders_send_identical_vectors(shared_data: Path, bound: float) -> None:
    config = _config(shared_data, attack="collude", attackers=2, max_update_norm=bound, rounds=2)
    run = _run(config)
    for rnd in (1, 2):
        a, b = run.update(1000, rnd), run.update(1001, rnd)
        assert torch.equal(a, b), rnd
        assert _norm(a) == pytest.approx(0.99 * bound, rel=1e-6)
        assert not torch.equal(a, run.update(1002, rnd))
    # Round 2: against the drift of what was sent from the base, which every node shares.
    drift = run.sent[(2, 1000)] - run.strategy.state.base_values
    assert torch.equal(run.sent[(2, 1000)], run.sent[(2, 1003)])
    expected = scale_to_norm(-drift, 0.99 * bound)
    torch.testing.assert_close(run.update(1000, 2), expected, rtol=0, atol=1e-6)


# -- the aggregator matters ---------------------------------------------------------------
RULES = {
    "mean": {},
    "median": {},
    "trimmed-mean": {"trim_beta": 0.2},
    "krum": {"min_replies": 5},
}


@pytest.fixture(scope="module")
def attacked(shared_data: Path, bound: float) -> dict[str, Run]:
    """One scaled attacker among five, under each rule."""
    return {
        rule: _run(
            _config(shared_data, attack="scale", max_update_norm=bound, aggregation=rule, **keys)
        )
        for rule, keys in RULES.items()
    }


def test_one_scaled_attacker_pulls_the_mean_but_not_the_robust_rules(
    attacked: dict[str, Run], honest: Run
) -> None:
    honest_updates = torch.stack([honest.update(n).double() for n in _honest_nodes()])
    target = honest_updates.mean(0)  # the honest clients' own aggregate
    # How far the honest updates themselves lie from it (2 local steps: mostly noise).
    spread = max(_norm(u - target) for u in honest_updates)
    error = {rule: _norm(run.combined - target) for rule, run in attacked.items()}
    # The mean takes a fifth of a vector of 10 x 0.99 the largest honest norm, about
    # twice an honest norm: outside the honest updates (measured: 1.87 x their spread).
    # The robust rules stay among them (median 0.28, trimmed mean 0.30, Krum 0.63).
    assert error["mean"] > 1.5 * spread, (error, spread)
    for rule in ("median", "trimmed-mean", "krum"):
        assert error[rule] <= spread * (1 + 1e-9), (rule, error, spread)
        assert error[rule] < 0.5 * error["mean"], (rule, error)
    # Krum picks one of the honest updates, exactly; the median stays inside the honest range.
    krum = attacked["krum"].combined
    assert any(torch.allclose(krum, u, rtol=0, atol=1e-6) for u in honest_updates)
    median = attacked["median"].combined
    lo, hi = honest_updates.min(0).values, honest_updates.max(0).values
    assert bool(((median >= lo - 1e-6) & (median <= hi + 1e-6)).all())
