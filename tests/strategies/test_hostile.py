"""Replies no honest client sends: each is rejected or bounded, and the round goes on.

One test per hole found when the server was probed as an attacker would:
the real strategy and the real client handlers on an in-process grid, node
1001 playing the hostile client through the grid's ``tamper`` hook.
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict

from fish_fl import protocol as P
from fish_fl.runlog import RunRecorder
from strategies.fish_strategy import RunFailed
from strategies.server_app import FAILURE, run_server
from tests.flower_harness import InProcessGrid, make_strategy, tiny_vision_config

HOSTILE = 1001


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))


def _hostile(change):  # type: ignore[no-untyped-def]
    """A tamper hook that lets ``change(rnd, msg, reply)`` rewrite node 1001's replies."""

    def tamper(rnd: int, node: int, msg: Message, reply: Message) -> Message | None:
        return change(rnd, msg, reply) if node == HOSTILE else None

    return tamper


def _npy_claiming(shape: tuple[int, ...], payload: bytes) -> bytes:
    """An ``.npy`` file whose header claims ``shape`` float32 values, followed by ``payload``."""
    buffer = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


# 1. Arrays that crash or exhaust a decoder that trusts them --------------------------
@pytest.mark.parametrize("kind", ["stype", "huge-header", "short-data", "garbage"])
def test_crafted_array_is_rejected_with_a_reason(
    shared_data: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    def change(rnd: int, msg: Message, reply: Message) -> Message:
        arrays = reply.content.array_records[P.ARRAYS]
        update = arrays[P.UPDATE]
        k = update.shape[0]
        if kind == "stype":
            arrays[P.UPDATE] = Array("float32", (k,), "torch.Tensor", update.data)
        elif kind == "huge-header":  # claims 2^41 floats: 8 TiB if believed
            arrays[P.UPDATE] = Array("float32", (k,), update.stype, _npy_claiming((2**41,), b""))
        elif kind == "short-data":
            arrays[P.UPDATE] = Array("float32", (k,), update.stype, _npy_claiming((k,), b"\0" * 8))
        else:
            arrays[P.UPDATE] = Array("float32", (k,), update.stype, b"\x93NUMPY garbage")
        return reply

    config = tiny_vision_config(shared_data, rounds=1)
    strategy = make_strategy(config)
    with caplog.at_level(logging.WARNING):
        strategy.start(InProcessGrid(2, tamper=_hostile(change)))
    stats = strategy._stats
    assert stats.rejected == 1 and not stats.skipped, stats
    (reason,) = stats.reasons
    assert reason.startswith(f"node {HOSTILE}: update:"), reason
    # The honest node's update went in.
    assert not torch.equal(strategy.values, strategy.state.base_values)


# 2. num-examples inflation ---------------------------------------------------------------
def test_inflated_num_examples_weigh_no_more_than_the_largest_partition(
    shared_data: Path,
) -> None:
    crafted: dict[str, torch.Tensor] = {}
    replies: dict[int, Message] = {}

    def record(rnd: int, node: int, msg: Message, reply: Message) -> Message | None:
        if node != HOSTILE:
            replies[node] = reply
            return None
        # The attacker's update would move the model to values of its choice.
        arrays = reply.content.array_records[P.ARRAYS]
        update = np.full(arrays[P.UPDATE].shape, 0.5, dtype=np.float32)
        crafted["delta"] = torch.from_numpy(update)
        arrays[P.UPDATE] = Array(update)
        reply.content.metric_records[P.METRICS][P.NUM_EXAMPLES] = 10**12
        replies[node] = reply
        return reply

    config = tiny_vision_config(shared_data, rounds=1, max_update_norm=1e6)
    strategy = make_strategy(config)
    grid = InProcessGrid(2, tamper=record)
    strategy.start(grid)
    start = strategy.state.base_values  # the values the nodes were sent
    assert strategy._stats.capped == [HOSTILE]
    cap = max(len(c) for c in strategy_data_partitions(config))
    honest = replies[1000]
    n_honest = int(honest.content.metric_records[P.METRICS][P.NUM_EXAMPLES])  # type: ignore[arg-type]
    d_honest = torch.from_numpy(honest.content.array_records[P.ARRAYS][P.UPDATE].numpy())
    expected = start.double() + (n_honest * d_honest.double() + cap * crafted["delta"].double()) / (
        n_honest + cap
    )
    torch.testing.assert_close(strategy.values.double(), expected, rtol=0, atol=1e-6)
    # Not the attacker's model: the honest update keeps its share.
    assert not torch.allclose(strategy.values, start + crafted["delta"])


def strategy_data_partitions(config):  # type: ignore[no-untyped-def]
    from fish_fl.task import load_task_data

    return load_task_data(config).partitions.clients


# 3. BatchNorm buffers ---------------------------------------------------------------------
def test_huge_buffers_are_rejected(shared_data: Path) -> None:
    def change(rnd: int, msg: Message, reply: Message) -> Message:
        arrays = reply.content.array_records[P.ARRAYS]
        arrays[P.BUFFERS] = Array(np.full(arrays[P.BUFFERS].shape, 1e30, dtype=np.float32))
        return reply

    config = tiny_vision_config(shared_data, rounds=2)
    strategy = make_strategy(config)
    strategy.start(InProcessGrid(2, tamper=_hostile(change)))
    assert strategy._stats.rejected == 1
    assert "buffer change" in strategy._stats.reasons[0]
    buffers = P.flat_buffers(strategy.model)
    assert torch.isfinite(buffers).all() and float(buffers.abs().max()) < 1e3


# 4. The default protects a run; a run that cannot go on ends with an error -------------
def test_one_huge_update_is_rejected_by_default(shared_data: Path) -> None:
    def change(rnd: int, msg: Message, reply: Message) -> Message:
        arrays = reply.content.array_records[P.ARRAYS]
        update = np.zeros(arrays[P.UPDATE].shape, dtype=np.float32)
        update[0] = 3e38
        arrays[P.UPDATE] = Array(update)
        return reply

    config = tiny_vision_config(shared_data, rounds=2)
    assert config.max_update_norm == 0  # no explicit bound
    strategy = make_strategy(config)
    strategy.start(InProcessGrid(2, tamper=_hostile(change)))
    assert strategy._stats.rejected == 1
    assert "adaptive bound" in strategy._stats.reasons[0]
    assert all(torch.isfinite(p).all() for p in strategy.model.parameters())


def test_run_whose_rounds_all_fail_ends_with_an_error(shared_data: Path, tmp_path: Path) -> None:
    def broken(rnd: int, node: int, msg: Message, reply: Message) -> Message | None:
        if rnd < 2:
            return None
        arrays = reply.content.array_records[P.ARRAYS]
        arrays[P.UPDATE] = Array(np.full(arrays[P.UPDATE].shape, np.nan, dtype=np.float32))
        return reply

    config = tiny_vision_config(shared_data, rounds=8, max_skipped_rounds=3)
    run_dir = tmp_path / "run"
    with pytest.raises(RunFailed, match="rounds 2 to 4 had no usable update"):
        run_server(InProcessGrid(2, tamper=broken), config, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["skipped"] for r in rows[1:]] == [False, True, True, True]
    assert "max-skipped-rounds=3" in json.loads((run_dir / FAILURE).read_text())["reason"]
    assert not (run_dir / "summary.json").exists()


# 5. Client-side Fisher --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["no-arrays", "stype", "negative"])
def test_bad_fisher_reply_is_ignored(shared_data: Path, kind: str) -> None:
    def change(rnd: int, msg: Message, reply: Message) -> Message:
        metrics = reply.content.metric_records[P.METRICS]
        if kind == "no-arrays":
            return Message(RecordDict({P.METRICS: metrics}), reply_to=msg)
        arrays = reply.content.array_records[P.ARRAYS]
        scores = arrays[P.SCORES]
        if kind == "stype":
            arrays[P.SCORES] = Array(scores.dtype, scores.shape, "pickle", scores.data)
        else:
            bad = scores.numpy().copy()
            bad[0] = -1.0
            arrays[P.SCORES] = Array(bad)
        return reply

    def tamper(rnd: int, node: int, msg: Message, reply: Message) -> Message | None:
        if node != HOSTILE or msg.metadata.message_type != "query":
            return None
        return change(rnd, msg, reply)

    config = tiny_vision_config(shared_data, rounds=1, mask_source="clients")
    strategy = make_strategy(config)
    strategy.start(InProcessGrid(2, tamper=tamper))
    assert strategy.plan is not None and strategy._stats.rejected == 0


def test_scaled_fisher_scores_weigh_no_more_than_their_share(shared_data: Path) -> None:
    """A client that scales its scores up by 1e4 gets the same mask as if it had not."""

    def masks(scale: float) -> str:
        def change(rnd: int, node: int, msg: Message, reply: Message) -> Message | None:
            if node != HOSTILE or msg.metadata.message_type != "query":
                return None
            arrays = reply.content.array_records[P.ARRAYS]
            scores = arrays[P.SCORES].numpy().astype(np.float32) * scale
            arrays[P.SCORES] = Array(scores.astype(np.float16))
            reply.content.metric_records[P.METRICS]["scores-scale"] = 1e30
            return reply

        config = tiny_vision_config(shared_data, rounds=1, mask_source="clients")
        strategy = make_strategy(config)
        strategy.prepare_round(1, InProcessGrid(2, tamper=change))
        assert strategy.plan is not None
        return strategy.plan.union.fingerprint

    # Powers of two: the fp16 scores scale exactly, so only the weighting could differ.
    assert masks(1.0) == masks(2.0**10)


# 10. Metrics a client reports ---------------------------------------------------------------
def test_nan_train_loss_and_implausible_counts_stay_out_of_the_log(
    shared_data: Path, tmp_path: Path
) -> None:
    def change(rnd: int, msg: Message, reply: Message) -> Message:
        metrics = reply.content.metric_records[P.METRICS]
        if msg.metadata.message_type == "train":
            metrics[P.TRAIN_LOSS] = float("nan")
            metrics[P.BYTES_RECEIVED] = 10**15
            metrics[P.TRAIN_SECONDS] = -1e6
        else:  # federated evaluation: a perfect score for a huge claimed sample
            metrics["accuracy"] = 1.0
            metrics[P.NUM_EXAMPLES] = 10**12
        return reply

    config = tiny_vision_config(shared_data, rounds=1, federated_eval=True)
    recorder = RunRecorder(tmp_path / "run", config, stream=None)
    strategy = make_strategy(config, recorder)
    strategy.start(InProcessGrid(2, tamper=_hostile(change)))
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    rows = [json.loads(line, parse_constant=_refuse) for line in text.splitlines()]
    row = rows[1]
    assert row["train_loss"] is not None and math.isfinite(row["train_loss"])
    # One honest node's own count, not 10^15.
    assert 0 < row["node_bytes_received"] <= row["bytes_down"]
    # A negative training time is dropped: only the honest node's own time is summed.
    assert 0 < row["client_train_time"] <= row["round_time"]
    # The hostile claim is capped at the largest partition: the mean stays well below 1.
    assert row["federated_eval"]["accuracy"] < 0.9


def _refuse(name: str) -> float:
    raise ValueError(f"metrics.jsonl holds {name}")


def test_unreadable_reply_object_is_rejected(shared_data: Path) -> None:
    """A reply whose records cannot even be listed is a rejection, not a crash."""

    class Broken:
        def __init__(self, reply: Message) -> None:
            self.metadata = reply.metadata

        def has_error(self) -> bool:
            raise RuntimeError("corrupt message")

    config = tiny_vision_config(shared_data, rounds=1)
    strategy = make_strategy(config)
    strategy.prepare_round(1, None)
    grid = InProcessGrid(2)
    messages = list(strategy.configure_train(1, ArrayRecord(), None, grid))  # type: ignore[arg-type]
    replies = grid.send_and_receive(messages)
    replies[1] = Broken(replies[1])  # type: ignore[call-overload]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert strategy._stats.rejected == 1 and "unreadable reply" in strategy._stats.reasons[0]
