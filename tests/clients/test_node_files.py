"""What a node keeps on disk: a damaged file is treated as missing, and the run goes on.

A cached base that does not read back intact makes the node answer
``MISSING_BASE`` (the server then sends the base again); a damaged optimiser
state makes the node start from a fresh one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from clients.runtime import BaseStore, MaskStore, load_optimizer_file, save_optimizer_file
from fish_fl import protocol as P
from fish_fl.federation.sync import NodeState, flat_fingerprint, resolve
from fish_fl.fileio import read_safetensors, save_safetensors_atomic
from fish_fl.masks import Mask
from tests.tiny_models import TinyConvNet


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _flip_last_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00" * 64)


DAMAGE = [
    pytest.param(_flip_last_bit, id="flipped-bit"),
    pytest.param(_truncate, id="truncated"),
    pytest.param(_garbage, id="garbage"),
]


def test_a_cached_base_reads_back_bit_for_bit(cache: Path) -> None:
    flat = torch.randn(100, generator=torch.Generator().manual_seed(0))
    BaseStore().put("abc", flat)
    got = BaseStore().get("abc")  # a new process: nothing in memory
    assert got is not None and torch.equal(got, flat)
    assert [p.stem for p in (cache / "bases").iterdir()] == ["abc"]  # one file, no temporary


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cached_base_is_missing_and_the_node_says_so(
    cache: Path, damage: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    model = TinyConvNet()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    flat = P.flat_parameters(model) + 1.0  # a later base (version 1)
    fingerprint = flat_fingerprint(flat, shapes)
    BaseStore().put(fingerprint, flat)
    (path,) = (cache / "bases").glob(f"{fingerprint}.*")
    damage(path)

    store = BaseStore()
    with caplog.at_level(logging.WARNING, logger="clients.runtime"):
        assert store.get(fingerprint) is None
    assert "treated as missing" in caplog.text
    assert not path.exists()  # the next copy the server sends replaces it

    cfg = {P.CFG_BASE_VERSION: 1, P.CFG_BASE_FINGERPRINT: fingerprint}
    state = NodeState(run_config="{}", base_version=1, base_fingerprint=fingerprint)
    with pytest.raises(P.NodeError) as err:
        resolve(cfg, {}, state, store, shapes, lambda: flat, with_mask=False)
    assert err.value.status == P.Status.MISSING_BASE


def _tiny_mask() -> Mask:
    model = TinyConvNet()
    return Mask.from_bool({n: torch.rand(p.shape) < 0.3 for n, p in model.named_parameters()})


def test_a_cached_mask_reads_back_bit_for_bit(cache: Path) -> None:
    mask = _tiny_mask()
    data = mask.to_bytes()
    MaskStore().put(mask.fingerprint, data)
    got = MaskStore().get(mask.fingerprint)  # a new process: nothing in memory
    assert got == data and Mask.from_bytes(got).fingerprint == mask.fingerprint
    assert [p.stem for p in (cache / "masks").iterdir()] == [mask.fingerprint]
    assert MaskStore().get("../bases/x") is None  # a fingerprint is never a path


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cached_mask_is_missing_and_the_node_says_so(
    cache: Path, damage: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    mask = _tiny_mask()
    MaskStore().put(mask.fingerprint, mask.to_bytes())
    (path,) = (cache / "masks").glob(f"{mask.fingerprint}.*")
    damage(path)
    with caplog.at_level(logging.WARNING, logger="clients.runtime"):
        assert MaskStore().get(mask.fingerprint) is None
    assert "treated as missing" in caplog.text
    assert not path.exists()


def _trained_optimizer(seed: int = 0) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(4, 3, generator=g, requires_grad=True), torch.randn(5, generator=g)]
    params[1].requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        sum((p**2).sum() for p in params).backward()  # type: ignore[union-attr]
        opt.step()
    return opt, params


def _fresh_like(params: list[torch.Tensor]) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p.detach().clone().requires_grad_(True) for p in params], lr=0.01)


def test_a_saved_optimizer_state_is_restored(cache: Path) -> None:
    opt, params = _trained_optimizer()
    save_optimizer_file("run1", 0, 3, opt, mask_version=1)
    fresh = _fresh_like(params)
    assert load_optimizer_file("run1", 0, 4, fresh, mask_version=1)
    want = opt.state_dict()["state"]
    got = fresh.state_dict()["state"]
    assert want.keys() == got.keys()
    for i in want:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(want[i][name], got[i][name]), (i, name)
    assert not load_optimizer_file("run1", 0, 4, _fresh_like(params), mask_version=2)


def _wrong_shape(path: Path) -> None:
    tensors, meta = read_safetensors(path)
    tensors["0/exp_avg"] = torch.zeros(3, 4)
    save_safetensors_atomic(
        tensors, path, {k: v for k, v in meta.items() if k != "sha256"}, checksums=True
    )


def _unknown_parameter(path: Path) -> None:
    tensors, meta = read_safetensors(path)
    tensors["7/exp_avg"] = torch.zeros(4, 3)
    save_safetensors_atomic(
        tensors, path, {k: v for k, v in meta.items() if k != "sha256"}, checksums=True
    )


@pytest.mark.parametrize(
    "damage",
    [
        *DAMAGE,
        pytest.param(_wrong_shape, id="wrong-shape"),
        pytest.param(_unknown_parameter, id="unknown-parameter"),
    ],
)
def test_a_damaged_optimizer_state_starts_afresh(
    cache: Path, damage: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    opt, params = _trained_optimizer()
    save_optimizer_file("run1", 0, 3, opt, mask_version=1)
    damage(cache / "optimizer" / "run1" / "p0-r3.safetensors")
    fresh = _fresh_like(params)
    with caplog.at_level(logging.WARNING, logger="clients.runtime"):
        assert not load_optimizer_file("run1", 0, 4, fresh, mask_version=1)
    assert "starting afresh" in caplog.text
    assert fresh.state_dict()["state"] == {}  # nothing half-restored
