"""The ``plot`` and ``compare`` subcommands, through Typer and as functions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fish_fl.plots import load_run
from sims.commands.compare import COLUMNS, compare_command, compare_runs, format_table
from sims.commands.plot import DEFAULT_PLOT_NAME, plot_command
from tests.core.test_plots import PNG_MAGIC, write_run


@pytest.fixture
def app() -> typer.Typer:
    """The two subcommands registered as ``sims.cli`` registers them."""
    app = typer.Typer()
    app.command("plot")(plot_command)
    app.command("compare")(compare_command)
    return app


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _table(text: str) -> list[list[str]]:
    """Rows of a plain table (header first), split on runs of two spaces."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    rows = [ln.split() for ln in lines if not set(ln) <= {"-", " "}]
    return rows[:-1]  # the last line is the reference sentence


# --------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------
def test_reduction_against_a_dense_run(tmp_path: Path) -> None:
    # 10_000 parameters = 40_000 bytes; 2 clients. Dense: 4 full models per round.
    dense = write_run(tmp_path, "dense", method="dense", scores=(0.5, 0.8, 0.9))
    # 1% mask: 100 values x 4 bytes x 2 clients each way = 1600 bytes per round,
    # plus a 2000-byte mask in round 1: (3 x 1600 + 2000) / 3 rounds.
    fish = write_run(tmp_path, "fish", density=0.01, scores=(0.5, 0.7, 0.85, None), mask_bytes=2000)
    comparison = compare_runs([load_run(dense), load_run(fish)])
    assert comparison.reductions[0] == pytest.approx(1.0)
    assert comparison.reductions[1] == pytest.approx(160_000 / ((3 * 1600 + 2000) / 3))
    assert "'dense'" in comparison.reference
    row = comparison.rows[1]
    assert row["run"] == "fish" and row["method"] == "fish" and row["density"] == "1%"
    assert row["rounds"] == "3" and row["metric"] == "accuracy"
    assert row["final"] == "0.8500" and row["best"] == "0.8500"  # round 3 not evaluated
    assert row["MB up"] == "0.0024" and row["MB down"] == "0.0044"
    assert row["FME"] == "0.17"  # (3 x 1600 + 2000) / 40_000
    assert row["vs dense"] == "70.6x"
    assert comparison.rows[0]["density"] == "100%"
    assert comparison.rows[0]["MB up"] == "0.16"  # 2 rounds x 2 clients x 40_000 bytes


def test_reduction_against_analytic_dense_fedavg(tmp_path: Path) -> None:
    # No dense run: 2 x 3 sampled clients x 40_000 bytes = 240_000 bytes per round.
    run = write_run(tmp_path, "r", numel=10_000, clients=5, clients_per_round=3, up=600, down=1400)
    comparison = compare_runs([load_run(run)])
    assert comparison.reductions == [pytest.approx(240_000 / 2000)]
    assert "analytic" in comparison.reference
    # A crashed run (no summary.json) gets the model size from its cumulative bytes.
    crashed = write_run(tmp_path, "c", numel=10_000, clients=4, summary=False, up=500, down=500)
    assert compare_runs([load_run(crashed)]).reductions == [pytest.approx(320_000 / 1000)]


def test_reduction_is_per_client_round_and_within_a_task(tmp_path: Path) -> None:
    # Dense on 2 clients: 40_000 bytes each way per client and round.
    dense = write_run(tmp_path, "dense2", method="dense", scores=(0.5, 0.8, 0.9))
    # FISH 1% on 4 clients: 100 values x 4 bytes each way per client and round.
    fish4 = write_run(tmp_path, "fish4", density=0.01, clients=4, scores=(0.5, 0.7, 0.8))
    # A run of another task: compared with its own (analytic) dense, not with dense2.
    other = write_run(tmp_path, "cola", density=0.01, clients=4, scores=(0.5, 0.6, 0.7))
    config = json.loads((other / "config.json").read_text())
    config["task"] = "cola"
    (other / "config.json").write_text(json.dumps(config))
    comparison = compare_runs([load_run(dense), load_run(fish4), load_run(other)])
    # 80_000 bytes per client-round dense against 800 for FISH: 100x, whatever the clients.
    assert comparison.reductions[1] == pytest.approx(80_000 / 800)
    assert comparison.reductions[2] == pytest.approx(2 * 40_000 / 800)
    assert "sst2: the dense run 'dense2'" in comparison.reference
    assert "cola: analytic dense FedAvg" in comparison.reference


def test_density_column_of_whole_tensor_and_supermask_runs(tmp_path: Path) -> None:
    bitfit = write_run(tmp_path, "bitfit", method="bitfit", density=0.005, scores=(0.5, 0.6))
    summary = json.loads((bitfit / "summary.json").read_text())
    summary["k"] = 250  # the biases of a 10,000-parameter model
    (bitfit / "summary.json").write_text(json.dumps(summary))
    supermask = write_run(tmp_path, "sm", method="supermask", density=0.005, scores=(0.5, 0.6))
    rows = compare_runs([load_run(bitfit), load_run(supermask)]).rows
    assert rows[0]["density"] == "2.5%" and rows[1]["density"] == "(mask)"


def test_run_without_rounds_or_evaluation(tmp_path: Path) -> None:
    run = write_run(tmp_path, "fresh", scores=(None,))
    row = compare_runs([load_run(run)]).rows[0]
    assert row["rounds"] == "0"
    assert row["final"] == row["best"] == row["vs dense"] == "n/a"


def test_plain_table_is_aligned(tmp_path: Path) -> None:
    runs = [
        load_run(write_run(tmp_path, "a-long-run-name", scores=(0.5, 0.6))),
        load_run(write_run(tmp_path, "b", method="random", density=0.005, scores=(0.5, 0.55))),
    ]
    text = format_table(compare_runs(runs))
    lines = text.splitlines()
    header, rule, first, second = lines[:4]
    assert header.split() == ["run", "method", "density", "rounds", "metric", "final", "best",
                              "MB", "up", "MB", "down", "FME", "vs", "dense"]  # fmt: skip
    assert set(rule) <= {"-", " "}
    # Every column starts at the same offset in every line.
    assert first.index("fish") == second.index("random") == header.index("method")
    assert first.rstrip().endswith("x") and len(first.rstrip()) == len(second.rstrip())
    assert lines[-1].startswith("vs dense: dense bytes per client and round")
    assert "sst2: analytic dense FedAvg" in lines[-1]


def test_markdown_table(tmp_path: Path) -> None:
    runs = [load_run(write_run(tmp_path, "a|b", scores=(0.5, 0.6)))]
    text = format_table(compare_runs(runs), markdown=True)
    header, rule, row = text.splitlines()[:3]
    assert [c.strip() for c in header.strip("|").split(" | ")] == list(COLUMNS)
    assert rule.startswith("| ---") and rule.endswith(": |")
    assert row.startswith("| a\\|b ")  # a pipe in a name is escaped
    assert row.count(" | ") == len(COLUMNS) - 1


def test_compare_command(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    a = write_run(tmp_path, "a", method="dense", scores=(0.5, 0.6))
    b = write_run(tmp_path, "b", scores=(0.5, 0.7))
    result = runner.invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 0, result.output
    rows = _table(result.stdout)
    assert [r[0] for r in rows[1:]] == ["a", "b"]
    result = runner.invoke(app, ["compare", "--markdown", str(a), str(b)])
    assert result.exit_code == 0 and result.stdout.startswith("| run ")


def test_compare_command_errors_are_one_line(
    app: typer.Typer, runner: CliRunner, tmp_path: Path
) -> None:
    good = write_run(tmp_path, "good")
    bad = write_run(tmp_path, "bad")
    (bad / "metrics.jsonl").write_text('{"round": 0}\n{oops\n')
    for args, expected in [
        ([str(good), str(tmp_path / "missing")], "does not exist"),
        ([str(good), str(bad)], "metrics.jsonl, line 2"),
    ]:
        result = runner.invoke(app, ["compare", *args])
        assert result.exit_code == 1
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1 and expected in result.stderr
        assert "Traceback" not in result.output
    result = runner.invoke(app, ["compare"])
    assert result.exit_code != 0  # Typer: missing argument


# --------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------
def test_plot_command_default_outputs(
    app: typer.Typer, runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = write_run(tmp_path, "a")
    b = write_run(tmp_path, "b", method="random")
    # One run: the plot goes inside its folder.
    result = runner.invoke(app, ["plot", str(a)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(a / DEFAULT_PLOT_NAME)
    assert (a / DEFAULT_PLOT_NAME).read_bytes()[:8] == PNG_MAGIC
    # Several runs: in the current folder.
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = runner.invoke(app, ["plot", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == DEFAULT_PLOT_NAME
    assert (work / DEFAULT_PLOT_NAME).read_bytes()[:8] == PNG_MAGIC


def test_plot_command_options_and_errors(
    app: typer.Typer, runner: CliRunner, tmp_path: Path
) -> None:
    a = write_run(tmp_path, "a")
    out = tmp_path / "out" / "f1.png"
    result = runner.invoke(app, ["plot", str(a), "--out", str(out), "--metric", "f1"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG_MAGIC
    (a / "config.json").write_text(json.dumps([1]))
    for args, expected in [
        ([str(a)], "config.json: expected a JSON object"),
        ([str(tmp_path / "none")], "does not exist"),
        ([str(write_run(tmp_path, "c")), "-m", "mcc"], "no values of metric 'mcc'"),
    ]:
        result = runner.invoke(app, ["plot", *args])
        assert result.exit_code == 1
        assert result.stderr.count("\n") == 1 and expected in result.stderr


def test_commands_have_help(app: typer.Typer, runner: CliRunner) -> None:
    for command, option in [("plot", "--metric"), ("compare", "--markdown")]:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and option in result.stdout
        # The argument's own help is lost with click 8.5 and typer 0.20 (typer sets
        # it, click's Argument.__init__ resets it), so the docstring describes RUN_DIRS.
        assert "RUN_DIRS are run folders" in result.stdout
