"""Server optimisers on the k-vector against the formulas of Reddi et al. (2021), by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fish_fl.config import ConfigError, RunConfig
from fish_fl.federation.server_optim import PREFIX, ServerOptimizer, ServerOptimizerConfig

X = [0.5, -1.0, 2.0, 0.0]
DELTA_1 = [0.1, -0.02, 0.0, 3.0]
DELTA_2 = [-0.05, -0.02, 0.4, 1.0]


def _vec(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _steps(name: str, deltas: list[list[float]], **kw: float) -> tuple[torch.Tensor, dict]:
    """Step ``X`` with each delta in turn, the state carried as the server carries it."""
    opt = ServerOptimizer(ServerOptimizerConfig(name=name, **kw))
    x, extra = _vec(X), {}
    for d in deltas:
        x, state = opt.step(x, x + _vec(d), extra, mask_version=3)
        extra = {**extra, **state}
    return x, extra


def _close(got: torch.Tensor, want: list[float]) -> None:
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), rtol=1e-6, atol=1e-7)


def test_fedadam_one_step_is_the_formula() -> None:
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    x, extra = _steps("adam", [DELTA_1], lr=eta, beta1=b1, beta2=b2, tau=tau)
    want = []
    for xi, d in zip(X, DELTA_1, strict=True):
        m = (1 - b1) * d  # m_{-1} = 0
        v = b2 * tau**2 + (1 - b2) * d * d  # v_{-1} = tau^2
        want.append(xi + eta * m / (math.sqrt(v) + tau))
    _close(x, want)
    _close(extra[PREFIX + "m"], [(1 - b1) * d for d in DELTA_1])
    _close(extra[PREFIX + "v"], [b2 * tau**2 + (1 - b2) * d * d for d in DELTA_1])
    assert int(extra[PREFIX + "steps"][0]) == 1
    assert int(extra[PREFIX + "mask-version"][0]) == 3


def test_fedadam_second_step_carries_both_moments() -> None:
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    x, extra = _steps("adam", [DELTA_1, DELTA_2], lr=eta, beta1=b1, beta2=b2, tau=tau)
    want = []
    for xi, d1, d2 in zip(X, DELTA_1, DELTA_2, strict=True):
        m1, v1 = (1 - b1) * d1, b2 * tau**2 + (1 - b2) * d1 * d1
        x1 = xi + eta * m1 / (math.sqrt(v1) + tau)
        m2, v2 = b1 * m1 + (1 - b1) * d2, b2 * v1 + (1 - b2) * d2 * d2
        want.append(x1 + eta * m2 / (math.sqrt(v2) + tau))
    _close(x, want)
    assert int(extra[PREFIX + "steps"][0]) == 2


def test_fedyogi_two_steps_are_the_formula() -> None:
    eta, b1, b2, tau = 0.05, 0.9, 0.99, 1e-2
    x, _ = _steps("yogi", [DELTA_1, DELTA_2], lr=eta, beta1=b1, beta2=b2, tau=tau)
    sign = lambda a: (a > 0) - (a < 0)  # noqa: E731
    want = []
    for xi, d1, d2 in zip(X, DELTA_1, DELTA_2, strict=True):
        m, v, x_ = 0.0, tau**2, xi
        for d in (d1, d2):
            m = b1 * m + (1 - b1) * d
            v = v - (1 - b2) * d * d * sign(v - d * d)
            x_ = x_ + eta * m / (math.sqrt(v) + tau)
        want.append(x_)
    _close(x, want)


def test_fedavgm_two_steps_are_the_formula() -> None:
    eta, beta = 0.7, 0.5
    x, extra = _steps("avgm", [DELTA_1, DELTA_2], lr=eta, momentum=beta)
    want = []
    for xi, d1, d2 in zip(X, DELTA_1, DELTA_2, strict=True):
        m1 = d1
        x1 = xi + eta * m1
        want.append(x1 + eta * (beta * m1 + d2))
    _close(x, want)
    assert PREFIX + "v" not in extra


def test_avgm_without_momentum_at_lr_one_is_plain_averaging() -> None:
    x, _ = _steps("avgm", [DELTA_1], momentum=0.0)
    torch.testing.assert_close(x, _vec(X) + _vec(DELTA_1), rtol=0, atol=0)


def test_none_returns_the_combined_vector_itself() -> None:
    opt = ServerOptimizer(ServerOptimizerConfig())
    combined = _vec(X) + _vec(DELTA_1)
    new, state = opt.step(_vec(X), combined, {}, mask_version=1)
    assert new is combined and state == {}


def test_default_lr_per_optimizer() -> None:
    assert ServerOptimizerConfig(name="avgm").step_size == 1.0
    assert ServerOptimizerConfig(name="adam").step_size == 0.01
    assert ServerOptimizerConfig(name="yogi", lr=0.3).step_size == 0.3


def test_a_new_mask_version_starts_afresh() -> None:
    opt = ServerOptimizer(ServerOptimizerConfig(name="adam", lr=0.1))
    _, extra = _steps("adam", [DELTA_1, DELTA_2], lr=0.1)
    # The new mask keeps 3 entries: the old state is of other coordinates.
    x = _vec([1.0, 2.0, 3.0])
    after, state = opt.step(x, x + 0.5, extra, mask_version=4)
    fresh, fresh_state = opt.step(x, x + 0.5, {}, mask_version=4)
    assert torch.equal(after, fresh)
    assert all(torch.equal(state[k], fresh_state[k]) for k in fresh_state)
    assert int(state[PREFIX + "steps"][0]) == 1


def test_step_is_pure() -> None:
    _, extra = _steps("adam", [DELTA_1], lr=0.1)
    before = {k: v.clone() for k, v in extra.items()}
    x = _vec(X)
    ServerOptimizer(ServerOptimizerConfig(name="adam", lr=0.1)).step(x, x + 1.0, extra, 3)
    assert before.keys() == extra.keys()
    assert all(torch.equal(before[k], extra[k]) for k in before)
    assert torch.equal(x, _vec(X))


def test_a_state_that_does_not_fit_the_mask_is_an_error() -> None:
    _, extra = _steps("adam", [DELTA_1], lr=0.1)
    x = _vec([1.0, 2.0])
    with pytest.raises(ValueError, match="does not fit the 2-entry mask of version 3"):
        ServerOptimizer(ServerOptimizerConfig(name="adam")).step(x, x, extra, mask_version=3)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"server-optimizer": "sgd"}, "server-optimizer"),
        ({"server-optimizer": "adam", "server-beta2": 1.0}, "server-beta2 must be < 1"),
        ({"server-optimizer": "avgm", "server-momentum": 1.0}, "server-momentum must be < 1"),
        ({"server-lr": 0.1}, "no effect with server-optimizer=none"),
        ({"server-optimizer": "adam", "server-tau": 0.0}, "server-tau"),
        ({"proximal-mu": -1.0}, "proximal-mu"),
        (
            {"mask-method": "supermask", "server-optimizer": "adam", "head-patterns": "fc"},
            "server-optimizer='none'",
        ),
    ],
)
def test_bad_server_optimizer_keys_are_one_line_errors(
    changes: dict[str, object], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        RunConfig.from_mapping(changes)


def test_server_optimizer_keys_reach_the_config() -> None:
    config = RunConfig.from_mapping(
        {"server-optimizer": "yogi", "server-lr": 0.02, "server-tau": 1e-4, "proximal-mu": 0.01}
    )
    opt = config.server_optimizer_config()
    assert (opt.name, opt.lr, opt.tau, opt.beta1, opt.beta2) == ("yogi", 0.02, 1e-4, 0.9, 0.99)
    assert config.optimizer_config().proximal_mu == 0.01


def _round(
    server_optimizer: str, deltas: list[float], optimizer: type[ServerOptimizer] = ServerOptimizer
) -> tuple[object, object, object]:
    """One round of ``combine_train`` on a tiny model: two replies of constant updates."""
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
    positions = torch.arange(k)
    sent = Sent(0, state.mask_version, 0, k, positions, state.values)
    decoded = [
        Decoded(i, sent, torch.full((k,), d), 10, {}, None, None, None)
        for i, d in enumerate(deltas)
    ]
    config = RunConfig.from_mapping({"server-optimizer": server_optimizer})
    stats = RoundStats(replies=len(decoded))
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
        server_optimizer=optimizer(config.server_optimizer_config()),
    )
    return state, stats, values


def test_combine_train_steps_the_optimizer_and_keeps_its_state() -> None:
    state, stats, values = _round("adam", [0.5, 1.5])
    assert not stats.skipped  # type: ignore[attr-defined]
    x = state.values  # type: ignore[attr-defined]
    m, v, tau = 0.1 * 1.0, 0.99e-6 + 0.01 * 1.0, 1e-3  # the mean update is 1.0
    torch.testing.assert_close(values, x + 0.01 * m / (math.sqrt(v) + tau))
    assert ServerOptimizer.steps(state.extra) == 1  # type: ignore[attr-defined]


class _Overflowing(ServerOptimizer):
    """A step whose result is not finite (as a huge server-lr could give)."""

    def step(self, values, combined, extra, mask_version):  # type: ignore[no-untyped-def]
        new, state = super().step(values, combined, extra, mask_version)
        return new * float("inf"), state


def test_a_skipped_round_leaves_the_optimizer_state_alone() -> None:
    state, stats, values = _round("adam", [0.5, 1.5], _Overflowing)
    assert values is None and stats.skipped  # type: ignore[attr-defined]
    assert not any(k.startswith(PREFIX) for k in state.extra)  # type: ignore[attr-defined]


def test_without_a_server_optimizer_the_combination_is_unchanged() -> None:
    state, _, values = _round("none", [0.5, 1.5])
    assert torch.equal(values, state.values + 1.0)  # type: ignore[arg-type, attr-defined]
    assert state.extra == {}  # type: ignore[attr-defined]
