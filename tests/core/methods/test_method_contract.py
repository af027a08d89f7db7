"""One contract for every registered mask builder, on a tiny BERT.

Each builder is run through the same checks: the mask keeps exactly the
entries the method promises (counted here from the model, not from the
builder), the task head whole, the one training loop moves only masked
entries, and the mask is a function of its seed. The table of recipes is
keyed by registry name; a newly registered builder without a recipe fails
its test until one is added.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import fish_fl.supermask  # noqa: F401  (registers the "supermask" builder)
from fish_fl.config import RunConfig
from fish_fl.masks import Mask, MaskSpec, available_builders, build_mask
from fish_fl.methods import method_for
from fish_fl.supermask import SupermaskConfig, SupermaskModel
from fish_fl.training import OptimizerConfig, SparseParameters, make_optimizer, train_steps
from tests.tiny_models import bert_batches, tiny_bert

NUM_LABELS = 3
DENSITY = 0.05
HEAD = re.compile(r"(^|\.)classifier\.")
KEY = re.compile(r"\.attention\.self\.key\.")
ENCODER_BLOCK = re.compile(r"(^|\.)encoder\.layer\.\d+\.")


def _total(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _numel(model: nn.Module, keep: Callable[[str, nn.Parameter], bool]) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if keep(n, p))


def _head(name: str, p: nn.Parameter) -> bool:
    return HEAD.search(name) is not None


def _density_k(model: nn.Module) -> int:
    return max(1, round(DENSITY * _total(model)))


def _bitfit_k(model: nn.Module) -> int:
    return _numel(model, lambda n, p: n.endswith(".bias") or _head(n, p))


def _no_key_k(model: nn.Module) -> int:
    return _total(model) - _numel(model, lambda n, p: KEY.search(n) is not None)


def _supermask_k(model: nn.Module) -> int:
    # One score per entry of each encoder weight matrix, plus the head.
    assert isinstance(model, SupermaskModel)
    base = model.model
    scores = _numel(base, lambda n, p: ENCODER_BLOCK.search(n) is not None and p.dim() >= 2)
    return scores + _numel(base, _head)


def _adapter_k(*trained: str) -> Callable[[nn.Module], int]:
    # Every trained adapter tensor (by name fragment) and the head.
    return lambda model: _numel(model, lambda n, p: _head(n, p) or any(t in n for t in trained))


def _supermask(model: nn.Module, seed: int) -> nn.Module:
    return SupermaskModel(model, SupermaskConfig(seed=seed))


def _peft(method: str) -> Callable[[nn.Module, int], nn.Module]:
    def wrap(model: nn.Module, seed: int) -> nn.Module:
        config = RunConfig(mask_method=method, head_patterns=("classifier",), seed=seed)
        return method_for(config).wrap_model(model, vision=False)

    return wrap


@dataclass(frozen=True)
class Recipe:
    """How the contract builds and sizes one method's mask."""

    spec: Callable[[int], MaskSpec]  # seed -> spec
    expected_k: Callable[[nn.Module], int]
    wrap: Callable[[nn.Module, int], nn.Module] | None = None  # the method's model
    seed_changes_mask: bool = False


RECIPES: dict[str, Recipe] = {
    "fish": Recipe(
        lambda s: MaskSpec(method="fish", density=DENSITY, fisher_samples=24, seed=s), _density_k
    ),
    "random": Recipe(
        lambda s: MaskSpec(method="random", density=DENSITY, seed=s),
        _density_k,
        seed_changes_mask=True,
    ),
    "magnitude": Recipe(
        lambda s: MaskSpec(method="magnitude", density=DENSITY, seed=s), _density_k
    ),
    "bitfit": Recipe(lambda s: MaskSpec(method="bitfit", seed=s), _bitfit_k),
    "layers": Recipe(
        lambda s: MaskSpec(method="layers", layers_preset="no-key", seed=s), _no_key_k
    ),
    "dense": Recipe(lambda s: MaskSpec(method="dense", seed=s), _total),
    "supermask": Recipe(
        lambda s: MaskSpec(method="supermask", seed=s), _supermask_k, wrap=_supermask
    ),
    "lora": Recipe(
        lambda s: MaskSpec(method="lora", seed=s), _adapter_k(".lora_B."), wrap=_peft("lora")
    ),
    "ia3": Recipe(
        lambda s: MaskSpec(method="ia3", seed=s), _adapter_k(".ia3_l."), wrap=_peft("ia3")
    ),
}


def _recipe(method: str) -> Recipe:
    recipe = RECIPES.get(method)
    if recipe is None:
        pytest.fail(
            f"mask builder {method!r} is registered but this contract has no recipe for it; "
            "add one to RECIPES in tests/core/methods/test_method_contract.py"
        )
    return recipe


def _batches() -> list:
    return bert_batches(24, 8, NUM_LABELS, seed=3)


def _model(recipe: Recipe, seed: int) -> nn.Module:
    model = tiny_bert(num_labels=NUM_LABELS, seed=0)
    return model if recipe.wrap is None else recipe.wrap(model, seed)


def _build(method: str, seed: int = 0, model: nn.Module | None = None) -> tuple[nn.Module, Mask]:
    recipe = _recipe(method)
    model = model if model is not None else _model(recipe, seed)
    return model, build_mask(model, recipe.spec(seed), _batches())


METHODS = available_builders()


def test_every_recipe_names_a_registered_builder() -> None:
    assert set(RECIPES) <= set(METHODS), sorted(set(RECIPES) - set(METHODS))


@pytest.mark.parametrize("method", METHODS)
def test_mask_has_the_promised_size(method: str) -> None:
    model, mask = _build(method)
    expected = _recipe(method).expected_k(model)
    assert mask.k == expected, f"{method}: k={mask.k}, the method promises {expected}"
    assert mask.total == _total(model)
    assert 0 < mask.k <= mask.total


@pytest.mark.parametrize("method", METHODS)
def test_head_is_kept_whole(method: str) -> None:
    model, mask = _build(method)
    heads = [(n, p) for n, p in model.named_parameters() if _head(n, p)]
    assert heads, "the tiny model has no classifier head"
    for name, p in heads:
        assert mask.indices[name].numel() == p.numel(), f"{method}: head {name} not whole"


@pytest.mark.parametrize("method", METHODS)
def test_training_moves_only_masked_entries(method: str) -> None:
    model, mask = _build(method)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sparse = SparseParameters(model, mask)
    optimizer = make_optimizer(sparse, OptimizerConfig(name="adamw", lr=1e-2, weight_decay=0.1))
    train_steps(sparse, optimizer, _batches(), steps=3, device=torch.device("cpu"))

    moved, frozen_changed = 0, []
    for name, p in model.named_parameters():
        keep = mask.to_bool(name)
        after = p.detach()
        if not torch.equal(after[~keep], before[name][~keep]):
            frozen_changed.append(name)
        moved += int((after[keep] != before[name][keep]).sum())
    assert not frozen_changed, f"{method}: entries outside the mask changed in {frozen_changed}"
    assert moved > 0, f"{method}: no masked entry changed in 3 steps"


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_gives_the_same_mask(method: str) -> None:
    _, first = _build(method, seed=0)
    _, again = _build(method, seed=0)
    assert first.fingerprint == again.fingerprint
    assert first == again


# An unknown builder is kept so that it fails here too, not silently skipped.
@pytest.mark.parametrize(
    "method", [m for m in METHODS if m not in RECIPES or RECIPES[m].seed_changes_mask]
)
def test_another_seed_gives_another_mask(method: str) -> None:
    recipe = _recipe(method)
    model = _model(recipe, seed=0)
    _, seed0 = _build(method, seed=0, model=model)
    _, seed1 = _build(method, seed=1, model=model)
    assert seed0.k == seed1.k
    assert seed0.fingerprint != seed1.fingerprint
