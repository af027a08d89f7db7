"""LoRA and IA3 through peft: what trains, what stays bit-identical, the rank, the export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fish_fl.config import RunConfig
from fish_fl.lora.method import matched_rank
from fish_fl.masks import Mask, build_mask
from fish_fl.methods import method_for
from fish_fl.training import OptimizerConfig, SparseParameters, make_optimizer, train_steps
from tests.tiny_models import TinyConvNet, bert_batches, tiny_bert

NUM_LABELS = 3
CPU = torch.device("cpu")


def _config(**changes: object) -> RunConfig:
    values: dict[str, object] = {"mask_method": "lora", "head_patterns": ("classifier",)}
    return RunConfig(**{**values, **changes})  # type: ignore[arg-type]


def _wrapped(config: RunConfig) -> tuple[nn.Module, Mask]:
    model = method_for(config).wrap_model(tiny_bert(num_labels=NUM_LABELS), vision=False)
    return model, build_mask(model, config.mask_spec())


def _train(model: nn.Module, mask: Mask, steps: int = 3) -> None:
    sparse = SparseParameters(model, mask)
    optimizer = make_optimizer(sparse, OptimizerConfig(name="adamw", lr=1e-2, weight_decay=0.1))
    train_steps(sparse, optimizer, bert_batches(24, 8, NUM_LABELS, seed=3), steps=steps, device=CPU)


def _adapter(name: str) -> bool:
    return ".lora_" in name or ".ia3_" in name


def _head(name: str) -> bool:
    return ".classifier." in name


@pytest.mark.parametrize(
    ("method", "variant", "trained"),
    [
        ("lora", "ffa", (".lora_B.",)),
        ("lora", "fedit", (".lora_A.", ".lora_B.")),
        ("ia3", "ffa", (".ia3_l.",)),
    ],
)
def test_only_adapter_and_head_entries_change(
    method: str, variant: str, trained: tuple[str, ...]
) -> None:
    config = _config(mask_method=method, lora_variant=variant)
    model, mask = _wrapped(config)
    params = dict(model.named_parameters())
    expected = sum(p.numel() for n, p in params.items() if _head(n) or any(t in n for t in trained))
    assert mask.k == expected
    kept = {n for n in params if mask.indices[n].numel()}
    assert kept == {n for n in params if _head(n) or any(t in n for t in trained)}
    assert all(mask.indices[n].numel() == params[n].numel() for n in kept)

    before = {n: p.detach().clone() for n, p in params.items()}
    _train(model, mask)
    changed = {n for n, p in params.items() if not torch.equal(p.detach(), before[n])}
    frozen = sorted(n for n in params if n not in kept and n in changed)
    assert not frozen, f"entries outside the adapter and head changed: {frozen}"
    assert any(_adapter(n) for n in changed), "no adapter tensor moved"
    assert any(_head(n) for n in changed), "the head did not move"


def test_ffa_never_changes_a() -> None:
    model, mask = _wrapped(_config(lora_variant="ffa"))
    a = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_A." in n}
    assert a and all(mask.indices[n].numel() == 0 for n in a)
    _train(model, mask, steps=5)
    params = dict(model.named_parameters())
    for name, value in a.items():
        assert torch.equal(params[name].detach(), value), name


def test_the_wrapped_base_is_a_function_of_the_seed() -> None:
    first, _ = _wrapped(_config(seed=4))
    again, _ = _wrapped(_config(seed=4))
    other, _ = _wrapped(_config(seed=5))
    a = {n: p for n, p in first.state_dict().items() if ".lora_A." in n}
    for name, value in a.items():
        assert torch.equal(value, again.state_dict()[name]), name
    assert any(not torch.equal(v, other.state_dict()[n]) for n, v in a.items())
    # B starts at zero: the wrapped model computes what the base computes.
    assert all(torch.count_nonzero(p) == 0 for n, p in first.named_parameters() if ".lora_B." in n)


def test_no_second_copy_of_the_head() -> None:
    model, _ = _wrapped(_config())
    heads = [n for n, _ in model.named_parameters() if "classifier" in n]
    assert heads == ["base_model.model.classifier.weight", "base_model.model.classifier.bias"]


@pytest.mark.parametrize(
    ("target", "fixed", "per_rank", "rank"),
    [(1000.0, 100, 90, 10), (1000.0, 100, 200, 4), (1049.0, 100, 100, 9), (10.0, 100, 50, 1)],
)
def test_matched_rank_is_the_closest(target: float, fixed: int, per_rank: int, rank: int) -> None:
    assert matched_rank(target, fixed, per_rank) == rank
    best = min(range(1, 100), key=lambda r: (abs(fixed + r * per_rank - target), r))
    assert rank == best


def test_rank_zero_matches_the_density() -> None:
    config = _config(lora_r=0, density=0.05)
    method = method_for(config)
    model = method.wrap_model(tiny_bert(num_labels=NUM_LABELS), vision=False)
    mask = build_mask(model, config.mask_spec())
    total = method.model_numel(model)
    assert total == sum(p.numel() for p in tiny_bert(num_labels=NUM_LABELS).parameters())
    per_rank = sum(p.numel() for n, p in model.named_parameters() if ".lora_B." in n) // method.rank
    for r in (method.rank - 1, method.rank + 1):
        if r >= 1:
            assert abs(mask.k - 0.05 * total) <= abs(
                mask.k + (r - method.rank) * per_rank - 0.05 * total
            )
    assert f"rank {method.rank}" in method.describe(model)


def test_a_target_that_matches_nothing_is_refused_in_one_line() -> None:
    method = method_for(_config(lora_targets=("nothere",)))
    with pytest.raises(ValueError, match=r"lora-targets=\['nothere'\] matches no module.*query"):
        method.wrap_model(tiny_bert(num_labels=NUM_LABELS), vision=False)


def test_resnet_defaults_target_the_convolutions() -> None:
    config = RunConfig(mask_method="lora", head_patterns=("fc",), lora_variant="fedit")
    model = method_for(config).wrap_model(TinyConvNet(), vision=True)
    mask = build_mask(model, config.mask_spec())
    kept = {n for n in mask.indices if mask.indices[n].numel()}
    # conv1 and layer1.conv1; layer1.conv2 is grouped and left alone.
    assert {n.split(".lora_")[0] for n in kept if ".lora_" in n} == {
        "base_model.model.conv1",
        "base_model.model.layer1.conv1",
    }


def test_adapter_folder_loads_in_peft_with_the_same_logits(tmp_path: Path) -> None:
    from peft import PeftModel

    config = _config(lora_variant="fedit")
    method = method_for(config)
    model, mask = _wrapped(config)
    _train(model, mask)
    (folder,) = method.export_files(model, tmp_path)
    loaded = PeftModel.from_pretrained(tiny_bert(num_labels=NUM_LABELS), str(folder))
    batch, _ = bert_batches(8, 8, NUM_LABELS, seed=9)[0]
    model.eval()
    loaded.eval()
    with torch.no_grad():
        want = model(**batch).logits
        got = loaded(**batch).logits
        merged = method.deployable(loaded)(**batch).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(merged, want, rtol=1e-5, atol=1e-5)


def test_preflight_refuses_targets_that_match_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from fish_fl.preflight import PreflightError, preflight

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = RunConfig.from_mapping(
        {"mask-method": "lora", "lora-targets": ["qkv"], "data-source": "embedded"}
    )
    with pytest.raises(PreflightError) as info:
        preflight(config, simulation=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("mask-method=lora: lora-targets=['qkv'] matches no module")
    assert "query" in message
