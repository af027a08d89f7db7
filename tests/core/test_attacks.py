"""The attack suite's pure functions and attacks, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fish_fl import protocol as P
from fish_fl.attacks import (
    ATTACKS,
    UPDATE_ATTACKS,
    AttackConfig,
    FlippedLabels,
    NodeRound,
    collusion_update,
    flip_labels,
    gaussian_update,
    hostile_node,
    scale_to_norm,
    sign_flip,
)
from fish_fl.codec import UpdateCodec
from fish_fl.config import ConfigError, RunConfig
from fish_fl.masks import Mask
from fish_fl.tasks.base import LabelSpace


def _vector(k: int = 1000, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, generator=torch.Generator().manual_seed(seed)) * 0.01


def _node(honest: torch.Tensor, drift: torch.Tensor | None = None, seed: int = 7) -> NodeRound:
    drift = torch.zeros_like(honest) if drift is None else drift
    return NodeRound(
        honest,
        drift,
        torch.Generator().manual_seed(seed),
        torch.Generator().manual_seed(seed + 1),
    )


def _attack(name: str, partition: int = 0, **changes: object):  # type: ignore[no-untyped-def]
    config = AttackConfig(name=name, attackers=(0, 1), num_clients=5, **changes)  # type: ignore[arg-type]
    attack = hostile_node(config, partition)
    assert attack is not None
    return attack


def test_registry_holds_the_six_attacks() -> None:
    assert ATTACKS == (
        "none",
        "sign-flip",
        "scale",
        "inflate-examples",
        "label-flip",
        "noise",
        "collude",
    )
    assert set(UPDATE_ATTACKS) == {"sign-flip", "scale", "noise", "collude"}


# -- the pure functions -------------------------------------------------------------
def test_sign_flip_is_exactly_the_negated_update() -> None:
    x = _vector()
    assert torch.equal(sign_flip(x), -x)
    assert torch.equal(sign_flip(x, 3.0), x * -3.0)
    assert torch.equal(sign_flip(x) + x, torch.zeros_like(x))


def test_scale_to_norm_keeps_the_direction() -> None:
    x = _vector()
    y = scale_to_norm(x, 2.5)
    assert y.dtype == torch.float32
    assert math.isclose(float(y.double().norm()), 2.5, rel_tol=1e-6)
    cosine = float(torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=0))
    assert cosine == pytest.approx(1.0, abs=1e-9)
    assert torch.equal(scale_to_norm(torch.zeros(4), 3.0), torch.zeros(4))
    with pytest.raises(ValueError, match="target norm"):
        scale_to_norm(x, -1.0)


@pytest.mark.parametrize("num_labels", [2, 3, 10])
def test_flip_labels_maps_y_to_c_minus_1_minus_y(num_labels: int) -> None:
    y = torch.arange(num_labels).repeat(3)
    flipped = flip_labels(y, num_labels)
    assert flipped.tolist() == [num_labels - 1 - v for v in y.tolist()]
    assert flipped.dtype == y.dtype
    assert torch.equal(flip_labels(flipped, num_labels), y)  # an involution


def test_flip_labels_refuses_regression_targets() -> None:
    with pytest.raises(ValueError, match="class labels"):
        flip_labels(torch.rand(4), 1)
    with pytest.raises(ValueError, match="class labels"):
        flip_labels(torch.zeros(4, dtype=torch.long), 1)


def test_flipped_labels_are_re_iterable_and_keep_the_inputs() -> None:
    inputs = [torch.randn(2, 3), torch.randn(2, 3)]
    batches = [(inputs[0], torch.tensor([0, 2])), (inputs[1], torch.tensor([1, 1]))]
    flipped = FlippedLabels(batches, 3)
    for _ in range(2):  # a training loop re-iterates its batches every epoch
        got = list(flipped)
        assert [t.tolist() for _, t in got] == [[2, 0], [1, 1]]
        assert all(a is b for (a, _), b in zip(got, inputs, strict=True))


def test_gaussian_update_has_the_std_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(3)
    x = gaussian_update(200_000, 0.05, g)
    assert x.dtype == torch.float32
    assert float(x.double().std()) == pytest.approx(0.05, rel=0.01)
    assert abs(float(x.double().mean())) < 0.05 * 5 / math.sqrt(200_000)
    again = gaussian_update(200_000, 0.05, torch.Generator().manual_seed(3))
    assert torch.equal(x, again)


def test_collusion_update_negates_the_drift_at_the_norm() -> None:
    drift = _vector(seed=1)
    got = collusion_update(drift, 4.0, torch.Generator().manual_seed(0))
    expected = drift.double().neg() * (4.0 / float(drift.double().norm()))
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-9)


def test_collusion_without_drift_is_one_shared_random_direction() -> None:
    zero = torch.zeros(500)
    a = collusion_update(zero, 2.0, torch.Generator().manual_seed(11))
    b = collusion_update(zero, 2.0, torch.Generator().manual_seed(11))
    c = collusion_update(zero, 2.0, torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert math.isclose(float(a.double().norm()), 2.0, rel_tol=1e-6)


# -- the attacks ----------------------------------------------------------------------
def test_honest_nodes_get_no_attack() -> None:
    config = AttackConfig(name="sign-flip", attackers=(1, 3), num_clients=5)
    assert [hostile_node(config, p) is not None for p in range(5)] == [
        False,
        True,
        False,
        True,
        False,
    ]
    none = AttackConfig(name="none", attackers=(0, 1), num_clients=5)
    assert all(hostile_node(none, p) is None for p in range(5))
    assert all(hostile_node(RunConfig().attack_config(), p) is None for p in range(2))


def test_each_attack_changes_only_what_it_claims() -> None:
    honest = _vector()
    labels = LabelSpace(("a", "b", "c"))
    batches = [(torch.zeros(2, 1), torch.tensor([0, 1]))]
    for name in ATTACKS[1:]:
        attack = _attack(name, max_update_norm=1.0)
        crafted = attack.craft(_node(honest))
        assert torch.equal(crafted, honest) == (name not in UPDATE_ATTACKS), name
        assert (attack.claimed_examples(40) != 40) == (name == "inflate-examples"), name
        trained = attack.training_batches(batches, labels)
        assert (trained is not batches) == (name == "label-flip"), name
    assert _attack("inflate-examples", examples=123).claimed_examples(40) == 123
    assert _attack("inflate-examples").claimed_examples(40) == 10**9
    (flipped,) = list(_attack("label-flip").training_batches(batches, labels))
    assert flipped[1].tolist() == [2, 1]
    with pytest.raises(ValueError, match="regression"):
        _attack("label-flip").training_batches(batches, LabelSpace((), regression=True))


def test_scale_aims_just_under_the_bound() -> None:
    honest = _vector()
    norm = float(honest.double().norm())
    fixed = _attack("scale", max_update_norm=3.0).craft(_node(honest))
    assert float(fixed.double().norm()) == pytest.approx(0.99 * 3.0, rel=1e-6)
    assert float(fixed.double().norm()) < 3.0
    chosen = _attack("scale", norm=2.0, max_update_norm=3.0).craft(_node(honest))
    assert float(chosen.double().norm()) == pytest.approx(2.0, rel=1e-6)
    # No fixed bound: just under norm-factor x the node's own norm (the adaptive bound).
    adaptive = _attack("scale", norm_factor=10.0, margin=0.9).craft(_node(honest))
    assert float(adaptive.double().norm()) == pytest.approx(0.9 * 10.0 * norm, rel=1e-6)
    cosine = torch.nn.functional.cosine_similarity(adaptive.double(), honest.double(), dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-9)


def test_noise_has_the_requested_std_or_norm() -> None:
    honest = _vector(k=100_000)
    by_std = _attack("noise", noise_std=0.2).craft(_node(honest))
    assert float(by_std.double().std()) == pytest.approx(0.2, rel=0.02)
    by_norm = _attack("noise", scale=3.0).craft(_node(honest))
    assert float(by_norm.double().norm()) == pytest.approx(
        3.0 * float(honest.double().norm()), rel=1e-6
    )
    # Each attacker draws its own noise (its own generator).
    other = _attack("noise", noise_std=0.2).craft(_node(honest, seed=99))
    assert not torch.equal(by_std, other)


def test_colluders_craft_the_same_vector_from_what_they_share() -> None:
    drift = _vector(seed=5)
    config = AttackConfig(name="collude", attackers=(0, 2), num_clients=4, max_update_norm=2.0)
    a, b = hostile_node(config, 0), hostile_node(config, 2)
    assert a is not None and b is not None
    for d in (drift, torch.zeros_like(drift)):
        # Different honest updates and own generators; the same drift and shared seed.
        one = a.craft(
            NodeRound(_vector(seed=1), d, torch.Generator(), torch.Generator().manual_seed(4))
        )
        two = b.craft(
            NodeRound(_vector(seed=2), d, torch.Generator(), torch.Generator().manual_seed(4))
        )
        assert torch.equal(one, two)
        assert float(one.double().norm()) == pytest.approx(0.99 * 2.0, rel=1e-6)


def test_node_round_drift_is_received_minus_the_base_at_the_mask() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    keep = {n: torch.rand(s) < 0.4 for n, s in shapes.items()}
    mask = Mask.from_bool(keep)
    at_mask = P.flat_parameters(model)[mask.flat_positions()]
    received = mask.gather(model) + 0.25
    node = NodeRound.of(torch.zeros(mask.k), received, at_mask, round_seed=3, partition=1)
    torch.testing.assert_close(node.drift, torch.full((mask.k,), 0.25), rtol=0, atol=1e-6)
    # The shared generator depends on the round only; the own one on the partition too.
    other = NodeRound.of(torch.zeros(mask.k), received, at_mask, round_seed=3, partition=2)
    assert torch.equal(
        torch.randn(5, generator=node.shared), torch.randn(5, generator=other.shared)
    )
    assert not torch.equal(torch.randn(5, generator=node.own), torch.randn(5, generator=other.own))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_reply_replaces_the_encoded_update(dtype: str) -> None:
    codec = UpdateCodec(dtype)
    honest = codec.encode(_vector())
    arrays = {P.UPDATE: honest, P.BUFFERS: np.zeros(3, dtype=np.float32)}

    def node(h: torch.Tensor) -> NodeRound:
        return _node(h)

    flipped = _attack("sign-flip").reply(arrays, codec, node)
    assert flipped[P.BUFFERS] is arrays[P.BUFFERS]
    assert torch.equal(codec.decode(flipped[P.UPDATE]), -codec.decode(honest))
    # An attack that keeps the update sends the honest bytes untouched.
    assert _attack("inflate-examples").reply(arrays, codec, node) is arrays


# -- the keys -----------------------------------------------------------------------------
def test_run_config_resolves_the_attackers() -> None:
    assert RunConfig(num_clients=5, attack="noise", attackers=2).attack_config().attackers == (0, 1)
    config = RunConfig(num_clients=5, attack="noise", attackers=2, attacker_ids="4, 2")
    assert config.attack_config().attackers == (4, 2)
    # Without an attack, attackers is not checked against the clients (a sweep may set it).
    assert RunConfig(attackers=10**12).attack_config().name == "none"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attack": "sign-flip", "attackers": 0}, "needs at least one attacker"),
        ({"attack": "sign-flip", "attackers": 3}, "attackers=3 exceeds num-clients=2"),
        ({"attack": "sign-flip", "attacker_ids": "0,2"}, r"attackers \[2\] are not partitions"),
        ({"attack": "sign-flip", "attacker_ids": "1;0"}, "partition ids separated by commas"),
        ({"attack": "sign-flip", "attacker_ids": "1,1"}, "repeat a partition"),
        ({"attack": "collude"}, "collude needs at least 2 attackers"),
        ({"attack": "collude", "attackers": 2}, "needs a norm every colluder knows"),
        ({"attack": "scale", "norm_factor": 0.0}, "this run has none"),
        ({"attack": "noise", "mask_method": "supermask"}, "replaces the k-vector update"),
        ({"attack": "attack-everyone"}, "attack='attack-everyone' is not allowed"),
        ({"attack_margin": 1.5}, r"attack-margin=1.5 must be <= 1.0"),
        ({"attack_examples": 0}, "attack-examples=0 must be >= 1"),
    ],
)
def test_bad_attack_keys_are_one_line_errors(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig().replace(**changes)


def test_collude_needs_one_shared_mask() -> None:
    with pytest.raises(ConfigError, match="mask-assignment=shared"):
        RunConfig(
            num_clients=4,
            attack="collude",
            attackers=2,
            max_update_norm=1.0,
            mask_assignment="disjoint",
            density=0.1,
        )


def test_label_flip_on_a_regression_task_fails_before_training() -> None:
    from fish_fl.preflight import PreflightError, _check_attack

    _check_attack(RunConfig(task="sst2", attack="label-flip"))  # two classes: fine
    with pytest.raises(PreflightError, match="task=stsb is a regression"):
        _check_attack(RunConfig(task="stsb", attack="label-flip"))
