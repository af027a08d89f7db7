"""Supermasks: straight-through gradients, frozen weights, scores, packing, aggregation."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fish_fl.masks import MaskSpec, available_builders, build_mask
from fish_fl.supermask import (
    SupermaskConfig,
    SupermaskModel,
    aggregate_sampled_masks,
    bits_per_parameter,
    evaluate_supermask,
    make_supermask_optimizer,
    mean_of_masks,
    pack_mask,
    sample_mask,
    scores_from_probabilities,
    straight_through_bernoulli,
    supermask_parameters,
    unpack_mask,
)
from fish_fl.training import train_steps
from tests.tiny_models import bert_batches, tiny_bert

CPU = torch.device("cpu")
LINEAR = SupermaskConfig(maskable=("weight",), head_patterns=(), matrices_only=True)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def random_scores(wrapper: SupermaskModel, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    wrapper.load_score_vector(torch.randn(wrapper.numel_maskable, generator=g) * 2)


# -- the straight-through estimator -------------------------------------------------
def test_straight_through_gradient_matches_definition() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    wrapper = SupermaskModel(layer, LINEAR, generator=torch.Generator().manual_seed(7))
    random_scores(wrapper, 1)
    x = torch.randn(5, 6)
    c = torch.randn(5, 4)
    wrapper.train()
    out = wrapper(x)
    (out * c).sum().backward()
    got = wrapper.score("weight").grad
    assert got is not None

    # By hand: the same uniforms, m = [u < p], loss through W * m, then
    # dL/ds = dL/d(W*m) * W * p (1 - p).
    s = wrapper.score("weight").detach()
    p = torch.sigmoid(s)
    u = torch.rand(s.shape, generator=torch.Generator().manual_seed(7))
    m = (u < p).float()
    w_eff = (layer.weight.detach() * m).requires_grad_(True)
    ref_out = F.linear(x, w_eff, layer.bias.detach())
    (ref_out * c).sum().backward()
    assert w_eff.grad is not None
    expected = w_eff.grad * layer.weight.detach() * p * (1 - p)
    assert torch.equal(out.detach(), ref_out.detach())
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
    # Masked-out entries still get a gradient (that is the point of the estimator).
    assert bool((got[m == 0] != 0).any())
    # The weights themselves get none.
    assert layer.weight.grad is None and not layer.weight.requires_grad


def test_straight_through_sample_is_exactly_binary_and_unbiased() -> None:
    probs = torch.full((200_000,), 0.3, requires_grad=True)
    m = straight_through_bernoulli(probs, torch.Generator().manual_seed(0))
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
    assert abs(float(m.detach().mean()) - 0.3) < 0.005
    m.sum().backward()
    assert probs.grad is not None and torch.equal(probs.grad, torch.ones_like(probs))


# -- initialisation ---------------------------------------------------------------------
def test_initial_scores_follow_magnitude() -> None:
    model = tiny_bert(num_labels=2)
    cfg = SupermaskConfig(initial_sparsity=0.25, head_patterns=("classifier",))
    wrapper = SupermaskModel(model, cfg)
    params = dict(model.named_parameters())
    assert all(params[n].dim() == 2 and ".encoder.layer." in n for n in wrapper.maskable)
    assert len(wrapper.maskable) == 12  # 6 matrices x 2 blocks
    for name in wrapper.maskable:
        s = wrapper.score(name).detach()
        w = params[name].detach().abs()
        low = s == -5.0
        assert int(low.sum()) == round(0.25 * s.numel())
        assert bool(((s == 5.0) | low).all())
        assert float(w[low].max()) <= float(w[~low].min())


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="initial_sparsity must be in \\[0, 1\\), got 1.0"):
        SupermaskConfig(initial_sparsity=1.0)
    with pytest.raises(ValueError, match="score_lr must be a finite number > 0, got 0"):
        SupermaskConfig(score_lr=0)
    with pytest.raises(ValueError, match="score_low=5.0 must be below score_high=5.0"):
        SupermaskConfig(score_low=5.0)
    with pytest.raises(ValueError, match="match no weight matrix"):
        SupermaskModel(nn.Linear(2, 2), SupermaskConfig(maskable=("nothing",)))
    with pytest.raises(ValueError, match="eval_mask must be one of"):
        SupermaskModel(nn.Linear(2, 2), LINEAR, eval_mask="mean")  # type: ignore[arg-type]


# -- training -------------------------------------------------------------------------
def test_training_leaves_weights_bit_identical() -> None:
    model = tiny_bert(num_labels=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = SupermaskConfig(initial_sparsity=0.1, head_patterns=("classifier",))
    wrapper = SupermaskModel(model, cfg)
    scores_before = wrapper.score_vector()
    sparse = supermask_parameters(wrapper)
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("classifier"))
    assert sparse.k == wrapper.numel_maskable + head
    optimizer = make_supermask_optimizer(sparse, cfg)
    lrs = sorted(g["lr"] for g in optimizer.param_groups)
    assert lrs[0] == cfg.head_lr and lrs[-1] == cfg.score_lr
    train_steps(sparse, optimizer, bert_batches(24, 8, 2), steps=4, device=CPU)

    for name, p in model.named_parameters():
        if name.startswith("classifier"):
            assert not torch.equal(p.detach(), before[name]), name
        else:
            assert torch.equal(bits(p), bits(before[name])), f"{name} changed"
    moved = wrapper.score_vector() - scores_before
    assert float(moved.abs().max()) > 0.1  # Adam at lr 0.2 moves the scores


def test_fixed_all_ones_mask_is_the_plain_model() -> None:
    model = tiny_bert(num_labels=2).eval()
    wrapper = SupermaskModel(model, SupermaskConfig(initial_sparsity=0.3)).eval()
    inputs, _ = bert_batches(8, 8, 2)[0]
    plain = model(**inputs).logits
    ones = {n: torch.ones_like(wrapper.score(n), dtype=torch.bool) for n in wrapper.maskable}
    with wrapper.use_masks(ones):
        masked = wrapper(**inputs).logits
    assert torch.equal(plain, masked)
    # Threshold mask of a 30% magnitude mask = the model with those weights zeroed.
    zeroed = wrapper.materialize(wrapper.masks("threshold")).eval()
    wrapper.eval_mask = "threshold"
    assert torch.equal(wrapper(**inputs).logits, zeroed(**inputs).logits)
    zero_frac = (
        float(sum(float((dict(zeroed.named_parameters())[n] == 0).sum()) for n in wrapper.maskable))
        / wrapper.numel_maskable
    )
    assert zero_frac == pytest.approx(0.3, abs=0.01)


def test_evaluation_reports_samples_and_sparsity() -> None:
    model = tiny_bert(num_labels=2)
    wrapper = SupermaskModel(model, SupermaskConfig(initial_sparsity=0.2))
    random_scores(wrapper, 3)
    data = bert_batches(24, 8, 2)
    result = evaluate_supermask(
        wrapper, data, "sst2", device=CPU, samples=4, generator=torch.Generator().manual_seed(5)
    )
    accs = [m["accuracy"] for m in result.sampled]
    assert len(accs) == 4
    assert result.sampled_mean == pytest.approx(float(np.mean(accs)))
    assert result.sampled_std == pytest.approx(float(np.std(accs, ddof=1)))
    # Sparsities by hand from the same draws.
    g = torch.Generator().manual_seed(5)
    draws = [wrapper.masks("sample", g) for _ in range(4)]
    probs = wrapper.probabilities()
    total = wrapper.numel_maskable
    expected = sum(float((1 - p.double()).sum()) for p in probs.values()) / total
    sampled = np.mean([sum(float((~d[n]).sum()) for n in d) / total for d in draws])
    assert result.sparsity_expected == pytest.approx(expected, rel=1e-9)
    assert result.sparsity_sampled == pytest.approx(sampled, rel=1e-9)
    layer0 = result.layers[0]
    assert layer0.sampled[0] == pytest.approx(float((~draws[0][layer0.name]).double().mean()))


def test_supermask_builder() -> None:
    assert "supermask" in available_builders()
    with pytest.raises(ValueError, match="needs a SupermaskModel"):
        build_mask(nn.Linear(2, 2), MaskSpec(method="supermask"))
    wrapper = SupermaskModel(tiny_bert(num_labels=2), SupermaskConfig())
    mask = build_mask(wrapper, MaskSpec(method="supermask"))
    kept = {n for n, idx, _ in mask.segments()}
    assert kept == set(wrapper.score_parameter_names()) | {
        "model.classifier.weight",
        "model.classifier.bias",
    }


# -- packing and federated aggregation ---------------------------------------------------
@pytest.mark.parametrize("numel", [0, 1, 7, 8, 9, 1000, 4097])
def test_packed_mask_round_trips(numel: int) -> None:
    g = torch.Generator().manual_seed(numel)
    mask = torch.rand(numel, generator=g) < 0.4
    packed = pack_mask(mask)
    assert packed.dtype == np.uint8 and packed.size == (numel + 7) // 8
    assert torch.equal(unpack_mask(packed, numel), mask)
    assert torch.equal(unpack_mask(packed.tobytes(), numel), mask)
    # Bit order: entry i is bit i % 8 of byte i // 8.
    if numel:
        i = int(torch.nonzero(mask)[0]) if bool(mask.any()) else None
        if i is not None:
            assert packed[i // 8] >> (i % 8) & 1 == 1
    if numel:
        assert bits_per_parameter(packed.size, numel) == pytest.approx(
            8 * ((numel + 7) // 8) / numel
        )


def test_pack_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="binary mask"):
        pack_mask(torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="has 2 bytes, got 1"):
        unpack_mask(np.zeros(1, dtype=np.uint8), 9)
    with pytest.raises(ValueError, match="padding bits"):
        unpack_mask(np.array([0b1000_0000], dtype=np.uint8), 7)
    assert pack_mask(torch.tensor([1.0, 0.0, 1.0])).tolist() == [0b101]


def test_aggregate_sampled_masks_by_hand() -> None:
    masks = [
        torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool),
        torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool),
        torch.tensor([1, 0, 0, 0, 0], dtype=torch.bool),
    ]
    probs, scores = aggregate_sampled_masks([pack_mask(m) for m in masks], 5, weights=[1, 1, 2])
    # (1*m1 + 1*m2 + 2*m3) / 4
    assert probs.tolist() == [1.0, 0.25, 0.25, 0.25, 0.0]
    quarter = math.log(0.25 / 0.75)
    torch.testing.assert_close(scores, torch.tensor([5.0, quarter, quarter, quarter, -5.0]))
    equal = mean_of_masks(masks)
    torch.testing.assert_close(equal, torch.tensor([1.0, 1 / 3, 1 / 3, 1 / 3, 0.0]))
    with pytest.raises(ValueError, match="no client reply"):
        mean_of_masks([])
    with pytest.raises(ValueError, match="3 replies but 2 weights"):
        mean_of_masks(masks, [1, 2])
    with pytest.raises(ValueError, match="max_score must be a finite number > 0, got 0"):
        scores_from_probabilities(equal, max_score=0)


def test_federated_round_of_sampled_masks() -> None:
    """Two clients train from the server's scores, send packed samples; the server averages."""
    server = SupermaskModel(tiny_bert(num_labels=2), SupermaskConfig(initial_sparsity=0.2))
    replies, drawn = [], []
    for client in range(2):
        local = copy.deepcopy(server)
        local.generator = torch.Generator().manual_seed(100 + client)
        sparse = supermask_parameters(local)
        opt = make_supermask_optimizer(sparse, local.config)
        train_steps(sparse, opt, bert_batches(16, 8, 2, seed=client), steps=2, device=CPU)
        bits_ = sample_mask(local.score_vector(), torch.Generator().manual_seed(client))
        drawn.append(bits_)
        replies.append(pack_mask(bits_))
    n = server.numel_maskable
    assert bits_per_parameter(sum(r.size for r in replies) // 2, n) == pytest.approx(1.0, abs=0.01)
    probs, scores = aggregate_sampled_masks(replies, n)
    server.load_score_vector(scores)
    by_hand = (drawn[0].float() + drawn[1].float()) / 2
    assert torch.equal(probs, by_hand)
    half = by_hand == 0.5
    assert bool((server.score_vector()[half] == 0).all())  # logit(1/2)
    assert float(server.score_vector().abs().max()) == 5.0
