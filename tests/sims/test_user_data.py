"""A real run on the user's own CSV: MiniLM, 2 naturally partitioned clients, 2 rounds."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from fish_fl.data.glue import embedded_sample_dir


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8-sig", newline="") as f:  # with a byte-order mark
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _sample(split: str, n: int) -> list[dict[str, str]]:
    names = {0: "negative", 1: "positive"}
    lines = embedded_sample_dir().joinpath(f"{split}.jsonl").read_text().splitlines()[:n]
    rows = []
    for i, line in enumerate(lines):
        record = json.loads(line)
        # Two "sites" of different sizes: a natural partition, not a shuffle.
        rows.append(
            {
                "review": record["sentence"],
                "sentiment": names[record["label"]],
                "site": "north" if i % 3 else "south",
            }
        )
    return rows


@pytest.mark.slow
def test_a_run_on_a_user_csv_with_a_natural_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sims.cli import main

    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    train = _write_csv(tmp_path / "train.csv", _sample("train", 360))
    dev = _write_csv(
        tmp_path / "dev.csv",
        [{k: r[k] for k in ("review", "sentiment")} for r in _sample("dev", 200)],
    )
    run_dir = tmp_path / "run"
    keys = {
        "task": "text-classification",
        "train-file": train,
        "eval-file": dev,
        "text-column": "review",
        "label-column": "sentiment",
        "partition": "natural",
        "partition-column": "site",
        "num-clients": 2,
        "rounds": 2,
        "local-steps": 10,
        "fisher-samples": 64,
    }
    args = ["fish-fl", "run", "sst2-minilm", "--out", str(run_dir)]
    for key, value in keys.items():
        args += ["--set", f"{key}={value}"]
    monkeypatch.setattr(sys, "argv", args)
    try:
        main()
    except SystemExit as stop:  # typer exits only on an error here
        assert stop.code in (0, None), capsys.readouterr()
    captured = capsys.readouterr()
    out = captured.out
    # Only what the user needs: no notice printed for the simulation route itself.
    assert "DEPRECATED FEATURE" not in captured.err and "FutureWarning" not in captured.err

    # The label set comes from the training file, sorted, and is kept in the run folder.
    assert json.loads((run_dir / "labels.json").read_text()) == {
        "regression": False,
        "labels": ["negative", "positive"],
    }
    # One line per client before training, named by the partition column's values.
    train_rows = _sample("train", 360)
    sizes = {site: sum(r["site"] == site for r in train_rows) for site in ("north", "south")}
    summary = json.loads((run_dir / "summary.json").read_text())
    parts = summary["partitions"]
    assert parts["client_names"] == ["north", "south"]
    # The server's 64 calibration rows come out of the clients' rows first.
    assert sum(parts["sizes"]) == 360 - 64 and all(
        s <= sizes[n] for s, n in zip(parts["sizes"], ("north", "south"), strict=True)
    )
    assert any(line.strip().startswith("client north:") for line in out.splitlines()), out
    assert any(line.strip().startswith("client south:") for line in out.splitlines()), out

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[-1]["metric"] == "accuracy"
    # 200 held-out reviews: trained for 2 rounds, clearly above chance and above round 0.
    assert rows[-1]["score"] > max(0.6, rows[0]["score"]), rows
