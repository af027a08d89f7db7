"""Sparse fine-tuned deltas: exact round trip, base checks, and size on disk."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
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
from tests.tiny_models import TinyConvNet, warm_batchnorm


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
    # Corner cases a float comparison would miss: -0.0 over 0.0, and a NaN in the base.
    with torch.no_grad():
        tuned.get_parameter("fc.bias")[0] = -0.0
        base.get_parameter("fc.bias")[0] = 0.0
        base.get_parameter("fc.bias")[1] = float("nan")
        tuned.get_parameter("fc.bias")[1] = 0.5
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
        storage = json.loads(meta["storage"])
        # fc.bias changed in 3 of 5 entries: whole (20 bytes) is smaller than 3 x (8 + 4).
        assert storage == {n: "whole" if n == "fc.bias" else "indices" for n in changed}
        for name, idx in changed.items():
            if name == "fc.bias":
                assert torch.equal(
                    f.get_tensor(f"values/{name}").view(torch.int32),
                    _float_state(tuned)[name].view(torch.int32),
                )
                continue
            assert torch.equal(f.get_tensor(f"indices/{name}"), idx)
            assert f.get_tensor(f"indices/{name}").dtype == torch.int64
            assert f.get_tensor(f"values/{name}").dtype == torch.float32
    assert meta["format"] == DELTA_FORMAT == "fish-fl-delta/2" and meta["base_name"] == "tiny"
    assert meta["base_fingerprint"] == state_fingerprint(base.state_dict())
    assert meta["changed"] == str(expected_changed) and meta["run"] == "r1"

    before = _float_state(base)
    restored = apply_sparse_delta(base, path)
    assert restored is base
    want = _float_state(tuned)
    for name, t in _float_state(restored).items():
        # Bit for bit, so -0.0 counts too.
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


def _safetensors_header_bytes(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("index_dtype", ["int64", "int32"])
@pytest.mark.parametrize("fraction", [1.0, 0.6])
def test_a_dense_delta_is_no_larger_than_the_model(
    tmp_path: Path, index_dtype: str, fraction: float
) -> None:
    """Every tensor (or 60% of each) changed: stored whole, the data is the float32 model's size."""
    base = nn.Sequential(nn.Linear(300, 200), nn.LayerNorm(200), nn.Linear(200, 10))
    tuned, _ = _fine_tune(base, fraction)
    path = tmp_path / "delta.safetensors"
    info = save_sparse_delta(tuned, base, path, base_name="mlp", index_dtype=index_dtype)
    assert info.changed == pytest.approx(fraction * info.total, abs=3)
    assert path.stat().st_size - _safetensors_header_bytes(path) == info.full_bytes
    assert info.file_bytes <= info.full_bytes + 2048  # the header: names, shapes, storage
    with safe_open(str(path), framework="pt") as f:
        assert set(json.loads(f.metadata()["storage"]).values()) == {"whole"}
        assert not any(k.startswith("indices/") for k in f.keys())  # noqa: SIM118
    restored = apply_sparse_delta(copy.deepcopy(base), path)
    for a, b in zip(restored.state_dict().values(), tuned.state_dict().values(), strict=True):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))


def test_a_version_1_delta_still_applies(tmp_path: Path) -> None:
    """A file as version 1 wrote it: indices and values for every tensor, no storage entry."""
    base = _base()
    tuned, changed = _fine_tune(base, 0.5)
    state = _float_state(tuned)
    tensors = {}
    for name, idx in changed.items():
        tensors[f"indices/{name}"] = idx
        tensors[f"values/{name}"] = state[name].reshape(-1)[idx].contiguous()
    meta = {
        "format": "fish-fl-delta/1",
        "base_name": "tiny",
        "base_fingerprint": state_fingerprint(base.state_dict()),
        "changed": str(sum(int(i.numel()) for i in changed.values())),
        "total": str(sum(t.numel() for t in state.values())),
        "shapes": json.dumps([[n, list(state[n].shape)] for n in changed]),
    }
    path = tmp_path / "v1.safetensors"
    save_file(tensors, str(path), metadata=meta)
    assert read_delta_info(path).changed == int(meta["changed"])
    restored = apply_sparse_delta(copy.deepcopy(base), path)
    for name, t in _float_state(restored).items():
        assert torch.equal(t, state[name]), name
    tensors["values/fc.bias"][0] = float("nan")
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match="fc.bias has non-finite"):
        apply_sparse_delta(copy.deepcopy(base), path)


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


# -- crafted bad deltas: each refused in one line before anything is written ------------------
Tensors = dict[str, Tensor]
Meta = dict[str, str]


def _good_delta(path: Path) -> tuple[nn.Module, nn.Module]:
    """A base, a fine-tuned copy, and the delta between them at ``path`` (naming a run)."""
    from fish_fl.config import RunConfig

    base = _base()
    tuned, _ = _fine_tune(base, 0.2)
    with torch.no_grad():
        tuned.get_parameter("conv1.bias").add_(1.0)  # changed whole: stored whole
    save_sparse_delta(
        tuned, base, path, base_name="tiny", metadata={"run-config": RunConfig().to_json()}
    )
    return base, tuned


def _edit(name: str, change: Callable[[Tensor], Tensor]) -> Callable[[Tensors, Meta], None]:
    def edit(tensors: Tensors, meta: Meta) -> None:
        tensors[name] = change(tensors[name].clone()).contiguous()

    return edit


def _at(i: int, value: float) -> Callable[[Tensor], Tensor]:
    def change(t: Tensor) -> Tensor:
        t[i] = value
        return t

    return change


def _twice(t: Tensor) -> Tensor:
    t[1] = t[0]
    return t


def _meta(key: str, value: str | Callable[[str], str] | None) -> Callable[[Tensors, Meta], None]:
    def edit(tensors: Tensors, meta: Meta) -> None:
        if value is None:
            del meta[key]
        else:
            meta[key] = value(meta[key]) if callable(value) else value

    return edit


def _shapes_edit(change: Callable[[list[list[object]]], None]) -> Callable[[Tensors, Meta], None]:
    def edit(tensors: Tensors, meta: Meta) -> None:
        shapes = json.loads(meta["shapes"])
        change(shapes)
        meta["shapes"] = json.dumps(shapes)

    return edit


def _transpose_fc(shapes: list[list[object]]) -> None:
    for entry in shapes:
        if entry[0] == "fc.weight":
            entry[1] = [8, 5]


def _rename(old: str, new: str) -> Callable[[Tensors, Meta], None]:
    def edit(tensors: Tensors, meta: Meta) -> None:
        for kind in ("indices", "values"):
            tensors[f"{kind}/{new}"] = tensors.pop(f"{kind}/{old}")
        shapes = json.loads(meta["shapes"])
        for entry in shapes:
            if entry[0] == old:
                entry[0] = new
        meta["shapes"] = json.dumps(shapes)
        storage = json.loads(meta["storage"])
        storage[new] = storage.pop(old)
        meta["storage"] = json.dumps(storage)

    return edit


def _add_tensor(tensors: Tensors, meta: Meta) -> None:
    tensors["values/stowaway"] = torch.zeros(2)


def _drop_values(tensors: Tensors, meta: Meta) -> None:
    del tensors["values/fc.bias"]


def _storage_edit(name: str, kind: str) -> Callable[[Tensors, Meta], None]:
    def edit(tensors: Tensors, meta: Meta) -> None:
        meta["storage"] = json.dumps({**json.loads(meta["storage"]), name: kind})

    return edit


def _drop(name: str) -> Callable[[Tensors, Meta], None]:
    def edit(tensors: Tensors, meta: Meta) -> None:
        del tensors[name]

    return edit


def _add(name: str) -> Callable[[Tensors, Meta], None]:
    def edit(tensors: Tensors, meta: Meta) -> None:
        tensors[name] = torch.arange(2)

    return edit


def _list_twice(shapes: list[list[object]]) -> None:
    shapes.append(list(shapes[-1]))


BAD_DELTAS = [
    ("nan-value", _edit("values/fc.weight", _at(0, float("nan"))), "fc.weight has non-finite"),
    ("inf-value", _edit("values/fc.bias", _at(0, float("inf"))), "fc.bias has non-finite"),
    ("duplicate-index", _edit("indices/fc.weight", _twice), "fc.weight has duplicate indices"),
    (
        "float-indices",
        _edit("indices/fc.weight", lambda t: t.float()),
        "indices of fc.weight must be a 1-D int64 or int32 tensor, got 1-D float32",
    ),
    (
        "index-past-the-end",
        _edit("indices/fc.weight", _at(-1, 40)),
        "an index of fc.weight is outside its 40 entries",
    ),
    ("negative-index", _edit("indices/fc.bias", _at(0, -1)), "an index of fc.bias is outside"),
    ("indices-2d", _edit("indices/fc.weight", lambda t: t.view(1, -1)), "got 2-D int64"),
    ("values-short", _edit("values/fc.weight", lambda t: t[:-1]), "expected as many float32"),
    ("values-float64", _edit("values/fc.weight", lambda t: t.double()), "float64 values"),
    ("values-int", _edit("values/fc.bias", lambda t: t.to(torch.int32)), "int32 values"),
    (
        "wrong-shape",
        _shapes_edit(_transpose_fc),
        "fc.weight has shape (8, 5) in the delta, (5, 8) in the model",
    ),
    ("changed-count", _meta("changed", lambda v: str(int(v) + 1)), "metadata 'changed' is"),
    ("changed-text", _meta("changed", "many"), "'changed' must be a whole number, got 'many'"),
    ("total-count", _meta("total", lambda v: str(int(v) - 1)), "metadata 'total' is"),
    (
        "unknown-name",
        _rename("fc.weight", "fc.gamma"),
        "tensor 'fc.gamma' is not a floating-point entry of the model",
    ),
    (
        "integer-buffer",
        _rename("bn1.running_var", "bn1.num_batches_tracked"),
        "'bn1.num_batches_tracked' is not a floating-point entry",
    ),
    ("unlisted-tensor", _add_tensor, "tensor 'values/stowaway' is not listed in its shapes"),
    ("missing-values", _drop_values, "indices or values of 'fc.bias' are missing"),
    ("shapes-not-json", _meta("shapes", "[[fc"), "metadata 'shapes' is not JSON"),
    ("shapes-twice", _shapes_edit(_list_twice), "twice"),
    ("no-fingerprint", _meta("base_fingerprint", None), "'base_fingerprint' is missing"),
    ("no-storage", _meta("storage", None), "metadata 'storage' is missing"),
    ("storage-not-json", _meta("storage", "{fc"), "metadata 'storage' is not JSON"),
    ("storage-kind", _storage_edit("fc.weight", "bitmap"), "fc.weight is stored as 'bitmap'"),
    ("storage-unlisted", _storage_edit("fc.gamma", "whole"), "must name every tensor"),
    ("whole-short", _edit("values/conv1.bias", lambda t: t[:-1]), "conv1.bias is stored whole"),
    (
        "whole-float64",
        _edit("values/conv1.bias", lambda t: t.double()),
        "1-D float64 of 8 entries; expected 1-D float32 of 8",
    ),
    ("whole-nan", _edit("values/conv1.bias", _at(0, float("nan"))), "conv1.bias has non-finite"),
    ("whole-missing", _drop("values/conv1.bias"), "values of 'conv1.bias' are missing"),
    ("whole-with-indices", _add("indices/conv1.bias"), "'indices/conv1.bias' is not listed"),
]


@pytest.mark.parametrize(("edit", "words"), [pytest.param(e, w, id=i) for i, e, w in BAD_DELTAS])
def test_a_crafted_bad_delta_is_refused_before_anything_is_written(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    edit: Callable[[Tensors, Meta], None],
    words: str,
) -> None:
    from sims.commands import export

    good = tmp_path / "good.safetensors"
    base, _ = _good_delta(good)
    with safe_open(str(good), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = dict(f.metadata())
    edit(tensors, meta)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)

    before = _float_state(base)
    with pytest.raises(ValueError) as err:
        apply_sparse_delta(base, bad)
    message = str(err.value)
    assert words in message and str(bad) in message and "\n" not in message, message
    assert all(torch.equal(t, before[n]) for n, t in _float_state(base).items())

    # `fish-fl apply` stops at the same check and leaves no output behind.
    monkeypatch.setattr(export, "_base_model", lambda config, name=None: _base())
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=re.escape(words)):
        export.apply_command(bad, out)
    assert not out.exists()


def test_a_truncated_delta_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "delta.safetensors"
    base, _ = _good_delta(path)
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(ValueError, match="is not a safetensors file") as err:
        apply_sparse_delta(base, path)
    assert "\n" not in str(err.value)


def test_saving_a_non_finite_change_is_refused(tmp_path: Path) -> None:
    base = _base()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.get_parameter("fc.bias")[2] = float("inf")
    with pytest.raises(ValueError, match="fc.bias: the model has non-finite values"):
        save_sparse_delta(tuned, base, tmp_path / "d.safetensors", base_name="b")
    assert not (tmp_path / "d.safetensors").exists()


def test_cli_apply_writes_a_good_delta_bit_exactly_and_refuses_a_bad_one_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from safetensors.torch import load_file

    from sims import cli
    from sims.commands import export

    good = tmp_path / "delta.safetensors"
    _, tuned = _good_delta(good)
    monkeypatch.setattr(export, "_base_model", lambda config, name=None: _base())
    monkeypatch.setattr(sys, "argv", ["fish-fl", "apply", str(good), "--out", str(tmp_path / "m")])
    cli.main()
    written = load_file(str(tmp_path / "m" / "model.safetensors"))
    want = tuned.state_dict()
    assert written.keys() == want.keys()
    for name, t in written.items():
        assert torch.equal(t.view(-1).view(torch.uint8), want[name].reshape(-1).view(torch.uint8))
    capsys.readouterr()

    with safe_open(str(good), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = dict(f.metadata())
    tensors["values/fc.weight"][3] = float("nan")
    save_file(tensors, str(good), metadata=meta)
    monkeypatch.setattr(sys, "argv", ["fish-fl", "apply", str(good), "--out", str(tmp_path / "n")])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fish-fl: error:") and "non-finite" in err[0]
    assert not (tmp_path / "n").exists()
