"""``fish-fl prune PRESET``: fine-tune on one machine while pruning by magnitude.

Gradual magnitude pruning with the cubic schedule of Zhu and Gupta (2017,
arXiv 1710.01878), the sparsified fine-tuning of "How fine can fine-tuning
be?" (Radiya-Dixit and Wang, AISTATS 2020, arXiv 2004.14129); see
:mod:`fish_fl.pruning`. The preset gives the model, the data, the update mask
and the optimiser; training is centralised, on every training example the
run's clients would share, at the preset's learning rate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fish_fl.config import RunConfig

from .options import PresetArgument, SetOption
from .run import load_preset

__all__ = ["DEFAULT_PRUNABLE_VISION", "prune_and_evaluate", "prune_command"]

#: The residual stages of the CIFAR ResNets (their convolutions).
DEFAULT_PRUNABLE_VISION: tuple[str, ...] = (r"layer\d+",)


def prune_and_evaluate(
    config: RunConfig,
    *,
    initial: float,
    final: float,
    begin: int,
    prunings: int,
    every: int,
    steps: int | None,
    scope: str = "layer",
    prunable: tuple[str, ...] = (),
    save: Path | None = None,
) -> dict[str, Any]:
    """Train the run's update mask for ``steps`` steps with pruning; evaluate on the held-out split.

    ``steps`` defaults to the schedule's last pruning step plus one pruning
    interval, so the network trains ``every`` steps at the final sparsity.
    ``prunable`` defaults to the encoder blocks of a language model and the
    residual stages of a ResNet. Returns the report printed by the command.
    """
    import torch

    from fish_fl.masks import build_mask
    from fish_fl.methods import trains
    from fish_fl.models import is_vision_model, resolve_device
    from fish_fl.pruning import (
        DEFAULT_PRUNABLE,
        CubicSchedule,
        MagnitudePruner,
        prunable_parameters,
        train_with_pruning,
    )
    from fish_fl.task import build_base_model, evaluate_model, is_vision, load_task_data
    from fish_fl.training import SparseParameters, make_optimizer

    if trains(config.mask_method) == "learned":
        raise ValueError(
            f"fish-fl prune trains weights; mask-method={config.mask_method} freezes them"
        )
    schedule = CubicSchedule(
        initial=initial, final=final, begin=begin, num_prunings=prunings, every=every
    )
    steps = schedule.end + every if steps is None else steps
    if steps <= schedule.end:
        raise ValueError(
            f"--steps {steps} ends before the schedule's last pruning step {schedule.end}"
        )
    # One client holds every training example outside the calibration sample.
    config = config.replace(num_clients=1, clients_per_round=0)
    device = resolve_device(config.device)
    data = load_task_data(config)
    model = build_base_model(config).to(device)
    calibration = data.calibration_loader() if data.partitions.calibration.size else None
    mask = build_mask(model, config.mask_spec(), calibration)
    if not prunable:
        # The residual stages of a ResNet built here; a Hugging Face model's
        # encoder blocks, for an image task as for a text task.
        image_stages = is_vision(config) and is_vision_model(config.model)
        prunable = DEFAULT_PRUNABLE_VISION if image_stages else DEFAULT_PRUNABLE
    names = prunable_parameters(model, prunable, head_patterns=config.head_patterns)
    pruner = MagnitudePruner(model, schedule, names, scope=scope)  # type: ignore[arg-type]
    sparse = SparseParameters(model, mask)
    optimizer = make_optimizer(sparse, config.optimizer_config())
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        stats = train_with_pruning(
            sparse,
            optimizer,
            data.client_loader(0, seed=config.seed),
            pruner,
            steps=steps,
            device=device,
            grad_clip=config.grad_clip,
            amp=config.amp,
        )
    metrics = evaluate_model(model, data.eval_loader(), data.metric_task, device)
    if save is not None:
        from fish_fl.fileio import save_safetensors_atomic

        save.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors_atomic(
            {n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()}, save
        )
    return {
        "steps": stats.steps,
        "train_loss": stats.mean_loss,
        "trained": mask.k,
        "trained_unpruned": pruner.restrict(mask).k,
        "sparsity": pruner.sparsity(),
        "sparsity_by_parameter": pruner.sparsity_by_parameter(),
        "metric": data.primary,
        "metrics": metrics,
        **({"saved": str(save)} if save is not None else {}),
    }


def prune_command(
    preset: PresetArgument = "sst2-minilm",
    set_: SetOption = None,
    final: Annotated[
        float, typer.Option("--final", help="Final sparsity s_f of the pruned weights, in [0, 1).")
    ] = 0.5,
    initial: Annotated[
        float, typer.Option("--initial", help="Sparsity s_i at the first pruning step.")
    ] = 0.0,
    begin: Annotated[int, typer.Option("--begin", help="First pruning step t0 (0-based).")] = 0,
    prunings: Annotated[
        int, typer.Option("--prunings", help="Pruning steps n after t0 (the last at t0 + n dt).")
    ] = 10,
    every: Annotated[int, typer.Option("--every", help="Training steps dt between prunings.")] = 20,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps", help="Training steps (default: the last pruning step plus --every)."
        ),
    ] = None,
    scope: Annotated[
        str,
        typer.Option(
            "--scope", help="layer: each weight to the target; global: one ranking of all."
        ),
    ] = "layer",
    prunable: Annotated[
        list[str] | None,
        typer.Option(
            "--prunable",
            help="Name pattern of the pruned weights (repeatable; default: the encoder "
            "blocks, or a ResNet's stages).",
        ),
    ] = None,
    save: Annotated[
        Path | None,
        typer.Option("--save", help="Write the pruned model's state dict to this .safetensors."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Fine-tune a preset's model on one machine, pruning by magnitude on the cubic schedule."""
    if scope not in ("layer", "global"):
        raise ValueError(f"--scope must be layer or global, got {scope!r}")
    if save is not None and save.suffix != ".safetensors":
        raise ValueError(f"--save must name a .safetensors file, got {str(save)!r}")
    config = load_preset(preset, set_)
    report = prune_and_evaluate(
        config,
        initial=initial,
        final=final,
        begin=begin,
        prunings=prunings,
        every=every,
        steps=steps,
        scope=scope,
        prunable=tuple(prunable or ()),
        save=save,
    )
    if as_json:
        typer.echo(json.dumps(report, sort_keys=True))
        return
    metrics = report["metrics"]
    typer.echo(
        f"{report['steps']} steps, train loss {report['train_loss']:.4f}; "
        f"{len(report['sparsity_by_parameter'])} weights pruned to sparsity "
        f"{report['sparsity']:.4f}"
    )
    typer.echo(
        f"trained entries: {report['trained']:,} ({report['trained_unpruned']:,} not pruned)"
    )
    typer.echo(
        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + f" (primary: {report['metric']})"
    )
    if "saved" in report:
        typer.echo(f"pruned model: {report['saved']}")
