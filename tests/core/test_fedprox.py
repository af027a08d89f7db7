"""FedProx's proximal term on the trained entries (``proximal_mu`` of :func:`train_steps`)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from fish_fl.masks import MaskSpec, build_mask
from fish_fl.training import OptimizerConfig, SparseParameters, make_optimizer, train_steps
from tests.tiny_models import TinyConvNet, image_batches

CPU = torch.device("cpu")


def _setup(density: float = 0.3) -> tuple[nn.Module, Any]:
    torch.manual_seed(0)
    model = TinyConvNet(num_classes=5)
    model.drop.p = 0.0
    return model, build_mask(model, MaskSpec(method="random", density=density, seed=0))


def _train(model: nn.Module, mask: Any, cfg: OptimizerConfig, steps: int, **kw: Any) -> None:
    sparse = SparseParameters(model, mask)
    train_steps(
        sparse, make_optimizer(sparse, cfg), image_batches(20, 5, 5), steps=steps, device=CPU, **kw
    )


def test_mu_zero_leaves_the_update_unchanged() -> None:
    model, mask = _setup()
    plain, prox = copy.deepcopy(model), copy.deepcopy(model)
    cfg = OptimizerConfig(name="adamw", lr=1e-2, weight_decay=0.1)
    _train(plain, mask, cfg, 6)
    _train(prox, mask, cfg, 6, proximal_mu=0.0)
    for (n, p), q in zip(plain.named_parameters(), prox.parameters(), strict=True):
        assert torch.equal(p, q), n


def test_gradient_gains_mu_times_the_drift() -> None:
    """At every step the optimiser sees the task gradient plus mu * (w - w_received)."""
    model, mask = _setup()
    mu = 0.5
    sparse = SparseParameters(model, mask)
    optimizer = make_optimizer(sparse, OptimizerConfig(name="sgd", lr=0.1, momentum=0.0))
    anchors = {n: t.detach().clone() for n, t in sparse.named_trainable()}
    batches = image_batches(20, 5, 5)
    drifts: list[float] = []

    def check(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        step = len(drifts)
        # The task gradient at the current weights, from a dense copy.
        ref = copy.deepcopy(model)
        for p in ref.parameters():
            p.requires_grad_(True)
            p.grad = None
        x, y = batches[step % len(batches)]
        nn.functional.cross_entropy(ref(x), y).backward()
        ref_grads = {n: p.grad for n, p in ref.named_parameters()}
        drift = 0.0
        for name, t in sparse.named_trainable():
            task = ref_grads[name]
            task = task if name in sparse.full else task.reshape(-1)[sparse.partial[name][1]]
            assert t.grad is not None
            expected = task + mu * (t.detach() - anchors[name])
            torch.testing.assert_close(t.grad, expected, rtol=1e-5, atol=1e-7, msg=name)
            drift = max(drift, float((t.detach() - anchors[name]).abs().max()))
        drifts.append(drift)

    optimizer.register_step_pre_hook(check)
    train_steps(sparse, optimizer, batches, steps=4, device=CPU, proximal_mu=mu)
    assert len(drifts) == 4 and drifts[0] == 0.0 and min(drifts[1:]) > 0  # the term was tested


@pytest.mark.parametrize(
    ("name", "grad_clip"), [("adamw", 0.0), ("sgd", 0.0), ("sgd", 0.05)], ids=str
)
def test_fedprox_equals_dense_training_of_the_proximal_loss(name: str, grad_clip: float) -> None:
    """The reference: the loss plus (mu/2)||w - w0||^2 over the masked entries, dense."""
    model, mask = _setup()
    mu = 0.3
    ref = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = OptimizerConfig(name=name, lr=1e-2, momentum=0.9, weight_decay=0.0)
    batches = image_batches(20, 5, 5)
    _train(model, mask, cfg, 8, proximal_mu=mu, grad_clip=grad_clip)

    params = dict(ref.named_parameters())
    keep = {n: mask.to_bool(n) for n in params}
    ref_opt = (
        torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0)
        if name == "adamw"
        else torch.optim.SGD(ref.parameters(), lr=1e-2, momentum=0.9)
    )
    ref.train()
    for step in range(8):
        x, y = batches[step % len(batches)]
        ref_opt.zero_grad()
        prox = sum(((p - before[n])[keep[n]] ** 2).sum() for n, p in params.items())
        (nn.functional.cross_entropy(ref(x), y) + 0.5 * mu * prox).backward()
        for n, p in params.items():
            p.grad.mul_(keep[n])
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(ref.parameters(), grad_clip)
        ref_opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, params[n], rtol=1e-5, atol=1e-6, msg=n)
        assert torch.equal(p.detach()[~keep[n]], before[n][~keep[n]]), f"{n}: frozen entry moved"


def test_a_larger_mu_keeps_the_trained_entries_closer() -> None:
    model, mask = _setup()
    before = mask.gather(model)
    drift = {}
    for mu in (0.0, 50.0):
        m = copy.deepcopy(model)
        _train(m, mask, OptimizerConfig(name="sgd", lr=1e-2, momentum=0.0), 10, proximal_mu=mu)
        drift[mu] = float((mask.gather(m) - before).norm())
    assert 0 < drift[50.0] < drift[0.0]


def test_negative_mu_is_refused() -> None:
    model, mask = _setup()
    with pytest.raises(ValueError, match="proximal_mu"):
        _train(model, mask, OptimizerConfig(), 1, proximal_mu=-0.1)
