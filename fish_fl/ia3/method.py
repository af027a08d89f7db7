"""``ia3`` as a federated method: IA3 vectors through ``peft``, sent as ``k``-vectors.

IA3 (Liu et al., NeurIPS 2022, "Few-shot parameter-efficient fine-tuning is
better and cheaper than in-context learning", arXiv 2205.05638) rescales
chosen activations by learned vectors that start at one. The model is linear
in each vector, so unlike LoRA's two factors the plain average of the
clients' vectors is the average of their updates. The wire and the export are
:class:`~fish_fl.adapters.AdapterMethod`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ..adapters import AdapterMethod, check_targets, default_targets, wrap_with_adapter
from ..methods import register_method

if TYPE_CHECKING:
    from peft import IA3Config

    from ..config import RunConfig

__all__ = ["IA3Method", "ia3_config"]


def ia3_config(config: RunConfig, model: nn.Module) -> IA3Config:
    """The ``peft.IA3Config`` of a run, its targets checked against ``model``."""
    from peft import IA3Config
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
    )
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

    if config.ia3_targets:
        targets, feedforward = list(config.ia3_targets), list(config.ia3_feedforward)
    else:
        targets = default_targets(model, TARGETS)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        feedforward = list(config.ia3_feedforward) or list(FEEDFORWARD.get(model_type or "", []))
    cfg = IA3Config(target_modules=targets, feedforward_modules=feedforward)
    check_targets(model, cfg, "ia3-targets")
    return cfg


@register_method("ia3")
class IA3Method(AdapterMethod):
    """Federated IA3 (see the module docstring)."""

    model_keys = ("ia3-targets", "ia3-feedforward", "head-patterns")

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        from ..config import ConfigError

        super().check_config(config)
        extra = set(config.ia3_feedforward) - set(config.ia3_targets)
        if config.ia3_targets and extra:
            raise ConfigError(
                f"ia3-feedforward={sorted(extra)} must be among ia3-targets={list(config.ia3_targets)}"
            )

    def wrap_model(self, model: nn.Module, *, vision: bool) -> nn.Module:
        return wrap_with_adapter(model, ia3_config(self.config, model), seed=self.config.seed)

    def describe(self, model: nn.Module) -> str:
        cfg: Any = model.peft_config["default"]  # type: ignore[index]
        return f"IA3 on {', '.join(sorted(cfg.target_modules))}"
