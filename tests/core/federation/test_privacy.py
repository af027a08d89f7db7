"""DP-FedAvg: clipping, the noise's scale, Opacus's accounting, state across a resume."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

from fish_fl.config import RunConfig
from fish_fl.federation.privacy import (
    PREFIX,
    Privacy,
    PrivacyConfig,
    clip_update,
    local_privatise,
)


def _config(**kw: object) -> PrivacyConfig:
    base: dict[str, object] = {
        "mode": "central",
        "clip": 0.5,
        "noise_multiplier": 1.1,
        "clients_per_round": 4,
        "num_clients": 20,
        "rounds": 10,
    }
    return PrivacyConfig(**{**base, **kw})  # type: ignore[arg-type]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _combine(
    privacy: Privacy, deltas: list[torch.Tensor], k: int, seed: int = 0, mean: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    positions = [torch.arange(k)] * len(deltas)
    out, state, _ = privacy.combine(deltas, positions, k, {}, _gen(seed), mean=mean)
    return out, state


@pytest.mark.parametrize("scale", [1e-3, 0.4, 0.5, 3.0, 1e6])
def test_clipping_bounds_every_replys_contribution(scale: float) -> None:
    """With the same noise draw, adding one reply moves the sum by at most C."""
    privacy = Privacy(_config())
    k = 300
    others = [torch.randn(k, generator=_gen(i)) * 10 for i in range(1, 4)]
    hostile = torch.randn(k, generator=_gen(9)) * scale
    without, _ = _combine(privacy, others, k)
    with_it, _ = _combine(privacy, [*others, hostile], k)
    moved = float((with_it.double() - without.double()).norm())
    assert moved <= 0.5 * (1 + 1e-5)
    if float(hostile.norm()) <= 0.5:
        torch.testing.assert_close(with_it - without, hostile, rtol=1e-4, atol=1e-5)


def test_clip_update_is_exact() -> None:
    d = torch.tensor([3.0, 4.0])
    clipped, norm = clip_update(d, 1.0)
    assert norm == 5.0
    torch.testing.assert_close(clipped, torch.tensor([0.6, 0.8], dtype=torch.float64))
    same, _ = clip_update(d, 5.0)
    assert torch.equal(same, d.double())


@pytest.mark.parametrize(("z", "clip"), [(1.1, 0.5), (0.3, 2.0), (4.0, 0.01)])
def test_central_noise_std_is_z_times_c(z: float, clip: float) -> None:
    """200,000 draws: the measured std of the noise on the sum is z C within 5%."""
    privacy = Privacy(_config(noise_multiplier=z, clip=clip))
    noise, _ = _combine(privacy, [], 200_000)
    assert abs(float(noise.double().std()) / (z * clip) - 1) < 0.05
    assert abs(float(noise.double().mean())) < 0.05 * z * clip


def test_mean_divides_by_the_clients_sampled() -> None:
    privacy = Privacy(_config())
    total, _ = _combine(privacy, [torch.full((5,), 0.1)], 5, seed=3)
    mean, _ = _combine(privacy, [torch.full((5,), 0.1)], 5, seed=3, mean=True)
    torch.testing.assert_close(mean, total / 4)


def test_local_noise_sums_to_the_central_variance() -> None:
    """Four clients' local noise, summed: std z C within 5%; one client's: z C / sqrt(4)."""
    cfg = _config(mode="local", noise_multiplier=1.1, clip=0.5)
    k = 200_000
    shares = [local_privatise(torch.zeros(k), cfg, _gen(i)).double() for i in range(4)]
    assert abs(float(shares[0].std()) / (1.1 * 0.5 / 2) - 1) < 0.05
    assert abs(float(sum(shares).std()) / (1.1 * 0.5) - 1) < 0.05


def test_local_clips_before_noising_and_the_server_tops_up_missing_shares() -> None:
    cfg = _config(mode="local", noise_multiplier=1e-9, clip=0.5)
    out = local_privatise(torch.tensor([30.0, 40.0]), cfg, _gen())
    torch.testing.assert_close(out, torch.tensor([0.3, 0.4]))
    privacy = Privacy(_config(mode="local", noise_multiplier=1.1, clip=0.5))
    k = 200_000
    _, _, info = privacy.combine(
        [torch.zeros(k)], [torch.arange(k)], k, {}, _gen(), mean=False
    )  # 1 of 4 answered: the server adds the other 3 shares
    assert info.noise_std == pytest.approx(1.1 * 0.5 * math.sqrt(3 / 4))
    _, _, full = privacy.combine(
        [torch.zeros(k)] * 4, [torch.arange(k)] * 4, k, {}, _gen(), mean=False
    )
    assert full.noise_std == 0.0


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_epsilon_is_the_accountants_own(kind: str) -> None:
    cfg = _config(accountant=kind, delta=1e-5)
    privacy = Privacy(cfg)
    extra: dict[str, torch.Tensor] = {}
    for rnd in range(7):
        _, state, _ = privacy.combine(
            [torch.ones(3)], [torch.arange(3)], 3, extra, _gen(rnd), mean=True
        )
        extra.update(state)
    reference = RDPAccountant() if kind == "rdp" else PRVAccountant()
    for _ in range(7):
        reference.step(noise_multiplier=1.1, sample_rate=4 / 20)
    assert privacy.steps(extra) == 7
    assert privacy.epsilon(extra) == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)


def test_a_solved_noise_multiplier_spends_the_target_in_the_rounds() -> None:
    cfg = _config(noise_multiplier=0.0, target_epsilon=3.0, rounds=10)
    z = cfg.noise_multiplier_total
    privacy = Privacy(cfg)
    extra = {PREFIX + "history": torch.tensor([[z, 0.2, 9.0]], dtype=torch.float64)}
    assert not privacy.target_reached(extra)  # the 10th round still fits
    extra = {PREFIX + "history": torch.tensor([[z, 0.2, 10.0]], dtype=torch.float64)}
    assert 2.9 <= privacy.epsilon(extra) <= 3.0
    assert privacy.target_reached(extra)  # an 11th would not


def test_adaptive_clipping_follows_the_quantile() -> None:
    """C <- C exp(-eta (b~ - gamma)), b~ the noisy share of unclipped replies (Andrew et al.)."""
    cfg = _config(clip_quantile=0.5, clip_lr=0.2, clip_count_noise=0.6, noise_multiplier=1.0)
    privacy = Privacy(cfg)

    def count_noise(seed: int) -> float:  # the draw after the k-vector's noise
        g = _gen(seed)
        torch.randn(4, generator=g, dtype=torch.float64)
        return float(torch.randn((), generator=g, dtype=torch.float64))

    small = [torch.full((4,), 1e-3)] * 4
    _, state, info = privacy.combine(small, [torch.arange(4)] * 4, 4, {}, _gen(1), mean=True)
    b = (4 + 0.6 * count_noise(1)) / 4
    assert info.next_clip == pytest.approx(0.5 * math.exp(-0.2 * (b - 0.5)), rel=1e-12)
    assert float(state[PREFIX + "clip"][0]) == info.next_clip
    big = [torch.full((4,), 10.0)] * 4
    _, _, grown = privacy.combine(big, [torch.arange(4)] * 4, 4, state, _gen(2), mean=True)
    assert grown.clip == info.next_clip and grown.clipped == 4
    b = (0 + 0.6 * count_noise(2)) / 4
    assert grown.next_clip == pytest.approx(info.next_clip * math.exp(-0.2 * (b - 0.5)), rel=1e-12)


def test_update_noise_multiplier_with_adaptive_clipping() -> None:
    cfg = _config(clip_quantile=0.5, noise_multiplier=1.0, clip_count_noise=2.0)
    assert cfg.update_noise_multiplier == pytest.approx((1.0 - 1 / 16) ** -0.5)
    with pytest.raises(ValueError, match="below twice the count noise"):
        _config(clip_quantile=0.5, noise_multiplier=5.0, clip_count_noise=2.0)


def test_combine_is_pure_and_reproducible() -> None:
    privacy = Privacy(_config())
    extra: dict[str, torch.Tensor] = {}
    a, sa = _combine(privacy, [torch.ones(50)], 50, seed=5)
    b, sb = _combine(privacy, [torch.ones(50)], 50, seed=5)
    assert torch.equal(a, b) and all(torch.equal(sa[n], sb[n]) for n in sa)
    assert extra == {}


def test_combine_train_applies_dp_and_writes_its_state() -> None:
    """Through combine_train: no adaptive norm bound, the noisy mean, the accountant's step."""
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
    # One update a million times the others': the adaptive bound would reject it; DP clips it.
    decoded = [
        Decoded(i, sent, torch.full((k,), d), 10, {}, None, None, None)
        for i, d in enumerate([0.01, 0.02, 1e4])
    ]
    config = RunConfig.from_mapping(
        {"dp-mode": "central", "dp-noise-multiplier": 1.0, "dp-clip": 0.1, "num-clients": 4}
    )
    stats = RoundStats(replies=3)
    privacy = Privacy(config.privacy_config())
    values, _ = combine_train(
        decoded,
        stats,
        state=state,
        method=method_for(config),
        cap=100.0,
        max_update_norm=0.0,
        norm_factor=10.0,
        norm_policy="reject",
        min_replies=1,
        privacy=privacy,
    )
    assert values is not None and stats.rejected == 0 and stats.clipped >= 1
    assert privacy.steps(state.extra) == 1
    assert stats.dp is not None and stats.dp.noise_std == pytest.approx(0.1)


def test_node_reply_privatises_under_local_dp() -> None:
    """The node's reply: clipped to C and noised, seeded by the round's seed; off: the plain delta."""
    import numpy as np

    from fish_fl import protocol as P
    from fish_fl.codec import UpdateCodec
    from fish_fl.methods import method_for

    codec = UpdateCodec("float32")
    received, trained = torch.zeros(1000), torch.full((1000,), 1.0)
    values = {"dp-mode": "local", "dp-noise-multiplier": 1e-6, "dp-clip": 0.5, "num-clients": 4}
    local = method_for(RunConfig.from_mapping(values))
    reply = local.node_reply(trained, received, None, None, 7, codec)  # type: ignore[arg-type]
    assert np.linalg.norm(reply[P.UPDATE].astype(np.float64)) == pytest.approx(0.5, rel=1e-4)
    again = local.node_reply(trained, received, None, None, 7, codec)  # type: ignore[arg-type]
    assert np.array_equal(reply[P.UPDATE], again[P.UPDATE])
    other = local.node_reply(trained, received, None, None, 8, codec)  # type: ignore[arg-type]
    assert not np.array_equal(reply[P.UPDATE], other[P.UPDATE])
    plain = method_for(RunConfig()).node_reply(trained, received, None, None, 7, codec)  # type: ignore[arg-type]
    assert np.array_equal(plain[P.UPDATE], trained.numpy())
