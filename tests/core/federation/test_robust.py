"""Robust aggregators against slow, obvious references (numpy, scipy, brute-force Krum)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from fish_fl.aggregate import ClientUpdate, aggregate_updates
from fish_fl.federation import robust
from fish_fl.federation.robust import Aggregation, robust_aggregate


def _stack(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def _brute_krum_scores(x: np.ndarray, f: int) -> np.ndarray:
    n = len(x)
    scores = []
    for i in range(n):
        d = sorted(float(((x[i] - x[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return np.array(scores)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10])
def test_median_matches_numpy(n: int) -> None:
    x = _stack(n, 37, seed=n)
    got = robust_aggregate(x, Aggregation("median"))
    np.testing.assert_allclose(got.numpy(), np.median(x.numpy(), axis=0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("n", "beta"), [(1, 0.0), (1, 0.4), (5, 0.1), (5, 0.2), (10, 0.25), (9, 0.49)]
)
def test_trimmed_mean_matches_scipy(n: int, beta: float) -> None:
    x = _stack(n, 23, seed=n)
    got = robust_aggregate(x, Aggregation("trimmed-mean", trim_beta=beta))
    ref = stats.trim_mean(x.numpy().astype(np.float64), beta, axis=0)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6, atol=1e-7)


def test_chunked_sort_matches_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Coordinates split over many chunks give the same median and trimmed mean."""
    x = _stack(6, 101)
    whole = robust.coordinate_median(x), robust.trimmed_mean(x, 0.2)
    monkeypatch.setattr(robust, "_CHUNK_ELEMENTS", 6 * 7)
    torch.testing.assert_close(robust.coordinate_median(x), whole[0], rtol=0, atol=0)
    torch.testing.assert_close(robust.trimmed_mean(x, 0.2), whole[1], rtol=0, atol=0)


@pytest.mark.parametrize(("n", "f"), [(5, 1), (7, 2), (10, 1), (12, 3)])
def test_krum_scores_match_brute_force(n: int, f: int) -> None:
    x = _stack(n, 19, seed=n + f)
    got = robust.krum_scores(x, f)
    np.testing.assert_allclose(
        got.numpy(), _brute_krum_scores(x.numpy().astype(np.float64), f), rtol=1e-9
    )


@pytest.mark.parametrize(("n", "f", "m"), [(5, 1, 1), (7, 2, 3), (10, 1, 0)])
def test_krum_and_multi_krum_pick_the_lowest_scores(n: int, f: int, m: int) -> None:
    x = _stack(n, 11, seed=3)
    scores = _brute_krum_scores(x.numpy().astype(np.float64), f)
    best = int(np.argmin(scores))
    krum = robust_aggregate(x, Aggregation("krum", krum_f=f))
    assert torch.equal(krum, x[best])
    chosen = np.argsort(scores, kind="stable")[: m or n - f]
    multi = robust_aggregate(x, Aggregation("multi-krum", krum_f=f, multi_krum_m=m))
    np.testing.assert_allclose(multi.numpy(), x.numpy()[chosen].mean(0), rtol=1e-6, atol=1e-7)


def test_krum_ignores_outliers() -> None:
    """f huge updates are never chosen, whatever their direction."""
    honest = _stack(8, 50) * 0.1
    hostile = torch.full((2, 50), 1e6)
    x = torch.cat([hostile, honest])
    got = robust_aggregate(x, Aggregation("krum", krum_f=2))
    assert any(torch.equal(got, h) for h in honest)
    multi = robust_aggregate(x, Aggregation("multi-krum", krum_f=2))
    assert multi.abs().max() < 1


@pytest.mark.parametrize(("n", "f"), [(1, 0), (2, 0), (4, 1), (6, 2)])
def test_krum_refuses_too_few_updates(n: int, f: int) -> None:
    with pytest.raises(ValueError, match=rf"krum-f={f} needs n >= 2 krum-f \+ 3 = {2 * f + 3}"):
        robust_aggregate(_stack(n, 4), Aggregation("krum", krum_f=f))


def test_multi_krum_refuses_more_than_n() -> None:
    with pytest.raises(ValueError, match="multi-krum-m = 9"):
        robust_aggregate(_stack(6, 4), Aggregation("multi-krum", krum_f=1, multi_krum_m=9))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "geomedian"}, "aggregation must be one of"),
        ({"name": "trimmed-mean", "trim_beta": 0.5}, r"trim-beta=0.5 must be in \[0, 0.5\)"),
        ({"name": "krum", "krum_f": -1}, "krum-f=-1"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Aggregation(**kwargs)  # type: ignore[arg-type]


def test_one_update_is_its_own_median_and_trimmed_mean() -> None:
    x = _stack(1, 9)
    for rule in (Aggregation("median"), Aggregation("trimmed-mean", trim_beta=0.4)):
        assert torch.equal(robust_aggregate(x, rule), x[0])


def test_aggregate_updates_scatters_the_shared_positions() -> None:
    """Through aggregate_updates: the robust result lands on the shared positions, 0 elsewhere."""
    pos = torch.tensor([1, 3, 4])
    deltas = [torch.tensor(v) for v in ([1.0, 5.0, -1.0], [2.0, -5.0, 0.0], [9.0, 0.0, 7.0])]
    updates = [ClientUpdate(d, pos, w) for d, w in zip(deltas, [1.0, 100.0, 1.0], strict=True)]
    got = aggregate_updates(updates, 6, "median")
    torch.testing.assert_close(got, torch.tensor([0.0, 2.0, 0.0, 0.0, 0.0, 0.0]))


def test_aggregate_updates_needs_shared_positions() -> None:
    a = ClientUpdate(torch.ones(2), torch.tensor([0, 1]), 1.0)
    b = ClientUpdate(torch.ones(2), torch.tensor([0, 2]), 1.0)
    with pytest.raises(ValueError, match="same positions"):
        aggregate_updates([a, b], 3, "median")


def test_weights_do_not_count() -> None:
    """One reply, one vote: a huge claimed weight does not move the median."""
    pos = torch.arange(2)
    rows = [[0.0, 0.0], [1.0, 1.0], [10.0, 10.0]]
    for weights in itertools.permutations([1.0, 1.0, 1e9]):
        updates = [
            ClientUpdate(torch.tensor(r), pos, w) for r, w in zip(rows, weights, strict=True)
        ]
        assert aggregate_updates(updates, 2, "median").tolist() == [1.0, 1.0]


def test_combine_train_skips_a_round_with_too_few_replies_for_krum() -> None:
    """Enough nodes sampled, but only 4 valid replies: Krum with f=1 skips the round, saying why."""
    from fish_fl.config import RunConfig
    from fish_fl.federation.replies import Decoded, RoundStats, combine_train
    from fish_fl.federation.state import ServerState
    from fish_fl.federation.sync import Sent
    from fish_fl.masks import MaskSpec, build_mask
    from fish_fl.masks.assign import shared_plan
    from fish_fl.methods import method_for
    from tests.tiny_models import TinyConvNet

    torch.manual_seed(0)
    model = TinyConvNet()
    state = ServerState.initial(model, seed=0, model_numel=1)
    state.set_plan(shared_plan(build_mask(model, MaskSpec(method="random", density=0.2))))
    k = state.plan.union.k  # type: ignore[union-attr]
    sent = Sent(0, state.mask_version, 0, k, torch.arange(k), state.values)
    config = RunConfig.from_mapping({"aggregation": "krum", "num-clients": 6, "min-replies": 5})

    def run(n: int) -> tuple[RoundStats, torch.Tensor | None]:
        decoded = [
            Decoded(i, sent, torch.full((k,), 0.01 * (i + 1)), 10, {}, None, None, None)
            for i in range(n)
        ]
        stats = RoundStats(replies=n)
        values, _ = combine_train(
            decoded,
            stats,
            state=state,
            method=method_for(config),
            cap=100.0,
            max_update_norm=0.0,
            norm_factor=0.0,
            norm_policy="reject",
            min_replies=1,
        )
        return stats, values

    stats, values = run(4)
    assert values is None and stats.skipped
    assert stats.skip_reason == "krum with krum-f=1 needs n >= 2 krum-f + 3 = 5 replies, got 4"
    stats, values = run(5)
    assert values is not None
    # Krum picks the middle update of 0.01, ..., 0.05 (its neighbours are nearest).
    torch.testing.assert_close(values, state.values + 0.03)
