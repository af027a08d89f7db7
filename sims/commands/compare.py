"""``fish-fl compare``: one table row per run, to compare methods and densities.

Besides the task metric, the table reports the communication of each run and
its reduction against dense federated averaging, the quantity behind the
FISH Mask paper's communication claims (Sung, Nair and Raffel, NeurIPS 2021,
arXiv 2111.09839, Section 5.3), per sampled client and round and only
within a task. The dense reference is a compared run of the same task whose
mask method is ``dense`` when there is one (measured bytes), otherwise the
analytic cost of dense FedAvg: per round, every sampled client downloads and
uploads the full float32 model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from fish_fl.plots import RunRecord, load_run

__all__ = ["COLUMNS", "Comparison", "compare_command", "compare_runs", "format_table"]

COLUMNS = (
    "run",
    "method",
    "density",
    "rounds",
    "metric",
    "final",
    "best",
    "MB up",
    "MB down",
    "FME",
    "vs dense",
)
_NUMERIC = {"density", "rounds", "final", "best", "MB up", "MB down", "FME", "vs dense"}
_MB = 1e6


@dataclass(frozen=True)
class Comparison:
    """The compared runs as formatted cells, and how the dense reference was obtained.

    Attributes
    ----------
    rows
        One dict per run, keyed by :data:`COLUMNS`, values already formatted.
    reductions
        The "vs dense" ratio of each run (``None`` when it cannot be computed).
    reference
        One sentence saying what the ratio is measured against.
    """

    rows: list[dict[str, str]]
    reductions: list[float | None]
    reference: str


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _megabytes(nbytes: int) -> str:
    mb = nbytes / _MB
    return f"{mb:.2f}" if mb >= 1 else f"{mb:.3g}"


def _density(record: RunRecord) -> str:
    from fish_fl.methods import trains

    kind = trains(record.method)
    if kind == "all":
        return "100%"
    if kind == "learned":
        return "(mask)"  # trains scores over frozen weights, not a share of them
    if kind == "tensors":
        # Whole tensors: the share trained is what the run's summary counted.
        k = (record.summary or {}).get("k")
        numel = (record.summary or {}).get("model_numel")
        if isinstance(k, int) and isinstance(numel, int) and numel > 0:
            return f"{100 * k / numel:.3g}%"
        return "n/a"
    if record.density is None:
        return "n/a"
    return f"{100 * record.density:.3g}%"


def _client_round_bytes(record: RunRecord) -> float | None:
    """Mean bytes (up + down) per sampled client and training round."""
    mean, sampled = record.mean_round_bytes(), record.sampled_clients
    if mean is None or not sampled:
        return None
    return mean / sampled


def _analytic_dense_client_round_bytes(record: RunRecord) -> float | None:
    """Dense FedAvg per client and round: the full float32 model down and up."""
    full = record.full_model_bytes
    return None if full is None else 2.0 * full


def _task_of(record: RunRecord) -> str:
    """What a run trains on: its task, and for a user's own data the data it names."""
    config = record.config
    task = str(config.get("task") or "?")
    data = config.get("train-file") or config.get("hub-dataset") or ""
    return f"{task} ({data})" if data else task


def compare_runs(records: Sequence[RunRecord]) -> Comparison:
    """Tabulate runs: metric, traffic and reduction of traffic against dense training.

    The reduction is measured per sampled client and training round, so runs
    with different client counts compare fairly: ``dense bytes per client-round
    / this run's bytes per client-round`` (up + down, mean over the rounds run).
    The dense reference of a run is the first compared run with mask method
    ``dense`` *on the same task* that has run a round; a task without one is
    compared with the analytic cost of dense FedAvg, the full float32 model
    down and up per client-round. The reference sentence names each.
    """
    references: dict[str, RunRecord] = {}
    for r in records:
        if r.method == "dense" and _client_round_bytes(r) is not None:
            references.setdefault(_task_of(r), r)
    tasks = list(dict.fromkeys(_task_of(r) for r in records))
    said = []
    for task in tasks:
        ref = references.get(task)
        said.append(
            f"{task}: the dense run {ref.name!r}"
            if ref is not None
            else f"{task}: analytic dense FedAvg (the full float32 model down and up)"
        )
    reference = (
        "vs dense: dense bytes per client and round over this run's (up + down), within a task; "
        + "; ".join(said)
    )
    rows, reductions = [], []
    for record in records:
        mine = _client_round_bytes(record)
        ref = references.get(_task_of(record))
        base = (
            _client_round_bytes(ref)
            if ref is not None
            else _analytic_dense_client_round_bytes(record)
        )
        reduction = base / mine if base is not None and mine else None
        reductions.append(reduction)
        rows.append(
            {
                "run": record.name,
                "method": record.method,
                "density": _density(record),
                "rounds": str(record.rounds_run),
                "metric": record.metric_name(),
                "final": _fmt(record.final(), ".4f"),
                "best": _fmt(record.best(), ".4f"),
                "MB up": _megabytes(record.total_bytes("up")),
                "MB down": _megabytes(record.total_bytes("down")),
                "FME": _fmt(record.cum_fme, ".4g"),
                "vs dense": _fmt(reduction, ".1f", "x"),
            }
        )
    return Comparison(rows=rows, reductions=reductions, reference=reference)


def format_table(comparison: Comparison, *, markdown: bool = False) -> str:
    """The comparison as a column-aligned text table, or a Markdown table."""
    cells = [list(COLUMNS)] + [[row[c] for c in COLUMNS] for row in comparison.rows]
    if markdown:
        cells = [[c.replace("|", "\\|") for c in line] for line in cells]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]

    def cell(text: str, i: int) -> str:
        return text.rjust(widths[i]) if COLUMNS[i] in _NUMERIC else text.ljust(widths[i])

    if markdown:
        rule = [
            "-" * (widths[i] - 1) + ":" if c in _NUMERIC else "-" * widths[i]
            for i, c in enumerate(COLUMNS)
        ]
        lines = [cells[0], rule, *cells[1:]]
        body = ["| " + " | ".join(cell(t, i) for i, t in enumerate(line)) + " |" for line in lines]
        return "\n".join([*body, "", comparison.reference])
    text = ["  ".join(cell(t, i) for i, t in enumerate(line)).rstrip() for line in cells]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*text, "", comparison.reference])


def compare_command(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders (each with config.json and metrics.jsonl).", show_default=False
        ),
    ],
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print a Markdown table instead of plain text.")
    ] = False,
) -> None:
    """Compare runs: final and best metric, traffic, and reduction against dense FedAvg.

    RUN_DIRS are run folders, each with config.json and metrics.jsonl.
    """
    try:
        records = [load_run(d) for d in run_dirs]
    except (ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    if not records:
        typer.echo("error: no run folders given", err=True)
        raise typer.Exit(1)
    typer.echo(format_table(compare_runs(records), markdown=markdown))
