"""Sparse fine-tuned deltas: exact round trip, base checks, and size on disk."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from fish_fl.checkpoint import (
    DELTA_FORMAT,
    apply_sparse_delta,
    read_delta_info,
    save_sparse_delta,
    state_fingerprint,
)

from .tiny_models import TinyConvNet, warm_batchnorm


def _base(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyConvNet(num_classes=5, ch=8)
    warm_batchnorm(model, torch.Generator().manual_seed(seed), (3, 8, 8))
    return model.eval()


def _fine_tune(
    base: nn.Module, fraction: float, seed: int = 1
) -> tuple[nn.Module, dict[str, Tensor]]:
    """Change a random ``fraction`` of every float tensor; return the model and what changed."""
    g = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(base)
    changed: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            k = max(1, round(fraction * t.numel()))
            idx = torch.randperm(t.numel(), generator=g)[:k].sort().values
            t.view(-1)[idx] += torch.randn(k, generator=g)
            changed[name] = idx
    return model, changed


def _float_state(model: nn.Module) -> dict[str, Tensor]:
    return {n: t.clone() for n, t in model.state_dict().items() if t.is_floating_point()}


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    base = _base()
    tuned, changed = _fine_tune(base, 0.05)
    # Corner cases a float comparison would miss: -0.0 over 0.0, and a NaN.
    with torch.no_grad():
        tuned.get_parameter("fc.bias")[0] = -0.0
        base.get_parameter("fc.bias")[0] = 0.0
        tuned.get_parameter("fc.bias")[1] = float("nan")
    changed["fc.bias"] = torch.unique(torch.cat([changed["fc.bias"], torch.tensor([0, 1])]))

    path = tmp_path / "delta.safetensors"
    info = save_sparse_delta(tuned, base, path, base_name="tiny", metadata={"run": "r1"})
    expected_changed = sum(int(i.numel()) for i in changed.values())
    assert info.changed == expected_changed
    assert info.total == sum(t.numel() for t in _float_state(base).values())
    assert info.tensors == len(changed)
    assert info.file_bytes == path.stat().st_size
    assert info.full_bytes == 4 * info.total
    assert read_delta_info(path) == info

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        for name, idx in changed.items():
            assert torch.equal(f.get_tensor(f"indices/{name}"), idx)
            assert f.get_tensor(f"indices/{name}").dtype == torch.int64
            assert f.get_tensor(f"values/{name}").dtype == torch.float32
    assert meta["format"] == DELTA_FORMAT and meta["base_name"] == "tiny"
    assert meta["base_fingerprint"] == state_fingerprint(base.state_dict())
    assert meta["changed"] == str(expected_changed) and meta["run"] == "r1"

    before = _float_state(base)
    restored = apply_sparse_delta(base, path)
    assert restored is base
    want = _float_state(tuned)
    for name, t in _float_state(restored).items():
        # Bit for bit, so -0.0 and NaN count too.
        assert torch.equal(t.view(torch.int32), want[name].view(torch.int32)), name
        unchanged = torch.ones(t.numel(), dtype=torch.bool)
        unchanged[changed[name]] = False
        assert torch.equal(t.view(-1)[unchanged], before[name].view(-1)[unchanged]), name


def test_unchanged_model_gives_an_empty_delta(tmp_path: Path) -> None:
    base = _base()
    info = save_sparse_delta(copy.deepcopy(base), base.state_dict(), tmp_path / "d", base_name="b")
    assert info.changed == 0 and info.tensors == 0
    before = _float_state(base)
    apply_sparse_delta(base, tmp_path / "d")
    assert all(torch.equal(t, before[n]) for n, t in _float_state(base).items())


def test_wrong_base_is_refused_and_left_untouched(tmp_path: Path) -> None:
    base = _base(seed=0)
    tuned, _ = _fine_tune(base, 0.05)
    path = tmp_path / "delta.safetensors"
    save_sparse_delta(tuned, base, path, base_name="tiny-seed0")
    other = _base(seed=1)
    before = _float_state(other)
    with pytest.raises(ValueError) as err:
        apply_sparse_delta(other, path)
    message = str(err.value)
    assert "tiny-seed0" in message
    assert state_fingerprint(base.state_dict()) in message
    assert state_fingerprint(other.state_dict()) in message
    assert all(torch.equal(t, before[n]) for n, t in _float_state(other).items())


def test_mismatched_names_and_shapes_are_refused(tmp_path: Path) -> None:
    base = _base()
    with pytest.raises(ValueError, match="different tensors"):
        save_sparse_delta(nn.Linear(2, 2), base, tmp_path / "x", base_name="b")
    with pytest.raises(ValueError, match=r"fc\.weight: model has \(3, 8\)"):
        save_sparse_delta(TinyConvNet(num_classes=3, ch=8), base, tmp_path / "x", base_name="b")

    # A delta whose stored shape does not fit the model (a hand-edited file).
    tuned, _ = _fine_tune(base, 0.05)
    path = tmp_path / "delta.safetensors"
    save_sparse_delta(tuned, base, path, base_name="b")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    shapes = json.loads(meta["shapes"])
    shapes[0][1] = [1, 2, 3]
    save_file(tensors, str(path), metadata={**meta, "shapes": json.dumps(shapes)})
    with pytest.raises(ValueError, match=r"shape \(1, 2, 3\) in the delta"):
        apply_sparse_delta(base, path)


def test_bad_files_and_arguments(tmp_path: Path) -> None:
    base = _base()
    with pytest.raises(FileNotFoundError):
        apply_sparse_delta(base, tmp_path / "missing.safetensors")
    (tmp_path / "junk").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        apply_sparse_delta(base, tmp_path / "junk")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other"), metadata={"format": "else"})
    with pytest.raises(ValueError, match="not a fish-fl sparse delta"):
        apply_sparse_delta(base, tmp_path / "other")
    with pytest.raises(ValueError, match="'format' is reserved"):
        save_sparse_delta(base, base, tmp_path / "d", base_name="b", metadata={"format": "x"})
    with pytest.raises(ValueError, match="index_dtype='int16'"):
        save_sparse_delta(base, base, tmp_path / "d", base_name="b", index_dtype="int16")


def test_fingerprint_matches_the_task_hash_and_takes_scalars() -> None:
    state = {"w": torch.arange(6.0).view(2, 3), "b": torch.tensor([1.0, -0.0])}
    # The same bytes as hashing each tensor's uint8 view (fish_fl.task.state_fingerprint).
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        h.update(name.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    assert state_fingerprint(state) == h.hexdigest()[:16]
    with_scalar = {**state, "n": torch.tensor(3)}
    assert state_fingerprint(with_scalar) != state_fingerprint({**state, "n": torch.tensor(4)})


@pytest.mark.parametrize(("index_dtype", "ratio"), [("int64", 3.0), ("int32", 2.0)])
def test_half_percent_delta_size(tmp_path: Path, index_dtype: str, ratio: float) -> None:
    """0.5% of entries: (index + value) bytes per entry over 4 bytes per dense entry."""
    base = nn.Sequential(nn.Linear(1000, 800), nn.Linear(800, 200))
    tuned, _ = _fine_tune(base, 0.005)
    path = tmp_path / "delta.safetensors"
    info = save_sparse_delta(tuned, base, path, base_name="mlp", index_dtype=index_dtype)
    assert info.total == 1000 * 800 + 800 + 800 * 200 + 200
    assert info.density == pytest.approx(0.005, rel=0.01)
    data_bytes = info.changed * (4 + (8 if index_dtype == "int64" else 4))
    assert data_bytes <= info.file_bytes < data_bytes + 2048  # header and metadata
    # int64 indices: about 1.5% of the float32 checkpoint; int32 (the paper): about 1%.
    assert info.size_ratio == pytest.approx(ratio * 0.005, abs=0.001)
    restored = apply_sparse_delta(copy.deepcopy(base), path)
    assert all(
        torch.equal(a, b) for a, b in zip(restored.parameters(), tuned.parameters(), strict=True)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_round_trip_in_other_float_dtypes(tmp_path: Path, dtype: torch.dtype) -> None:
    base = nn.Sequential(nn.Linear(30, 20), nn.LayerNorm(20)).to(dtype)
    tuned, changed = _fine_tune(base, 0.1)
    path = tmp_path / "delta.safetensors"
    info = save_sparse_delta(tuned, base, path, base_name="mlp")
    assert info.changed == sum(int(i.numel()) for i in changed.values())
    with safe_open(str(path), framework="pt") as f:
        # float64 keeps its precision; narrower floats are exact in float32.
        want = torch.float64 if dtype == torch.float64 else torch.float32
        assert f.get_tensor("values/0.weight").dtype == want
    restored = apply_sparse_delta(copy.deepcopy(base), path)
    for a, b in zip(restored.parameters(), tuned.parameters(), strict=True):
        assert a.dtype == dtype and torch.equal(a, b)
