"""The Flower ServerApp: builds the model, data and strategy from the run config.

``app`` is what ``flwr run .`` starts (it reads ``context.run_config`` and runs
the same pre-flight checks as ``fish-fl run`` first); :func:`make_server_app`
gives a ServerApp bound to a :class:`RunConfig`, for ``fish-fl run`` and tests.

A new run that fails before its first checkpoint (round 1) removes its run
folder again, whatever the error, so a failed start leaves nothing behind; a
later failure keeps the rounds written and says why in ``failure.json``.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fish_fl.checkpoint import save_sparse_delta
from fish_fl.config import RunConfig
from fish_fl.fileio import write_json_atomic
from fish_fl.memory import limit_heap_growth
from fish_fl.models import resolve_device
from fish_fl.runlog import RunRecorder
from fish_fl.task import build_task_model, evaluate_model, load_task_data

from .abort import AbortableGrid, AbortSignal
from .fish_strategy import FishMaskStrategy, RunFailed
from .progress import RoundProgress
from .state import CHECKPOINT

__all__ = ["FAILURE", "app", "default_run_dir", "make_server_app", "run_server"]

logger = logging.getLogger(__name__)

#: Written into the run folder when a run stops on an error it can name.
FAILURE = "failure.json"


def default_run_dir(config: RunConfig, name: str = "") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    label = name or f"{config.task}-{config.mask_method}-{config.density:g}"
    return Path(config.out_dir) / f"{label}-{stamp}"


def run_server(
    grid: Grid, config: RunConfig, run_dir: Path, *, resume: bool = False
) -> dict[str, Any]:
    """Run every round and write the run folder; returns the summary.

    With ``resume``, continue the run in ``run_dir`` after the last round its
    checkpoint holds (see :mod:`strategies.state`). A new run that fails
    before its first checkpoint removes what it wrote (the folder itself too,
    unless it was there, empty, before).
    """
    existed = run_dir.is_dir()
    fresh = not resume and not (existed and any(run_dir.iterdir()))
    try:
        return _run_server(grid, config, run_dir, resume=resume)
    except BaseException:
        if fresh and run_dir.is_dir() and not (run_dir / CHECKPOINT).is_file():
            logger.info("removing %s: the run failed before its first round", run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
            if existed:
                run_dir.mkdir(parents=True, exist_ok=True)
        raise


def _run_server(grid: Grid, config: RunConfig, run_dir: Path, *, resume: bool) -> dict[str, Any]:
    t0 = time.monotonic()
    checkpoint = run_dir / CHECKPOINT
    if resume and not checkpoint.is_file():
        raise ValueError(f"cannot resume {run_dir}: it holds no {CHECKPOINT}")
    limit_heap_growth()
    device = resolve_device(config.device)
    data = load_task_data(config)
    model = build_task_model(config).to(device)
    recorder = RunRecorder(run_dir, config, resume=resume)
    report = data.partitions.report(data.train_labels, label_names=data.labels.names)
    recorder.record_data(report, data.labels)
    eval_loader = data.eval_loader()

    def evaluate(m: Any) -> dict[str, float]:
        return evaluate_model(m, eval_loader, data.metric_task, device)

    validate = None
    if config.validation_examples:
        val_loader = data.validation_loader()

        def validate(m: Any) -> dict[str, float]:
            return evaluate_model(m, val_loader, data.metric_task, device)

    strategy = FishMaskStrategy(
        config,
        model,
        calibration=data.calibration_loader if config.mask_source == "server" else None,
        evaluate_fn=evaluate,
        primary_metric=data.primary,
        validate_fn=validate,
        recorder=recorder,
        checkpoint=checkpoint,
        partition_max=max((len(c) for c in data.partitions.clients), default=0) or None,
    )
    if resume:
        done = strategy.resume(checkpoint)
        t0 -= strategy.elapsed_at_resume
        if strategy.stopped_by_budget:
            raise ValueError(
                f"cannot resume {run_dir}: it stopped at its communication or privacy budget"
            )
        if done >= config.rounds:
            raise ValueError(
                f"cannot resume {run_dir}: all {config.rounds} rounds are done "
                "(raise rounds to extend it)"
            )
        plan = strategy.plan
        recorder.restore(done, plan.union if plan else None, strategy.mask_version)
    try:
        strategy.start(grid)
    except RunFailed as e:
        recorder.close()
        # Keep the rounds already written; say why the run stopped, for the caller.
        write_json_atomic(run_dir / FAILURE, {"reason": str(e)}, indent=None)
        logger.error("run failed: %s", e)
        raise
    # The trained model as a sparse delta from the base every node started from.
    trained, extra = strategy.method.finish(model, (eval_loader, data.metric_task, device), run_dir)
    base = strategy.method.export_base()
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
            "labels": data.labels.as_dict(),
            **extra,
        }
    )
    try:
        from fish_fl.plots import plot_accuracy_vs_communication

        plot_accuracy_vs_communication([run_dir], run_dir / "accuracy_vs_communication.png")
    except Exception as e:  # a plot is a nicety; never lose a finished run over it
        logger.warning("could not draw the plot: %s", e)
    return summary


def make_server_app(
    config: RunConfig | None = None,
    run_dir: Path | None = None,
    *,
    resume: bool = False,
    abort: AbortSignal | None = None,
) -> ServerApp:
    """A ServerApp bound to ``config`` (else read from Flower's run_config).

    A config read from the run_config goes through pre-flight first (a bound
    one was checked by its caller). With ``abort``, the ServerApp stops with
    :class:`RunFailed` as soon as the signal is set (see :mod:`strategies.abort`).
    """
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        shown = config.progress if config is not None else True
        if abort is not None or shown:
            progress = RoundProgress(sys.stdout) if shown else None
            grid = AbortableGrid(grid, abort or AbortSignal(), progress=progress)
        try:
            if abort is not None:
                abort.server_started()
            if config is None:
                from fish_fl.preflight import preflight

                cfg = RunConfig.from_mapping(dict(context.run_config))
                preflight(cfg, simulation=False)
            else:
                cfg = config
            run_server(grid, cfg, run_dir or default_run_dir(cfg), resume=resume)
        finally:
            if abort is not None:
                abort.server_finished()

    return server


app = make_server_app()
