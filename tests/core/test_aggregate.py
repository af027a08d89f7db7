"""Aggregation of client updates against hand-computed vectors (no Flower).

Every expected vector is worked out by hand in the row's comment. The
disjoint rows give each client its own body positions plus a head that all
clients train, so a ``mean`` that divided by the total weight of all clients,
instead of the weight of the clients that train each position, fails them.
"""

from __future__ import annotations

import math

import pytest
import torch

from fish_fl.aggregate import ClientUpdate, aggregate_updates, average_buffers


def _update(positions: list[int], delta: list[float], weight: float) -> ClientUpdate:
    return ClientUpdate(
        torch.tensor(delta, dtype=torch.float32), torch.tensor(positions, dtype=torch.long), weight
    )


# Shared mask, k = 5: both clients train every position.
_D1 = [1.0, 2.0, 3.0, 4.0, 5.0]
_D2 = [0.5, -1.0, 0.0, 2.0, -5.0]
_ALL5 = [0, 1, 2, 3, 4]

# Disjoint masks with a shared head, k = 6: A trains body {0, 1}, B body {2},
# both the head {4, 5}; nobody trains 3.
_A = ([0, 1, 4, 5], [2.0, -4.0, 1.0, 3.0])
_B = ([2, 4, 5], [6.0, 5.0, 7.0])

# Three clients, k = 4: all train 0, C1 and C3 train 1, C2 and C3 train 2, nobody 3.
_C1 = ([0, 1], [8.0, 3.0])
_C2 = ([0, 2], [-4.0, 6.0])
_C3 = ([0, 1, 2], [2.0, -3.0, 0.75])

CASES = {
    # sum ignores weights: d1 + d2.
    "shared-sum": (
        [(_ALL5, _D1, 1.0), (_ALL5, _D2, 3.0)],
        5,
        "sum",
        [1.5, 1.0, 3.0, 6.0, 0.0],
    ),
    # (d1 + d2) / 2.
    "shared-mean-equal-weights": (
        [(_ALL5, _D1, 2.0), (_ALL5, _D2, 2.0)],
        5,
        "mean",
        [0.75, 0.5, 1.5, 3.0, 0.0],
    ),
    # (1 d1 + 3 d2) / 4 = [2.5, -1, 3, 10, -10] / 4.
    "shared-mean-unequal-weights": (
        [(_ALL5, _D1, 1.0), (_ALL5, _D2, 3.0)],
        5,
        "mean",
        [0.625, -0.25, 0.75, 2.5, -2.5],
    ),
    # Position by position: 0, 1 only A; 2 only B; 3 nobody; 4: 1 + 5; 5: 3 + 7.
    "disjoint-sum": (
        [(*_A, 1.0), (*_B, 3.0)],
        6,
        "sum",
        [2.0, -4.0, 6.0, 0.0, 6.0, 10.0],
    ),
    # Body positions keep their only client's delta; head 4: (1 + 5) / 2, 5: (3 + 7) / 2.
    "disjoint-mean-equal-weights": (
        [(*_A, 2.0), (*_B, 2.0)],
        6,
        "mean",
        [2.0, -4.0, 6.0, 0.0, 3.0, 5.0],
    ),
    # Head 4: (1 * 1 + 3 * 5) / 4 = 4; head 5: (1 * 3 + 3 * 7) / 4 = 6.
    "disjoint-mean-unequal-weights": (
        [(*_A, 1.0), (*_B, 3.0)],
        6,
        "mean",
        [2.0, -4.0, 6.0, 0.0, 4.0, 6.0],
    ),
    # 0: 8 - 4 + 2 = 6; 1: 3 - 3 = 0; 2: 6 + 0.75.
    "three-clients-sum": (
        [(*_C1, 1.0), (*_C2, 1.0), (*_C3, 2.0)],
        4,
        "sum",
        [6.0, 0.0, 6.75, 0.0],
    ),
    # 0: (8 - 4 + 2 * 2) / 4 = 2; 1: (3 + 2 * -3) / 3 = -1; 2: (6 + 2 * 0.75) / 3 = 2.5.
    "three-clients-mean": (
        [(*_C1, 1.0), (*_C2, 1.0), (*_C3, 2.0)],
        4,
        "mean",
        [2.0, -1.0, 2.5, 0.0],
    ),
    # Positions need not be sorted: the delta follows them.
    "one-client-unsorted-positions": (
        [([4, 1], [7.0, -2.0], 5.0)],
        5,
        "mean",
        [0.0, -2.0, 0.0, 0.0, 7.0],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_aggregate_updates_by_hand(case: str) -> None:
    rows, k, mode, expected = CASES[case]
    updates = [_update(p, d, w) for p, d, w in rows]
    got = aggregate_updates(updates, k, mode)
    assert got.dtype == torch.float32
    assert got.shape == (k,)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-7)


def test_mean_is_the_default_mode() -> None:
    updates = [_update(*_A, 1.0), _update(*_B, 3.0)]
    expected = torch.tensor([2.0, -4.0, 6.0, 0.0, 4.0, 6.0])
    torch.testing.assert_close(aggregate_updates(updates, 6), expected)


def test_inputs_are_not_modified() -> None:
    a, b = _update(*_A, 1.0), _update(*_B, 3.0)
    before = [t.clone() for t in (a.delta, a.positions, b.delta, b.positions)]
    aggregate_updates([a, b], 6, "mean")
    aggregate_updates([a, b], 6, "sum")
    for old, new in zip(before, (a.delta, a.positions, b.delta, b.positions), strict=True):
        assert torch.equal(old, new)


BUFFER_CASES = {
    # (b1 + b2) / 2.
    "equal-weights": (
        [[1.0, 2.0, 3.0], [3.0, 6.0, -3.0]],
        [1.0, 1.0],
        [2.0, 4.0, 0.0],
    ),
    # (1 b1 + 3 b2) / 4 = [10, 20, -6] / 4.
    "unequal-weights": (
        [[1.0, 2.0, 3.0], [3.0, 6.0, -3.0]],
        [1.0, 3.0],
        [2.5, 5.0, -1.5],
    ),
    # Weights only matter relative to each other: 10 and 30 is 1 and 3.
    "scaled-weights": (
        [[1.0, 2.0, 3.0], [3.0, 6.0, -3.0]],
        [10.0, 30.0],
        [2.5, 5.0, -1.5],
    ),
    # (2 * 4 + 1 * 1 + 1 * -1) / 4 = 2; (2 * 0 + 8 + 0) / 4 = 2.
    "three-buffers": (
        [[4.0, 0.0], [1.0, 8.0], [-1.0, 0.0]],
        [2.0, 1.0, 1.0],
        [2.0, 2.0],
    ),
    "one-buffer": ([[0.25, -7.0]], [9.0], [0.25, -7.0]),
}


@pytest.mark.parametrize("case", list(BUFFER_CASES))
def test_average_buffers_by_hand(case: str) -> None:
    buffers, weights, expected = BUFFER_CASES[case]
    got = average_buffers([torch.tensor(b) for b in buffers], weights)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-7)


def test_no_update_is_rejected() -> None:
    with pytest.raises(ValueError, match="no update"):
        aggregate_updates([], 5, "mean")


@pytest.mark.parametrize("mode", ["geometric-median", "MEAN", ""])
def test_unknown_mode_is_rejected(mode: str) -> None:
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_updates([_update([0], [1.0], 1.0)], 1, mode)


@pytest.mark.parametrize("weight", [0.0, -1.0, -1e-9, math.nan])
def test_non_positive_weight_is_rejected(weight: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        _update([0, 1], [1.0, 2.0], weight)


@pytest.mark.parametrize(("positions", "delta"), [([0, 1], [1.0, 2.0, 3.0]), ([0, 1, 2], [1.0])])
def test_delta_and_positions_of_different_length_are_rejected(
    positions: list[int], delta: list[float]
) -> None:
    with pytest.raises(ValueError, match="positions"):
        _update(positions, delta, 1.0)


def test_no_buffer_is_rejected() -> None:
    with pytest.raises(ValueError, match="no buffers"):
        average_buffers([], [])


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param([1.0], id="one-weight-for-two-buffers"),
        pytest.param([1.0, 2.0, 3.0], id="three-weights-for-two-buffers"),
        pytest.param([0.0, 0.0], id="zero-weights"),
        pytest.param([0.0, 1.0], id="one-zero-weight"),
        pytest.param([-1.0, 2.0], id="negative-weight"),
    ],
)
def test_average_buffers_rejects_bad_weights(weights: list[float]) -> None:
    buffers = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])]
    with pytest.raises(ValueError, match="weight"):
        average_buffers(buffers, weights)
