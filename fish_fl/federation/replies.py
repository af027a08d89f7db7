"""Checking and combining replies: every reply becomes ``Accepted`` or ``Rejected(reason)``.

A training reply is checked in two steps. :func:`check_train_reply` looks at
one reply alone: the node's error status, the records and arrays it must
hold (no more, no fewer), ``num-examples``, the mask version, and every
array decoded safely against the dtype and length the server expects
(:func:`~fish_fl.federation.wire.decode_array`). :func:`combine_train` then
looks at the round as a whole: it caps each reply's weight, bounds update
and buffer norms (:mod:`fish_fl.federation.guard`), combines what is left
through the method's wire (or, with ``dp-mode`` on, clips, sums and noises
it: :mod:`fish_fl.federation.privacy`), steps the server optimiser with the result
(:mod:`fish_fl.federation.server_optim`), and refuses a result that is not finite. No
exception escapes either step for any reply: a reply that breaks a check is
rejected with a reason naming the node, and the round goes on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import protocol as P
from ..aggregate import average_buffers
from ..codec import UpdateCodec
from ..methods import SparseMethod, TrainReply
from .guard import cap_weight, lower_median, norm_bound
from .privacy import DPRound, Privacy
from .server_optim import ServerOptimizer
from .state import ServerState
from .sync import Sent
from .wire import ReplyView, WireError, decode_array, metric

__all__ = [
    "Decoded",
    "ReplyView",
    "RoundStats",
    "check_eval_reply",
    "check_scores_reply",
    "check_train_reply",
    "combine_eval",
    "combine_scores",
    "combine_train",
    "weight_cap",
]


@dataclass
class Decoded:
    """One training reply that passed the checks of its own."""

    node_id: int
    sent: Sent
    delta: Tensor
    claimed: int
    extra: dict[str, np.ndarray]
    buffers: Tensor | None
    train_loss: float | None
    bytes_received: int | None
    train_seconds: float | None = None


@dataclass
class RoundStats:
    """What happened to a round's replies, for its row in ``metrics.jsonl``."""

    replies: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)
    missing: int = 0  # nodes sent a message that did not answer in time
    clipped: int = 0
    capped: list[int] = field(default_factory=list)  # nodes whose num-examples was cut down
    norm_bound: float | None = None  # the bound applied (None: none)
    train_loss: float | None = None
    skipped: bool = False
    skip_reason: str = ""
    bytes_received: int = 0  # as the accepted nodes measured their messages
    train_seconds: float = 0.0  # local training time the accepted nodes report, summed
    train_bytes_up: int = 0
    train_messages_up: int = 0
    dp: DPRound | None = None  # what differential privacy did this round

    def reject(self, node_id: int, reason: str) -> None:
        self.rejected += 1
        self.reasons.append(f"node {node_id}: {reason}")


def _error(view: ReplyView) -> P.Rejected | None:
    if view.error is None:
        return None
    code, reason = view.error
    lines = (reason or "").strip().splitlines()
    status = P.Status.of(code)
    label = status.name.lower().replace("_", "-") if status else f"client error {code}"
    return P.Rejected(f"{label}: {lines[-1] if lines else ''}", status)


def _expect_records(view: ReplyView, kinds: Mapping[str, str]) -> None:
    if dict(view.record_kinds) != dict(kinds):
        raise WireError(f"expected records {dict(kinds)}, got {dict(view.record_kinds)}")


def check_train_reply(
    view: ReplyView,
    sent: Sent | None,
    *,
    state: ServerState,
    method: SparseMethod,
    codec: UpdateCodec,
    num_buffers: int,
) -> P.Accepted[Decoded] | P.Rejected:
    """One training reply on its own: decoded, or why it must be rejected."""
    if sent is None:
        return P.Rejected("reply from a node that was not sent a message this round")
    error = _error(view)
    if error is not None:
        return error
    try:
        _expect_records(view, {P.ARRAYS: "arrays", P.METRICS: "metrics"})
        allowed = method.reply_arrays() | ({P.BUFFERS} if num_buffers else set())
        if set(view.arrays) != allowed:
            raise WireError(f"expected arrays {sorted(allowed)}, got {sorted(view.arrays)}")
        n = view.metrics.get(P.NUM_EXAMPLES)
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise WireError(f"num-examples must be a positive integer, got {n!r}")
        version = view.metrics.get(P.METRIC_MASK_VERSION)
        if isinstance(version, bool) or version != sent.mask_version:
            raise WireError(f"stale mask version {version!r}, expected {sent.mask_version}")
        length = method.update_length(sent, state)
        raw = decode_array(view.arrays[P.UPDATE], P.UPDATE, dtype=codec.numpy_dtype, length=length)
        delta = codec.decode(raw, expected=length)
        buffers = None
        if num_buffers:
            buf = decode_array(view.arrays[P.BUFFERS], P.BUFFERS, dtype="<f4", length=num_buffers)
            if not np.isfinite(buf).all():
                raise WireError("buffers have non-finite values")
            buffers = torch.from_numpy(buf)
        extra = method.decode_extra(view.arrays, state)
    except ValueError as e:  # WireError, and the codec's and the method's checks
        return P.Rejected(str(e))
    except Exception as e:  # anything else a crafted reply provokes
        return P.Rejected(f"malformed reply ({type(e).__name__}: {e})")
    loss = metric(view.metrics, P.TRAIN_LOSS)
    received = view.metrics.get(P.BYTES_RECEIVED)
    seconds = metric(view.metrics, P.TRAIN_SECONDS)
    # A node's own measure of the message it answered: plausible only near what was sent.
    plausible = (
        isinstance(received, int)
        and not isinstance(received, bool)
        and 0 <= received <= 2 * sent.nbytes + 4096
    )
    return P.Accepted(
        Decoded(
            view.node_id,
            sent,
            delta,
            int(n),
            extra,
            buffers,
            None if loss is None else float(loss),
            int(received) if plausible else None,  # type: ignore[arg-type]
            None if seconds is None or seconds < 0 else float(seconds),
        )
    )


def weight_cap(configured: int, partition_max: int | None, claims: Sequence[int]) -> float:
    """The most examples one reply may count for (see :mod:`fish_fl.federation.guard`)."""
    if configured > 0:
        return float(configured)
    if partition_max is not None and partition_max > 0:
        return float(partition_max)
    return float(lower_median([float(c) for c in claims])) if claims else math.inf


def _norm(t: Tensor) -> float:
    return float(t.double().norm())


def combine_train(
    decoded: list[Decoded],
    stats: RoundStats,
    *,
    state: ServerState,
    method: SparseMethod,
    cap: float,
    max_update_norm: float,
    norm_factor: float,
    norm_policy: str,
    min_replies: int,
    server_optimizer: ServerOptimizer | None = None,
    privacy: Privacy | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Bound and combine a round's decoded replies: the new ``k``-vector and buffers.

    Returns ``(None, None)`` when the round is skipped (``stats.skipped`` and
    ``stats.skip_reason`` say why); ``state`` is not changed here except
    for its norm references and, in a round that is not skipped, the server
    optimiser's state. With ``privacy``, its state (the accountant's
    history, the clip norm) is written as soon as noise has been drawn, even
    if the result is then refused: the privacy is spent either way.
    """
    # 1. Norm bounds, from this round's norms and the last accepted round's. Under
    # central DP the adaptive bound is off: it would let one client's update decide
    # whether another's is counted; the clip to dp-clip bounds every reply instead.
    if privacy is not None and privacy.config.mode == "central":
        norm_factor = 0.0
    norms = [_norm(d.delta) for d in decoded]
    bound = norm_bound(
        norms, state.norm_reference, fixed=max_update_norm, factor=norm_factor, policy=norm_policy
    )
    current = P.flat_buffers(state.model)
    buffer_norms = [_norm(d.buffers - current) if d.buffers is not None else 0.0 for d in decoded]
    buffer_bound = norm_bound(
        [n for n, d in zip(buffer_norms, decoded, strict=True) if d.buffers is not None],
        state.buffer_reference,
        fixed=0.0,
        factor=norm_factor,
        policy="reject",
    )
    stats.norm_bound = None if math.isinf(bound.limit) else bound.limit

    # 2. Each reply: within the bounds, weight capped.
    replies: list[TrainReply] = []
    buffers, buffer_weights, losses = [], [], []
    kept_norms, kept_buffer_norms = [], []
    for d, norm, bnorm in zip(decoded, norms, buffer_norms, strict=True):
        ok, scale = bound.check(norm)
        if not ok:
            stats.reject(d.node_id, f"update {bound.describe(norm)}")
            continue
        if d.buffers is not None and not buffer_bound.check(bnorm)[0]:
            stats.reject(d.node_id, f"buffer change {buffer_bound.describe(bnorm)}")
            continue
        delta = d.delta
        if scale != 1.0:
            delta = delta * scale
            stats.clipped += 1
        weight, capped = cap_weight(d.claimed, cap)
        if capped:
            stats.capped.append(d.node_id)
        replies.append(TrainReply(d.node_id, delta, d.sent.positions, weight, d.extra))
        kept_norms.append(norm)
        if d.buffers is not None:
            buffers.append(d.buffers)
            buffer_weights.append(weight)
            kept_buffer_norms.append(bnorm)
        if d.bytes_received is not None:
            stats.bytes_received += d.bytes_received
        if d.train_seconds is not None:
            stats.train_seconds += d.train_seconds
        if d.train_loss is not None:
            losses.append((d.train_loss, weight))
    if losses:
        stats.train_loss = sum(v * w for v, w in losses) / sum(w for _, w in losses)

    # 3. Enough replies? Combine them and refuse a result that is not finite.
    if len(replies) < min_replies:
        stats.skipped = True
        stats.skip_reason = f"{len(replies)} valid replies, fewer than min-replies={min_replies}"
        return None, None
    rule = method.config.aggregation_config()
    too_few = rule.check_replies(len(replies))
    if too_few is not None:
        stats.skipped = True
        stats.skip_reason = too_few
        return None, None
    if privacy is not None:
        assert state.plan is not None
        generator = torch.Generator().manual_seed(state.rng.getrandbits(63))
        delta, dp_state, stats.dp = privacy.combine(
            [r.delta for r in replies],
            [r.positions for r in replies],
            state.plan.union.k,
            state.extra,
            generator,
            mean=rule.name == "mean",
        )
        state.extra.update(dp_state)
        stats.clipped += stats.dp.clipped
        values = state.values + delta
    else:
        values = method.combine(state, replies)
    optimizer_state: dict[str, Tensor] = {}
    if server_optimizer is not None and torch.isfinite(values).all():
        values, optimizer_state = server_optimizer.step(
            state.values, values, state.extra, state.mask_version
        )
    new_buffers = average_buffers(buffers, buffer_weights) if buffers else None
    if not torch.isfinite(values).all() or (
        new_buffers is not None and not torch.isfinite(new_buffers).all()
    ):
        stats.skipped = True
        stats.skip_reason = "the combined update is not finite"
        return None, None
    state.extra.update(optimizer_state)
    state.norm_reference = kept_norms
    state.buffer_reference = kept_buffer_norms
    return values, new_buffers


def check_eval_reply(view: ReplyView, sent: Sent | None) -> P.Accepted[dict[str, Any]] | P.Rejected:
    """A federated-evaluation reply: its metrics (finite numbers) and ``num-examples``."""
    if sent is None:
        return P.Rejected("reply from a node that was not sent a message this round")
    error = _error(view)
    if error is not None:
        return error
    if dict(view.record_kinds) != {P.METRICS: "metrics"}:
        return P.Rejected(f"expected records {{metrics}}, got {dict(view.record_kinds)}")
    n = view.metrics.get(P.NUM_EXAMPLES)
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        return P.Rejected(f"num-examples must be a positive integer, got {n!r}")
    values: dict[str, Any] = {P.NUM_EXAMPLES: n}
    for key, value in view.metrics.items():
        if key == P.NUM_EXAMPLES:
            continue
        number = metric(view.metrics, key)
        if number is None:
            return P.Rejected(f"metric {key!r} is not a finite number: {value!r}")
        values[key] = float(number)
    return P.Accepted(values)


def combine_eval(accepted: Sequence[dict[str, Any]], cap: float) -> dict[str, float] | None:
    """Example-weighted means of the clients' metrics, each client's weight capped."""
    totals: dict[str, float] = {}
    weight = 0.0
    for m in accepted:
        w, _ = cap_weight(int(m[P.NUM_EXAMPLES]), cap)
        weight += w
        for key, value in m.items():
            if key != P.NUM_EXAMPLES:
                totals[key] = totals.get(key, 0.0) + float(value) * w
    if weight == 0:
        return None
    return {k: v / weight for k, v in totals.items()}


def check_scores_reply(
    view: ReplyView, sent: Sent | None, total: int
) -> P.Accepted[Tensor] | P.Rejected:
    """A Fisher reply: ``total`` finite, non-negative float16 scores, not all zero."""
    if sent is None:
        return P.Rejected("reply from a node that was not sent a query this round")
    error = _error(view)
    if error is not None:
        return error
    try:
        if P.ARRAYS not in view.record_kinds or set(view.arrays) != {P.SCORES}:
            raise WireError(f"expected one array {P.SCORES!r}, got {sorted(view.arrays)}")
        scores = decode_array(view.arrays[P.SCORES], P.SCORES, dtype="<f2", length=total)
    except ValueError as e:
        return P.Rejected(str(e))
    except Exception as e:
        return P.Rejected(f"malformed reply ({type(e).__name__}: {e})")
    if not np.isfinite(scores).all() or (scores < 0).any():
        return P.Rejected("scores must be finite and non-negative")
    flat = torch.from_numpy(scores.astype(np.float64))
    mass = float(flat.sum())
    if not mass > 0:
        return P.Rejected("scores are all zero")
    return P.Accepted(flat)


def combine_scores(
    accepted: Sequence[Tensor], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, Tensor]:
    """The combined Fisher of the clients, each normalised to the same total first.

    Each client's scores are divided by their sum, so every client holds the
    same share of the combined scores whatever scale it reports (a client
    cannot outweigh the others by scaling its scores up).
    """
    total = torch.zeros_like(accepted[0])
    for scores in accepted:
        total += scores / scores.sum()
    out, offset = {}, 0
    for name, shape in shapes.items():
        n = int(torch.Size(shape).numel())
        out[name] = total[offset : offset + n].float().view(shape)
        offset += n
    return out
