"""``fish-fl plot``: accuracy against communication for one or more runs.

The figure follows Figure 3 of the FISH Mask paper (Sung, Nair and Raffel,
NeurIPS 2021, arXiv 2111.09839); see :mod:`fish_fl.plots`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fish_fl.plots import X_AXES, plot_accuracy_vs_communication

__all__ = ["DEFAULT_PLOT_NAME", "plot_command"]

DEFAULT_PLOT_NAME = "accuracy_vs_communication.png"


def plot_command(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders (each with config.json and metrics.jsonl).", show_default=False
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help=f"Image to write. Default: {DEFAULT_PLOT_NAME} inside the run folder for one "
            "run, in the current folder for several.",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            "-m",
            help="Evaluation metric to plot (e.g. f1, accuracy). Default: each run's primary metric.",
            show_default=False,
        ),
    ] = None,
    x: Annotated[
        str,
        typer.Option("--x", help=f"X-axis: {', '.join(X_AXES)}."),
    ] = "cum_fme",
) -> None:
    """Plot the task metric against cumulative communication (full-model equivalents).

    RUN_DIRS are run folders, each with config.json and metrics.jsonl.
    """
    if out is None:
        out = run_dirs[0] / DEFAULT_PLOT_NAME if len(run_dirs) == 1 else Path(DEFAULT_PLOT_NAME)
    try:
        path = plot_accuracy_vs_communication(run_dirs, out, x=x, metric=metric)
    except (ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(str(path))
