"""The FISH Mask strategy: a thin Flower layer over the federated core.

The server holds the global model. It computes a mask (FISH by default, any
builder of the core registry), sends each node the mask once per mask version
and, every round, only the ``k`` masked values; nodes train those entries and
return a ``k``-vector update that the strategy validates and combines
(Sung, Nair and Raffel, NeurIPS 2021, section 3.3 and Figure 3).

Each concern is a core object this class only calls:
:class:`~fish_fl.federation.state.ServerState` (model, plans, bases; the
checkpoint), :class:`~fish_fl.federation.sync.ServerSync` (what each node
holds and lacks), :mod:`fish_fl.federation.schedule` (warm-up and refresh),
:mod:`fish_fl.federation.replies` (checks, bounds, combination), the run's
method (:mod:`fish_fl.methods`: what travels and how it combines) and the
:class:`~fish_fl.ledger.CommLedger`. What is left here is Flower: building
messages, sending them, and the round loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from torch import nn

from fish_fl import protocol as P
from fish_fl.codec import UpdateCodec
from fish_fl.config import ConfigError, RunConfig
from fish_fl.federation import replies as R
from fish_fl.federation.privacy import Privacy
from fish_fl.federation.schedule import Transition, compute_plan, transition
from fish_fl.federation.server_optim import ServerOptimizer
from fish_fl.federation.state import ServerState
from fish_fl.federation.sync import Sent, ServerSync
from fish_fl.masks import Mask, parameter_shapes
from fish_fl.masks.assign import shared_plan
from fish_fl.methods import method_for
from fish_fl.runlog import RunRecorder

from .flower_wire import content, message_bytes, view_of
from .state import load_server_state, save_server_state

__all__ = ["FishMaskStrategy", "RunFailed", "message_bytes"]

logger = logging.getLogger(__name__)

EvaluateFn = Callable[[nn.Module], dict[str, float]]
CalibrationFn = Callable[[], Iterable[Any]]


def _node_of(reply: Message) -> int:
    try:
        return int(reply.metadata.src_node_id)
    except Exception:
        return -1


def _size_of(reply: Message) -> int:
    """A reply's serialised size; 0 for one that cannot be serialised (it is rejected)."""
    try:
        return message_bytes(reply)
    except Exception:
        return 0


class RunFailed(RuntimeError):
    """The run cannot go on (rounds in a row without enough valid replies)."""


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
    validate_fn
        Evaluation on the validation split carved from the training data
        (``validation-examples``), at the same rounds as ``evaluate_fn``; its
        primary metric is logged as ``val_score``, its metrics as ``val_eval``.
    recorder
        Writes the run folder; ``None`` for none.
    checkpoint
        Where to save the server state after every round (``None``: nowhere);
        see :mod:`strategies.state`.
    partition_max
        The largest partition of the server's split of the data: the default
        cap on the examples a reply may claim (``max-client-examples``).
    """

    def __init__(
        self,
        config: RunConfig,
        model: nn.Module,
        *,
        calibration: CalibrationFn | None = None,
        evaluate_fn: EvaluateFn | None = None,
        primary_metric: str = "accuracy",
        validate_fn: EvaluateFn | None = None,
        recorder: RunRecorder | None = None,
        checkpoint: Path | None = None,
        partition_max: int | None = None,
    ) -> None:
        self.config = config
        self.method = method_for(config)
        self.server_optimizer = ServerOptimizer(config.server_optimizer_config())
        privacy = config.privacy_config()
        self.privacy = Privacy(privacy) if privacy.enabled else None
        if self.privacy is not None and P.flat_buffers(model).numel():
            raise ConfigError(
                f"dp-mode={config.dp_mode}: this model has BatchNorm buffers, which clients "
                "would send without noise; use a model without buffers"
            )
        self.calibration = calibration
        self.evaluate_fn = evaluate_fn
        self.primary_metric = primary_metric
        self.validate_fn = validate_fn
        self.recorder = recorder
        self.checkpoint = checkpoint
        self.partition_max = partition_max
        self.codec = UpdateCodec(config.update_dtype)
        self.shapes = parameter_shapes(model)
        self.state = ServerState.initial(
            model, seed=config.seed, model_numel=self.method.model_numel(model)
        )
        self.sync = ServerSync(config.to_json())
        self.resume_round = 0
        self.elapsed_at_resume = 0.0
        self._sent: dict[int, Sent] = {}
        self._stats = R.RoundStats()
        self._start_time = time.monotonic()

    # Read-only views of the state, for callers and tests.
    @property
    def model(self) -> nn.Module:
        return self.state.model

    @property
    def plan(self) -> Any:
        return self.state.plan

    @property
    def values(self) -> torch.Tensor:
        return self.state.values

    @property
    def ledger(self) -> Any:
        return self.state.ledger

    @property
    def total(self) -> int:
        return self.state.total

    @property
    def stopped_by_budget(self) -> bool:
        return self.state.stopped_by_budget

    @property
    def mask_version(self) -> int:
        return self.state.mask_version

    def summary(self) -> None:
        logger.info(
            "FishMaskStrategy: %s mask, density %s, %d clients, %s aggregation",
            self.config.mask_method,
            self.config.density,
            self.config.num_clients,
            self.config.aggregation,
        )
        if self.privacy is not None:
            dp = self.privacy.config
            logger.info(
                "differential privacy: %s, clip %g%s, noise multiplier %.4g, q = %.4g, delta %g%s",
                dp.mode,
                dp.clip,
                " (adaptive)" if dp.adaptive else "",
                dp.noise_multiplier_total,
                dp.sample_rate,
                dp.delta,
                f", target epsilon {dp.target_epsilon:g}" if dp.target_epsilon > 0 else "",
            )

    # ------------------------------------------------------------------ masks
    def _set_plan(self, plan: Any, label: str) -> None:
        self.state.set_plan(plan)
        logger.info("mask version %d (%s): %s", self.state.mask_version, label, plan.union)
        if self.recorder is not None:
            self.recorder.record_mask(self.state.mask_version, plan.union, label)

    def prepare_round(self, rnd: int, grid: Grid | None) -> None:
        """Mask and base transitions at the start of round ``rnd``."""
        cfg, state = self.config, self.state
        step = transition(rnd, cfg.warmup_rounds, cfg.mask_refresh)
        if step is Transition.NONE:
            return
        if step is Transition.WARMUP:
            state.phase = "dense"
            self._set_plan(shared_plan(Mask.full(self.shapes)), step.value)
            return
        state.phase = "sparse"
        if step is Transition.REFRESH or cfg.warmup_rounds > 0:
            state.new_base()
        plan = compute_plan(
            state.model,
            cfg,
            self.calibration() if self.calibration is not None else None,
            (lambda: self._client_scores(grid, rnd)) if grid is not None else None,
        )
        label = cfg.mask_method + (" (refresh)" if step is Transition.REFRESH else "")
        self._set_plan(plan, label)

    # --------------------------------------------------------------- messages
    def _sample(self, grid: Grid) -> list[int]:
        """Wait for ``num-clients`` nodes, then sample from the run's seeded generator."""
        waited = 0.0
        while len(nodes := sorted(grid.get_node_ids())) < self.config.num_clients:
            if waited >= self.config.round_timeout:
                raise RunFailed(
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
        return sorted(nodes) if n >= len(nodes) else sorted(self.state.rng.sample(nodes, n))

    def _message(self, rnd: int, node_id: int, message_type: str) -> tuple[Message, Sent, int, int]:
        """One node's message with exactly what it lacks; its Sent record, mask and paper bytes."""
        state = self.state
        query = message_type == MessageType.QUERY
        part = self.sync.sync_part(node_id, state, with_mask=not query)
        rec = self.sync.record(node_id)
        arrays = dict(part.arrays)
        cfg: dict[str, Any] = {P.CFG_ROUND: rnd}
        if query:
            cfg[P.CFG_ACTION] = P.ACTION_FISHER
            cfg.update(part.config)
            k, values, paper = 0, torch.zeros(0), 0
            mask_version = rec.mask_version
        else:
            assert part.mask is not None
            values = state.values[part.positions]
            arrays.update(self.method.value_arrays(values, state))
            buffers = P.flat_buffers(state.model)
            if buffers.numel():
                arrays[P.BUFFERS] = buffers.numpy()
            cfg[P.CFG_PHASE] = state.phase
            cfg.update(part.config)
            cfg[P.CFG_LOCAL_STEPS] = self.config.local_steps
            cfg[P.CFG_LR] = self.config.round_lr(rnd)
            cfg[P.CFG_SEED] = self.config.seed * 1_000_003 + rnd * 1009
            cfg[P.CFG_RUN_KEY] = state.run_key
            cfg.update(self.method.value_config(values, state))
            k, mask_version = part.mask.k, state.mask_version
            paper = self.method.paper_bytes(k, state.total)
        msg = Message(
            content(arrays, cfg), dst_node_id=node_id, message_type=message_type, group_id=str(rnd)
        )
        nbytes = message_bytes(msg)
        mask_bytes = (
            len(msg.content.array_records[P.ARRAYS][P.MASK].data) if P.MASK in arrays else 0
        )
        sent = Sent(rec.slot, mask_version, state.base_version, k, part.positions, values, nbytes)
        return msg, sent, mask_bytes, paper

    def _build_messages(self, rnd: int, grid: Grid, message_type: str) -> list[Message]:
        messages = []
        self._sent = {}
        for node_id in self._sample(grid):
            msg, sent, mask_bytes, paper = self._message(rnd, node_id, message_type)
            self.state.ledger.record_down(
                rnd, sent.nbytes, paper_bytes=paper, mask_bytes=mask_bytes
            )
            self._sent[node_id] = sent
            messages.append(msg)
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per sampled node, with exactly what that node lacks."""
        return self._build_messages(server_round, grid, MessageType.TRAIN)

    # ------------------------------------------------------------ aggregation
    def _rejected(self, rnd: int, node_id: int, result: P.Rejected, stats: R.RoundStats) -> None:
        self.sync.forget(node_id, result.status)
        stats.reject(node_id, result.reason)
        logger.warning("round %d: rejected reply of node %d: %s", rnd, node_id, result.reason)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every reply, bound and combine the sound ones, update the global model."""
        state, stats = self.state, R.RoundStats()
        num_buffers = int(P.flat_buffers(state.model).numel())
        decoded: list[R.Decoded] = []
        answered: set[int] = set()
        for reply in replies:
            view = view_of(reply)
            node_id = view.node_id if isinstance(view, R.ReplyView) else _node_of(reply)
            answered.add(node_id)
            stats.replies += 1
            size = _size_of(reply)
            stats.train_bytes_up += size
            stats.train_messages_up += 1
            sent = self._sent.get(node_id)
            paper = (
                self.method.paper_bytes(sent.k, state.total, value_bytes=self.codec.bytes_per_value)
                if sent
                else 0
            )
            state.ledger.record_up(server_round, size, paper_bytes=paper)
            checked = (
                view
                if isinstance(view, P.Rejected)
                else R.check_train_reply(
                    view,
                    sent,
                    state=state,
                    method=self.method,
                    codec=self.codec,
                    num_buffers=num_buffers,
                )
            )
            if isinstance(checked, P.Rejected):
                self._rejected(server_round, node_id, checked, stats)
                continue
            assert sent is not None
            self.sync.confirm(node_id, sent)
            decoded.append(checked.value)
        stats.missing = len(set(self._sent) - answered)
        if stats.missing:
            logger.warning(
                "round %d: %d node(s) did not answer in time", server_round, stats.missing
            )
        cap = R.weight_cap(
            self.config.max_client_examples, self.partition_max, [d.claimed for d in decoded]
        )
        checked_reasons = len(stats.reasons)
        values, buffers = R.combine_train(
            decoded,
            stats,
            state=state,
            method=self.method,
            cap=cap,
            max_update_norm=self.config.max_update_norm,
            norm_factor=self.config.norm_factor,
            norm_policy=self.config.norm_policy,
            min_replies=self.config.min_replies,
            server_optimizer=self.server_optimizer,
            privacy=self.privacy,
        )
        for reason in stats.reasons[checked_reasons:]:
            logger.warning("round %d: rejected the reply of %s", server_round, reason)
        if stats.capped:
            logger.warning(
                "round %d: num-examples of node(s) %s capped at %g",
                server_round,
                ", ".join(map(str, stats.capped)),
                cap,
            )
        self._stats = stats
        if values is None:
            logger.warning("round %d: %s; global model unchanged", server_round, stats.skip_reason)
            return None, None
        state.apply_values(values)
        if buffers is not None:
            P.load_flat_buffers(state.model, buffers)
        summary: dict[str, Any] = {
            "accepted": stats.replies - stats.rejected,
            "rejected": stats.rejected,
        }
        if stats.train_loss is not None:
            summary["train-loss"] = stats.train_loss
        return ArrayRecord({P.VALUES: Array(state.values.numpy())}), MetricRecord(summary)

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
        accepted = []
        for reply in replies:
            self.state.ledger.record_up(server_round, _size_of(reply))
            view = view_of(reply)
            node_id = view.node_id if isinstance(view, R.ReplyView) else _node_of(reply)
            sent = self._sent.get(node_id)
            checked = view if isinstance(view, P.Rejected) else R.check_eval_reply(view, sent)
            if isinstance(checked, P.Rejected):
                self.sync.forget(node_id, checked.status)
                logger.warning(
                    "round %d: evaluation reply of node %d ignored: %s",
                    server_round,
                    node_id,
                    checked.reason,
                )
                continue
            assert sent is not None
            self.sync.confirm(node_id, sent)
            accepted.append(checked.value)
        cap = R.weight_cap(
            self.config.max_client_examples,
            self.partition_max,
            [int(m[P.NUM_EXAMPLES]) for m in accepted],
        )
        combined = R.combine_eval(accepted, cap)
        return None if combined is None else MetricRecord(dict[str, Any](combined))

    # ------------------------------------------------------ client-side Fisher
    def _client_scores(self, grid: Grid, rnd: int) -> dict[str, torch.Tensor]:
        """Ask the sampled nodes for their Fisher on local data; combine their shares."""
        messages = self._build_messages(rnd, grid, MessageType.QUERY)
        replies = grid.send_and_receive(messages, timeout=self.config.round_timeout)
        accepted = []
        for reply in replies:
            self.state.ledger.record_up(rnd, _size_of(reply), paper_bytes=2 * self.state.total)
            view = view_of(reply)
            node_id = view.node_id if isinstance(view, R.ReplyView) else _node_of(reply)
            sent = self._sent.get(node_id)
            checked = (
                view
                if isinstance(view, P.Rejected)
                else R.check_scores_reply(view, sent, self.state.total)
            )
            if isinstance(checked, P.Rejected):
                self.sync.forget(node_id, checked.status)
                logger.warning(
                    "round %d: Fisher reply of node %d ignored: %s", rnd, node_id, checked.reason
                )
                continue
            assert sent is not None
            self.sync.confirm_base(node_id, sent)
            accepted.append(checked.value)
        if not accepted:
            raise RunFailed("no client returned valid Fisher scores; cannot build the mask")
        return R.combine_scores(accepted, self.shapes)

    # ---------------------------------------------------------------- the loop
    def _evaluate(self, rnd: int, force: bool = False) -> dict[str, float] | None:
        if self.evaluate_fn is None:
            return None
        last = rnd == self.config.rounds
        if force or rnd == 0 or last or rnd % self.config.eval_every == 0:
            return self.evaluate_fn(self.state.model)
        return None

    def _validate(self, ev: dict[str, float] | None) -> dict[str, float] | None:
        """Validation metrics whenever the held-out split was evaluated."""
        if self.validate_fn is None or ev is None:
            return None
        return self.validate_fn(self.state.model)

    def _row(
        self,
        rnd: int,
        ev: dict[str, float] | None,
        fed: MetricRecord | None,
        round_time: float,
        val: dict[str, float] | None = None,
        eval_time: float = 0.0,
    ) -> dict[str, Any]:
        stats = self._stats if rnd > 0 else R.RoundStats()
        state = self.state
        row: dict[str, Any] = {
            "round": rnd,
            "phase": "init" if rnd == 0 else state.phase,
            "mask_version": state.mask_version,
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
            "client_train_time": round(stats.train_seconds, 3),
            "eval_time": round(eval_time, 3),
            "wall_time": round(time.monotonic() - self._start_time, 3),
            "round_time": round(round_time, 3),
            "k": 0 if state.plan is None else state.plan.union.k,
            **state.ledger.summary(rnd),
        }
        if self.validate_fn is not None:
            row["val_score"] = None if val is None else val.get(self.primary_metric)
            row["val_eval"] = val
        if stats.capped:
            row["weight_capped"] = stats.capped
        if stats.skip_reason:
            row["skip_reason"] = stats.skip_reason
        if fed is not None:
            row["federated_eval"] = dict(fed)
        extra = self.method.round_info(
            state,
            {
                **row,
                "train_bytes_up": stats.train_bytes_up,
                "train_messages_up": stats.train_messages_up,
            },
        )
        row.update(extra)
        if self.privacy is not None:
            row["epsilon"] = self.privacy.epsilon(state.extra)
            row["dp_delta"] = self.privacy.config.delta
            if stats.dp is not None:
                row["dp_clip"] = stats.dp.clip
                row["dp_noise_std"] = stats.dp.noise_std
        return row

    def _privacy_spent(self, rnd: int) -> bool:
        """Whether one more round would take epsilon above ``dp-target-epsilon``."""
        if self.privacy is None or rnd >= self.config.rounds:
            return False
        return self.privacy.target_reached(self.state.extra)

    def _budget_reached(self, rnd: int) -> bool:
        s = self.state.ledger.summary(rnd)
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
            self._log(self._row(0, ev, None, 0.0, self._validate(ev)))
        else:
            logger.info("resuming after round %d of %d", self.resume_round, rounds)
        empty = ArrayRecord()
        for rnd in range(first, rounds + 1):
            # 1. Mask and base transitions; 2. train and combine.
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
            # 3. Federated evaluation, if asked for; 4. budget and centralised evaluation.
            fed = None
            eval_messages = list(self.configure_evaluate(rnd, empty, ConfigRecord(), grid))
            if eval_messages:
                fed = self.aggregate_evaluate(
                    rnd, grid.send_and_receive(eval_messages, timeout=timeout)
                )
                if fed is not None:
                    result.evaluate_metrics_clientapp[rnd] = fed
            spent = self._privacy_spent(rnd)
            stop = self._budget_reached(rnd) or spent
            t_eval = time.monotonic()
            ev = self._evaluate(rnd, force=stop)
            if ev is not None:
                result.evaluate_metrics_serverapp[rnd] = MetricRecord(dict[str, Any](ev))
            val = self._validate(ev)
            eval_time = time.monotonic() - t_eval
            row = self._row(rnd, ev, fed, time.monotonic() - t0, val, eval_time)
            self._log(row)
            if self.privacy is not None:
                logger.info(
                    "round %d: epsilon %.4g at delta %g", rnd, row["epsilon"], row["dp_delta"]
                )
            # 5. Checkpoint; then stop at the budget or after too many failed rounds.
            self.state.skipped_in_a_row = (
                self.state.skipped_in_a_row + 1 if self._stats.skipped else 0
            )
            if stop:
                self.state.stopped_by_budget = True
            if self.checkpoint is not None:
                save_server_state(
                    self.state, self.checkpoint, rnd, time.monotonic() - self._start_time
                )
            if stop:
                logger.info(
                    "%s reached after round %d; stopping",
                    "privacy budget (dp-target-epsilon)" if spent else "communication budget",
                    rnd,
                )
                break
            limit = self.config.max_skipped_rounds
            if limit and self.state.skipped_in_a_row >= limit:
                raise RunFailed(
                    f"rounds {rnd - limit + 1} to {rnd} had no usable update "
                    f"({self._stats.skip_reason}); stopping after max-skipped-rounds={limit}"
                )
        return result

    def resume(self, path: Path) -> int:
        """Continue from a checkpoint (see :mod:`strategies.state`); returns its round."""
        meta = load_server_state(self.state, path)
        self.resume_round = int(meta["round"])
        self.elapsed_at_resume = float(meta["elapsed"])
        self._start_time = time.monotonic() - self.elapsed_at_resume
        return self.resume_round

    def _log(self, row: dict[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.log_round(row)
