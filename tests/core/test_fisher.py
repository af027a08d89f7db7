"""The fast Fisher against the one-example-at-a-time reference."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from fish_fl.fisher import fisher_diagonal, fisher_diagonal_reference, supported_parameters
from tests.tiny_models import (
    TinyConvNet,
    bert_batches,
    image_batches,
    tiny_bert,
    warm_batchnorm,
)

RTOL = 1e-4


def assert_fisher_close(fast: dict[str, Tensor], ref: dict[str, Tensor]) -> None:
    """Relative error <= RTOL per parameter; every failing parameter is named.

    The scale of a parameter is its largest reference score, floored at 1e-9 of
    the model's largest score: parameters whose true Fisher is exactly zero (BERT's
    key biases, which softmax ignores) carry only rounding noise.
    """
    assert fast.keys() == ref.keys()
    top = max(float(r.abs().max()) for r in ref.values())
    failures = []
    for name in ref:
        assert fast[name].shape == ref[name].shape, name
        scale = max(float(ref[name].abs().max()), 1e-9 * top)
        err = float((fast[name] - ref[name]).abs().max()) / scale
        if err > RTOL:
            failures.append(f"{name}: relative error {err:.2e}")
    assert not failures, "Fisher mismatch:\n" + "\n".join(failures)


@pytest.fixture
def convnet() -> nn.Module:
    torch.manual_seed(0)
    model = TinyConvNet(num_classes=5)
    warm_batchnorm(model, torch.Generator().manual_seed(1), (3, 10, 10))
    return model


@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_convnet_matches_reference(convnet: nn.Module, kind: str) -> None:
    # Uneven batches, including a size-one and an empty batch; 19 of 21 examples used.
    batches = image_batches(21, 6, 5)
    x, y = batches[0]
    batches.insert(1, (x[:0], y[:0]))
    batches.insert(2, (x[:1], y[:1]))
    fast = fisher_diagonal(convnet, batches, n_samples=19, kind=kind, progress=False)
    ref = fisher_diagonal_reference(convnet, batches, n_samples=19, kind=kind)
    assert_fisher_close(fast, ref)
    assert supported_parameters(convnet)[1] == []  # all on the fast path


@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_tiny_bert_matches_reference(kind: str) -> None:
    model = tiny_bert(num_labels=3)
    batches = bert_batches(10, 4, 3)
    fast = fisher_diagonal(model, batches, n_samples=10, kind=kind, progress=False)
    ref = fisher_diagonal_reference(model, batches, n_samples=10, kind=kind)
    assert_fisher_close(fast, ref)
    assert supported_parameters(model)[1] == []


@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_regression_head_gaussian(kind: str) -> None:
    model = tiny_bert(num_labels=1, seed=3)
    batches = bert_batches(8, 3, 1, seed=2)
    fast = fisher_diagonal(model, batches, n_samples=8, kind=kind, progress=False)
    ref = fisher_diagonal_reference(model, batches, n_samples=8, kind=kind)
    assert_fisher_close(fast, ref)
    # By hand for the head bias: d f / d b = 1, so the score is mean (y - f)^2 (empirical)
    # or exactly 1 (true: unit variance).
    expected = torch.tensor(1.0)
    if kind == "empirical":
        model.eval()
        with torch.no_grad():
            res = torch.cat([model(**x).logits[:, 0] - y for x, y in batches])
        expected = res.pow(2).mean()
    torch.testing.assert_close(fast["classifier.bias"][0], expected, rtol=1e-5, atol=0)


def test_not_the_squared_batch_gradient(convnet: nn.Module) -> None:
    batches = image_batches(16, 16, 5)
    fast = fisher_diagonal(convnet, batches, n_samples=16, progress=False)
    convnet.eval()
    x, y = batches[0]
    loss = nn.functional.cross_entropy(convnet(x), y)
    (g,) = torch.autograd.grad(loss, [convnet.fc.weight])
    # The mean of squares exceeds the square of the mean (Jensen), strictly here.
    assert float(fast["fc.weight"].sum()) > 2 * float(g.pow(2).sum())


class Scaled(nn.Module):
    """A layer type the fast path does not know (a raw parameter)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class SharedAndUnsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 6)
        self.shared = nn.Linear(6, 6)  # called twice per forward
        self.scaled = Scaled(6)
        self.norm = nn.LayerNorm(6)
        self.conv1d = nn.Conv1d(1, 2, 3, padding=1)  # unsupported -> loop
        self.head = nn.Linear(12, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.shared(torch.tanh(self.shared(self.inp(x)))))
        h = self.norm(self.scaled(h))
        h = self.conv1d(h.unsqueeze(1)).flatten(1)
        return self.head(h)


def test_fallback_and_repeated_layers_match_reference() -> None:
    torch.manual_seed(0)
    model = SharedAndUnsupported()
    fast_names, loop_names = supported_parameters(model)
    assert set(loop_names) == {"scaled.scale", "conv1d.weight", "conv1d.bias"}
    assert "shared.weight" in fast_names
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(5, 6, generator=g), torch.randint(0, 4, (5,), generator=g)) for _ in range(3)
    ]
    for kind in ("empirical", "true"):
        fast = fisher_diagonal(model, batches, n_samples=13, kind=kind, progress=False)
        ref = fisher_diagonal_reference(model, batches, n_samples=13, kind=kind)
        assert_fisher_close(fast, ref)


def test_eval_mode_during_scoring_and_state_restored(convnet: nn.Module) -> None:
    convnet.train()
    convnet.layer1.train(False)  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in convnet.state_dict().items()}
    batches = image_batches(12, 4, 5)
    first = fisher_diagonal(convnet, batches, n_samples=12, progress=False)
    second = fisher_diagonal(convnet, batches, n_samples=12, progress=False)
    # Dropout is off during scoring, so two runs agree exactly.
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert convnet.training and not convnet.layer1.training and convnet.bn1.training
    for k, v in convnet.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed (BatchNorm statistics must be untouched)"
    assert all(p.grad is None for p in convnet.parameters())


def test_frozen_parameters_are_not_scored(convnet: nn.Module) -> None:
    convnet.conv1.weight.requires_grad_(False)
    scores = fisher_diagonal(convnet, image_batches(4, 4, 5), n_samples=4, progress=False)
    assert "conv1.weight" not in scores and "fc.weight" in scores


def test_bad_input(convnet: nn.Module) -> None:
    batches = image_batches(8, 4, 5)
    with pytest.raises(ValueError, match="ran out after 8 examples; n_samples=9"):
        fisher_diagonal(convnet, batches, n_samples=9, progress=False)
    with pytest.raises(ValueError, match="kind must be"):
        fisher_diagonal(convnet, batches, n_samples=4, kind="fisher", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive integer"):
        fisher_diagonal(convnet, batches, n_samples=0, progress=False)
    with pytest.raises(ValueError, match="single-output"):
        fisher_diagonal(convnet, batches, n_samples=4, likelihood="gaussian", progress=False)


def test_deterministic_given_data_order() -> None:
    model = tiny_bert(num_labels=2)
    batches = bert_batches(12, 5, 2)
    a = fisher_diagonal(model, batches, n_samples=12, progress=False)
    b = fisher_diagonal(model, batches, n_samples=12, progress=False)
    for name in a:
        assert torch.equal(a[name], b[name]), name
