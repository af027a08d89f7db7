"""A checkpoint keeps the privacy accountant's state bit for bit, and the run goes on alike."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from fish_fl.config import RunConfig
from fish_fl.federation.privacy import PREFIX, Privacy
from fish_fl.federation.replies import Decoded, RoundStats, combine_train
from fish_fl.federation.state import ServerState
from fish_fl.federation.sync import Sent
from fish_fl.masks import MaskSpec, build_mask
from fish_fl.masks.assign import shared_plan
from fish_fl.methods import method_for
from strategies.state import load_server_state, save_server_state
from tests.tiny_models import TinyConvNet

CONFIG = RunConfig.from_mapping(
    {
        "dp-mode": "central",
        "dp-noise-multiplier": 0.9,
        "dp-clip": 0.05,
        "dp-clip-quantile": 0.5,
        "dp-clip-count-noise": 1.0,
        "num-clients": 4,
        "clients-per-round": 2,
    }
)


def _state() -> ServerState:
    torch.manual_seed(0)
    model = TinyConvNet()
    state = ServerState.initial(model, seed=0, model_numel=1)
    state.set_plan(shared_plan(build_mask(model, MaskSpec(method="random", density=0.2))))
    return state


def _round(state: ServerState, privacy: Privacy, rnd: int) -> torch.Tensor:
    k = state.plan.union.k  # type: ignore[union-attr]
    sent = Sent(0, state.mask_version, 0, k, torch.arange(k), state.values)
    decoded = [
        Decoded(i, sent, torch.full((k,), 0.01 * (i + rnd)), 10, {}, None, None, None)
        for i in range(2)
    ]
    values, _ = combine_train(
        decoded,
        RoundStats(replies=2),
        state=state,
        method=method_for(CONFIG),
        cap=100.0,
        max_update_norm=0.0,
        norm_factor=10.0,
        norm_policy="reject",
        min_replies=1,
        privacy=privacy,
    )
    assert values is not None
    state.apply_values(values)
    return values


def test_resume_keeps_the_accountant_bit_identical(tmp_path: Path) -> None:
    privacy = Privacy(CONFIG.privacy_config())
    state = _state()
    for rnd in range(3):
        _round(state, privacy, rnd)
    path = tmp_path / "server.ckpt"
    save_server_state(state, path, 3, 1.0)
    reference = copy.deepcopy(state)

    resumed = _state()
    load_server_state(resumed, path)
    names = sorted(n for n in state.extra if n.startswith(PREFIX))
    assert names == [PREFIX + "clip", PREFIX + "history"]
    for name in names:
        a, b = state.extra[name], resumed.extra[name]
        assert a.dtype == b.dtype == torch.float64 and torch.equal(a, b), name
    assert privacy.steps(resumed.extra) == 3
    assert privacy.epsilon(resumed.extra) == privacy.epsilon(state.extra)
    assert privacy.clip(resumed.extra) == privacy.clip(state.extra) != CONFIG.dp_clip

    # The next round draws the same noise and clip from the restored state.
    assert torch.equal(_round(reference, privacy, 3), _round(resumed, privacy, 3))
    for name in names:
        assert torch.equal(reference.extra[name], resumed.extra[name]), name
