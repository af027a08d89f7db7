"""Gradual magnitude pruning: the cubic schedule, keep-sets, and pruning with a FISH mask."""

from __future__ import annotations

import pytest
import torch

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

from .tiny_models import bert_batches, tiny_bert

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
