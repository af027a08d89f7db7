"""The server checkpoint stores nothing twice: a dense run holds one float32 copy of the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fish_fl import protocol as P
from fish_fl.federation.state import ServerState
from fish_fl.masks import Mask
from fish_fl.masks.assign import shared_plan
from fish_fl.masks.registry import parameter_shapes
from strategies.state import load_server_state, save_server_state


def _state(seed: int = 0) -> ServerState:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(300, 200), nn.LayerNorm(200), nn.Linear(200, 10))
    numel = sum(p.numel() for p in model.parameters())
    return ServerState.initial(model, seed=seed, model_numel=numel)


def _trained(state: ServerState, mask: Mask) -> None:
    """Round 1 of a run with ``mask``: every masked entry moves ."""
    state.set_plan(shared_plan(mask))
    values = state.values + 0.01 * torch.randn(
        state.values.shape, generator=torch.Generator().manual_seed(3)
    )
    values[0] = -0.0  # restored with its sign
    state.apply_values(values)


def _header_bytes(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("density", [1.0, 0.005])
def test_checkpoint_size_and_exact_restore(tmp_path: Path, density: float) -> None:
    state = _state()
    shapes = parameter_shapes(state.model)
    if density == 1.0:
        mask = Mask.full(shapes)
    else:
        gen = torch.Generator().manual_seed(1)
        mask = Mask(
            {
                n: torch.randperm(torch.Size(s).numel(), generator=gen)[
                    : max(1, torch.Size(s).numel() // 200)
                ]
                for n, s in shapes.items()
            },
            shapes,
        )
    _trained(state, mask)
    path = tmp_path / "checkpoint.safetensors"
    save_server_state(state, path, 1, 0.0)
    model_bytes = 4 * state.total
    data_bytes = path.stat().st_size - _header_bytes(path)
    if density == 1.0:
        # One float32 copy of the model (the server keeps no optimiser state), a few
        # bytes of position and mask encodings, and nothing else.
        assert model_bytes <= data_bytes <= model_bytes + 1024, (data_bytes, model_bytes)
    else:
        # The k trained values and their positions (varint gaps) and one mask, well under 2%.
        assert data_bytes < 0.02 * model_bytes, (data_bytes, model_bytes)

    fresh = _state()
    load_server_state(fresh, path)
    flat, want = P.flat_parameters(fresh.model), P.flat_parameters(state.model)
    assert torch.equal(flat.view(torch.int32), want.view(torch.int32))
    for name in ("values", "base_values", "prev_values"):
        a, b = getattr(fresh, name), getattr(state, name)
        assert a.dtype == b.dtype and torch.equal(
            a.view(torch.int32), b.float().view(torch.int32)
        ), name
    assert fresh.plan is not None and fresh.plan.union == mask
    assert fresh.base_plan is fresh.plan  # stored once, restored as one
    assert torch.equal(fresh.plan.slots[0][1], torch.arange(mask.k))
