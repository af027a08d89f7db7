"""Reading run folders and plotting accuracy against communication.

The plot follows Figure 3 of the FISH Mask paper (Sung, Nair and Raffel,
NeurIPS 2021, arXiv 2111.09839): the task metric of the global model against
the cumulative communication of the federation, in *full-model equivalents*
(bytes up plus down divided by the bytes of the dense float32 model), on a
logarithmic axis, one line per run.

A run folder holds ``config.json`` (the resolved :class:`~fish_fl.config.RunConfig`
as flat kebab-case keys), ``metrics.jsonl`` (one JSON object per round, round 0
being the evaluation before training) and, once the run has finished,
``summary.json``. Matplotlib is imported inside :func:`plot_accuracy_vs_communication`
only, with the Agg canvas and without ``pyplot``, so reading runs needs no
plotting stack and plotting never touches a global backend.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .fileio import save_figure_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "X_AXES",
    "accuracy_vs_communication_figure",
    "RunFolderError",
    "RunRecord",
    "load_run",
    "plot_accuracy_vs_communication",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"

# Row key -> (axis label, logarithmic axis, what the title says it is plotted against).
X_AXES: dict[str, tuple[str, bool, str]] = {
    "cum_fme": (
        "cumulative communication, up + down (full-model equivalents)",
        True,
        "communication",
    ),
    "cum_paper_fme": (
        "cumulative communication, paper accounting: values + indices (full-model equivalents)",
        True,
        "communication (values + indices)",
    ),
    "round": ("round", False, "round"),
    "wall_time": ("wall time (s)", False, "wall time"),
}


class RunFolderError(ValueError):
    """A folder is not a readable run folder."""


@dataclass
class RunRecord:
    """One run as read from its folder.

    Attributes
    ----------
    name
        The run's name (its folder name).
    config
        The resolved run configuration, flat kebab-case keys.
    rows
        The per-round records of ``metrics.jsonl``, in file order.
    summary
        ``summary.json``, or ``None`` for a run that did not finish.
    """

    name: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any] | None = field(default=None, repr=False)

    # -- what was run ----------------------------------------------------------
    @property
    def method(self) -> str:
        """The mask method (``fish``, ``random``, ``dense``, ...)."""
        value = self.config.get("mask-method") or (self.summary or {}).get("mask_method")
        return str(value) if value else "?"

    @property
    def density(self) -> float | None:
        value = self.config.get("density", (self.summary or {}).get("density"))
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def sampled_clients(self) -> int | None:
        """Clients sampled per round (``clients-per-round``, 0 meaning all)."""
        per_round = self.config.get("clients-per-round") or self.config.get("num-clients")
        return int(per_round) if isinstance(per_round, int) and per_round > 0 else None

    @property
    def label(self) -> str:
        """Legend label: run name, method and density."""
        from .methods import trains

        # Only a mask that keeps a share of the entries follows the density key.
        if trains(self.method) != "share" or self.density is None:
            return f"{self.name} ({self.method})"
        return f"{self.name} ({self.method}, {_percent(self.density)})"

    # -- what happened -----------------------------------------------------------
    @property
    def rounds_run(self) -> int:
        """Training rounds completed (round 0, the initial evaluation, not counted)."""
        return max((int(r.get("round", 0)) for r in self.rows), default=0)

    def evaluated(self, metric: str | None = None) -> list[tuple[dict[str, Any], float]]:
        """``(row, value)`` for every row that has a value of ``metric``.

        ``metric=None`` means the run's primary metric (the row's ``score``);
        any other name is looked up in the row's ``eval`` dict.
        """
        out = []
        for row in self.rows:
            value = _metric_value(row, metric)
            if value is not None:
                out.append((row, value))
        return out

    def metric_name(self, metric: str | None = None) -> str:
        """The name of ``metric``, or of the primary metric when ``None``."""
        if metric is not None:
            return metric
        names = [r["metric"] for r in self.rows if isinstance(r.get("metric"), str)]
        return names[-1] if names else "score"

    def final(self, metric: str | None = None) -> float | None:
        """The metric of the last evaluated round."""
        values = self.evaluated(metric)
        return values[-1][1] if values else None

    def best(self, metric: str | None = None) -> float | None:
        """The highest value of the metric over the trained rounds (round 0 is the untrained model)."""
        values = [v for row, v in self.evaluated(metric) if row.get("round", 0) > 0]
        return max(values) if values else None

    def total_bytes(self, direction: str) -> int:
        """Cumulative bytes ``"up"`` or ``"down"`` at the last recorded round."""
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        for row in reversed(self.rows):
            value = row.get(f"cum_bytes_{direction}")
            if isinstance(value, (int, float)):
                return int(value)
        return sum(int(r.get(f"bytes_{direction}") or 0) for r in self.rows)

    @property
    def cum_fme(self) -> float | None:
        """Cumulative full-model equivalents (up + down) at the last recorded round."""
        for row in reversed(self.rows):
            value = row.get("cum_fme")
            if isinstance(value, (int, float)):
                return float(value)
        return None

    @property
    def full_model_bytes(self) -> int | None:
        """Bytes of the dense float32 model.

        From ``summary.json`` (``full_model_bytes`` or ``4 x model_numel``);
        for an unfinished run, from the last row's cumulative bytes divided by
        its cumulative full-model equivalents.
        """
        summary = self.summary or {}
        if isinstance(summary.get("full_model_bytes"), int) and summary["full_model_bytes"] > 0:
            return int(summary["full_model_bytes"])
        if isinstance(summary.get("model_numel"), int) and summary["model_numel"] > 0:
            return 4 * int(summary["model_numel"])
        for row in reversed(self.rows):
            fme, up, down = row.get("cum_fme"), row.get("cum_bytes_up"), row.get("cum_bytes_down")
            if (
                isinstance(fme, (int, float))
                and fme > 0
                and isinstance(up, (int, float))
                and isinstance(down, (int, float))
            ):
                return round((up + down) / fme)
        return None

    def mean_round_bytes(self) -> float | None:
        """Mean bytes (up + down) per training round, or ``None`` before any round."""
        if self.rounds_run <= 0:
            return None
        return (self.total_bytes("up") + self.total_bytes("down")) / self.rounds_run


def _percent(density: float) -> str:
    return f"{100 * density:.3g}%"


def _metric_value(row: dict[str, Any], metric: str | None) -> float | None:
    if metric is None:
        value = row.get("score")
    else:
        ev = row.get("eval")
        value = ev.get(metric) if isinstance(ev, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_run(run_dir: str | Path) -> RunRecord:
    """Read one run folder.

    Parameters
    ----------
    run_dir
        A folder with ``config.json`` and ``metrics.jsonl`` (``summary.json``
        optional: absent for a run that crashed or is still running).

    Raises
    ------
    RunFolderError
        When the folder or one of its two required files is missing, or a file
        is not valid JSON (naming the file, and for ``metrics.jsonl`` the line).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"not a run folder: {run_dir} does not exist or is not a folder")
    for required in (CONFIG_FILE, METRICS_FILE):
        if not (run_dir / required).is_file():
            raise RunFolderError(f"not a run folder: {run_dir} has no {required}")
    config = _read_json(run_dir / CONFIG_FILE)
    rows: list[dict[str, Any]] = []
    metrics_path = run_dir / METRICS_FILE
    with metrics_path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RunFolderError(
                    f"{metrics_path}, line {lineno}: not valid JSON ({e.msg})"
                ) from None
            if not isinstance(row, dict):
                raise RunFolderError(
                    f"{metrics_path}, line {lineno}: expected a JSON object, got {type(row).__name__}"
                )
            rows.append(row)
    summary_path = run_dir / SUMMARY_FILE
    summary = _read_json(summary_path) if summary_path.is_file() else None
    resolved = run_dir.resolve()
    name = resolved.name
    if re.fullmatch(r"seed-\d+", name):  # a sweep's LABEL/seed-S folder: name it by both
        name = f"{resolved.parent.name}/{name}"
    logger.debug("read run %s: %d rows, summary=%s", name, len(rows), summary is not None)
    return RunRecord(name=name, config=config, rows=rows, summary=summary)


def accuracy_vs_communication_figure(
    runs: Sequence[RunRecord | str | Path],
    *,
    x: str = "cum_fme",
    metric: str | None = None,
) -> Figure:
    """The figure of :func:`plot_accuracy_vs_communication`, not yet saved.

    A ``matplotlib.figure.Figure`` on an Agg canvas, one line per run with a
    legend label from :attr:`RunRecord.label`. Parameters and errors as for
    :func:`plot_accuracy_vs_communication`.
    """
    if x not in X_AXES:
        raise ValueError(f"x={x!r} is not a plottable axis; choose one of {', '.join(X_AXES)}")
    if not runs:
        raise ValueError("no runs to plot")
    records = [r if isinstance(r, RunRecord) else load_run(r) for r in runs]
    x_label, log_x, against = X_AXES[x]

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    many = len(records) > 8
    fig = Figure(figsize=(9.0, 5.5) if many else (7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = 0
    smallest = math.inf  # the smallest positive x: where the log axis begins
    # Ten colours, then the same colours dashed, dash-dotted, dotted: every line its own style.
    styles = ("-", "--", "-.", ":")
    for index, record in enumerate(records):
        values = record.evaluated(metric)
        if metric is not None and not values:
            raise ValueError(
                f"run {record.name!r} has no values of metric {metric!r}; "
                f"it has: {', '.join(_eval_names(record)) or 'none'}"
            )
        points = [
            (float(row[x]), value)
            for row, value in values
            if isinstance(row.get(x), (int, float)) and row[x] >= 0
        ]
        if not points:
            logger.warning("run %s has no evaluated round to plot against %s", record.name, x)
            continue
        xs, ys = zip(*points, strict=True)
        smallest = min([smallest, *(v for v in xs if v > 0)])
        ax.plot(
            xs,
            ys,
            marker="o",
            markersize=3,
            linewidth=1.5,
            color=f"C{index % 10}",
            linestyle=styles[(index // 10) % len(styles)],
            label=record.label,
        )
        drawn += 1
    if not drawn or (log_x and smallest == math.inf):
        raise ValueError(
            f"nothing to plot: no evaluated round with a positive {x} in runs "
            f"{', '.join(r.name for r in records)}"
        )
    if log_x:
        # Logarithmic from the smallest positive value, linear below it: round 0
        # (no traffic yet, x = 0) stays on the figure at the left edge.
        ax.set_xscale("symlog", linthresh=smallest, linscale=0.5)
    metric_names = sorted({r.metric_name(metric) for r in records})
    ax.set_xlabel(x_label)
    ax.set_ylabel(" / ".join(metric_names))
    tasks = sorted({str(r.config["task"]) for r in records if r.config.get("task")})
    title = f"{metric_names[0] if len(metric_names) == 1 else 'metric'} vs {against}"
    ax.set_title(f"{', '.join(tasks)}: {title}" if tasks else title)
    ax.grid(True, which="both", alpha=0.3)
    if many:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize="small")
    return fig


def plot_accuracy_vs_communication(
    runs: Sequence[RunRecord | str | Path],
    out: str | Path,
    *,
    x: str = "cum_fme",
    metric: str | None = None,
) -> Path:
    """Plot the task metric against cumulative communication, one line per run.

    Parameters
    ----------
    runs
        Run records, or run folders to read with :func:`load_run`.
    out
        Image file to write (the format follows the suffix; PNG when in
        doubt). Parent folders are created.
    x
        The row key on the x-axis: ``cum_fme`` (measured bytes, default),
        ``cum_paper_fme`` (the paper's values + indices accounting),
        ``round`` or ``wall_time``. The communication axes are logarithmic,
        so points at zero traffic (round 0) are left out of them.
    metric
        Metric of the ``eval`` dict to plot; ``None`` plots each round's
        primary ``score``. Rounds without a value are skipped.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ValueError
        For no runs, an unknown ``x``, a run without any value of ``metric``,
        or nothing left to plot.
    RunFolderError
        For a path in ``runs`` that is not a readable run folder.
    """
    fig = accuracy_vs_communication_figure(runs, x=x, metric=metric)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure_atomic(fig, out, dpi=150)
    logger.info("wrote %s (%d runs)", out, len(runs))
    return out


def _eval_names(record: RunRecord) -> list[str]:
    names: set[str] = set()
    for row in record.rows:
        if isinstance(row.get("eval"), dict):
            names.update(row["eval"])
    return sorted(names)
