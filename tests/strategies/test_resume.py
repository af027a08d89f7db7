"""Checkpoint and resume: a run killed after a round continues to the same end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fish_fl import protocol as P
from fish_fl.federation.server_optim import ServerOptimizer
from fish_fl.masks import Mask
from fish_fl.runlog import RunRecorder
from strategies.fish_strategy import FishMaskStrategy
from strategies.state import CHECKPOINT, read_checkpoint_round
from tests.flower_harness import InProcessGrid, make_strategy, tiny_vision_config

# Fields that legitimately differ between an interrupted and an uninterrupted run.
TIMING = {"wall_time", "round_time", "client_train_time", "eval_time"}
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
        # FedAdam on the server: its moments in the checkpoint, reset at the refresh
        # of round 4; FedProx on the nodes.
        {
            "server_optimizer": "adam",
            "server_lr": 0.01,
            "proximal_mu": 0.1,
            "warmup_rounds": 1,
            "mask_refresh": 2,
        },
        # LoRA through peft (FFA-LoRA: B and the head train), AdamW state across rounds.
        {"mask_method": "lora", "optimizer": "adamw", "lr": 0.01},
    ],
    ids=["warmup-refresh-adamw", "sampled", "supermask", "fedadam-fedprox", "lora"],
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
    if config.server_optimizer != "none":
        # Round 2 started afresh at the first sparse mask; round 3 needs its moments.
        saved = _raw(run_dir / CHECKPOINT)[0]
        assert ServerOptimizer.steps(saved) == 1
        assert int(saved["extra/server-optimizer/mask-version"][0]) == first.mask_version == 2

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
    for key, value in ref.state.extra.items():
        assert torch.equal(value, resumed.state.extra[key]), key
    if config.server_optimizer != "none":  # started afresh at round 4's refresh
        assert ServerOptimizer.steps(resumed.state.extra) == 1

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
    """A crash while writing round 2's checkpoint leaves round 1's readable, and no temporary."""
    import os

    import fish_fl.fileio as fileio

    config = tiny_vision_config(shared_data, rounds=2)
    path = tmp_path / CHECKPOINT
    strategy = make_strategy(config, None, path)
    original = os.replace

    def dies_half_way(tmp: str | Path, target: str | Path) -> None:
        if Path(target) == path and read_checkpoint_round(Path(tmp)) == 2:
            Path(tmp).write_bytes(Path(tmp).read_bytes()[:100])  # the write was cut short
            raise Crash("killed while writing")
        original(tmp, target)

    monkeypatch.setattr(fileio.os, "replace", dies_half_way)
    with pytest.raises(Crash):
        strategy.start(InProcessGrid(2))
    assert read_checkpoint_round(path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]


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
    with pytest.raises(ValueError, match="not a readable safetensors file"):
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


# -- corrupt checkpoints: refused in one line, before anything is restored ------------------
def _raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A checkpoint's tensors and metadata, read without any check."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


def _write(
    path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str], *, sign: bool = True
) -> None:
    """Write a (crafted) checkpoint; ``sign``: with fresh checksums, so only the craft is wrong."""
    from safetensors.torch import save_file

    from fish_fl.fileio import CHECKSUMS, save_safetensors_atomic

    meta = {k: v for k, v in meta.items() if k != CHECKSUMS}
    if sign:
        save_safetensors_atomic(tensors, path, meta, checksums=True)
    else:
        save_file(tensors, str(path), metadata=meta)


def _data_span(path: Path, name: str) -> tuple[int, int]:
    """Where tensor ``name``'s bytes are in a safetensors file."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8 : 8 + n])[name]["data_offsets"]
    return 8 + n + start, 8 + n + end


@pytest.fixture(scope="module")
def made_checkpoint(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Round 2 of a run with a dense warm-up: all three plans (current, base, previous)."""
    config = tiny_vision_config(shared_data, rounds=2, warmup_rounds=1)
    run_dir = tmp_path_factory.mktemp("made")
    RunRecorder(run_dir, config, stream=None)  # config.json, for the command line
    make_strategy(config, None, run_dir / CHECKPOINT).start(InProcessGrid(2))
    tensors, meta = _raw(run_dir / CHECKPOINT)
    # The base plan is the current one (stored once); the previous one is the dense warm-up's.
    assert json.loads(meta["state"])["plans"] == {"current": 1, "base": "current", "prev": 1}
    assert {"plan/current/union", "plan/prev/union"} <= tensors.keys()
    return run_dir / CHECKPOINT


@pytest.fixture(scope="module")
def fresh_strategy(shared_data: Path) -> FishMaskStrategy:
    """A new server for the same run, to resume into (every refused load must leave it so)."""
    return make_strategy(tiny_vision_config(shared_data, rounds=2, warmup_rounds=1), None, None)


Tensors = dict[str, torch.Tensor]
Meta = dict[str, str]
Edit = Callable[[Tensors, Meta], None]


def _edit_state(change: Callable[[dict[str, Any]], object]) -> Edit:
    """An edit of the ``state`` JSON of the metadata."""

    def edit(tensors: Tensors, meta: Meta) -> None:
        state = json.loads(meta["state"])
        change(state)
        meta["state"] = json.dumps(state)

    return edit


def _set(name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Edit:
    def edit(tensors: Tensors, meta: Meta) -> None:
        tensors[name] = make(tensors[name]).contiguous()

    return edit


def _drop_tensor(name: str) -> Edit:
    def edit(tensors: Tensors, meta: Meta) -> None:
        del tensors[name]

    return edit


def _drop_meta(name: str) -> Edit:
    def edit(tensors: Tensors, meta: Meta) -> None:
        del meta[name]

    return edit


def _set_meta(name: str, value: str) -> Edit:
    def edit(tensors: Tensors, meta: Meta) -> None:
        meta[name] = value

    return edit


def _add_junk(tensors: Tensors, meta: Meta) -> None:
    tensors["junk"] = torch.zeros(3)


def _outside_union(tensors: Tensors, meta: Meta) -> None:
    """Slot 0 keeps every entry: not within the current (sparse) union."""
    union = Mask.from_bytes(tensors["plan/current/union"].numpy())
    data = Mask.full(union.shapes).to_bytes()
    tensors["plan/current/slot0"] = torch.from_numpy(np.frombuffer(bytearray(data), np.uint8))


def _other_length(t: torch.Tensor) -> torch.Tensor:
    """A position encoding over one entry fewer than the model has."""
    n = Mask.from_bytes(t.numpy()).total - 1
    data = Mask({"flat": torch.arange(3)}, {"flat": (n,)}).to_bytes()
    return torch.from_numpy(np.frombuffer(bytearray(data), np.uint8))


def _another_base_fingerprint(state: dict[str, Any]) -> None:
    state["base_fingerprint"] = "0123456789abcdef"


def _bad_ledger_round(state: dict[str, Any]) -> None:
    state["ledger"]["rounds"][0]["bytes_up"] = "lots"


def _short_rng(state: dict[str, Any]) -> None:
    state["rng"][1] = state["rng"][1][:100]


# (id, edit of (tensors, metadata), words the message must hold, refused by reading alone)
CORRUPTIONS = [
    ("no-state", _drop_meta("state"), "metadata entry 'state' is missing", True),
    ("state-not-json", _set_meta("state", "{round: 2"), "'state' is not JSON", True),
    ("state-a-list", _set_meta("state", "[2]"), "'state' is not a JSON object", True),
    ("no-rng", _edit_state(lambda s: s.pop("rng")), "field 'rng' is missing", True),
    ("short-rng", _edit_state(_short_rng), "'rng' is not a random generator's state", True),
    ("no-round", _edit_state(lambda s: s.pop("round")), "field 'round' is missing", True),
    (
        "round-text",
        _edit_state(lambda s: s.update(round="2")),
        "'round' must be a whole number >= 0, got '2'",
        True,
    ),
    (
        "round-negative",
        _edit_state(lambda s: s.update(round=-1)),
        "'round' must be a whole number",
        True,
    ),
    ("phase", _edit_state(lambda s: s.update(phase="warm")), "'phase' must be one of", True),
    (
        "run-key",
        _edit_state(lambda s: s.update(run_key="../x")),
        "'run_key' must be letters and digits",
        True,
    ),
    ("elapsed-nan", _edit_state(lambda s: s.update(elapsed=float("nan"))), "'elapsed'", True),
    ("ledger", _edit_state(_bad_ledger_round), "ledger round 1 has a bad count", True),
    ("no-values", _drop_tensor("values/at"), "tensor 'values/at' is missing", True),
    ("no-model-at", _drop_tensor("model/at"), "tensor 'model/at' is missing", True),
    (
        "model-at-float",
        _set("model/at", lambda t: t.float()),
        "'model/at' must be 1-D uint8, got 1-D float32",
        True,
    ),
    (
        "value-2d",
        _set("model/value", lambda t: t.view(1, -1)),
        "'model/value' must be 1-D float32, got 2-D float32",
        True,
    ),
    ("value-short", _set("model/value", lambda t: t[:-1]), "model/value has", True),
    (
        "model-at-cut",
        _set("model/at", lambda t: t[:-3]),
        "'model/at' is not a position encoding",
        True,
    ),
    (
        "model-at-length",
        _set("model/at", _other_length),
        "'model/at' does not cover the",
        True,
    ),
    (
        "slot-outside",
        _outside_union,
        "plan/current/slot0 is not within the union",
        True,
    ),
    ("slot-missing", _drop_tensor("plan/prev/slot0"), "unmatched parts (slot0)", True),
    (
        "union-corrupt",
        _set("plan/current/union", lambda t: t[:-3]),
        "'plan/current/union' is not a mask",
        True,
    ),
    (
        "values-short",
        _set("prev-values/value", lambda t: t[:-1]),
        "prev-values/value has",
        True,
    ),
    (
        "plan-alias-later",
        _edit_state(lambda s: s["plans"].update(base="prev")),
        "plan 'base' repeats 'prev', not an earlier plan",
        True,
    ),
    (
        "plan-stored-twice",
        _edit_state(lambda s: s["plans"].update(prev="current")),
        "plan 'prev' is not stored but has tensors",
        True,
    ),
    (
        "reference-other",
        _edit_state(lambda s: s["references"].update(values="base")),
        "the reference of values must be one of",
        True,
    ),
    ("format-other", _set_meta("format", "something/1"), "not a fish-fl server checkpoint", True),
    # Checked against the model: the sizes, and the base the values imply.
    (
        "buffers-short",
        _set("model/buffers", lambda t: t[:-1]),
        "model/buffers has",
        False,
    ),
    (
        "base-fingerprint",
        _edit_state(_another_base_fingerprint),
        "do not give the base fingerprint it records",
        False,
    ),
    (
        "ledger-numel",
        _edit_state(lambda s: s["ledger"].update(model_numel=7)),
        "its ledger counts 7 parameters",
        False,
    ),
    (
        "initial-model",
        _edit_state(lambda s: s.update(initial_fingerprint="0123456789abcdef")),
        "another initial model",
        False,
    ),
]


def _assert_untouched(strategy: FishMaskStrategy) -> None:
    state = strategy.state
    assert torch.equal(P.flat_parameters(state.model), state.initial_flat)
    assert state.plan is None and state.mask_version == 0 and state.ledger.rounds == []


def _refused(call: Callable[[], object], path: Path, words: str) -> None:
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert words in message, message
    assert "\n" not in message and str(path) in message, message


@pytest.mark.parametrize(
    ("edit", "words", "early"),
    [pytest.param(e, w, early, id=i) for i, e, w, early in CORRUPTIONS],
)
def test_a_corrupt_checkpoint_is_refused_in_one_line(
    made_checkpoint: Path,
    fresh_strategy: FishMaskStrategy,
    tmp_path: Path,
    edit: Edit,
    words: str,
    early: bool,
) -> None:
    tensors, meta = _raw(made_checkpoint)
    edit(tensors, meta)
    bad = tmp_path / CHECKPOINT
    _write(bad, tensors, meta)
    _refused(lambda: fresh_strategy.resume(bad), bad, words)
    _assert_untouched(fresh_strategy)
    if early:  # `fish-fl run --resume` refuses it before starting a simulation
        _refused(lambda: read_checkpoint_round(bad), bad, words)
    else:
        assert read_checkpoint_round(bad) == 2


def _flip_value_bit(path: Path) -> None:
    start, end = _data_span(path, "model/value")
    data = bytearray(path.read_bytes())
    data[(start + end) // 2] ^= 0x04  # a low mantissa bit of one trained weight
    path.write_bytes(bytes(data))


def _flip_round_bit(path: Path) -> None:
    data = path.read_bytes()
    before = b'"state":"{\\"round\\": 2,'
    assert data.count(before) == 1
    path.write_bytes(data.replace(before, before.replace(b"2", b"3")))  # '2' -> '3': one bit


def _drop_rng(path: Path) -> None:
    tensors, meta = _raw(path)
    _edit_state(lambda s: s.pop("rng"))(tensors, meta)
    _write(path, tensors, meta)


def _unsigned(path: Path) -> None:
    _write(path, *_raw(path), sign=False)


def _old_format(fmt: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        tensors, meta = _raw(path)
        _write(path, tensors, {**meta, "format": fmt}, sign=False)

    return damage


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        pytest.param(_flip_value_bit, "tensor 'model/value' does not match its checksum", id="bit"),
        pytest.param(_flip_round_bit, "the metadata does not match its checksum", id="meta-bit"),
        pytest.param(
            lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3]),
            "not a readable safetensors file",
            id="truncated",
        ),
        pytest.param(
            lambda p: p.write_bytes(b"PK\x03\x04 a zip file"),
            "not a readable safetensors file",
            id="not-safetensors",
        ),
        pytest.param(lambda p: p.write_bytes(b""), "not a readable safetensors file", id="empty"),
        pytest.param(_unsigned, "has no checksums", id="no-checksums"),
        pytest.param(
            _old_format("fish-fl-server-state/1"),
            "format fish-fl-server-state/1, this version reads fish-fl-server-state/3 only",
            id="format-1",
        ),
        pytest.param(
            _old_format("fish-fl-server-state/2"),
            "format fish-fl-server-state/2, this version reads fish-fl-server-state/3 only",
            id="format-2",
        ),
    ],
)
def test_a_damaged_checkpoint_file_is_refused_in_one_line(
    made_checkpoint: Path,
    fresh_strategy: FishMaskStrategy,
    tmp_path: Path,
    damage: Callable[[Path], object],
    words: str,
) -> None:
    bad = tmp_path / CHECKPOINT
    bad.write_bytes(made_checkpoint.read_bytes())
    damage(bad)
    _refused(lambda: read_checkpoint_round(bad), bad, words)
    _refused(lambda: fresh_strategy.resume(bad), bad, words)
    _assert_untouched(fresh_strategy)


def test_a_rewritten_sound_checkpoint_still_resumes(
    shared_data: Path, made_checkpoint: Path, tmp_path: Path
) -> None:
    """The crafted files above differ from a good one only in what each case changes."""
    copy = tmp_path / CHECKPOINT
    _write(copy, *_raw(made_checkpoint))
    strategy = make_strategy(tiny_vision_config(shared_data, rounds=2, warmup_rounds=1))
    assert strategy.resume(copy) == 2
    assert strategy.plan is not None and strategy.mask_version == 2


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        pytest.param(_flip_value_bit, "does not match its checksum", id="bit"),
        pytest.param(_drop_rng, "field 'rng' is missing", id="no-rng"),
    ],
)
def test_cli_resume_of_a_corrupt_checkpoint_is_one_line(
    made_checkpoint: Path,
    tmp_path: Path,
    project_root: Path,
    damage: Callable[[Path], object],
    words: str,
) -> None:
    import os
    import shutil
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    shutil.copytree(made_checkpoint.parent, run_dir)
    damage(run_dir / CHECKPOINT)
    result = subprocess.run(
        [sys.executable, "-m", "sims.cli", "run", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=project_root,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fish-fl: error:"), result.stderr
    assert words in lines[0] and str(run_dir / CHECKPOINT) in lines[0]
    assert result.stdout == ""
