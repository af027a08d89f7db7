"""The FISH strategy with the real client handlers on an in-process grid."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fish_fl import protocol as P
from fish_fl.masks import Mask
from fish_fl.runlog import RunRecorder
from fish_fl.task import build_task_model, evaluate_model, load_task_data
from tests.flower_harness import InProcessGrid, make_strategy, tiny_vision_config


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))


def test_federation_traffic_and_frozen_entries(shared_data: Path, tmp_path: Path) -> None:
    config = tiny_vision_config(shared_data, rounds=3)
    recorder = RunRecorder(tmp_path / "run", config, stream=None)
    strategy = make_strategy(config, recorder)
    grid = InProcessGrid(2)
    strategy.start(grid)
    rows = recorder.rows
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert all(r["replies"] == 2 and r["rejected"] == 0 for r in rows[1:])
    # The ledger books exactly what crossed the grid, message by message.
    for rnd in (1, 2, 3):
        assert rows[rnd]["bytes_down"] == grid.bytes("down", rnd)
        assert rows[rnd]["bytes_up"] == grid.bytes("up", rnd)
        assert rows[rnd]["messages_down"] == 2 and rows[rnd]["messages_up"] == 2
        # Each node's own measure of what it received is within metadata noise.
        assert abs(rows[rnd]["node_bytes_received"] - rows[rnd]["bytes_down"]) < 64
    # The mask travels once per node: only in round 1.
    assert rows[1]["mask_bytes"] > 0 and rows[1]["mask_broadcasts"] == 2
    assert rows[2]["mask_bytes"] == 0 and rows[3]["mask_bytes"] == 0
    down_keys = {(t.round, t.node): t.keys for t in grid.traffic if t.direction == "down"}
    assert all((P.MASK in keys) == (rnd == 1) for (rnd, _), keys in down_keys.items())
    assert all(P.BASE not in keys and P.BASE_PATCH not in keys for keys in down_keys.values())
    # Upload: k values of float32 plus small overhead (buffers, metrics, framing).
    k = strategy.plan.union.k  # type: ignore[union-attr]
    buffers = P.flat_buffers(strategy.model).numel()
    per_message = rows[2]["bytes_up"] / 2
    assert 4 * (k + buffers) < per_message < 4 * (k + buffers) + 2000
    # Every entry outside the mask is bit-identical to the base.
    base = build_task_model(config)
    mask = strategy.plan.union  # type: ignore[union-attr]
    for (name, p), q in zip(strategy.model.named_parameters(), base.parameters(), strict=True):
        keep = mask.to_bool(name)
        assert torch.equal(p.detach()[~keep], q.detach()[~keep]), name
        if keep.any():
            assert not torch.equal(p.detach()[keep], q.detach()[keep]), f"{name}: nothing trained"
    assert rows[3]["score"] is not None


def _set_update(reply: Message, delta: np.ndarray) -> Message:
    arrays = reply.content.array_records[P.ARRAYS]
    arrays[P.UPDATE] = Array(delta.astype(np.float32))
    return reply


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_aggregation_matches_hand_computation(shared_data: Path, mode: str) -> None:
    config = tiny_vision_config(
        shared_data, rounds=1, aggregation=mode, partition="dirichlet", dirichlet_alpha=1.0
    )
    strategy = make_strategy(config)
    chosen: dict[int, np.ndarray] = {}
    weights: dict[int, int] = {}

    def tamper(rnd: int, node: int, msg: Message, reply: Message) -> Message:
        k = len(msg.content.array_records[P.ARRAYS][P.VALUES].numpy())
        delta = np.random.default_rng(node).normal(size=k).astype(np.float32)
        chosen[node] = delta
        weights[node] = int(reply.content.metric_records[P.METRICS][P.NUM_EXAMPLES])  # type: ignore[arg-type]
        return _set_update(reply, delta)

    strategy.start(InProcessGrid(2, tamper=tamper))
    start = strategy.state.base_values.double()
    deltas = [torch.from_numpy(chosen[n]).double() for n in sorted(chosen)]
    w = [weights[n] for n in sorted(chosen)]
    assert w[0] != w[1]  # Dirichlet sizes differ, so weighting matters
    if mode == "sum":
        expected = start + deltas[0] + deltas[1]
    else:
        expected = start + (w[0] * deltas[0] + w[1] * deltas[1]) / (w[0] + w[1])
    torch.testing.assert_close(strategy.values.double(), expected, rtol=0, atol=1e-6)
    mask = strategy.plan.union  # type: ignore[union-attr]
    torch.testing.assert_close(mask.gather(strategy.model).double(), expected, rtol=0, atol=1e-6)


def _bad(kind: str):
    def tamper(rnd: int, node: int, msg: Message, reply: Message) -> Message | None:
        if node != 1001:
            return None
        arrays = reply.content.array_records[P.ARRAYS]
        metrics = reply.content.metric_records[P.METRICS]
        update = arrays[P.UPDATE].numpy()
        if kind == "nan":
            update = update.copy()
            update[0] = np.nan
            arrays[P.UPDATE] = Array(update)
        elif kind == "length":
            arrays[P.UPDATE] = Array(update[:-1].copy())
        elif kind == "dtype":
            arrays[P.UPDATE] = Array(update.astype(np.float64))
        elif kind == "version":
            metrics[P.METRIC_MASK_VERSION] = 99
        elif kind == "examples":
            metrics[P.NUM_EXAMPLES] = 0
        elif kind == "extra-key":
            arrays["extra"] = Array(np.zeros(3, np.float32))
        elif kind == "huge":
            arrays[P.UPDATE] = Array(np.full_like(update, 1e3))
        elif kind == "missing-metrics":
            return Message(RecordDict({P.ARRAYS: arrays}), reply_to=msg)
        return reply

    return tamper


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("nan", "non-finite"),
        ("length", "expected"),
        ("dtype", "dtype float64"),
        ("version", "stale mask version 99"),
        ("examples", "num-examples must be a positive integer"),
        ("extra-key", "expected arrays"),
        ("missing-metrics", "expected records"),
        ("huge", "exceeds max-update-norm=10000"),
    ],
)
def test_bad_reply_rejected_round_goes_on(
    shared_data: Path, caplog: pytest.LogCaptureFixture, kind: str, reason: str
) -> None:
    config = tiny_vision_config(shared_data, rounds=1, max_update_norm=1e4)
    strategy = make_strategy(config)
    grid = InProcessGrid(2, tamper=_bad(kind))
    with caplog.at_level(logging.WARNING):
        strategy.start(grid)
    stats = strategy._stats
    assert stats.rejected == 1 and stats.replies == 2 and not stats.skipped
    assert any("node 1001" in r.message and reason in r.message for r in caplog.records), (
        caplog.text
    )
    # The good node's update was applied.
    assert not torch.equal(strategy.values, strategy.state.base_values)


def test_too_few_valid_replies_skip_the_round(shared_data: Path) -> None:
    config = tiny_vision_config(shared_data, rounds=1, min_replies=2)
    strategy = make_strategy(config)
    before = {n: p.detach().clone() for n, p in strategy.model.named_parameters()}
    buffers = P.flat_buffers(strategy.model)
    strategy.start(InProcessGrid(2, tamper=_bad("nan")))
    assert strategy._stats.skipped
    for n, p in strategy.model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert torch.equal(P.flat_buffers(strategy.model), buffers)


def test_failing_client_left_out(shared_data: Path) -> None:
    config = tiny_vision_config(shared_data, rounds=2)
    strategy = make_strategy(config)
    grid = InProcessGrid(2)
    grid.fail = {(1, 0)}
    strategy.start(grid)
    # Round 1: partition 0 failed and is left out; it gets the mask again in round 2.
    down = {(t.round, t.node): t.keys for t in grid.traffic if t.direction == "down"}
    assert P.MASK in down[(2, 1000)] and P.MASK not in down[(2, 1001)]


def test_mask_sent_only_to_nodes_that_lack_it(shared_data: Path) -> None:
    config = tiny_vision_config(shared_data, rounds=4, num_clients=3, clients_per_round=1)
    strategy = make_strategy(config)
    grid = InProcessGrid(3)
    strategy.start(grid)
    seen: dict[int, int] = {}
    for t in grid.traffic:
        if t.direction == "down":
            first = t.node not in seen
            seen.setdefault(t.node, t.round)
            assert (P.MASK in t.keys) == first, (t.round, t.node, t.keys)


def test_warmup_then_refresh_uses_base_patches(shared_data: Path, tmp_path: Path) -> None:
    config = tiny_vision_config(shared_data, rounds=5, warmup_rounds=1, mask_refresh=2)
    recorder = RunRecorder(tmp_path / "run", config, stream=None)
    strategy = make_strategy(config, recorder)
    grid = InProcessGrid(2)
    strategy.start(grid)
    rows = recorder.rows
    assert [r["phase"] for r in rows] == ["init", "dense", "sparse", "sparse", "sparse", "sparse"]
    assert [r["mask_version"] for r in rows[1:]] == [1, 2, 2, 3, 3]
    assert all(r["rejected"] == 0 and r["replies"] == 2 for r in rows[1:])
    down = {(t.round, t.node): t.keys for t in grid.traffic if t.direction == "down"}
    for node in (1000, 1001):
        # After the dense warm-up and at the refresh, nodes patch their base.
        assert P.BASE_PATCH in down[(2, node)] and P.MASK in down[(2, node)]
        assert P.BASE_PATCH in down[(4, node)] and P.MASK in down[(4, node)]
        assert all(P.BASE_PATCH not in down[(r, node)] for r in (1, 3, 5))
    assert rows[1]["k"] == strategy.total  # dense warm-up trains everything
    # The dense warm-up round costs about a full model per message each way.
    assert rows[1]["bytes_up"] > 2 * 4 * strategy.total
    assert set(recorder.mask_stats) == {"1", "2", "3"}


def test_lost_base_is_sent_again(shared_data: Path, tmp_path: Path) -> None:
    from clients.runtime import runtime

    config = tiny_vision_config(shared_data, rounds=4, warmup_rounds=1)
    strategy = make_strategy(config)
    grid = InProcessGrid(2)
    original = grid.send_and_receive

    def forgetful(messages, *, timeout=None):  # the node's device restarted after round 2
        messages = list(messages)
        if messages and int(messages[0].content.config_records["config"]["server-round"]) == 3:
            runtime.models.clear()  # its model (which held the base) is gone ...
            runtime.bases.memory.clear()  # ... and so are the cached bases
            for f in (tmp_path / "cache" / "bases").iterdir():
                f.unlink()
        return original(messages, timeout=timeout)

    grid.send_and_receive = forgetful  # type: ignore[method-assign]
    strategy.start(grid)
    down = {(t.round, t.node): t.keys for t in grid.traffic if t.direction == "down"}
    assert all(P.BASE in down[(4, n)] for n in (1000, 1001))  # full base after the loss
    assert strategy._stats.rejected == 0


def test_disjoint_masks(shared_data: Path) -> None:
    config = tiny_vision_config(shared_data, rounds=2, mask_assignment="disjoint", density=0.05)
    strategy = make_strategy(config)
    grid = InProcessGrid(2)
    strategy.start(grid)
    plan = strategy.plan
    assert plan is not None and plan.num_slots == 2
    (m0, pos0), (m1, pos1) = plan.slots
    heads = {"fc.weight", "fc.bias"}
    for name in m0.names:
        overlap = np.intersect1d(m0.indices[name].numpy(), m1.indices[name].numpy())
        assert (overlap.size == m0.numel(name)) if name in heads else overlap.size == 0, name
    assert abs(m0.k - m1.k) <= 1 and plan.union.k == m0.k + m1.k - sum(m0.numel(h) for h in heads)
    assert strategy._stats.rejected == 0


def test_client_side_fisher(shared_data: Path) -> None:
    config = tiny_vision_config(shared_data, rounds=2, mask_source="clients")
    strategy = make_strategy(config)
    grid = InProcessGrid(2)
    strategy.start(grid)
    queries = [t for t in grid.traffic if t.kind == "query"]
    assert {t.direction for t in queries} == {"down", "up"} and len(queries) == 4
    # Each node uploads its scores once, in float16: about 2 bytes per parameter.
    up = [t.nbytes for t in queries if t.direction == "up"]
    assert all(2 * strategy.total < b < 2 * strategy.total + 2000 for b in up)
    assert isinstance(strategy.plan.union, Mask)  # type: ignore[union-attr]
    assert strategy.ledger.summary(1)["bytes_up"] >= sum(up)


def test_budget_stops_the_run(shared_data: Path, tmp_path: Path) -> None:
    config = tiny_vision_config(shared_data, rounds=10, budget_fme=0.25)
    recorder = RunRecorder(tmp_path / "run", config, stream=None)
    strategy = make_strategy(config, recorder)
    strategy.start(InProcessGrid(2))
    assert strategy.stopped_by_budget
    last = recorder.rows[-1]
    assert last["cum_fme"] >= 0.25 and recorder.rows[-2]["cum_fme"] < 0.25
    assert last["score"] is not None  # the last round is always evaluated
    assert last["round"] < 10


def test_validation_split_is_scored_beside_the_dev_set(shared_data: Path, tmp_path: Path) -> None:
    config = tiny_vision_config(shared_data, rounds=2, eval_every=2, validation_examples=60)
    recorder = RunRecorder(tmp_path / "run", config, stream=None)
    strategy = make_strategy(config, recorder)
    strategy.start(InProcessGrid(2))
    rows = recorder.rows
    # Scored whenever the dev set is (rounds 0 and 2 here), never otherwise.
    assert [r["val_score"] is None for r in rows] == [False, True, False]
    assert rows[1]["score"] is None and rows[1]["val_eval"] is None
    for row in (rows[0], rows[2]):
        assert row["val_score"] == row["val_eval"]["accuracy"]
        assert set(row["val_eval"]) == set(row["eval"])
    # The final row's validation score is the trained model's on those 60 training images.
    data = load_task_data(config)
    again = evaluate_model(
        strategy.model, data.validation_loader(), data.metric_task, torch.device("cpu")
    )
    assert rows[2]["val_score"] == again["accuracy"]
    assert rows[2]["val_score"] != rows[2]["score"]
    # Without the key, rows carry neither.
    plain = config.replace(validation_examples=0, rounds=1)
    off = RunRecorder(tmp_path / "off", plain, stream=None)
    make_strategy(plain, off).start(InProcessGrid(2))
    assert all("val_score" not in r and "val_eval" not in r for r in off.rows)


def test_constructed_reply_without_node_is_rejected(shared_data: Path) -> None:
    config = tiny_vision_config(shared_data, rounds=1)
    strategy = make_strategy(config)
    strategy.prepare_round(1, None)
    grid = InProcessGrid(2)
    messages = list(strategy.configure_train(1, ArrayRecord(), None, grid))  # type: ignore[arg-type]
    stray = Message(
        RecordDict({P.ARRAYS: ArrayRecord(), P.METRICS: MetricRecord({P.NUM_EXAMPLES: 1})}),
        reply_to=messages[0],
    )
    strategy._sent.pop(messages[0].metadata.dst_node_id)
    arrays, _ = strategy.aggregate_train(1, [stray])
    assert arrays is None and strategy._stats.rejected == 1


def test_run_is_reproducible_whatever_the_node_ids(shared_data: Path) -> None:
    config = tiny_vision_config(shared_data, rounds=2)
    first = make_strategy(config)
    first.start(InProcessGrid(2))
    second = make_strategy(config)
    second.start(InProcessGrid(2, node_ids=[7, 3]))  # other ids, other order
    assert torch.equal(first.values, second.values)


def test_update_norm_clipped(shared_data: Path) -> None:
    config = tiny_vision_config(shared_data, rounds=1, max_update_norm=1e-3, norm_policy="clip")
    strategy = make_strategy(config)
    strategy.start(InProcessGrid(2, tamper=_bad("huge")))
    stats = strategy._stats
    assert stats.rejected == 0 and stats.clipped == 2
    moved = (strategy.values - strategy.state.base_values).double().norm()
    assert 0 < float(moved) <= 1e-3 * (1 + 1e-6)  # a mean of two clipped updates


def test_missing_replies_counted(shared_data: Path) -> None:
    config = tiny_vision_config(shared_data, rounds=1)
    strategy = make_strategy(config)
    grid = InProcessGrid(2)
    original = grid.send_and_receive

    def lossy(messages, *, timeout=None):  # node 1001's reply never arrives
        return [r for r in original(messages, timeout=timeout) if r.metadata.src_node_id != 1001]

    grid.send_and_receive = lossy  # type: ignore[method-assign]
    strategy.start(grid)
    assert strategy._stats.missing == 1 and strategy._stats.replies == 1


def test_node_config_data_dir_overrides_the_run(shared_data: Path, tmp_path: Path) -> None:
    """A device may keep its data elsewhere: node config `data-dir` wins over the run's."""
    config = tiny_vision_config(shared_data, rounds=1)
    strategy = make_strategy(config)
    grid = InProcessGrid(2)
    missing = tmp_path / "elsewhere.npz"
    grid.contexts[1001].node_config["data-dir"] = str(missing)
    copy = tmp_path / "copy.npz"
    copy.write_bytes(Path(config.data_dir).read_bytes())
    grid.contexts[1000].node_config["data-dir"] = str(copy)
    strategy.start(grid)
    stats = strategy._stats
    assert stats.replies == 2 and stats.rejected == 1
    assert "node 1001" in stats.reasons[0] and "elsewhere.npz" in stats.reasons[0]
