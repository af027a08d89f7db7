"""``fish-fl distance A B``: how far fine-tuning moved each weight matrix.

Per weight matrix, the L1 distance and the angular distance between two
checkpoints, as Table 2 and Figure 2 of "How fine can fine-tuning be?
Learning efficient language models" (Radiya-Dixit and Wang, AISTATS 2020,
arXiv 2004.14129); see :mod:`fish_fl.distance`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fish_fl.distance import ParameterDistance

__all__ = ["distance_command", "format_distances"]


def format_distances(distances: Sequence[ParameterDistance]) -> str:
    """A column-aligned table: name, block, type, entries, L1, L1 per entry, angular."""
    header = ["tensor", "block", "type", "entries", "L1", "L1/entry", "angular"]
    rows = [
        [
            d.name,
            "-" if d.layer is None else str(d.layer),
            d.kind,
            f"{d.numel:,}",
            f"{d.l1:.6g}",
            f"{d.l1_per_entry:.4g}",
            f"{d.angular:.4g}",
        ]
        for d in distances
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {3, 4, 5, 6}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def distance_command(
    a: Annotated[
        Path,
        typer.Argument(
            help="First checkpoint (the base): a save_pretrained folder, a .safetensors or "
            ".bin state dict, or a fish-fl sparse delta.",
            show_default=False,
        ),
    ],
    b: Annotated[
        Path,
        typer.Argument(
            help="Second checkpoint (the fine-tuned model), same kinds.", show_default=False
        ),
    ],
    plot: Annotated[
        Path | None,
        typer.Option("--plot", "-p", help="Write a heat map (block x matrix type) to this image."),
    ] = None,
    metric: Annotated[
        str, typer.Option("--metric", "-m", help="Heat-map metric: angular, l1_per_entry or l1.")
    ] = "angular",
    all_tensors: Annotated[
        bool,
        typer.Option("--all", help="Also compare biases and LayerNorm weights, not only matrices."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines, not a table.")] = False,
) -> None:
    """L1 and angular distance per weight matrix between checkpoints A and B."""
    from fish_fl.distance import (
        METRICS,
        load_state_dict,
        parameter_distances,
        plot_distance_heatmap,
    )

    if metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    distances = parameter_distances(
        load_state_dict(a), load_state_dict(b), matrices_only=not all_tensors
    )
    if as_json:
        for d in distances:
            typer.echo(
                json.dumps(
                    {
                        "name": d.name,
                        "layer": d.layer,
                        "type": d.kind,
                        "numel": d.numel,
                        "l1": d.l1,
                        "l1_per_entry": d.l1_per_entry,
                        "angular": d.angular,
                    }
                )
            )
    else:
        typer.echo(format_distances(distances))
    if plot is not None:
        typer.echo(f"heat map: {plot_distance_heatmap(distances, plot, metric)}")
