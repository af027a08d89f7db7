"""Gradual magnitude pruning: the cubic schedule, keep-sets, and pruning with a FISH mask."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fish_fl.masks import MaskSpec, build_mask
from fish_fl.pruning import (
    CubicSchedule,
    MagnitudePruner,
    cubic_sparsity,
    magnitude_keep,
    prunable_parameters,
    train_with_pruning,
)
from fish_fl.training import OptimizerConfig, SparseParameters, make_optimizer
from tests.tiny_models import bert_batches, tiny_bert

CPU = torch.device("cpu")


def test_cubic_schedule_end_points_and_middle() -> None:
    sched = CubicSchedule(initial=0.1, final=0.7, begin=5, num_prunings=4, every=10)
    assert sched.end == 45
    assert sched.sparsity(0) == 0.1 and sched.sparsity(4) == 0.1
    assert sched.sparsity(5) == 0.1  # t0: s_i exactly
    assert sched.sparsity(45) == 0.7  # t0 + n dt: s_f exactly
    assert sched.sparsity(1000) == 0.7
    # t = 25 is the second of four pruning steps: s_f + (s_i - s_f) (1 - 2/4)^3.
    by_hand = 0.7 + (0.1 - 0.7) * 0.5**3
    assert sched.sparsity(25) == pytest.approx(by_hand)
    assert sched.sparsity(34) == pytest.approx(by_hand)  # constant until the next pruning step
    assert [t for t in range(60) if sched.is_pruning_step(t)] == [5, 15, 25, 35, 45]
    values = [sched.sparsity(t) for t in range(60)]
    assert values == sorted(values)  # never decreases


def test_cubic_schedule_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="final sparsity must be in \\[0, 1\\), got 1.0"):
        cubic_sparsity(0, initial=0.0, final=1.0, begin=0, num_prunings=1, every=1)
    with pytest.raises(ValueError, match="num_prunings must be an integer >= 1, got 0"):
        CubicSchedule(num_prunings=0)
    with pytest.raises(ValueError, match="every\\) must be an integer >= 1, got 0"):
        CubicSchedule(every=0)


def test_magnitude_keep_layer_and_global_against_sorting() -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(10, 10, generator=g), "b": torch.randn(20, 5, generator=g) * 3}
    keep = magnitude_keep(tensors, 0.3, scope="layer")
    for n, t in tensors.items():
        assert int((~keep[n]).sum()) == 30
        threshold = torch.sort(t.abs().reshape(-1)).values[29]
        assert bool((t.abs()[~keep[n]] <= threshold).all())
        assert bool((t.abs()[keep[n]] > threshold).all())
    glob = magnitude_keep(tensors, 0.3, scope="global")
    flat = torch.cat([tensors["a"].reshape(-1), tensors["b"].reshape(-1)]).abs()
    pruned = torch.zeros(200, dtype=torch.bool)
    pruned[torch.sort(flat).indices[:60]] = True
    got = torch.cat([~glob["a"].reshape(-1), ~glob["b"].reshape(-1)])
    assert torch.equal(got, pruned)
    # b has 3x the scale, so the global cut takes more from a.
    assert int((~glob["a"]).sum()) > int((~glob["b"]).sum())


def test_pruning_is_monotone() -> None:
    t = {"w": torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])}
    first = {"w": torch.tensor([False, True, True, True, True])}  # the largest already pruned
    keep = magnitude_keep(t, 0.4, first)
    assert keep["w"].tolist() == [False, True, True, True, False]
    with pytest.raises(ValueError, match="sparsity must be in \\[0, 1\\], got 1.5"):
        magnitude_keep(t, 1.5)


def test_pruning_with_a_fish_mask() -> None:
    model = tiny_bert(num_labels=2)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = bert_batches(32, 8, 2)
    mask = build_mask(
        model,
        MaskSpec(method="fish", density=0.2, fisher_samples=16, head_patterns=("classifier",)),
        data,
    )
    names = prunable_parameters(model, head_patterns=("classifier",))
    assert len(names) == 12
    sched = CubicSchedule(initial=0.0, final=0.5, begin=0, num_prunings=3, every=2)
    pruner = MagnitudePruner(model, sched, names)
    sparse = SparseParameters(model, mask)
    opt = make_optimizer(sparse, OptimizerConfig(lr=1e-2))
    train_with_pruning(sparse, opt, data, pruner, steps=8, device=CPU)

    params = dict(model.named_parameters())
    assert pruner.sparsity() == pytest.approx(0.5)
    for n in names:
        keep = pruner.keep[n]
        assert int((~keep).sum()) == round(0.5 * keep.numel())
        assert bool((params[n].detach()[~keep] == 0).all()), f"{n}: pruned entries not zero"
    # Entries neither trained nor pruned are bit-identical to the base.
    for n, p in params.items():
        frozen = ~mask.to_bool(n)
        if n in pruner.keep:
            frozen &= pruner.keep[n]
        assert torch.equal(p.detach()[frozen], base[n][frozen]), n
    # Some trained entries moved; the restricted mask drops the pruned ones.
    assert any(not torch.equal(params[n].detach(), base[n]) for n, _, _ in mask.segments())
    restricted = pruner.restrict(mask)
    for n in names:
        kept = restricted.to_bool(n)
        assert torch.equal(kept, mask.to_bool(n) & pruner.keep[n])
    assert restricted.k < mask.k


def test_pruner_rejects_unknown_names() -> None:
    model = tiny_bert(num_labels=2)
    with pytest.raises(ValueError, match="prunable parameter 'nope' is not in the model"):
        MagnitudePruner(model, CubicSchedule(), ["nope"])
    with pytest.raises(ValueError, match="match no parameter"):
        prunable_parameters(model, ("decoder",))


# --------------------------------------------------------------------------
# fish-fl prune
# --------------------------------------------------------------------------
def _tiny_cifar(tmp_path: Path) -> list[str]:
    """A 60 / 20 image npz and the overrides that train a width-4 ResNet-18 on it."""
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, 60),
        x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, 10, 20),
    )
    values = {
        "model": "resnet18",
        "width": 4,
        "data-dir": str(path),
        "train-examples": 0,
        "eval-examples": 0,
        "fisher-samples": 8,
        "batch-size": 8,
        "eval-batch-size": 20,
        "progress": "false",
    }
    return [f"{k}={v}" for k, v in values.items()]


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    from sims.cli import main

    monkeypatch.setattr(sys, "argv", ["fish-fl", "prune", *args])
    main()


def test_prune_command_on_a_tiny_resnet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = _tiny_cifar(tmp_path)
    saved = tmp_path / "pruned.safetensors"
    sets = [arg for o in overrides for arg in ("--set", o)]
    schedule = ["--prunings", "2", "--every", "2"]
    _cli(monkeypatch, "cifar10-resnet34", *sets, *schedule)
    text = capsys.readouterr().out
    _cli(monkeypatch, "cifar10-resnet34", *sets, *schedule, "--json", "--save", str(saved))
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # The text run is the same run (seeded from the config): its figures match.
    assert (
        f"6 steps, train loss {report['train_loss']:.4f}; 19 weights pruned to sparsity 0.5000"
        in text
    )
    assert f"accuracy {report['metrics']['accuracy']:.4f}" in text
    assert report["saved"] == str(saved)
    assert report["steps"] == 6  # last pruning step 4, plus one interval
    # The 16 convolutions of the four stages and the 3 downsampling ones, each at 50%.
    by_name = report["sparsity_by_parameter"]
    assert len(by_name) == 19 and all(n.startswith("layer") for n in by_name)
    assert report["sparsity"] == 0.5

    # Rebuild the run's base and mask: pruned entries are zero, the rest moved only under the mask.
    from fish_fl.masks import build_mask
    from fish_fl.task import build_base_model, load_task_data
    from sims.commands.run import load_preset

    config = load_preset("cifar10-resnet34", overrides).replace(num_clients=1)
    base = build_base_model(config)
    mask = build_mask(base, config.mask_spec(), load_task_data(config).calibration_loader())
    assert report["trained"] == mask.k
    state = load_file(str(saved))
    unpruned_trained = 0
    for name, p in base.named_parameters():
        after, before = state[name], p.detach()
        pruned = after == 0 if name in by_name else torch.zeros_like(after, dtype=torch.bool)
        if name in by_name:
            assert int(pruned.sum()) == round(0.5 * after.numel()), name
        trained = mask.to_bool(name)
        unpruned_trained += int((trained & ~pruned).sum())
        frozen = ~trained & ~pruned
        assert torch.equal(after[frozen], before[frozen]), f"{name}: frozen entries moved"
    assert report["trained_unpruned"] == unpruned_trained
    accuracy = report["metrics"]["accuracy"]
    assert report["metric"] == "accuracy" and accuracy * 20 == pytest.approx(round(accuracy * 20))


def test_prune_command_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = ["cifar10-resnet34", *(arg for o in _tiny_cifar(tmp_path) for arg in ("--set", o))]
    cases = [
        ([*sets, "--steps", "3", "--prunings", "2", "--every", "2"], "--steps 3 ends before"),
        ([*sets, "--scope", "row"], "--scope must be layer or global, got 'row'"),
        ([*sets, "--save", str(tmp_path / "x.bin")], "--save must name a .safetensors file"),
        ([*sets, "--final", "1.0"], "final sparsity must be in [0, 1), got 1.0"),
        (["sst2-minilm-supermask"], "mask-method=supermask freezes them"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            _cli(monkeypatch, *args)
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith("fish-fl: error: ") and message in err, err
