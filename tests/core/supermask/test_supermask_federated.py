"""Federated supermasks: layout, the server's combination, the strategy on a grid, the run folder."""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, Message

from fish_fl import protocol as P
from fish_fl.checkpoint import apply_sparse_delta
from fish_fl.config import ConfigError, RunConfig
from fish_fl.masks import MaskSpec, build_mask
from fish_fl.methods import method_for
from fish_fl.runlog import RunRecorder
from fish_fl.supermask import (
    SupermaskConfig,
    SupermaskLayout,
    SupermaskModel,
    combine_sampled_masks,
    pack_mask,
    unpack_mask,
)
from fish_fl.supermask.method import (
    CFG_SCORES_FINGERPRINT,
    SAMPLED_MASK,
    SupermaskMethod,
    supermask_config,
)
from fish_fl.supermask.method import masks_down as _masks_down
from fish_fl.task import build_base_model
from strategies.server_app import run_server
from tests.flower_harness import InProcessGrid, make_strategy, tiny_vision_config
from tests.tiny_models import tiny_bert


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))


def _wrapper() -> SupermaskModel:
    return SupermaskModel(tiny_bert(num_labels=2), SupermaskConfig(initial_sparsity=0.3))


# --------------------------------------------------------------------------
# Layout and combination (no Flower)
# --------------------------------------------------------------------------
def test_layout_picks_scores_and_head_out_of_the_k_vector() -> None:
    wrapper = _wrapper()
    mask = build_mask(wrapper, MaskSpec(method="supermask"))
    layout = SupermaskLayout.of(wrapper, mask)
    values = mask.gather(wrapper)
    assert layout.k == mask.k == layout.num_scores + layout.num_head
    assert layout.num_scores == wrapper.numel_maskable
    torch.testing.assert_close(layout.scores(values), wrapper.score_vector(), rtol=0, atol=0)
    params = dict(wrapper.named_parameters())
    head = torch.cat([params[n].detach().reshape(-1) for n in wrapper.head_parameter_names()])
    torch.testing.assert_close(layout.head(values), head, rtol=0, atol=0)
    # Positions partition the k-vector.
    both = torch.cat([layout.score_positions, layout.head_positions]).sort().values
    assert torch.equal(both, torch.arange(mask.k))


def test_layout_refuses_another_mask() -> None:
    wrapper = _wrapper()
    dense = build_mask(wrapper, MaskSpec(method="dense"))
    with pytest.raises(ValueError, match="keeps exactly every score and head entry"):
        SupermaskLayout.of(wrapper, dense)


def test_combine_sampled_masks_by_hand() -> None:
    wrapper = _wrapper()
    mask = build_mask(wrapper, MaskSpec(method="supermask"))
    layout = SupermaskLayout.of(wrapper, mask)
    values = mask.gather(wrapper)
    gen = torch.Generator().manual_seed(3)
    masks = [torch.rand(layout.num_scores, generator=gen) < q for q in (0.9, 0.4, 0.7)]
    weights = [10.0, 30.0, 60.0]
    head_delta = torch.randn(layout.num_head, generator=gen)
    new = combine_sampled_masks(
        values, layout, [pack_mask(m) for m in masks], head_delta, weights, max_score=5.0
    )
    # By hand, entry by entry, for the first 50 scores.
    for i in range(50):
        p = sum(w * float(m[i]) for w, m in zip(weights, masks, strict=True)) / sum(weights)
        want = 5.0 if p == 1 else -5.0 if p == 0 else max(-5.0, min(5.0, math.log(p / (1 - p))))
        assert abs(float(layout.scores(new)[i]) - want) < 1e-5, i
    torch.testing.assert_close(layout.head(new), layout.head(values) + head_delta)
    with pytest.raises(ValueError, match="head update has"):
        combine_sampled_masks(values, layout, [pack_mask(masks[0])], head_delta[:-1], [1.0])


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"aggregation": "sum"}, "supermask-uplink=mask averages the sampled masks"),
        ({"mask-source": "clients"}, "it needs mask-source='server'"),
        ({"mask-assignment": "disjoint"}, "it needs mask-assignment='shared'"),
        ({"warmup-rounds": 1, "rounds": 3}, "it needs warmup-rounds=0"),
        ({"mask-refresh": 2}, "it needs mask-refresh=0"),
        ({"supermask-initial-sparsity": 1.0}, "supermask-initial-sparsity=1.0 must be < 1"),
        ({"supermask-uplink": "bits"}, "supermask-uplink='bits' is not allowed"),
        ({"supermask-score-lr": 0}, "supermask-score-lr=0.0 must be > 0.0"),
        ({"optimizer": "sgd"}, "it needs optimizer='adamw', got 'sgd'"),
        (
            {"supermask-uplink": "scores", "supermask-downlink": "masks"},
            "supermask-downlink=masks forwards the clients' sampled masks",
        ),
    ],
)
def test_bad_supermask_config(values: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"mask-method": "supermask", **values})
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_auto_downlink_sends_masks_below_32_clients_a_round() -> None:
    def masks_down(**values: object) -> bool:
        return _masks_down(RunConfig.from_mapping({"mask-method": "supermask", **values}))

    assert masks_down(**{"num-clients": 31})
    assert not masks_down(**{"num-clients": 32})
    assert masks_down(**{"num-clients": 64, "clients-per-round": 8})
    assert masks_down(**{"num-clients": 64, "supermask-downlink": "masks"})
    assert not masks_down(**{"supermask-uplink": "scores"})
    assert not isinstance(method_for(RunConfig()), SupermaskMethod)


def test_sum_of_score_updates_is_allowed() -> None:
    config = RunConfig.from_mapping(
        {"mask-method": "supermask", "supermask-uplink": "scores", "aggregation": "sum"}
    )
    assert supermask_config(config, vision=True).maskable == ("conv1", r"layer\d+")


# --------------------------------------------------------------------------
# The strategy with the real client handlers
# --------------------------------------------------------------------------
def _config(shared_data: Path, **changes: object) -> RunConfig:
    values: dict[str, object] = {
        "mask_method": "supermask",
        "optimizer": "adamw",
        "partition": "dirichlet",
        "dirichlet_alpha": 1.0,
        "lr": 0.01,
    }
    values.update(changes)
    return tiny_vision_config(shared_data, **{k.replace("_", "-"): v for k, v in values.items()})


def _recording(store: dict[tuple[int, int], Message]):
    def tamper(rnd: int, node: int, msg: Message, reply: Message) -> None:
        store[(rnd, node)] = reply

    return tamper


def test_sampled_masks_round_by_hand(shared_data: Path, tmp_path: Path) -> None:
    config = _config(shared_data, rounds=2)
    recorder = RunRecorder(tmp_path / "run", config, stream=None)
    strategy = make_strategy(config, recorder)
    assert isinstance(strategy.method, SupermaskMethod)
    replies: dict[tuple[int, int], Message] = {}
    grid = InProcessGrid(2, tamper=_recording(replies))
    initial = {n: p.detach().clone() for n, p in strategy.model.named_parameters()}
    before_round2: dict[str, torch.Tensor] = {}

    original = strategy.prepare_round

    def prepare(rnd: int, g: object) -> None:
        original(rnd, g)  # type: ignore[arg-type]
        if rnd == 2:
            before_round2["values"] = strategy.values.clone()

    strategy.prepare_round = prepare  # type: ignore[method-assign]
    strategy.start(grid)
    layout = strategy.method.layout(strategy.state)  # type: ignore[attr-defined]
    wrapper = strategy.model
    assert isinstance(wrapper, SupermaskModel)

    # Every reply carries the head's update and a mask of exactly ceil(n / 8) bytes.
    for reply in replies.values():
        arrays = reply.content.array_records[P.ARRAYS]
        assert set(arrays.keys()) >= {P.UPDATE, SAMPLED_MASK}
        assert arrays[SAMPLED_MASK].numpy().size == math.ceil(layout.num_scores / 8)
        assert arrays[P.UPDATE].numpy().size == layout.num_head

    # Round 2 by hand: scores from the example-weighted mean of the two masks,
    # head moved by the example-weighted mean of the head updates.
    r2 = [replies[(2, node)] for node in (1000, 1001)]
    masks = [
        unpack_mask(r.content.array_records[P.ARRAYS][SAMPLED_MASK].numpy(), layout.num_scores)
        for r in r2
    ]
    w = [float(r.content.metric_records[P.METRICS][P.NUM_EXAMPLES]) for r in r2]  # type: ignore[arg-type]
    assert w[0] != w[1]
    p = (w[0] * masks[0].double() + w[1] * masks[1].double()) / (w[0] + w[1])
    want_scores = torch.logit(p).clamp(-5, 5).float()
    torch.testing.assert_close(wrapper.score_vector(), want_scores, rtol=0, atol=1e-5)
    heads = [torch.from_numpy(r.content.array_records[P.ARRAYS][P.UPDATE].numpy()) for r in r2]
    want_head = layout.head(before_round2["values"]) + (w[0] * heads[0] + w[1] * heads[1]) / sum(w)
    torch.testing.assert_close(layout.head(strategy.values), want_head, rtol=0, atol=1e-6)

    # The pre-trained weights never move; only scores and head do.
    heads_names = set(wrapper.head_parameter_names())
    for name, param in wrapper.named_parameters():
        if name.startswith("scores.") or name in heads_names:
            continue
        assert torch.equal(param.detach(), initial[name]), name

    # The ledger books what crossed the grid; the log shows 1 bit per masked weight.
    rows = recorder.rows
    for rnd in (1, 2):
        assert rows[rnd]["bytes_up"] == grid.bytes("up", rnd)
        assert rows[rnd]["bytes_down"] == grid.bytes("down", rnd)
        sm = rows[rnd]["supermask"]
        assert sm["mask_bits_per_weight"] == pytest.approx(
            8 * math.ceil(layout.num_scores / 8) / layout.num_scores
        )
        # Mask, head update, BatchNorm buffers and framing: a few bits per weight, not 32.
        assert 1.0 < sm["bits_per_weight_up"] < 8.0
        assert 0.0 <= sm["sparsity_threshold"] <= 1.0
    # Full-model equivalents are against the wrapped model, not model plus scores.
    numel = sum(q.numel() for q in wrapper.model.parameters())
    assert strategy.ledger.full_model_bytes == 4 * numel


def test_score_updates_are_averaged(shared_data: Path) -> None:
    config = _config(shared_data, rounds=1, supermask_uplink="scores")
    strategy = make_strategy(config)
    replies: dict[tuple[int, int], Message] = {}
    strategy.start(InProcessGrid(2, tamper=_recording(replies)))
    r1 = [replies[(1, node)] for node in (1000, 1001)]
    deltas = [torch.from_numpy(r.content.array_records[P.ARRAYS][P.UPDATE].numpy()) for r in r1]
    w = [float(r.content.metric_records[P.METRICS][P.NUM_EXAMPLES]) for r in r1]  # type: ignore[arg-type]
    assert all(d.numel() == strategy.plan.union.k for d in deltas)  # type: ignore[union-attr]
    want = strategy.state.base_values + (w[0] * deltas[0] + w[1] * deltas[1]) / sum(w)
    torch.testing.assert_close(strategy.values, want, rtol=0, atol=1e-6)
    assert not torch.equal(strategy.values, strategy.state.base_values)


def test_mask_downlink_rebuilds_the_same_run(shared_data: Path, tmp_path: Path) -> None:
    """Masks down (n bits per weight) or float32 scores down: bit for bit the same model."""
    runs = {}
    for downlink in ("masks", "scores"):
        config = _config(shared_data, rounds=3, supermask_downlink=downlink)
        recorder = RunRecorder(tmp_path / downlink, config, stream=None)
        strategy = make_strategy(config, recorder)
        grid = InProcessGrid(2)
        strategy.start(grid)
        runs[downlink] = (strategy, recorder.rows, grid)
    masks, scores = runs["masks"][0], runs["scores"][0]
    assert torch.equal(masks.values, scores.values)
    for (name, a), (_, b) in zip(
        masks.model.named_parameters(), scores.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    layout = masks.method.layout(masks.state)  # type: ignore[attr-defined]
    # Rounds 2 and 3 send each node the 2 masks of the last round, not float32 scores.
    buffers = P.flat_buffers(masks.model).numel()
    for rnd in (2, 3):
        row = runs["masks"][1][rnd]
        per_message = row["bytes_down"] / row["messages_down"]
        payload = 2 * layout.packed_bytes + 4 * (layout.num_head + buffers)
        assert payload < per_message < payload + 2000
        assert row["supermask"]["downlink"] == "masks"
        assert row["supermask"]["bits_per_weight_down"] < 0.2 * 32
        assert runs["scores"][1][rnd]["bytes_down"] > 4 * layout.num_scores * 2
    # Round 1: the scores are the base's initial ones; only the head goes down.
    row = runs["masks"][1][1]
    assert row["bytes_down"] / 2 < 4 * layout.num_scores


def test_node_refuses_scores_it_cannot_rebuild(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(shared_data, rounds=2)
    strategy = make_strategy(config)
    original = strategy.method.value_config

    def wrong(values: torch.Tensor, state: object) -> dict[str, object]:
        out = original(values, state)  # type: ignore[arg-type]
        if (
            "extra/score-masks" in strategy.state.extra
        ):  # from round 2: other scores than the masks give
            out[CFG_SCORES_FINGERPRINT] = "0" * 16
        return out

    strategy.method.value_config = wrong  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        strategy.start(InProcessGrid(2))
    assert strategy._stats.skipped and strategy._stats.rejected == 2
    assert "rebuilt scores have fingerprint" in caplog.text


def _bad_mask(kind: str):
    def tamper(rnd: int, node: int, msg: Message, reply: Message) -> Message | None:
        if node != 1001:
            return None
        arrays = reply.content.array_records[P.ARRAYS]
        packed = arrays[SAMPLED_MASK].numpy().copy()
        if kind == "short":
            arrays[SAMPLED_MASK] = Array(packed[:-1].copy())
        elif kind == "padding":
            packed[-1] = 0xFF
            arrays[SAMPLED_MASK] = Array(packed)
        elif kind == "dtype":
            arrays[SAMPLED_MASK] = Array(packed.astype(np.int32))
        elif kind == "missing":
            del arrays[SAMPLED_MASK]
        elif kind == "2d":  # the right bytes in the wrong shape
            arrays[SAMPLED_MASK] = Array(packed.reshape(1, -1).copy())
        return reply

    return tamper


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("short", "sampled-mask: "),
        ("padding", "padding bits set"),
        ("dtype", "sampled-mask: dtype int32, expected uint8"),
        ("2d", "sampled-mask: shape (1, "),
        ("missing", "expected arrays"),
    ],
)
def test_bad_sampled_mask_rejected_round_goes_on(
    shared_data: Path, caplog: pytest.LogCaptureFixture, kind: str, reason: str
) -> None:
    config = _config(shared_data, rounds=1, partition="iid")
    strategy = make_strategy(config)
    layout_numel = strategy.model.numel_maskable  # type: ignore[attr-defined]
    if kind == "padding" and layout_numel % 8 == 0:
        pytest.skip("no padding bits at this size")
    before = strategy.values.clone()
    with caplog.at_level(logging.WARNING):
        strategy.start(InProcessGrid(2, tamper=_bad_mask(kind)))
    stats = strategy._stats
    assert stats.rejected == 1 and not stats.skipped
    assert any("node 1001" in r.message and reason in r.message for r in caplog.records), (
        caplog.text
    )
    assert not torch.equal(strategy.values, before)


def test_run_folder_report_and_delta(shared_data: Path, tmp_path: Path) -> None:
    config = _config(shared_data, rounds=2, supermask_eval_samples=2)
    run_dir = tmp_path / "run"
    summary = run_server(InProcessGrid(2), config, run_dir)
    report = json.loads((run_dir / "supermask.json").read_text())
    assert len(report["sampled_metrics"]) == 2 and report["metric"] == "accuracy"
    assert 0 <= report["sparsity_threshold"] <= 1
    assert summary["supermask"]["threshold"] == report["threshold"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    # The last round's score is the most likely mask's, as the report says.
    assert rows[-1]["score"] == pytest.approx(report["threshold"])
    # The delta rebuilds the deployable model: weights under the most likely
    # mask, the trained head; applied to the plain base model.
    base = build_base_model(config)
    rebuilt = apply_sparse_delta(copy.deepcopy(base), run_dir / "delta.safetensors")
    n_layers = report["layers"]
    dropped = sum(round(layer["threshold"] * layer["numel"]) for layer in n_layers)
    changed = sum(
        int((p.detach() != q.detach()).sum())
        for (name, p), q in zip(rebuilt.named_parameters(), base.parameters(), strict=True)
        if not name.startswith("fc.")
    )
    # Entries that were already 0 stay equal when masked, so at most `dropped` change.
    assert 0 < changed <= dropped
    # The sweep summary reads the same figures back.
    from fish_fl.plots import load_run
    from sims.commands.sweep import summarise_label

    record = load_run(run_dir)
    stats = SupermaskMethod.report_stats(record.rows, run_dir)
    assert stats["sm_sparsity_pct"] == pytest.approx(100 * report["sparsity_threshold"])
    assert stats["sm_sampled"] == pytest.approx(report["sampled_mean"])
    assert stats["sm_bits_up"] == pytest.approx(rows[-1]["supermask"]["bits_per_weight_up"])
    assert SupermaskMethod.report_stats(record.rows, None).keys() == {"sm_bits_up"}
    summary = summarise_label("sm", [(0, record, run_dir)], columns=("method",))
    assert set(summary.extra) == set(stats)


@pytest.mark.slow
def test_minilm_supermask_preset_shortened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supermask preset on the real MiniLM, shortened: 1 bit per weight, frozen weights."""
    from sims.commands.run import load_preset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_preset(
        "sst2-minilm-supermask",
        [
            "rounds=2",
            "local-steps=2",
            "batch-size=8",
            "train-examples=400",
            "fisher-samples=32",
            "eval-examples=64",
            "supermask-eval-samples=1",
            "progress=false",
            f"out-dir={tmp_path}",
        ],
    )
    run_dir = tmp_path / "run"
    summary = run_server(InProcessGrid(2), config, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sm = rows[2]["supermask"]
    # The encoder's 36 weight matrices of MiniLM: 6 blocks x (4 x 384^2 + 2 x 384 x 1536).
    assert sm["masked_weights"] == 6 * (4 * 384 * 384 + 2 * 384 * 1536) == 10_616_832
    assert sm["mask_bits_per_weight"] == 1.0
    # A reply: the packed mask plus the head's 770 float32 values and framing.
    assert 1.0 < sm["bits_per_weight_up"] < 1.01
    assert summary["full_model_bytes"] == 4 * 22_713_986
    assert sm["sparsity_expected"] > 0.0067  # the scores moved away from +5
    # Downlink of round 2: round 1's two packed masks and the head, per node: 2 bits per weight.
    per_node = rows[2]["bytes_down"] / 2
    assert 2 * 1_327_104 + 4 * 770 < per_node < 2 * 1_327_104 + 4 * 770 + 4000
    assert 2.0 < sm["bits_per_weight_down"] < 2.01
    report = json.loads((run_dir / "supermask.json").read_text())
    assert len(report["layers"]) == 36


def test_terminal_table_shows_the_dropped_share(tmp_path: Path) -> None:
    import io

    row = {
        "round": 1,
        "phase": "sparse",
        "score": 0.5,
        "eval": {"loss": 0.7},
        "train_loss": 0.6,
        "replies": 2,
        "bytes_up": 10,
        "bytes_down": 20,
        "cum_fme": 0.1,
        "wall_time": 3,
        "supermask": {"sparsity_threshold": 0.0421},
    }
    for method, last_head, last_cell in (("supermask", "dropped", "4.21%"), ("fish", "time", "3s")):
        out = io.StringIO()
        config = RunConfig.from_mapping({"mask-method": method})
        RunRecorder(tmp_path / method, config, stream=out).log_round(row)
        lines = out.getvalue().splitlines()
        assert lines[0].split()[-1] == last_head and lines[2].split()[-1] == last_cell
