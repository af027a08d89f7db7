"""Masks: sizes, the head, seeds, encodings, gather/scatter, files, builders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fish_fl.fisher import fisher_diagonal_reference
from fish_fl.masks import (
    Mask,
    MaskSpec,
    available_builders,
    block_of,
    build_mask,
    parameter_shapes,
    topk_mask,
)
from tests.tiny_models import TinyConvNet, bert_batches, image_batches, tiny_bert


@pytest.fixture
def convnet() -> nn.Module:
    torch.manual_seed(0)
    return TinyConvNet(num_classes=5)


def total_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_builder() -> None:
    assert set(available_builders()) >= {"fish", "random", "bitfit", "layers", "magnitude", "dense"}
    with pytest.raises(ValueError, match="unknown mask method 'nope'; available: bitfit"):
        build_mask(nn.Linear(2, 2), MaskSpec(method="nope"))


@pytest.mark.parametrize("method", ["fish", "random", "magnitude"])
@pytest.mark.parametrize("density", [0.05, 0.2, 1.0])
def test_exact_k_and_head_kept(convnet: nn.Module, method: str, density: float) -> None:
    data = image_batches(8, 4, 5)
    spec = MaskSpec(method=method, density=density, fisher_samples=8)
    mask = build_mask(convnet, spec, data)
    assert mask.k == round(density * total_params(convnet))
    assert mask.indices["fc.weight"].numel() == convnet.fc.weight.numel()
    assert mask.indices["fc.bias"].numel() == convnet.fc.bias.numel()
    assert mask.density == pytest.approx(mask.k / total_params(convnet))


def test_fish_mask_is_topk_of_reference_fisher(convnet: nn.Module) -> None:
    data = image_batches(8, 4, 5)
    mask = build_mask(convnet, MaskSpec(method="fish", density=0.1, fisher_samples=8), data)
    # By hand: reference scores, head forced in, the rest by descending score.
    scores = fisher_diagonal_reference(convnet, data, n_samples=8)
    k = round(0.1 * total_params(convnet))
    body = [n for n in scores if not n.startswith("fc.")]
    flat = torch.cat([scores[n].reshape(-1) for n in body])
    head = sum(scores[n].numel() for n in scores if n.startswith("fc."))
    order = torch.argsort(flat, descending=True, stable=True)[: k - head]
    expected = torch.zeros_like(flat, dtype=torch.bool)
    expected[order] = True
    got = torch.cat([mask.to_bool(n).reshape(-1) for n in body])
    # Scores of fast and reference paths differ by rounding only; allow no
    # more than a couple of swaps at the threshold.
    assert int((got != expected).sum()) <= 4


def test_random_mask_seeded(convnet: nn.Module) -> None:
    a = build_mask(convnet, MaskSpec(method="random", density=0.1, seed=3))
    b = build_mask(convnet, MaskSpec(method="random", density=0.1, seed=3))
    c = build_mask(convnet, MaskSpec(method="random", density=0.1, seed=4))
    assert a == b and a.fingerprint == b.fingerprint
    assert a != c and a.fingerprint != c.fingerprint
    # Untouched global random state: a seeded draw is the same after building.
    torch.manual_seed(123)
    x = torch.rand(3)
    torch.manual_seed(123)
    build_mask(convnet, MaskSpec(method="random", density=0.1, seed=5))
    assert torch.equal(torch.rand(3), x)


def test_ties_broken_by_mask_order() -> None:
    shapes = {"a": (4,), "b": (3, 2), "fc.weight": (2,)}
    scores = {"a": torch.ones(4), "b": torch.ones(3, 2), "fc.weight": torch.zeros(2)}
    mask = topk_mask(scores, shapes, density=5 / 12, head_patterns=("fc",))
    assert mask.k == 5
    assert mask.indices["a"].tolist() == [0, 1, 2]
    assert mask.indices["b"].tolist() == []
    scores["b"][2, 1] = 2.0
    mask = topk_mask(scores, shapes, density=5 / 12, head_patterns=("fc",))
    assert mask.indices["a"].tolist() == [0, 1] and mask.indices["b"].tolist() == [5]


def test_bad_input(convnet: nn.Module) -> None:
    for density in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="density must be in \\(0, 1\\]"):
            MaskSpec(density=density)
    with pytest.raises(ValueError, match="task head .* is larger than the budget"):
        build_mask(convnet, MaskSpec(method="random", density=0.001))
    shapes = parameter_shapes(convnet)
    scores = {n: torch.rand(s) for n, s in shapes.items()}
    scores["conv1.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="scores of parameter 'conv1.weight' are not finite"):
        topk_mask(scores, shapes, 0.5, ("fc",))
    mask = build_mask(convnet, MaskSpec(method="random", density=0.5))
    other = TinyConvNet(num_classes=7)
    with pytest.raises(ValueError, match="parameter 'fc.weight' has shape \\(7, 8\\)"):
        mask.gather(other)
    convnet.add_module("extra", nn.Linear(1, 1))
    with pytest.raises(ValueError, match="parameter 'extra.weight' is not covered by the mask"):
        mask.check(convnet)
    with pytest.raises(ValueError, match="needs calibration data"):
        build_mask(convnet, MaskSpec(method="fish"))


def test_gather_scatter_round_trip(convnet: nn.Module) -> None:
    mask = build_mask(convnet, MaskSpec(method="random", density=0.3, seed=1))
    before = {n: p.detach().clone() for n, p in convnet.named_parameters()}
    values = mask.gather(convnet)
    assert values.shape == (mask.k,) and values.dtype == torch.float32
    new = torch.arange(mask.k, dtype=torch.float32)
    mask.scatter(convnet, new)
    assert torch.equal(mask.gather(convnet), new)
    for name, p in convnet.named_parameters():
        keep = mask.to_bool(name)
        assert torch.equal(p.detach()[~keep], before[name][~keep]), name
    # The same through a state dict.
    state = {k: v.clone() for k, v in convnet.state_dict().items()}
    mask.scatter(state, values)
    assert torch.equal(mask.gather(state), values)
    with pytest.raises(ValueError, match=f"scatter needs {mask.k} values"):
        mask.scatter(convnet, new[:-1])


def random_mask(rng: np.random.Generator, densities: list[float]) -> Mask:
    shapes, indices = {}, {}
    for i, d in enumerate(densities):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        n = shape[0] * shape[1]
        shapes[f"p{i}.weight"] = shape
        indices[f"p{i}.weight"] = torch.from_numpy(
            np.flatnonzero(rng.random(n) < d).astype(np.int64)
        )
    return Mask(indices, shapes)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, 0.001, 0.02, 0.3, 0.9, 1.0]), min_size=1, max_size=6),
    st.integers(0, 2**31),
)
def test_encoding_round_trip(densities: list[float], seed: int) -> None:
    mask = random_mask(np.random.default_rng(seed), densities)
    data = mask.to_bytes()
    back = Mask.from_bytes(data)
    assert back == mask and back.fingerprint == mask.fingerprint
    # Never larger than a plain bitmap of every parameter (plus the header).
    header = len(data) - sum(
        min((mask.numel(n) + 7) // 8, 10 * mask.indices[n].numel()) for n in mask.names
    )
    assert len(data) - header <= sum((mask.numel(n) + 7) // 8 for n in mask.names)


def test_encoding_picks_the_smaller_form() -> None:
    n = 100_000
    sparse = Mask({"w": torch.tensor([5, 70_000])}, {"w": (n,)})
    dense = Mask({"w": torch.arange(0, n, 2)}, {"w": (n,)})
    assert len(sparse.to_bytes()) < 100  # two varints
    assert len(dense.to_bytes()) < n // 8 + 100  # bitmap: 12,500 bytes
    assert len(dense.to_bytes()) > n // 8
    large_gap = Mask({"w": torch.tensor([0, 2**40])}, {"w": (2**41,)})
    assert Mask.from_bytes(large_gap.to_bytes()) == large_gap


def test_corrupt_encoding_rejected() -> None:
    mask = random_mask(np.random.default_rng(0), [0.01, 0.5])
    data = mask.to_bytes()
    with pytest.raises(ValueError, match="bad magic"):
        Mask.from_bytes(b"X" + data[1:])
    with pytest.raises(ValueError, match="truncated|corrupt"):
        Mask.from_bytes(data[:-3])
    with pytest.raises(ValueError, match="trailing"):
        Mask.from_bytes(data + b"\x00")


def test_save_load(tmp_path, convnet: nn.Module) -> None:
    mask = build_mask(convnet, MaskSpec(method="magnitude", density=0.2))
    path = tmp_path / "mask.safetensors"
    mask.save(path)
    assert Mask.load(path) == mask
    with pytest.raises(FileNotFoundError, match="mask file not found"):
        Mask.load(tmp_path / "missing.safetensors")


def test_a_mask_of_full_tensors_is_stored_in_constant_size_per_tensor(tmp_path) -> None:
    """Kept whole, a tensor costs its header entry only: the file does not grow with its size."""
    sizes = []
    for width in (10, 10_000):
        shapes = {"a.weight": (width, 64), "a.bias": (width,), "b.weight": (3, width)}
        mask = Mask.full(shapes)
        mask.save(tmp_path / f"full{width}.safetensors")
        sizes.append((tmp_path / f"full{width}.safetensors").stat().st_size)
        assert Mask.load(tmp_path / f"full{width}.safetensors") == mask
    # Only digits differ (shapes, counts, the header's offsets) and the header's padding.
    assert sizes[1] - sizes[0] < 64, sizes
    assert sizes[1] < 1_000


def test_a_version_1_mask_file_still_loads(tmp_path, convnet: nn.Module) -> None:
    import json

    from safetensors.torch import save_file

    mask = build_mask(convnet, MaskSpec(method="random", density=0.25))
    path = tmp_path / "v1.safetensors"
    save_file(
        {f"indices/{n}": idx.contiguous() for n, idx in mask.indices.items()},
        str(path),
        metadata={
            "format": "fish-fl-mask/1",
            "shapes": json.dumps([[n, list(s)] for n, s in mask.shapes.items()]),
            "fingerprint": mask.fingerprint,
            "k": str(mask.k),
        },
    )
    assert Mask.load(path) == mask


def test_a_corrupt_mask_file_is_refused(tmp_path, convnet: nn.Module) -> None:
    from safetensors.torch import save_file

    mask = build_mask(convnet, MaskSpec(method="random", density=0.25))
    path = tmp_path / "mask.safetensors"
    mask.save(path)
    encoding = torch.from_numpy(np.frombuffer(bytearray(mask.to_bytes()[:-2]), np.uint8))
    save_file({"encoding": encoding}, str(path), metadata={"format": "fish-fl-mask/2"})
    with pytest.raises(ValueError, match="not a mask encoding"):
        Mask.load(path)
    save_file({"encoding": encoding}, str(path), metadata={"format": "other/1"})
    with pytest.raises(ValueError, match="not a fish-fl mask file"):
        Mask.load(path)


def test_statistics(convnet: nn.Module) -> None:
    mask = build_mask(convnet, MaskSpec(method="random", density=0.25))
    stats = mask.parameter_stats()
    assert [s.name for s in stats] == mask.names
    assert sum(s.kept for s in stats) == mask.k
    blocks = mask.block_stats()
    assert [b.name for b in blocks] == ["conv1", "bn1", "layer1", "fc"]
    assert sum(b.kept for b in blocks) == mask.k and sum(b.numel for b in blocks) == mask.total
    assert block_of("bert.encoder.layer.3.attention.self.key.weight") == "bert.encoder.layer.3"
    assert block_of("bert.embeddings.word_embeddings.weight") == "bert.embeddings"


def test_bitfit_keeps_biases_and_head() -> None:
    model = tiny_bert(num_labels=2)
    mask = build_mask(model, MaskSpec(method="bitfit"))
    for name, p in model.named_parameters():
        kept = mask.indices[name].numel()
        expected = p.numel() if name.endswith(".bias") or name.startswith("classifier.") else 0
        assert kept == expected, name


@pytest.mark.parametrize(
    ("preset", "dropped"),
    [
        ("no-key", lambda n: ".attention.self.key." in n),
        ("no-deepest-2", lambda n: "encoder.layer.2." in n or "encoder.layer.3." in n),
        ("no-word-embeddings", lambda n: "word_embeddings" in n),
        (
            "no-all-three",
            lambda n: (
                ".attention.self.key." in n
                or "encoder.layer.2." in n
                or "encoder.layer.3." in n
                or "word_embeddings" in n
            ),
        ),
    ],
)
def test_layers_presets(preset: str, dropped) -> None:
    model = tiny_bert(num_labels=2, layers=4)
    mask = build_mask(model, MaskSpec(method="layers", layers_preset=preset))
    for name, p in model.named_parameters():
        assert mask.indices[name].numel() == (0 if dropped(name) else p.numel()), name


def test_layers_patterns_and_errors() -> None:
    model = tiny_bert(num_labels=2)
    mask = build_mask(model, MaskSpec(method="layers", include=("encoder\\.layer\\.1",)))
    kept = {n for n in mask.names if mask.indices[n].numel()}
    assert kept == {n for n in mask.names if "encoder.layer.1." in n or "classifier" in n}
    with pytest.raises(ValueError, match="unknown layers preset 'no-foo'"):
        build_mask(model, MaskSpec(method="layers", layers_preset="no-foo"))
    with pytest.raises(ValueError, match="pattern 'decoder' matches no parameter"):
        build_mask(model, MaskSpec(method="layers", exclude=("decoder",)))


def test_head_pattern_matches_whole_components() -> None:
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(4, 4))
    model.add_module("fc", nn.Linear(4, 2))
    mask = build_mask(model, MaskSpec(method="random", density=0.5))
    assert mask.indices["fc.weight"].numel() == 8
    assert mask.indices["fc1.weight"].numel() + mask.indices["fc1.bias"].numel() == 15 - 10


def test_dense_mask(convnet: nn.Module) -> None:
    mask = build_mask(convnet, MaskSpec(method="dense"))
    assert mask.k == total_params(convnet) and mask.density == 1.0


def test_fish_true_and_regression_builders() -> None:
    model = tiny_bert(num_labels=1)
    data = bert_batches(6, 3, 1)
    spec = MaskSpec(method="fish", density=0.2, fisher_samples=6, fisher_kind="true")
    mask = build_mask(model, spec, data)
    assert mask.k == round(0.2 * total_params(model))
