"""The Flower ServerApp: builds the model, data and strategy from the run config.

``app`` is what ``flwr run .`` starts (it reads ``context.run_config``);
:func:`make_server_app` gives a ServerApp bound to a :class:`RunConfig`, for
``fish-fl run`` and tests.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fish_fl.checkpoint import save_sparse_delta
from fish_fl.config import RunConfig
from fish_fl.models import resolve_device
from fish_fl.runlog import RunRecorder
from fish_fl.supermask import SupermaskModel, evaluate_supermask
from fish_fl.task import build_base_model, build_task_model, evaluate_model, load_task_data

from .fish_strategy import FishMaskStrategy
from .state import CHECKPOINT
from .supermask_strategy import SupermaskStrategy

__all__ = ["app", "default_run_dir", "make_server_app", "run_server", "strategy_class"]

logger = logging.getLogger(__name__)


def strategy_class(config: RunConfig) -> type[FishMaskStrategy]:
    """The strategy of a run: supermask training or sparse training under a mask."""
    return SupermaskStrategy if config.mask_method == "supermask" else FishMaskStrategy


def default_run_dir(config: RunConfig, name: str = "") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    label = name or f"{config.task}-{config.mask_method}-{config.density:g}"
    return Path(config.out_dir) / f"{label}-{stamp}"


def run_server(
    grid: Grid, config: RunConfig, run_dir: Path, *, resume: bool = False
) -> dict[str, Any]:
    """Run every round and write the run folder; returns the summary.

    With ``resume``, continue the run in ``run_dir`` after the last round its
    checkpoint holds (see :mod:`strategies.state`).
    """
    t0 = time.monotonic()
    checkpoint = run_dir / CHECKPOINT
    if resume and not checkpoint.is_file():
        raise ValueError(f"cannot resume {run_dir}: it holds no {CHECKPOINT}")
    device = resolve_device(config.device)
    data = load_task_data(config)
    model = build_task_model(config).to(device)
    recorder = RunRecorder(run_dir, config, resume=resume)
    eval_loader = data.eval_loader()

    def evaluate(m: Any) -> dict[str, float]:
        return evaluate_model(m, eval_loader, data.metric_task, device)

    strategy = strategy_class(config)(
        config,
        model,
        calibration=data.calibration_loader if config.mask_source == "server" else None,
        evaluate_fn=evaluate,
        primary_metric=data.primary,
        recorder=recorder,
        checkpoint=checkpoint,
    )
    if resume:
        done = strategy.resume(checkpoint)
        t0 -= strategy.elapsed_at_resume
        if strategy.stopped_by_budget:
            raise ValueError(f"cannot resume {run_dir}: it stopped at its communication budget")
        if done >= config.rounds:
            raise ValueError(
                f"cannot resume {run_dir}: all {config.rounds} rounds are done "
                "(raise rounds to extend it)"
            )
        plan = strategy.plan
        recorder.restore(done, plan.union if plan else None, strategy.mask_version)
    strategy.start(grid)
    # The trained model as a sparse delta from the base every node started from.
    trained: Any = model
    extra: dict[str, Any] = {}
    if isinstance(model, SupermaskModel):
        extra["supermask"] = _supermask_report(model, eval_loader, data.metric_task, device, config)
        (run_dir / "supermask.json").write_text(json.dumps(extra["supermask"], indent=2) + "\n")
        # The deployable model: the most likely binary mask laid over the weights.
        trained = model.materialize(model.masks("threshold"))
    base = build_base_model(config)
    info = save_sparse_delta(
        trained.cpu(),
        base,
        run_dir / "delta.safetensors",
        base_name=config.model,
        metadata={"run-config": config.to_json()},
    )
    summary = recorder.finish(
        {
            "model_numel": strategy.total,
            "full_model_bytes": strategy.ledger.full_model_bytes,
            "mask_method": config.mask_method,
            "density": config.density,
            "k": strategy.plan.union.k if strategy.plan is not None else 0,
            "wall_time": round(time.monotonic() - t0, 1),
            "stopped_by_budget": strategy.stopped_by_budget,
            "delta": {
                "changed": info.changed,
                "file_bytes": info.file_bytes,
                "full_bytes": info.full_bytes,
            },
            "partitions": data.partitions.summary(data.train_labels),
            **extra,
        }
    )
    try:
        from fish_fl.plots import plot_accuracy_vs_communication

        plot_accuracy_vs_communication([run_dir], run_dir / "accuracy_vs_communication.png")
    except Exception as e:  # a plot is a nicety; never lose a finished run over it
        logger.warning("could not draw the plot: %s", e)
    return summary


def _supermask_report(
    model: SupermaskModel, loader: Any, task: str, device: Any, config: RunConfig
) -> dict[str, Any]:
    """Final scores with the expected, most likely and sampled masks; sparsity per weight."""
    report = evaluate_supermask(
        model,
        loader,
        task,
        device=device,
        samples=config.supermask_eval_samples,
        generator=torch.Generator().manual_seed(config.seed + 1),
    )
    return {
        "metric": report.metric,
        **report.summary(),
        "expected_metrics": report.expected,
        "threshold_metrics": report.threshold,
        "sampled_metrics": report.sampled,
        "layers": [dataclasses.asdict(layer) for layer in report.layers],
    }


def make_server_app(
    config: RunConfig | None = None, run_dir: Path | None = None, *, resume: bool = False
) -> ServerApp:
    """A ServerApp bound to ``config`` (else read from Flower's run_config)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = config if config is not None else RunConfig.from_mapping(dict(context.run_config))
        run_server(grid, cfg, run_dir or default_run_dir(cfg), resume=resume)

    return server


app = make_server_app()
