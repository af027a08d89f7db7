"""The run folder's files are valid JSON, whatever a round reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fish_fl.config import RunConfig
from fish_fl.masks import Mask
from fish_fl.runlog import RunRecorder


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _lines(path: Path) -> list[Any]:
    return [_strict(line) for line in path.read_text().splitlines()]


def test_non_finite_metrics_are_logged_as_null(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path, RunConfig(), stream=None)
    recorder.log_round({"round": 0, "score": 0.5, "train_loss": None})
    recorder.log_round(
        {
            "round": 1,
            "score": float("nan"),
            "metric": "accuracy",
            "train_loss": float("nan"),
            "eval": {"loss": float("inf"), "accuracy": 0.75},
            "norms": [1.0, float("-inf")],
        }
    )
    rows = _lines(tmp_path / "metrics.jsonl")
    assert rows[1] == {
        "round": 1,
        "score": None,
        "metric": "accuracy",
        "train_loss": None,
        "eval": {"loss": None, "accuracy": 0.75},
        "norms": [1.0, None],
    }

    # A resumed folder rewrites the kept lines; they stay valid.
    again = RunRecorder(tmp_path, RunConfig(), stream=None, resume=True)
    again.restore(1, None, 0)
    assert _lines(tmp_path / "metrics.jsonl") == rows

    # The summary: a NaN score is not a best round, nested non-finite values are null.
    summary = again.finish({"wall_time": float("nan"), "delta": {"ratio": float("inf")}})
    on_disk = _strict((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    assert on_disk["wall_time"] is None and on_disk["delta"] == {"ratio": None}
    assert "best" not in on_disk and on_disk["rounds"] == 1
    _strict((tmp_path / "config.json").read_text())


def test_mask_files_are_written_whole(tmp_path: Path) -> None:
    import torch

    recorder = RunRecorder(tmp_path, RunConfig(), stream=None)
    mask = Mask({"w": torch.tensor([0, 3])}, {"w": (2, 2)})
    recorder.record_mask(1, mask, "fish")
    stats = _strict((tmp_path / "mask_stats.json").read_text())
    assert stats["1"]["k"] == 2 and stats["1"]["fingerprint"] == mask.fingerprint
    assert Mask.load(tmp_path / "mask.safetensors").fingerprint == mask.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "mask.safetensors",
        "mask_stats.json",
        "metrics.jsonl",
    ]


def test_summary_holds_the_traffic_totals_of_the_last_round(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path, RunConfig(), stream=None)
    recorder.log_round({"round": 0, "score": 0.5, "metric": "accuracy"})
    for rnd, (up, down) in enumerate([(100, 300), (100, 200)], start=1):
        recorder.log_round(
            {
                "round": rnd,
                "score": 0.6,
                "metric": "accuracy",
                "cum_bytes_up": 100 * rnd,
                "cum_bytes_down": 300 + 200 * (rnd - 1),
                "cum_mask_bytes": 50,
                "cum_fme": rnd * 0.25,
                "cum_fme_up": rnd * 0.05,
                "cum_fme_down": rnd * 0.2,
                "cum_paper_fme": rnd * 0.5,
                "bytes_up": up,
                "bytes_down": down,
            }
        )
    summary = recorder.finish({})
    # Round 2's cumulative figures: 100 + 100 up, 300 + 200 down.
    assert summary["traffic"] == {
        "cum_bytes_up": 200,
        "cum_bytes_down": 500,
        "cum_mask_bytes": 50,
        "cum_fme": 0.5,
        "cum_fme_up": 0.1,
        "cum_fme_down": 0.4,
        "cum_paper_fme": 1.0,
    }
    assert _strict((tmp_path / "summary.json").read_text())["traffic"] == summary["traffic"]


def test_the_table_names_its_metric_and_calls_a_dense_run_dense(tmp_path: Path) -> None:
    import io

    stream = io.StringIO()
    dense = RunConfig.from_mapping({"mask-method": "dense", "density": 1.0})
    recorder = RunRecorder(tmp_path / "d", dense, stream=stream)
    recorder.log_round(
        {"round": 0, "phase": "init", "score": 0.5, "metric": "matthews_correlation"}
    )
    recorder.log_round(
        {"round": 1, "phase": "sparse", "score": 0.6, "metric": "matthews_correlation"}
    )
    header, _, first, second = stream.getvalue().splitlines()
    assert header.split()[2] == "matthews" and "metric" not in header
    assert second.split()[1] == "dense" and first.split()[1] == "init"
    # metrics.jsonl keeps what the strategy logged
    assert _lines(tmp_path / "d" / "metrics.jsonl")[1]["phase"] == "sparse"
    stream = io.StringIO()
    recorder = RunRecorder(tmp_path / "f", RunConfig(), stream=stream)
    recorder.log_round({"round": 1, "phase": "sparse", "score": 0.6, "metric": "accuracy"})
    header, _, row = stream.getvalue().splitlines()
    assert header.split()[2] == "accuracy" and row.split()[1] == "sparse"


def _board(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_holds_every_per_round_number(tmp_path: Path) -> None:
    from fish_fl.runlog import TENSORBOARD

    recorder = RunRecorder(tmp_path, RunConfig(), stream=None)
    rows = [
        {"round": 0, "score": 0.5, "metric": "accuracy", "eval": {"accuracy": 0.5, "loss": 0.7},
         "cum_fme": 0.0, "bytes_up": 0, "replies": 0, "skipped": False, "phase": "init"},
        {"round": 1, "score": 0.75, "metric": "accuracy", "eval": {"accuracy": 0.75, "loss": 0.5},
         "train_loss": 0.6, "cum_fme": 0.04, "bytes_up": 1000, "replies": 2, "epsilon": 3.5},
    ]  # fmt: skip
    for row in rows:
        recorder.log_round(dict(row))
    recorder.finish({})
    board = _board(tmp_path / TENSORBOARD)
    assert board["eval/accuracy"] == [(0, 0.5), (1, 0.75)]
    assert board["eval/score"] == [(0, 0.5), (1, 0.75)]
    assert board["eval/loss"] == [(0, pytest.approx(0.7)), (1, 0.5)]
    assert board["train/loss"] == [(1, pytest.approx(0.6))]  # round 0 had none
    assert board["traffic/cum_fme"] == [(0, 0.0), (1, pytest.approx(0.04))]
    assert board["traffic/bytes_up"] == [(0, 0.0), (1, 1000.0)]
    assert board["round/replies"] == [(0, 0.0), (1, 2.0)]
    assert board["privacy/epsilon"] == [(1, 3.5)]
    assert not any("phase" in tag or "skipped" in tag for tag in board)


def test_a_resumed_run_drops_the_board_events_after_its_checkpoint(tmp_path: Path) -> None:
    from fish_fl.runlog import TENSORBOARD

    first = RunRecorder(tmp_path, RunConfig(), stream=None)
    for rnd, score in enumerate((0.5, 0.6, 0.7)):  # round 2 ran after the last checkpoint
        first.log_round({"round": rnd, "score": score, "metric": "accuracy"})
    first.close()
    again = RunRecorder(tmp_path, RunConfig(), stream=None, resume=True)
    again.restore(1, None, 0)
    again.log_round({"round": 2, "score": 0.65, "metric": "accuracy"})
    again.finish({})
    assert _board(tmp_path / TENSORBOARD)["eval/score"] == [
        (0, 0.5),
        (1, pytest.approx(0.6)),
        (2, pytest.approx(0.65)),
    ]
