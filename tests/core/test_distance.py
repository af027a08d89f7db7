"""Parameter distances: hand-computed values, grouping, loading checkpoints, the command."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fish_fl.checkpoint import save_sparse_delta
from fish_fl.config import RunConfig
from fish_fl.distance import (
    align_state_dicts,
    angular_distance,
    l1_distance,
    layer_and_type,
    load_state_dict,
    parameter_distances,
    plot_distance_heatmap,
)
from fish_fl.task import build_task_model
from tests.tiny_models import tiny_bert


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    return {
        n: t.detach().clone() for n, t in tiny_bert(num_labels=2, seed=seed).state_dict().items()
    }


def test_hand_computed_distances() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    assert l1_distance(a, b) == 1.0
    assert angular_distance(a, b) == pytest.approx(0.25)  # 45 degrees
    assert angular_distance(a, torch.tensor([0.0, 2.0])) == pytest.approx(0.5)
    assert angular_distance(a, -a) == pytest.approx(1.0)
    assert angular_distance(torch.zeros(3), torch.zeros(3)) == 0.0
    assert math.isnan(angular_distance(torch.zeros(3), torch.ones(3)))
    # A generic pair against arccos of the cosine (fine away from 0 and pi).
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, generator=g), torch.randn(50, generator=g)
    cos = float(torch.dot(x.double(), y.double()) / (x.double().norm() * y.double().norm()))
    assert angular_distance(x, y) == pytest.approx(math.acos(cos) / math.pi, rel=1e-12)
    with pytest.raises(ValueError, match="differ in shape"):
        l1_distance(torch.zeros(2), torch.zeros(3))


def test_checkpoint_to_itself_is_zero() -> None:
    s = state()
    dists = parameter_distances(s, s)
    assert len(dists) == sum(1 for t in s.values() if t.is_floating_point() and t.dim() >= 2)
    assert all(d.l1 == 0.0 and d.angular == 0.0 for d in dists)


@pytest.mark.parametrize("scale", [1.5, 0.5, -2.0])
def test_scaled_copy_by_hand(scale: float) -> None:
    a = state()
    b = {n: t * scale if t.is_floating_point() else t for n, t in a.items()}
    for d in parameter_distances(a, b, matrices_only=False):
        ta = a[d.name].double()
        assert d.l1 == pytest.approx(abs(scale - 1) * float(ta.abs().sum()), rel=1e-6)
        assert d.l1_per_entry == pytest.approx(d.l1 / ta.numel())
        zero = not bool(ta.any())  # zero-initialised biases: both zero, distance 0
        assert d.angular == pytest.approx(0.0 if scale > 0 or zero else 1.0, abs=1e-7)


def test_layer_and_type() -> None:
    assert layer_and_type("bert.encoder.layer.3.attention.self.query.weight") == (
        3,
        "attention.self.query",
    )
    assert layer_and_type("bert.encoder.layer.11.output.dense.weight") == (11, "output.dense")
    assert layer_and_type("encoder.layer.0.intermediate.dense.weight") == (0, "intermediate.dense")
    assert layer_and_type("bert.embeddings.word_embeddings.weight") == (
        None,
        "embeddings.word_embeddings",
    )
    assert layer_and_type("classifier.weight") == (None, "classifier")


def test_prefix_alignment_and_skipped_head() -> None:
    fine = state()
    base = {n[len("bert.") :]: t for n, t in fine.items() if n.startswith("bert.")}
    base["classifier.weight"] = torch.zeros(3, 16)  # another head: different shape
    pairs = align_state_dicts(base, fine)
    assert (
        "encoder.layer.0.attention.self.key.weight",
        "bert.encoder.layer.0.attention.self.key.weight",
    ) in pairs
    dists = parameter_distances(base, fine)
    assert all(d.l1 == 0 for d in dists)
    assert not any(d.name.startswith("classifier") for d in dists)
    with pytest.raises(ValueError, match="share no tensor"):
        align_state_dicts({"x": torch.zeros(1)}, {"y": torch.zeros(1)})


def test_load_folder_file_and_delta(tmp_path: Path) -> None:
    model = tiny_bert(num_labels=2)
    model.save_pretrained(str(tmp_path / "folder"))
    from_folder = load_state_dict(tmp_path / "folder")
    assert torch.equal(
        from_folder["bert.encoder.layer.0.attention.self.query.weight"],
        model.bert.encoder.layer[0].attention.self.query.weight,
    )
    save_file({"w": torch.ones(2, 2)}, str(tmp_path / "s.safetensors"))
    assert torch.equal(load_state_dict(tmp_path / "s.safetensors")["w"], torch.ones(2, 2))

    # A sparse delta is applied to the base its run configuration names.
    config = RunConfig(
        model="resnet18", task="cifar10", width=4, data_source="local", data_dir="unused"
    )
    base = build_task_model(config)
    tuned = build_task_model(config)
    with torch.no_grad():
        tuned.fc.weight[0, :3] += 1.0
    delta = tmp_path / "delta.safetensors"
    save_sparse_delta(
        tuned, base, delta, base_name=config.model, metadata={"run-config": config.to_json()}
    )
    loaded = load_state_dict(delta)
    assert torch.equal(loaded["fc.weight"], tuned.fc.weight)
    dists = {d.name: d for d in parameter_distances(base.state_dict(), loaded)}
    assert dists["fc.weight"].l1 == pytest.approx(3.0, rel=1e-6)
    assert dists["conv1.weight"].l1 == 0.0

    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_state_dict(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a save_pretrained folder"):
        load_state_dict(tmp_path / "empty")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_state_dict(tmp_path / "junk.safetensors")


def test_heatmap(tmp_path: Path) -> None:
    a = state(0)
    b = {n: t * 1.1 if t.is_floating_point() else t for n, t in a.items()}
    out = plot_distance_heatmap(parameter_distances(a, b), tmp_path / "map.png", "l1_per_entry")
    assert out.is_file() and out.stat().st_size > 1000
    with pytest.raises(ValueError, match="distance metric must be one of"):
        plot_distance_heatmap(parameter_distances(a, b), tmp_path / "x.png", "cosine")


def test_distance_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sims.cli import main

    a = state(0)
    b = {n: t * 2.0 if t.is_floating_point() else t for n, t in a.items()}
    save_file({n: t.contiguous() for n, t in a.items()}, str(tmp_path / "a.safetensors"))
    save_file({n: t.contiguous() for n, t in b.items()}, str(tmp_path / "b.safetensors"))
    png = tmp_path / "map.png"
    argv = ["fish-fl", "distance", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    monkeypatch.setattr(sys, "argv", [*argv, "--plot", str(png)])
    main()
    out = capsys.readouterr().out
    assert "bert.encoder.layer.1.output.dense.weight" in out and png.is_file()
    row = next(
        line
        for line in out.splitlines()
        if line.startswith("bert.encoder.layer.0.attention.self.query.weight")
    )
    l1 = float(a["bert.encoder.layer.0.attention.self.query.weight"].double().abs().sum())
    assert float(row.split()[4]) == pytest.approx(l1, rel=1e-5)

    monkeypatch.setattr(sys, "argv", ["fish-fl", "distance", str(tmp_path / "nope"), argv[3]])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fish-fl: error: checkpoint not found") and "\n" not in err
