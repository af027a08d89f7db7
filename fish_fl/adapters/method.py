"""The wire shared by ``peft``-backed methods: the sparse one, with the model wrapped and an adapter export."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ..masks import head_names, parameter_shapes
from ..methods import SparseMethod
from .peft_wrap import adapter_parameter_names, base_numel, merged, save_adapter

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["ADAPTER_FOLDER", "AdapterMethod"]

#: The run folder's (and ``export``'s) PEFT adapter folder.
ADAPTER_FOLDER = "adapter"

#: Keys whose values an adapter cannot honour: a dense warm-up or a refresh would
#: move the frozen base, and the mask is fixed by the adapter itself.
_FIXED = {
    "mask_source": "server",
    "mask_assignment": "shared",
    "warmup_rounds": 0,
    "mask_refresh": 0,
}


class AdapterMethod(SparseMethod):
    """A ``peft`` adapter trained under its own mask; subclasses say how to wrap."""

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        from ..config import ConfigError

        for name, allowed in _FIXED.items():
            value = getattr(config, name)
            if value != allowed:
                key = name.replace("_", "-")
                raise ConfigError(
                    f"mask-method={config.mask_method} trains a fixed adapter; it needs "
                    f"{key}={allowed!r}, got {value!r}"
                )

    # -- the model --------------------------------------------------------------------
    def freeze(self) -> tuple[str, ...]:
        """Adapter tensors (name fragments) the method keeps at their seeded values."""
        return ()

    def trained_adapter(self, model: nn.Module) -> list[Tensor]:
        params = dict(model.named_parameters())
        return [params[n] for n in adapter_parameter_names(model)]

    def head_numel(self, model: nn.Module) -> int:
        shapes = parameter_shapes(model)
        params = dict(model.named_parameters())
        return sum(params[n].numel() for n in head_names(shapes, self.config.head_patterns))

    def model_numel(self, model: nn.Module) -> int:
        return base_numel(model)

    # -- export -------------------------------------------------------------------------
    def export_base(self) -> nn.Module:
        # The delta is taken against the wrapped base: only the adapter and the head differ.
        from ..task import build_task_model

        return build_task_model(self.config)

    def deployable(self, model: nn.Module) -> nn.Module:
        return merged(model)

    def export_files(self, trained: nn.Module, folder: Path) -> list[Path]:
        return [save_adapter(trained, self.config.head_patterns, folder / ADAPTER_FOLDER)]  # type: ignore[arg-type]

    def finish(
        self, model: nn.Module, evaluate: Any, run_dir: Any
    ) -> tuple[nn.Module, dict[str, Any]]:
        """The trained wrapped model, and its adapter folder written into the run folder."""
        (folder,) = self.export_files(model, Path(run_dir))
        return model, {"adapter": str(folder.name)}
