"""Sparse training: frozen entries stay bit-identical, state is O(k), one loop for all."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fish_fl.masks import MaskSpec, build_mask
from fish_fl.training import (
    OptimizerConfig,
    SparseParameters,
    evaluate,
    make_optimizer,
    optimizer_state_bytes,
    train_steps,
)
from tests.tiny_models import TinyConvNet, bert_batches, image_batches, tiny_bert

CPU = torch.device("cpu")


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "opt",
    [
        OptimizerConfig(name="adamw", lr=1e-2, weight_decay=0.1),
        OptimizerConfig(name="sgd", lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.1),
    ],
)
def test_frozen_entries_bit_identical(opt: OptimizerConfig) -> None:
    torch.manual_seed(0)
    model = TinyConvNet(num_classes=5)
    mask = build_mask(model, MaskSpec(method="random", density=0.1, seed=2))
    before = snapshot(model)
    sparse = SparseParameters(model, mask)
    optimizer = make_optimizer(sparse, opt)
    stats = train_steps(sparse, optimizer, image_batches(24, 6, 5), steps=20, device=CPU)
    assert stats.steps == 20 and stats.examples == 120
    changed = 0
    for name, p in model.named_parameters():
        keep = mask.to_bool(name)
        assert torch.equal(p.detach()[~keep], before[name][~keep]), f"{name}: frozen entry moved"
        changed += int((p.detach()[keep] != before[name][keep]).sum())
    assert changed > 0.9 * mask.k  # the kept entries did train


def test_optimizer_state_proportional_to_k() -> None:
    model = tiny_bert(num_labels=2)
    batches = bert_batches(8, 4, 2)
    sizes = {}
    for density in (0.02, 0.1, 1.0):
        m = copy.deepcopy(model)
        mask = build_mask(m, MaskSpec(method="magnitude", density=density))
        sparse = SparseParameters(m, mask)
        optimizer = make_optimizer(sparse, OptimizerConfig(lr=1e-3))
        train_steps(sparse, optimizer, batches, steps=1, device=CPU)
        sizes[density] = (optimizer_state_bytes(optimizer), mask.k)
    for state_bytes, k in sizes.values():
        assert state_bytes == 2 * 4 * k  # AdamW: exp_avg and exp_avg_sq, float32


def test_untouched_parameters_get_no_gradient() -> None:
    model = tiny_bert(num_labels=2)
    mask = build_mask(model, MaskSpec(method="bitfit"))
    sparse = SparseParameters(model, mask)
    weight = model.bert.encoder.layer[0].attention.self.query.weight
    assert not weight.requires_grad
    optimizer = make_optimizer(sparse, OptimizerConfig(lr=1e-3))
    model.train()
    out = model(**bert_batches(4, 4, 2)[0][0]).logits.sum()
    out.backward()
    assert weight.grad is None
    optimizer.zero_grad()


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_sparse_equals_dense_with_masked_gradients(name: str) -> None:
    """The reference: dense training whose gradient is zeroed outside the mask."""
    torch.manual_seed(0)
    model = TinyConvNet(num_classes=5)
    model.drop.p = 0.0
    ref = copy.deepcopy(model)
    mask = build_mask(model, MaskSpec(method="random", density=0.3, seed=0))
    cfg = OptimizerConfig(name=name, lr=1e-2, weight_decay=0.0, momentum=0.9)
    sparse = SparseParameters(model, mask)
    optimizer = make_optimizer(sparse, cfg)
    batches = image_batches(20, 5, 5)
    train_steps(sparse, optimizer, batches, steps=8, device=CPU)

    params = dict(ref.named_parameters())
    ref_opt = (
        torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0)
        if name == "adamw"
        else torch.optim.SGD(ref.parameters(), lr=1e-2, momentum=0.9)
    )
    ref.train()
    for step in range(8):
        x, y = batches[step % len(batches)]
        ref_opt.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        for n, p in params.items():
            p.grad.mul_(mask.to_bool(n))
        ref_opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, params[n], rtol=1e-5, atol=1e-6, msg=n)


def test_dense_mask_is_plain_training() -> None:
    torch.manual_seed(0)
    model = tiny_bert(num_labels=2)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    ref = copy.deepcopy(model)
    mask = build_mask(model, MaskSpec(method="dense"))
    sparse = SparseParameters(model, mask)
    assert not sparse.partial  # every parameter trains in place
    cfg = OptimizerConfig(lr=1e-3, weight_decay=0.01, no_decay=())
    batches = bert_batches(8, 4, 2)
    train_steps(sparse, make_optimizer(sparse, cfg), batches, steps=4, device=CPU)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.01)
    ref.train()
    for step in range(4):
        x, y = batches[step % 2]
        ref_opt.zero_grad()
        nn.functional.cross_entropy(ref(**x).logits, y).backward()
        ref_opt.step()
    for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q), n


def test_values_round_trip_and_regression_loss() -> None:
    model = tiny_bert(num_labels=1)
    mask = build_mask(model, MaskSpec(method="random", density=0.2))
    sparse = SparseParameters(model, mask)
    v = sparse.values()
    sparse.load_values(v + 1)
    assert torch.equal(sparse.values(), v + 1)
    train_steps(
        sparse,
        make_optimizer(sparse, OptimizerConfig(lr=1e-3)),
        bert_batches(6, 3, 1),
        steps=2,
        device=CPU,
    )
    logits, targets, loss = evaluate(model, bert_batches(6, 3, 1), device=CPU)
    assert logits.shape == (6, 1) and targets.dtype == torch.float32 and loss > 0


def test_bad_optimizer_config() -> None:
    with pytest.raises(ValueError, match="optimizer must be 'adamw' or 'sgd', got 'adam'"):
        OptimizerConfig(name="adam")
    with pytest.raises(ValueError, match="optimizer lr must be a finite number >= 0, got -1"):
        OptimizerConfig(lr=-1)
    with pytest.raises(ValueError, match="nesterov needs"):
        OptimizerConfig(name="adamw", nesterov=True)


def test_gradient_hooks_give_the_same_gradients_and_drop_full_ones_during_backward() -> None:
    """Kept entries gathered during backward equal those gathered after it, bit for bit."""
    torch.manual_seed(0)
    model = tiny_bert(num_labels=2)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    mask = build_mask(model, MaskSpec(method="random", density=0.05, seed=1))
    inputs, _ = bert_batches(8, 4, 2)[0]

    after = SparseParameters(model, mask)
    after.zero_grad()
    model(**inputs).logits.pow(2).sum().backward()
    after.collect_grads()
    expected = [None if t.grad is None else t.grad.clone() for t in after.trainable()]
    assert all(p.grad is None for p, _, _ in after.partial.values())

    hooked = SparseParameters(model, mask)
    full_grads_alive: list[int] = []

    def count(_: torch.Tensor) -> None:  # runs as each gradient lands: how many full ones remain
        full_grads_alive.append(sum(p.grad is not None for p, _, _ in hooked.partial.values()))

    counters = [p.register_post_accumulate_grad_hook(count) for p, _, _ in hooked.partial.values()]
    with hooked.gradient_hooks():
        hooked.zero_grad()
        model(**inputs).logits.pow(2).sum().backward()
        hooked.collect_grads()  # nothing left to move
    for h in counters:
        h.remove()
    got = [None if t.grad is None else t.grad for t in hooked.trainable()]
    assert len(got) == len(expected) and len(hooked.partial) > 10
    for g, e in zip(got, expected, strict=True):
        assert (g is None) == (e is None) and (g is None or torch.equal(g, e))
    # Without the hooks every partial parameter's full gradient would be alive
    # at the end of backward; with them at most the one being gathered is.
    assert max(full_grads_alive) <= 1
    # Outside the context, no hook is left on the model.
    model(**inputs).logits.sum().backward()
    assert sum(p.grad is not None for p, _, _ in hooked.partial.values()) == len(hooked.partial)
