"""``lora`` as a federated method: LoRA adapters through ``peft``, sent as ``k``-vectors.

LoRA (Hu et al., ICLR 2022, arXiv 2106.09685) trains a low-rank update
``(alpha / r) B A`` of chosen weight matrices. Federated, averaging ``A`` and
``B`` separately (FedIT: Zhang et al., ICASSP 2024, arXiv 2305.05644) is not
averaging their products: ``mean(B_i) mean(A_i) != mean(B_i A_i)``. FFA-LoRA
(Sun et al., ICLR 2024, "Improving LoRA in privacy-preserving federated
learning", arXiv 2403.12313) freezes ``A`` at its seeded initialisation and
trains only ``B``, so the model is linear in what is averaged and the average
is exact; it is the default (``lora-variant=ffa``).

The mask keeps the trained adapter tensors and the head (see
:mod:`fish_fl.adapters`); the sparse wire carries them unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ..adapters import AdapterMethod, check_targets, default_targets, wrap_with_adapter
from ..methods import register_method

if TYPE_CHECKING:
    from peft import LoraConfig

    from ..config import RunConfig

__all__ = ["LoraMethod", "lora_config", "matched_rank"]


def lora_config(config: RunConfig, model: nn.Module, rank: int) -> LoraConfig:
    """The ``peft.LoraConfig`` of a run at ``rank``, its targets checked against ``model``."""
    from peft import LoraConfig
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    targets = list(config.lora_targets) or default_targets(model, DEFAULTS)
    cfg = LoraConfig(
        r=rank,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
    )
    check_targets(model, cfg, "lora-targets")
    return cfg


def matched_rank(target: float, fixed: int, per_rank: int) -> int:
    """The rank ``r >= 1`` whose ``fixed + r x per_rank`` trained entries are closest to ``target``.

    Ties go to the smaller rank.
    """
    if per_rank <= 0:
        raise ValueError(f"per_rank must be positive, got {per_rank}")
    low = max(1, int((target - fixed) // per_rank))
    return min((low, low + 1), key=lambda r: (abs(fixed + r * per_rank - target), r))


@register_method("lora")
class LoraMethod(AdapterMethod):
    """Federated LoRA, FFA-LoRA by default (see the module docstring)."""

    model_keys = (
        "lora-r",
        "lora-alpha",
        "lora-dropout",
        "lora-targets",
        "lora-variant",
        "density",  # with lora-r=0 the rank follows it
        "head-patterns",
    )

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.rank = config.lora_r

    def freeze(self) -> tuple[str, ...]:
        return ("lora_A",) if self.config.lora_variant == "ffa" else ()

    def wrap_model(self, model: nn.Module, *, vision: bool) -> nn.Module:
        seed = self.config.seed
        if self.config.lora_r == 0:
            # Probe at rank 1: the trained entries grow linearly with the rank.
            probe = wrap_with_adapter(
                model,
                lora_config(self.config, model, 1),
                seed=seed,
                redraw=("lora_A",),
                freeze=self.freeze(),
            )
            per_rank = sum(p.numel() for p in self.trained_adapter(probe))
            fixed = self.head_numel(probe)
            total = self.model_numel(probe)
            model = probe.unload()
            self.rank = matched_rank(self.config.density * total, fixed, per_rank)
        return wrap_with_adapter(
            model,
            lora_config(self.config, model, self.rank),
            seed=seed,
            redraw=("lora_A",),
            freeze=self.freeze(),
        )

    def describe(self, model: nn.Module) -> str:
        cfg: Any = model.peft_config["default"]  # type: ignore[index]
        targets = ", ".join(sorted(cfg.target_modules))
        trained = "B only (FFA-LoRA)" if self.config.lora_variant == "ffa" else "A and B (FedIT)"
        how = " (matched to the density)" if self.config.lora_r == 0 else ""
        return (
            f"LoRA rank {self.rank}{how}, alpha {self.config.lora_alpha:g}, "
            f"trains {trained} on {targets}"
        )
