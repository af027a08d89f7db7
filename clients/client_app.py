"""The Flower ClientApp: thin handlers over the core.

``train``: rebuild the model from the shared base plus the received masked
values, train the local steps with only the ``k`` entries trainable, reply
with what the run's method sends (the ``k``-vector update by default). ``evaluate``: the same model, scored on the
node's own data. ``query`` (action ``fisher``): the Fisher of the base on the
node's own data, for a mask built from client scores.

The node's partition comes from its node config (``partition-id``,
``num-partitions``), so the same app runs in simulation and on devices.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_to_proto

from fish_fl import protocol as P
from fish_fl.attacks import NodeRound, hostile_node
from fish_fl.codec import UpdateCodec
from fish_fl.config import RunConfig
from fish_fl.fisher import fisher_diagonal
from fish_fl.protocol import NodeError
from fish_fl.task import TaskData, evaluate_model
from fish_fl.training import SparseParameters, train_steps

from .runtime import (
    load_optimizer,
    load_optimizer_file,
    runtime,
    save_optimizer,
    save_optimizer_file,
    small_node_state,
)

__all__ = ["app"]

logger = logging.getLogger(__name__)

app = ClientApp()

#: torch seeds are 64-bit; a round's seed derived from a large run seed wraps into range.
SEED_RANGE = 2**63


def _partition(context: Context, config: RunConfig) -> int:
    node = context.node_config
    pid, parts = node.get("partition-id"), node.get("num-partitions")
    if not isinstance(pid, int) or not isinstance(parts, int):
        raise ValueError("node config needs integer partition-id and num-partitions")
    if parts != config.num_clients:
        raise ValueError(
            f"node config num-partitions={parts} but the run has num-clients={config.num_clients}"
        )
    return pid


def _data(context: Context, config: RunConfig) -> TaskData:
    """The node's data: the run's, or from the node's own ``data-dir`` if its node config sets one.

    A device can keep its data set wherever it likes (``flower-supernode
    --node-config "partition-id=0 num-partitions=2 data-dir='/data/cifar.npz'"``).
    """
    local = context.node_config.get("data-dir")
    if isinstance(local, str) and local and local != config.data_dir:
        config = config.replace(data_dir=local)
    return runtime.task_data(config)


def _answer(
    handler: Callable[[Message, Context], Message],
) -> Callable[[Message, Context], Message]:
    """A node's typed failure becomes an error reply whose code the server acts on."""

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except NodeError as e:
            logger.warning("cannot answer: %s (%s)", e.reason, e.status.name)
            return Message(Error(code=int(e.status), reason=e.reason), reply_to=msg)

    return wrapped


@app.train()
@_answer
def train(msg: Message, context: Context) -> Message:
    synced = runtime.sync(msg.content, context.state)
    config, mask, method = synced.config, synced.mask, synced.method
    assert mask is not None
    cfg = msg.content.config_records[P.CONFIG]
    pid = _partition(context, config)
    data = _data(context, config)
    version = int(cfg[P.CFG_MASK_VERSION])  # type: ignore[arg-type]
    hostile = hostile_node(config.attack_config(), pid)  # None on every honest node

    # 1. The optimiser over the k trainable entries, at the round's rate.
    sparse = SparseParameters(synced.model, mask)
    optimizer = method.node_optimizer(sparse, synced.model, float(cfg[P.CFG_LR]))  # type: ignore[arg-type]
    rnd = int(cfg[P.CFG_ROUND])  # type: ignore[arg-type]
    run_key = str(cfg.get(P.CFG_RUN_KEY, ""))
    # A resumed run starts with fresh node state: the disk copy carries it over.
    # In a simulation the disk copy is the only one (the driver holds every
    # node's context.state, which must stay small).
    in_context = config.persist_optimizer and not small_node_state(config)
    if (
        config.persist_optimizer
        and not (in_context and load_optimizer(context.state, optimizer, version))
        and run_key
    ):
        load_optimizer_file(run_key, pid, rnd, optimizer, version)
    # 2. Local training. The data order and dropout depend on the round and the
    # partition, not on node ids or on what this process ran before.
    round_seed = int(cfg[P.CFG_SEED])  # type: ignore[arg-type]
    seed = (round_seed * 7919 + pid) % SEED_RANGE
    batches: Iterable[Any] = data.client_loader(pid, seed=seed)
    if hostile is not None:
        batches = hostile.training_batches(batches, data.labels)
    devices = [synced.device] if synced.device.type == "cuda" else []
    started = time.perf_counter()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        method.before_training(synced.model, synced.device, seed)
        stats = train_steps(
            sparse,
            optimizer,
            batches,
            steps=int(cfg[P.CFG_LOCAL_STEPS]),  # type: ignore[arg-type]
            device=synced.device,
            grad_clip=config.optimizer_config().grad_clip,
            amp=config.amp,
            proximal_mu=config.proximal_mu,
        )
    seconds = time.perf_counter() - started
    if config.persist_optimizer:
        if in_context:
            save_optimizer(context.state, optimizer, version)
        if run_key:
            save_optimizer_file(run_key, pid, rnd, optimizer, version)

    # 3. The reply: the method's arrays, the buffers, and what the server checks.
    codec = UpdateCodec(config.update_dtype)
    reply = method.node_reply(sparse.values(), synced.values, synced.model, mask, seed, codec)
    examples = data.client_size(pid)
    if hostile is not None:
        reply = hostile.reply(
            reply,
            codec,
            lambda honest: NodeRound.of(
                honest, synced.values, synced.base_at_mask, round_seed, pid
            ),
        )
        examples = hostile.claimed_examples(examples)
    arrays = {key: Array(value) for key, value in reply.items()}
    buffers = P.flat_buffers(synced.model)
    if buffers.numel():
        arrays[P.BUFFERS] = Array(buffers.numpy())
    metrics = MetricRecord(
        {
            P.NUM_EXAMPLES: examples,
            P.TRAIN_LOSS: stats.mean_loss,
            P.METRIC_MASK_VERSION: version,
            P.BYTES_RECEIVED: int(message_to_proto(msg).ByteSize()),
            P.TRAIN_SECONDS: seconds,
        }
    )
    return Message(RecordDict({P.ARRAYS: ArrayRecord(arrays), P.METRICS: metrics}), reply_to=msg)


@app.evaluate()
@_answer
def evaluate(msg: Message, context: Context) -> Message:
    synced = runtime.sync(msg.content, context.state)
    pid = _partition(context, synced.config)
    data = _data(context, synced.config)
    metrics = evaluate_model(
        synced.model, data.local_calibration_loader(pid), data.metric_task, synced.device
    )
    examples = data.client_size(pid)
    hostile = hostile_node(synced.config.attack_config(), pid)
    if hostile is not None:
        examples = hostile.claimed_examples(examples)
    record = MetricRecord({P.NUM_EXAMPLES: examples, **metrics})
    return Message(RecordDict({P.METRICS: record}), reply_to=msg)


@app.query()
@_answer
def query(msg: Message, context: Context) -> Message:
    cfg = msg.content.config_records[P.CONFIG]
    if cfg.get(P.CFG_ACTION) != P.ACTION_FISHER:
        raise NodeError(P.Status.BAD_MESSAGE, f"unknown query action {cfg.get(P.CFG_ACTION)!r}")
    synced = runtime.sync(msg.content, context.state, with_mask=False)
    config = synced.config
    pid = _partition(context, config)
    data = _data(context, config)
    n = min(config.fisher_samples, data.client_size(pid))
    model = synced.model
    for p in model.parameters():
        p.requires_grad_(True)
    scores = fisher_diagonal(
        model,
        data.local_calibration_loader(pid),
        n_samples=n,
        kind=config.fisher_kind,  # type: ignore[arg-type]
        progress=False,
    )
    flat = torch.cat([scores[name].reshape(-1) for name, _ in model.named_parameters()])
    # float16 keeps ~3 significant digits: send the scores relative to the largest
    # (the server normalises every client's scores to the same total anyway).
    top = float(flat.max())
    top = top if top > 0 and math.isfinite(top) else 1.0
    half = (flat / top).to(torch.float16).numpy()
    arrays = ArrayRecord({P.SCORES: Array(np.ascontiguousarray(half))})
    metrics = MetricRecord({P.NUM_EXAMPLES: n})
    return Message(RecordDict({P.ARRAYS: arrays, P.METRICS: metrics}), reply_to=msg)
