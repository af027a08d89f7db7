"""Checkpoint and resume: a run killed after a round continues to the same end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fish_fl import protocol as P
from fish_fl.runlog import RunRecorder
from strategies.state import CHECKPOINT, read_checkpoint_round

from .flower_harness import InProcessGrid, make_strategy, tiny_vision_config

# Fields that legitimately differ between an interrupted and an uninterrupted run.
TIMING = {"wall_time", "round_time"}
TRAFFIC = {
    "bytes_down",
    "messages_down",
    "mask_bytes",
    "mask_broadcasts",
    "node_bytes_received",
    "paper_bytes_down",
}


class Crash(RuntimeError):
    pass


def _crashing_grid(crash_round: int, **kwargs: object) -> InProcessGrid:
    """A grid whose nodes train in ``crash_round`` and then the server dies."""
    grid = InProcessGrid(2, **kwargs)  # type: ignore[arg-type]
    original = grid.send_and_receive

    def send_and_receive(messages, *, timeout=None):  # type: ignore[no-untyped-def]
        messages = list(messages)
        replies = original(messages, timeout=timeout)
        rnd = int(messages[0].content.config_records[P.CONFIG][P.CFG_ROUND])  # type: ignore[arg-type]
        if rnd == crash_round:
            raise Crash(f"server killed in round {rnd}")
        return replies

    grid.send_and_receive = send_and_receive  # type: ignore[method-assign]
    return grid


def _rows(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "changes",
    [
        # AdamW state carried across rounds, dense warm-up, then a refreshed mask.
        {"optimizer": "adamw", "lr": 0.01, "warmup_rounds": 1, "mask_refresh": 2},
        # Sampling 1 of 2 nodes per round from the run's seeded generator.
        {"clients_per_round": 1},
        # Federated supermask: scores and head, Adam state, sampled masks seeded per round.
        {"mask_method": "supermask", "optimizer": "adamw", "lr": 0.01, "partition": "dirichlet"},
    ],
    ids=["warmup-refresh-adamw", "sampled", "supermask"],
)
def test_resumed_run_ends_like_an_uninterrupted_one(
    shared_data: Path, tmp_path: Path, changes: dict[str, object]
) -> None:
    config = tiny_vision_config(shared_data, rounds=4, **changes)

    # 1. The reference: four rounds without interruption.
    ref_dir = tmp_path / "ref"
    ref = make_strategy(config, RunRecorder(ref_dir, config, stream=None), ref_dir / CHECKPOINT)
    ref.start(InProcessGrid(2))

    # 2. The same run, killed in round 3 after the nodes trained (round 2 is saved).
    run_dir = tmp_path / "run"
    first = make_strategy(config, RunRecorder(run_dir, config, stream=None), run_dir / CHECKPOINT)
    with pytest.raises(Crash):
        first.start(_crashing_grid(3))
    assert read_checkpoint_round(run_dir / CHECKPOINT) == 2
    assert not torch.equal(first.values, ref.values)

    # 3. Resumed by a new server with new nodes (new ids, empty node state).
    recorder = RunRecorder(run_dir, config, stream=None, resume=True)
    resumed = make_strategy(config, recorder, run_dir / CHECKPOINT)
    assert resumed.resume(run_dir / CHECKPOINT) == 2
    recorder.restore(2, resumed.plan.union if resumed.plan else None, resumed.mask_version)
    resumed.start(InProcessGrid(2, node_ids=[2000, 2001]))

    # The same global model, bit for bit, and the same mask.
    for (name, a), (_, b) in zip(
        ref.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    assert torch.equal(ref.values, resumed.values)
    assert ref.plan is not None and resumed.plan is not None
    assert ref.plan.union.fingerprint == resumed.plan.union.fingerprint
    assert ref.mask_version == resumed.mask_version

    # The same metrics file, except timing and the resync traffic of round 3.
    ref_rows, rows = _rows(ref_dir), _rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    for a, b in zip(ref_rows, rows, strict=True):
        if a["round"] >= 3:  # the resynced nodes' downlink differs there too
            for row in (a, b):
                if isinstance(row.get("supermask"), dict):
                    row["supermask"].pop("bits_per_weight_down")
        skip = TIMING | (
            {k for k in a if k.startswith("cum_")} | TRAFFIC if a["round"] >= 3 else set()
        )
        assert {k: v for k, v in a.items() if k not in skip} == {
            k: v for k, v in b.items() if k not in skip
        }, a["round"]
    # Round 3 resent what new nodes lack (run config, mask, base); round 4 is as before.
    # (With sampling, a node may first be met in any later round, in either run.)
    if config.clients_per_round == 0:
        assert rows[3]["bytes_down"] > ref_rows[3]["bytes_down"]
        assert rows[4]["bytes_down"] == ref_rows[4]["bytes_down"]
        assert rows[4]["bytes_up"] == ref_rows[4]["bytes_up"]


def test_checkpoint_write_is_atomic(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash while writing round 2's checkpoint leaves round 1's readable."""
    import strategies.state as state

    config = tiny_vision_config(shared_data, rounds=2)
    path = tmp_path / CHECKPOINT
    strategy = make_strategy(config, None, path)
    original = state._commit

    def dies_half_way(tmp: Path, target: Path) -> None:
        if read_checkpoint_round(tmp) == 2:
            tmp.write_bytes(tmp.read_bytes()[:100])  # the write was cut short
            raise Crash("killed while writing")
        original(tmp, target)

    monkeypatch.setattr(state, "_commit", dies_half_way)
    with pytest.raises(Crash):
        strategy.start(InProcessGrid(2))
    assert read_checkpoint_round(path) == 1


def test_resume_refuses_another_initial_model(shared_data: Path, tmp_path: Path) -> None:
    config = tiny_vision_config(shared_data, rounds=1)
    path = tmp_path / CHECKPOINT
    make_strategy(config, None, path).start(InProcessGrid(2))
    other = make_strategy(config.replace(seed=1), None, None)
    with pytest.raises(ValueError, match="another initial model"):
        other.resume(path)


def test_unreadable_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / CHECKPOINT
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        read_checkpoint_round(bad)


@pytest.mark.slow
def test_killed_simulation_resumes_to_the_same_end(shared_data: Path, tmp_path: Path) -> None:
    """`fish-fl run` killed after round 2 of 4, then `fish-fl run --resume`."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    values = tiny_vision_config(
        shared_data, rounds=4, optimizer="adamw", lr=0.01, out_dir=str(tmp_path)
    ).to_dict()
    lines = ["[run]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    preset = tmp_path / "tiny.toml"
    preset.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "FISH_FL_CACHE": str(tmp_path / "cache")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sims.cli", *args],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )

    ref = cli("run", str(preset), "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sims.cli", "run", str(preset), "--out", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            ckpt = run_dir / CHECKPOINT
            if ckpt.is_file() and read_checkpoint_round(ckpt) >= 2:
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert read_checkpoint_round(run_dir / CHECKPOINT) in (2, 3)
    assert not (run_dir / "summary.json").exists()

    resumed = cli("run", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(tmp_path / "ref" / "delta.safetensors"))
    b = load_file(str(run_dir / "delta.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ref_rows, rows = _rows(tmp_path / "ref"), _rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    for x, y in zip(ref_rows, rows, strict=True):
        assert (x["score"], x["train_loss"], x["mask_version"]) == (
            y["score"],
            y["train_loss"],
            y["mask_version"],
        )
    # Resuming a finished run is refused in one line.
    again = cli("run", "--resume", str(run_dir))
    assert again.returncode == 1 and "all 4 rounds are done" in again.stderr
