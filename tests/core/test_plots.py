"""Reading run folders and the accuracy-versus-communication plot."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fish_fl.plots import (
    RunFolderError,
    RunRecord,
    accuracy_vs_communication_figure,
    load_run,
    plot_accuracy_vs_communication,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(
    root: Path,
    name: str,
    *,
    method: str = "fish",
    density: float = 0.01,
    numel: int = 10_000,
    clients: int = 2,
    clients_per_round: int = 0,
    scores: Sequence[float | None] = (0.5, 0.6, None, 0.8),
    up: int | None = None,
    down: int | None = None,
    mask_bytes: int = 0,
    summary: bool = True,
) -> Path:
    """A synthetic run folder in the format the server writes.

    Round 0 is the evaluation before training (no traffic); each later round
    moves ``up`` and ``down`` bytes (default: ``clients`` sparse messages of
    ``k`` float32 values, or full models for ``method="dense"``), plus
    ``mask_bytes`` down in round 1.
    """
    sampled = clients_per_round or clients
    full = 4 * numel
    k = numel if method == "dense" else round(density * numel)
    up = sampled * 4 * k if up is None else up
    down = sampled * 4 * k if down is None else down
    run = root / name
    run.mkdir(parents=True)
    config = {
        "task": "sst2",
        "mask-method": method,
        "density": density,
        "num-clients": clients,
        "clients-per-round": clients_per_round,
        "rounds": len(scores) - 1,
    }
    (run / "config.json").write_text(json.dumps(config))
    rows = []
    cum_up = cum_down = 0
    for rnd, score in enumerate(scores):
        b_up = up if rnd else 0
        b_down = (down + (mask_bytes if rnd == 1 else 0)) if rnd else 0
        cum_up, cum_down = cum_up + b_up, cum_down + b_down
        rows.append(
            {
                "round": rnd,
                "phase": "init" if rnd == 0 else "sparse",
                "metric": "accuracy",
                "score": score,
                "eval": None if score is None else {"accuracy": score, "f1": score / 2},
                "bytes_up": b_up,
                "bytes_down": b_down,
                "mask_bytes": mask_bytes if rnd == 1 else 0,
                "cum_bytes_up": cum_up,
                "cum_bytes_down": cum_down,
                "cum_fme": (cum_up + cum_down) / full,
                "cum_paper_fme": 2 * (cum_up + cum_down) / full,
                "replies": sampled if rnd else 0,
                "rejected": 0,
                "train_loss": None if rnd == 0 else 1.0 / rnd,
                "wall_time": 1.5 * rnd,
                "round_time": 1.5 if rnd else 0.0,
            }
        )
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary:
        summary_data: dict[str, Any] = {
            "model_numel": numel,
            "full_model_bytes": full,
            "final": rows[-1],
            "best": rows[-1],
            "rounds": len(scores) - 1,
            "wall_time": 1.5 * (len(scores) - 1),
            "mask_method": method,
            "density": density,
        }
        (run / "summary.json").write_text(json.dumps(summary_data))
    return run


# --------------------------------------------------------------------------
# load_run
# --------------------------------------------------------------------------
def test_load_run_reads_config_rows_and_summary(tmp_path: Path) -> None:
    run = write_run(tmp_path, "fish-1pc", density=0.01, scores=(0.5, 0.6, None, 0.8))
    rec = load_run(run)
    assert rec.name == "fish-1pc"
    sweep_run = write_run(tmp_path / "fish-2pc", "seed-3", density=0.02, scores=(0.5,))
    assert load_run(sweep_run).name == "fish-2pc/seed-3"
    assert rec.config["mask-method"] == "fish"
    assert [r["round"] for r in rec.rows] == [0, 1, 2, 3]
    assert rec.summary is not None and rec.summary["model_numel"] == 10_000
    assert rec.method == "fish" and rec.density == 0.01
    assert rec.rounds_run == 3
    assert rec.label == "fish-1pc (fish, 1%)"
    # Methods whose size is not the density key get no density in the legend.
    for method in ("supermask", "bitfit"):
        other = replace(rec, config={**rec.config, "mask-method": method})
        assert other.label == f"fish-1pc ({method})"
    assert rec.metric_name() == "accuracy"
    # Round 2 was not evaluated: it is skipped, not read as zero.
    assert [v for _, v in rec.evaluated()] == [0.5, 0.6, 0.8]
    assert rec.final() == 0.8 and rec.best() == 0.8
    assert rec.final("f1") == 0.4
    # The untrained model (round 0) is never a run's best.
    lucky = load_run(write_run(tmp_path, "lucky-start", scores=(0.9, 0.6, 0.7)))
    assert lucky.best() == 0.7
    assert load_run(write_run(tmp_path, "untrained", scores=(0.9,))).best() is None


def test_load_run_skips_blank_lines_and_reads_unfinished_runs(tmp_path: Path) -> None:
    run = write_run(tmp_path, "crashed", numel=2_500, summary=False)
    with (run / "metrics.jsonl").open("a") as f:
        f.write("\n   \n")
    rec = load_run(run)
    assert rec.summary is None and len(rec.rows) == 4
    # Without summary.json the full model comes from cumulative bytes / cum_fme.
    assert rec.full_model_bytes == 4 * 2_500


def test_totals_and_mean_round_bytes(tmp_path: Path) -> None:
    rec = load_run(write_run(tmp_path, "r", up=100, down=300, mask_bytes=50))
    assert rec.total_bytes("up") == 300
    assert rec.total_bytes("down") == 950
    assert rec.mean_round_bytes() == pytest.approx(1250 / 3)
    assert rec.cum_fme == pytest.approx(1250 / 40_000)
    with pytest.raises(ValueError, match="'sideways'"):
        rec.total_bytes("sideways")


def test_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="does not exist"):
        load_run(tmp_path / "nope")
    run = write_run(tmp_path, "r")
    (run / "metrics.jsonl").unlink()
    with pytest.raises(RunFolderError, match="no metrics.jsonl"):
        load_run(run)
    (run / "config.json").unlink()
    with pytest.raises(RunFolderError, match="no config.json"):
        load_run(run)


def test_corrupt_metrics_line_names_file_and_line(tmp_path: Path) -> None:
    run = write_run(tmp_path, "r")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]  # a line cut short
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunFolderError, match=r"metrics\.jsonl, line 3: not valid JSON") as err:
        load_run(run)
    assert "\n" not in str(err.value)

    (run / "metrics.jsonl").write_text('{"round": 0}\n[1, 2]\n')
    with pytest.raises(RunFolderError, match=r"line 2: expected a JSON object, got list"):
        load_run(run)


def test_corrupt_config_and_summary(tmp_path: Path) -> None:
    run = write_run(tmp_path, "r")
    (run / "summary.json").write_text("{not json")
    with pytest.raises(RunFolderError, match=r"summary\.json: not valid JSON"):
        load_run(run)
    (run / "config.json").write_text("[]")
    with pytest.raises(RunFolderError, match=r"config\.json: expected a JSON object"):
        load_run(run)


# --------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------
def _data(line: Any, axis: str) -> list[float]:
    return np.asarray(line.get_xdata() if axis == "x" else line.get_ydata()).tolist()


def test_many_runs_get_distinct_line_styles(tmp_path: Path) -> None:
    runs = [write_run(tmp_path, f"r{i}", density=0.01, scores=(0.5, 0.6)) for i in range(15)]
    (ax,) = accuracy_vs_communication_figure(runs).axes
    styles = {(line.get_color(), line.get_linestyle()) for line in ax.get_lines()}
    assert len(ax.get_lines()) == 15 and len(styles) == 15


def test_figure_has_one_line_per_run_on_a_log_axis(tmp_path: Path) -> None:
    fish = write_run(tmp_path, "a", density=0.005, numel=20_000, scores=(0.5, 0.7, 0.8))
    dense = write_run(tmp_path, "b", method="dense", numel=20_000, scores=(0.5, 0.75, None, 0.9))
    fig = accuracy_vs_communication_figure([fish, dense])
    (ax,) = fig.axes
    # Logarithmic from the smallest positive traffic, linear below: round 0 stays at x = 0.
    assert ax.get_xscale() == "symlog"
    assert ax.xaxis.get_transform().linthresh == pytest.approx(1600 / 80_000)
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == ["a (fish, 0.5%)", "b (dense)"]
    # fish: k = 100 entries, 2 clients x 400 bytes each way -> 1600 bytes per round.
    assert _data(lines[0], "x") == pytest.approx([0.0, 1600 / 80_000, 3200 / 80_000])
    assert _data(lines[0], "y") == [0.5, 0.7, 0.8]
    # dense: 4 full models per round; round 2 was not evaluated.
    assert _data(lines[1], "x") == pytest.approx([0.0, 4.0, 12.0])
    assert _data(lines[1], "y") == [0.5, 0.75, 0.9]
    assert ax.get_ylabel() == "accuracy"
    assert "full-model equivalents" in ax.get_xlabel()
    assert ax.get_title() == "sst2: accuracy vs communication"


def test_figure_other_metric_and_axes(tmp_path: Path) -> None:
    run = write_run(tmp_path, "a", scores=(0.5, 0.6, 0.8))
    fig = accuracy_vs_communication_figure([load_run(run)], metric="f1", x="round")
    (ax,) = fig.axes
    assert ax.get_xscale() == "linear"
    (line,) = ax.get_lines()
    assert _data(line, "x") == [0, 1, 2]  # linear axis: round 0 included
    assert _data(line, "y") == [0.25, 0.3, 0.4]
    assert ax.get_ylabel() == "f1"
    assert ax.get_title() == "sst2: f1 vs round"
    fig = accuracy_vs_communication_figure([load_run(run)], x="wall_time")
    assert fig.axes[0].get_title() == "sst2: accuracy vs wall time"


def test_figure_errors(tmp_path: Path) -> None:
    run = write_run(tmp_path, "a")
    with pytest.raises(ValueError, match=r"x='bytes'"):
        accuracy_vs_communication_figure([run], x="bytes")
    with pytest.raises(ValueError, match="no runs"):
        accuracy_vs_communication_figure([])
    with pytest.raises(
        ValueError, match=r"run 'a' has no values of metric 'mcc'; it has: accuracy, f1"
    ):
        accuracy_vs_communication_figure([run], metric="mcc")
    only_init = write_run(tmp_path, "init", scores=(0.5, None))
    with pytest.raises(ValueError, match="nothing to plot.*init"):
        accuracy_vs_communication_figure([only_init])
    with pytest.raises(RunFolderError):
        accuracy_vs_communication_figure([tmp_path / "missing"])


def test_plot_writes_a_png(tmp_path: Path) -> None:
    runs: list[RunRecord | Path] = [write_run(tmp_path, "a"), load_run(write_run(tmp_path, "b"))]
    out = plot_accuracy_vs_communication(runs, tmp_path / "figs" / "acc.png")
    assert out == tmp_path / "figs" / "acc.png"
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_importing_plots_does_not_import_matplotlib() -> None:
    code = "import sys, fish_fl.plots; print('matplotlib' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
