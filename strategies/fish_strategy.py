"""The FISH Mask strategy: sparse federated training with a server-side mask.

The server holds the global model. It computes a mask (FISH by default, any
builder of the core registry), sends each node the mask once per mask version
and, every round, only the ``k`` masked values; nodes train those entries and
return a ``k``-vector update that the strategy validates and combines
(Sung, Nair and Raffel, NeurIPS 2021, section 3.3 and Figure 3).

Schedules: dense warm-up rounds before the mask is computed, mask refresh
every ``R`` rounds, one shared mask or disjoint masks per client, and a
communication budget that ends the run. Every message's size is measured on
its serialised protobuf and booked in a :class:`~fish_fl.ledger.CommLedger`.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from torch import nn

from fish_fl import protocol as P
from fish_fl.aggregate import ClientUpdate, aggregate_updates, average_buffers
from fish_fl.checkpoint import state_fingerprint
from fish_fl.codec import UpdateCodec
from fish_fl.config import RunConfig
from fish_fl.ledger import CommLedger, paper_message_bytes
from fish_fl.masks import Mask, build_mask, parameter_shapes, score_parameters, topk_mask
from fish_fl.masks.assign import MaskPlan, disjoint_plan, shared_plan
from fish_fl.runlog import RunRecorder

from .state import load_server_state, save_server_state

__all__ = ["FishMaskStrategy", "NodeRecord", "message_bytes"]

logger = logging.getLogger(__name__)

EvaluateFn = Callable[[nn.Module], dict[str, float]]
CalibrationFn = Callable[[], Iterable[Any]]


def message_bytes(msg: Message) -> int:
    """Size of a message as serialised for the wire (protobuf)."""
    return int(message_to_proto(msg).ByteSize())


@dataclass
class NodeRecord:
    """What the server knows a node holds (updated only from successful replies)."""

    slot: int
    has_config: bool = False
    base_version: int = 0
    mask_version: int = 0


@dataclass
class _Sent:
    """What one node was sent this round, to check its reply against."""

    slot: int
    mask_version: int
    base_version: int
    k: int
    positions: torch.Tensor
    values: torch.Tensor


@dataclass
class _RoundStats:
    replies: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)
    missing: int = 0  # nodes sent a message that did not answer in time
    clipped: int = 0
    train_loss: float | None = None
    skipped: bool = False
    bytes_received: int = 0  # as the accepted nodes measured their messages


class FishMaskStrategy(Strategy):
    """Sparse federated training with a fixed (or periodically refreshed) mask.

    Parameters
    ----------
    config
        The run configuration.
    model
        The global model, initialised to the shared base (pretrained weights
        or the seeded initialisation every node builds too).
    calibration
        Returns the server's calibration batches (for a server-side Fisher).
    evaluate_fn
        Centralised evaluation: metrics of the global model on held-out data,
        including the task's primary metric and ``loss``.
    primary_metric
        Name of the metric reported as the score.
    recorder
        Writes the run folder; ``None`` for none.
    checkpoint
        Where to save the server state after every round (``None``: nowhere);
        see :mod:`strategies.state`.
    """

    def __init__(
        self,
        config: RunConfig,
        model: nn.Module,
        *,
        calibration: CalibrationFn | None = None,
        evaluate_fn: EvaluateFn | None = None,
        primary_metric: str = "accuracy",
        recorder: RunRecorder | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.model = model
        self.calibration = calibration
        self.evaluate_fn = evaluate_fn
        self.primary_metric = primary_metric
        self.recorder = recorder
        self.codec = UpdateCodec(config.update_dtype)
        self.shapes = parameter_shapes(model)
        self.total = sum(p.numel() for p in model.parameters())
        self.ledger = CommLedger(self.total)
        self.nodes: dict[int, NodeRecord] = {}
        self.plan: MaskPlan | None = None
        self.values = torch.zeros(0)
        self.mask_version = 0
        self.phase = "sparse"
        # The base every node rebuilds the model from: version 0 is the initial
        # model, each later version the global model when the mask changed.
        self.base_version = 0
        self.base_fingerprint = state_fingerprint(dict(model.named_parameters()))
        # The initial model: checkpoints store the global model relative to it.
        self.initial_fingerprint = self.base_fingerprint
        self.initial_flat = P.flat_parameters(model)
        # Names this run to the nodes, which keep their optimiser state under it.
        self.run_key = uuid.uuid4().hex
        self.resume_round = 0
        self.elapsed_at_resume = 0.0
        # The base at the current version is the current model with the
        # entries of ``base_plan`` reset to ``base_values``.
        self.base_plan: MaskPlan | None = None
        self.base_values = torch.zeros(0)
        self.prev_plan: MaskPlan | None = None
        self.prev_mask_version = 0
        self.prev_values = torch.zeros(0)
        self._sent: dict[int, _Sent] = {}
        self._round_stats = _RoundStats()
        self._start_time = time.monotonic()
        self.stopped_by_budget = False
        self.rng = random.Random(config.seed)

    # ------------------------------------------------------------------ masks
    def summary(self) -> None:
        logger.info(
            "FishMaskStrategy: %s mask, density %s, %d clients, %s aggregation",
            self.config.mask_method,
            self.config.density,
            self.config.num_clients,
            self.config.aggregation,
        )

    def _new_base(self) -> None:
        """The global model becomes the base nodes rebuild from."""
        self.prev_plan = self.plan
        self.prev_mask_version = self.mask_version
        self.prev_values = self.values.clone()
        self.base_version += 1
        self.base_fingerprint = state_fingerprint(dict(self.model.named_parameters()))
        self.base_plan, self.base_values = self.plan, self.values.clone()

    def _set_plan(self, plan: MaskPlan, method: str) -> None:
        self.plan = plan
        self.mask_version += 1
        self.values = plan.union.gather(self.model)
        self.base_plan, self.base_values = plan, self.values.clone()
        logger.info("mask version %d (%s): %s", self.mask_version, method, plan.union)
        if self.recorder is not None:
            self.recorder.record_mask(self.mask_version, plan.union, method)

    def _compute_plan(self, grid: Grid | None, rnd: int) -> MaskPlan:
        cfg = self.config
        spec = cfg.mask_spec()
        if cfg.mask_method == "dense":
            return shared_plan(Mask.full(self.shapes))
        if cfg.mask_source == "clients":
            assert grid is not None
            scores = self._client_scores(grid, rnd)
        elif cfg.mask_assignment == "disjoint":
            scores = score_parameters(self.model, spec, self._calibration())
        else:
            return shared_plan(build_mask(self.model, spec, self._calibration()))
        if cfg.mask_assignment == "disjoint":
            return disjoint_plan(
                scores, self.shapes, cfg.density, cfg.num_clients, cfg.head_patterns
            )
        return shared_plan(topk_mask(scores, self.shapes, cfg.density, cfg.head_patterns))

    def _calibration(self) -> Iterable[Any] | None:
        return self.calibration() if self.calibration is not None else None

    def prepare_round(self, rnd: int, grid: Grid | None) -> None:
        """Mask and base transitions at the start of round ``rnd``."""
        cfg = self.config
        warm = cfg.warmup_rounds
        if rnd == 1 and warm > 0:
            self.phase = "dense"
            self._set_plan(shared_plan(Mask.full(self.shapes)), "dense (warm-up)")
            return
        sparse_round = rnd - warm
        if sparse_round == 1:
            self.phase = "sparse"
            if warm > 0:
                self._new_base()
            self._set_plan(self._compute_plan(grid, rnd), cfg.mask_method)
        elif (
            cfg.mask_refresh > 0 and sparse_round > 1 and (sparse_round - 1) % cfg.mask_refresh == 0
        ):
            self._new_base()
            self._set_plan(self._compute_plan(grid, rnd), f"{cfg.mask_method} (refresh)")

    # --------------------------------------------------------------- messages
    def _node(self, node_id: int) -> NodeRecord:
        if node_id not in self.nodes:
            self.nodes[node_id] = NodeRecord(slot=len(self.nodes))
        return self.nodes[node_id]

    def _base_arrays(self, rec: NodeRecord) -> dict[str, np.ndarray]:
        """What a node needs to hold the current base (nothing if it has it)."""
        if rec.base_version == self.base_version:
            return {}
        if (
            rec.base_version == self.base_version - 1
            and rec.mask_version == self.prev_mask_version
            and self.prev_plan is not None
        ):
            _, positions = self.prev_plan.slot(rec.slot)
            return {P.BASE_PATCH: self.prev_values[positions].numpy()}
        # Rebuild the exact base: the current model with the trained entries
        # reset to their values when the base was taken.
        params = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        if self.base_plan is not None:
            self.base_plan.union.scatter(params, self.base_values)
        flat = torch.cat([params[n].reshape(-1).float().cpu() for n in self.shapes])
        return {P.BASE: flat.numpy()}

    def _sync_records(self, rnd: int, node_id: int) -> tuple[RecordDict, _Sent, int, int]:
        """Arrays and config that bring a node to the current model, base and mask."""
        assert self.plan is not None
        rec = self._node(node_id)
        mask, positions = self.plan.slot(rec.slot)
        arrays: dict[str, np.ndarray] = self._base_arrays(rec)
        mask_bytes = 0
        if rec.mask_version != self.mask_version:
            arrays[P.MASK] = np.frombuffer(mask.to_bytes(), dtype=np.uint8).copy()
        values = self.values[positions]
        arrays.update(self._value_arrays(values))
        buffers = P.flat_buffers(self.model)
        if buffers.numel():
            arrays[P.BUFFERS] = buffers.numpy()
        record = ArrayRecord({key: Array(value) for key, value in arrays.items()})
        if P.MASK in arrays:
            mask_bytes = len(record[P.MASK].data)
        cfg: dict[str, Any] = {
            P.CFG_ROUND: rnd,
            P.CFG_PHASE: self.phase,
            P.CFG_MASK_VERSION: self.mask_version,
            P.CFG_MASK_FINGERPRINT: mask.fingerprint,
            P.CFG_BASE_VERSION: self.base_version,
            P.CFG_BASE_FINGERPRINT: self.base_fingerprint,
            P.CFG_LOCAL_STEPS: self.config.local_steps,
            P.CFG_LR: self.config.round_lr(rnd),
            P.CFG_SEED: self.config.seed * 1_000_003 + rnd * 1009,
            P.CFG_RUN_KEY: self.run_key,
        }
        cfg.update(self._value_config(values))
        if not rec.has_config:
            cfg[P.CFG_RUN_CONFIG] = self.config.to_json()
        content = RecordDict({P.ARRAYS: record, P.CONFIG: ConfigRecord(cfg)})
        sent = _Sent(rec.slot, self.mask_version, self.base_version, mask.k, positions, values)
        paper = self._paper_bytes(mask.k)
        return content, sent, mask_bytes, paper

    def _query_records(self, rnd: int, node_id: int) -> tuple[RecordDict, _Sent]:
        """A Fisher query: the node needs the current base only (no mask, no values)."""
        rec = self._node(node_id)
        arrays = self._base_arrays(rec)
        cfg: dict[str, Any] = {
            P.CFG_ROUND: rnd,
            P.CFG_ACTION: P.ACTION_FISHER,
            P.CFG_BASE_VERSION: self.base_version,
            P.CFG_BASE_FINGERPRINT: self.base_fingerprint,
        }
        if not rec.has_config:
            cfg[P.CFG_RUN_CONFIG] = self.config.to_json()
        record = ArrayRecord({key: Array(value) for key, value in arrays.items()})
        content = RecordDict({P.ARRAYS: record, P.CONFIG: ConfigRecord(cfg)})
        empty = torch.zeros(0, dtype=torch.long)
        return content, _Sent(
            rec.slot, rec.mask_version, self.base_version, 0, empty, torch.zeros(0)
        )

    def _sample(self, grid: Grid) -> list[int]:
        """Wait for ``num-clients`` nodes, then sample from the run's seeded generator."""
        waited = 0.0
        while len(nodes := sorted(grid.get_node_ids())) < self.config.num_clients:
            if waited >= self.config.round_timeout:
                raise RuntimeError(
                    f"only {len(nodes)} of num-clients={self.config.num_clients} nodes connected "
                    f"after {waited:.0f}s"
                )
            if waited % 30 == 0:
                logger.info(
                    "waiting for nodes: %d of %d connected", len(nodes), self.config.num_clients
                )
            time.sleep(1.0)
            waited += 1.0
        n = self.config.sampled_clients
        return sorted(nodes) if n >= len(nodes) else sorted(self.rng.sample(nodes, n))

    def _build_messages(self, rnd: int, grid: Grid, message_type: str) -> list[Message]:
        messages = []
        self._sent = {}
        for node_id in self._sample(grid):
            if message_type == MessageType.QUERY:
                content, sent = self._query_records(rnd, node_id)
                mask_bytes, paper = 0, 0
            else:
                content, sent, mask_bytes, paper = self._sync_records(rnd, node_id)
            msg = Message(
                content, dst_node_id=node_id, message_type=message_type, group_id=str(rnd)
            )
            self.ledger.record_down(
                rnd, message_bytes(msg), paper_bytes=paper, mask_bytes=mask_bytes
            )
            self._sent[node_id] = sent
            messages.append(msg)
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per sampled node, with exactly what that node lacks."""
        return self._build_messages(server_round, grid, MessageType.TRAIN)

    # ------------------------------------------------------------- validation
    def _check(self, reply: Message, sent: _Sent | None) -> str | torch.Tensor:
        """The decoded update of a sound training reply, or why it must be rejected."""
        if sent is None:
            return "reply from a node that was not sent a message this round"
        if reply.has_error():
            reason = (reply.error.reason or "").strip().splitlines()
            return f"client error {reply.error.code}: {reason[-1] if reason else ''}"
        content = reply.content
        if set(content.keys()) != {P.ARRAYS, P.METRICS}:
            return f"expected records {{arrays, metrics}}, got {sorted(content.keys())}"
        if P.ARRAYS not in content.array_records or P.METRICS not in content.metric_records:
            return "arrays or metrics record has the wrong type"
        arrays, metrics = content.array_records[P.ARRAYS], content.metric_records[P.METRICS]
        allowed = self._reply_arrays()
        if len(P.flat_buffers(self.model)):
            allowed.add(P.BUFFERS)
        if set(arrays.keys()) != allowed:
            return f"expected arrays {sorted(allowed)}, got {sorted(arrays.keys())}"
        n = metrics.get(P.NUM_EXAMPLES)
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            return f"num-examples must be a positive integer, got {n!r}"
        version = metrics.get(P.METRIC_MASK_VERSION)
        if version != sent.mask_version:
            return f"stale mask version {version!r}, expected {sent.mask_version}"
        try:
            delta = self.codec.decode(arrays[P.UPDATE].numpy(), expected=self._update_length(sent))
            bound = self.config.max_update_norm
            if bound > 0 and self.config.norm_policy == "reject":
                norm = float(delta.double().norm())
                if norm > bound:
                    return f"update norm {norm:.4g} exceeds max-update-norm={bound:g}"
            if P.BUFFERS in arrays:
                buf = arrays[P.BUFFERS].numpy()
                expected = P.flat_buffers(self.model).numel()
                if (
                    buf.dtype != np.float32
                    or buf.shape != (expected,)
                    or not np.isfinite(buf).all()
                ):
                    raise ValueError(f"buffers must be {expected} finite float32 values")
            self._check_extra(arrays, sent)
        except ValueError as e:
            return str(e)
        return delta

    # Hooks of what goes down, of a reply's layout and of the combination, for subclasses.
    def _paper_bytes(self, k: int, *, value_bytes: int = 4) -> int:
        """The paper's accounting of a message of ``k`` values (values and indices)."""
        return paper_message_bytes(k, self.total, value_bytes=value_bytes)

    def _value_arrays(self, values: torch.Tensor) -> dict[str, np.ndarray]:
        """The arrays that carry a node's current masked ``values``."""
        return {P.VALUES: values.numpy()}

    def _value_config(self, values: torch.Tensor) -> dict[str, Any]:
        """Config entries that go with them."""
        return {}

    def _reply_arrays(self) -> set[str]:
        """Arrays a training reply carries besides ``buffers``."""
        return {P.UPDATE}

    def _update_length(self, sent: _Sent) -> int:
        """Values in a reply's ``update``: the node's ``k``."""
        return sent.k

    def _check_extra(self, arrays: ArrayRecord, sent: _Sent) -> None:
        """Raise ``ValueError`` on a malformed array beyond ``update`` and ``buffers``."""

    def _client_update(
        self, node_id: int, delta: torch.Tensor, sent: _Sent, arrays: ArrayRecord, weight: float
    ) -> ClientUpdate:
        """One accepted reply as an update of the global ``k``-vector."""
        return ClientUpdate(delta, sent.positions, weight)

    def _combine(self, updates: list[ClientUpdate]) -> torch.Tensor:
        """The new global ``k``-vector from the accepted updates."""
        assert self.plan is not None
        return self.values + aggregate_updates(updates, self.plan.union.k, self.config.aggregation)

    def _forget(self, node_id: int, reason: str) -> None:
        """A node lost its base or mask: send it again next time."""
        rec = self.nodes[node_id]
        if "fish-fl:missing-base" in reason:
            rec.base_version, rec.mask_version = -1, 0
        elif "fish-fl:missing-mask" in reason:
            rec.mask_version = 0
        elif "node has no run config" in reason:
            rec.has_config = False

    # ------------------------------------------------------------ aggregation
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate every reply, combine the sound ones, update the global model."""
        assert self.plan is not None
        stats = _RoundStats()
        updates: list[ClientUpdate] = []
        buffers, weights, losses = [], [], []
        answered: set[int] = set()
        for reply in replies:
            node_id = reply.metadata.src_node_id
            answered.add(node_id)
            stats.replies += 1
            size = message_bytes(reply)
            sent = self._sent.get(node_id)
            paper = self._paper_bytes(sent.k, value_bytes=self.codec.bytes_per_value) if sent else 0
            self.ledger.record_up(server_round, size, paper_bytes=paper)
            checked = self._check(reply, sent)
            if isinstance(checked, str):
                reason = checked
                if node_id in self.nodes and reply.has_error():
                    self._forget(node_id, reply.error.reason or "")
                stats.rejected += 1
                stats.reasons.append(f"node {node_id}: {reason}")
                logger.warning(
                    "round %d: rejected reply of node %d: %s", server_round, node_id, reason
                )
                continue
            assert sent is not None
            delta = checked
            rec = self.nodes[node_id]
            rec.has_config = True
            rec.base_version, rec.mask_version = sent.base_version, sent.mask_version
            arrays = reply.content.array_records[P.ARRAYS]
            metrics = reply.content.metric_records[P.METRICS]
            weight = float(metrics[P.NUM_EXAMPLES])  # type: ignore[arg-type]
            bound = self.config.max_update_norm
            if bound > 0 and self.config.norm_policy == "clip":
                norm = float(delta.double().norm())
                if norm > bound:
                    delta = delta * (bound / norm)
                    stats.clipped += 1
                    logger.info(
                        "round %d: clipped the update of node %d from norm %.4g to %g",
                        server_round,
                        node_id,
                        norm,
                        bound,
                    )
            updates.append(self._client_update(node_id, delta, sent, arrays, weight))
            if P.BUFFERS in arrays:
                buffers.append(torch.from_numpy(arrays[P.BUFFERS].numpy().copy()))
                weights.append(weight)
            received = metrics.get(P.BYTES_RECEIVED)
            if isinstance(received, int):
                stats.bytes_received += received
            loss = metrics.get(P.TRAIN_LOSS)
            if isinstance(loss, (int, float)):
                losses.append((float(loss), weight))
        stats.missing = len(set(self._sent) - answered)
        if stats.missing:
            logger.warning(
                "round %d: %d node(s) did not answer in time", server_round, stats.missing
            )
        if losses:
            stats.train_loss = sum(v * w for v, w in losses) / sum(w for _, w in losses)
        self._round_stats = stats
        if len(updates) < self.config.min_replies:
            stats.skipped = True
            logger.warning(
                "round %d: %d valid replies, fewer than min-replies=%d; global model unchanged",
                server_round,
                len(updates),
                self.config.min_replies,
            )
            return None, None
        self.values = self._combine(updates)
        self.plan.union.scatter(self.model, self.values)
        if buffers:
            P.load_flat_buffers(self.model, average_buffers(buffers, weights))
        summary: dict[str, Any] = {"accepted": len(updates), "rejected": stats.rejected}
        if stats.train_loss is not None:
            summary["train-loss"] = stats.train_loss
        return ArrayRecord({P.VALUES: Array(self.values.numpy())}), MetricRecord(summary)

    # -------------------------------------------------------- federated eval
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self.config.federated_eval:
            return []
        return self._build_messages(server_round, grid, MessageType.EVALUATE)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        totals: dict[str, float] = {}
        weight = 0.0
        for reply in replies:
            self.ledger.record_up(server_round, message_bytes(reply))
            if reply.has_error() or P.METRICS not in reply.content.metric_records:
                continue
            m = reply.content.metric_records[P.METRICS]
            n = m.get(P.NUM_EXAMPLES)
            if not isinstance(n, int) or n <= 0:
                continue
            sent = self._sent.get(reply.metadata.src_node_id)
            if sent is not None:
                rec = self.nodes[reply.metadata.src_node_id]
                rec.has_config = True
                rec.base_version, rec.mask_version = sent.base_version, sent.mask_version
            weight += n
            for key, value in m.items():
                if key != P.NUM_EXAMPLES and isinstance(value, (int, float)):
                    totals[key] = totals.get(key, 0.0) + float(value) * n
        if weight == 0:
            return None
        return MetricRecord(dict[str, Any]({k: v / weight for k, v in totals.items()}))

    # ------------------------------------------------------ client-side Fisher
    def _client_scores(self, grid: Grid, rnd: int) -> dict[str, torch.Tensor]:
        """Ask the sampled nodes for their Fisher on local data; sum the scores."""
        messages = self._build_messages(rnd, grid, MessageType.QUERY)
        replies = grid.send_and_receive(messages, timeout=self.config.round_timeout)
        total = torch.zeros(self.total, dtype=torch.float64)
        good = 0
        for reply in replies:
            node_id = reply.metadata.src_node_id
            self.ledger.record_up(rnd, message_bytes(reply), paper_bytes=2 * self.total)
            if reply.has_error():
                logger.warning(
                    "round %d: Fisher query of node %d failed: %s", rnd, node_id, reply.error.reason
                )
                continue
            try:
                scores = reply.content.array_records[P.ARRAYS][P.SCORES].numpy()
            except KeyError:
                logger.warning("round %d: Fisher reply of node %d has no scores", rnd, node_id)
                continue
            if (
                scores.dtype != np.float16
                or scores.shape != (self.total,)
                or not np.isfinite(scores).all()
                or (scores < 0).any()
            ):
                logger.warning(
                    "round %d: Fisher reply of node %d is malformed; ignored", rnd, node_id
                )
                continue
            rec = self.nodes[node_id]
            rec.has_config = True
            rec.base_version = self._sent[node_id].base_version
            scale = reply.content.metric_records[P.METRICS].get("scores-scale", 1.0)
            if not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
                logger.warning(
                    "round %d: Fisher reply of node %d has a bad scale; ignored", rnd, node_id
                )
                continue
            total += torch.from_numpy(scores.astype(np.float32)).double() * float(scale)
            good += 1
        if good == 0:
            raise RuntimeError("no client returned Fisher scores; cannot build the mask")
        out, offset = {}, 0
        for name, shape in self.shapes.items():
            n = int(torch.Size(shape).numel())
            out[name] = total[offset : offset + n].float().view(shape)
            offset += n
        return out

    # ---------------------------------------------------------------- the loop
    def _evaluate(self, rnd: int, force: bool = False) -> dict[str, float] | None:
        if self.evaluate_fn is None:
            return None
        last = rnd == self.config.rounds
        if force or rnd == 0 or last or rnd % self.config.eval_every == 0:
            return self.evaluate_fn(self.model)
        return None

    def _row(
        self, rnd: int, ev: dict[str, float] | None, fed: MetricRecord | None, round_time: float
    ) -> dict[str, Any]:
        stats = self._round_stats if rnd > 0 else _RoundStats()
        row: dict[str, Any] = {
            "round": rnd,
            "phase": "init" if rnd == 0 else self.phase,
            "mask_version": self.mask_version,
            "metric": self.primary_metric,
            "score": None if ev is None else ev.get(self.primary_metric),
            "eval": ev,
            "train_loss": stats.train_loss,
            "replies": stats.replies - stats.rejected,
            "rejected": stats.rejected,
            "rejections": stats.reasons,
            "skipped": stats.skipped,
            "missing": stats.missing,
            "clipped": stats.clipped,
            "node_bytes_received": stats.bytes_received,
            "wall_time": round(time.monotonic() - self._start_time, 3),
            "round_time": round(round_time, 3),
            "k": 0 if self.plan is None else self.plan.union.k,
            **self.ledger.summary(rnd),
        }
        if fed is not None:
            row["federated_eval"] = dict(fed)
        return row

    def _budget_reached(self, rnd: int) -> bool:
        s = self.ledger.summary(rnd)
        total = s["cum_bytes_up"] + s["cum_bytes_down"]
        if self.config.budget_fme > 0 and s["cum_fme"] >= self.config.budget_fme:
            return True
        return self.config.budget_mb > 0 and total / 1e6 >= self.config.budget_mb

    def start(  # type: ignore[override]
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int | None = None,
        timeout: float | None = None,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run the rounds: transitions, train, aggregate, evaluate, log, budget."""
        rounds = num_rounds or self.config.rounds
        timeout = timeout or self.config.round_timeout
        result = Result()
        self.summary()
        first = self.resume_round + 1
        if self.resume_round == 0:
            self._start_time = time.monotonic()
            ev = self._evaluate(0)
            if ev is not None:
                result.evaluate_metrics_serverapp[0] = MetricRecord(dict[str, Any](ev))
            self._log(self._row(0, ev, None, 0.0))
        else:
            logger.info("resuming after round %d of %d", self.resume_round, rounds)
        empty = ArrayRecord()
        for rnd in range(first, rounds + 1):
            t0 = time.monotonic()
            self.prepare_round(rnd, grid)
            replies = grid.send_and_receive(
                self.configure_train(rnd, empty, ConfigRecord(), grid), timeout=timeout
            )
            arrays, train_metrics = self.aggregate_train(rnd, replies)
            if arrays is not None:
                result.arrays = arrays
            if train_metrics is not None:
                result.train_metrics_clientapp[rnd] = train_metrics
            fed = None
            eval_messages = list(self.configure_evaluate(rnd, empty, ConfigRecord(), grid))
            if eval_messages:
                fed = self.aggregate_evaluate(
                    rnd, grid.send_and_receive(eval_messages, timeout=timeout)
                )
                if fed is not None:
                    result.evaluate_metrics_clientapp[rnd] = fed
            stop = self._budget_reached(rnd)
            ev = self._evaluate(rnd, force=stop)
            if ev is not None:
                result.evaluate_metrics_serverapp[rnd] = MetricRecord(dict[str, Any](ev))
            self._log(self._row(rnd, ev, fed, time.monotonic() - t0))
            if stop:
                self.stopped_by_budget = True
            if self.checkpoint is not None:
                save_server_state(
                    self, self.checkpoint, rnd, time.monotonic() - self._start_time, self.run_key
                )
            if stop:
                logger.info("communication budget reached after round %d; stopping", rnd)
                break
        return result

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors a subclass adds to the checkpoint (names start with ``extra/``)."""
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def resume(self, path: Path) -> int:
        """Continue from a checkpoint (see :mod:`strategies.state`); returns its round."""
        meta = load_server_state(self, path)
        self.resume_round = int(meta["round"])
        self.run_key = str(meta["run_key"])
        self.elapsed_at_resume = float(meta["elapsed"])
        self._start_time = time.monotonic() - self.elapsed_at_resume
        return self.resume_round

    def _log(self, row: dict[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.log_round(row)
