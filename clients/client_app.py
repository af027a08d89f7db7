"""The Flower ClientApp: thin handlers over the core.

``train``: rebuild the model from the shared base plus the received masked
values, train the local steps with only the ``k`` entries trainable, reply
with the ``k``-vector update (for a supermask sent as sampled masks: the
head's update and the packed mask). ``evaluate``: the same model, scored on the
node's own data. ``query`` (action ``fisher``): the Fisher of the base on the
node's own data, for a mask built from client scores.

The node's partition comes from its node config (``partition-id``,
``num-partitions``), so the same app runs in simulation and on devices.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_to_proto

from fish_fl import protocol as P
from fish_fl.codec import UpdateCodec
from fish_fl.config import RunConfig
from fish_fl.fisher import fisher_diagonal
from fish_fl.supermask import SupermaskLayout, SupermaskModel, make_supermask_optimizer
from fish_fl.task import TaskData, evaluate_model
from fish_fl.training import SparseParameters, make_optimizer, train_steps

from .runtime import (
    load_optimizer,
    load_optimizer_file,
    runtime,
    save_optimizer,
    save_optimizer_file,
)

__all__ = ["app"]

logger = logging.getLogger(__name__)

app = ClientApp()


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


@app.train()
def train(msg: Message, context: Context) -> Message:
    synced = runtime.sync(msg.content, context.state)
    config, mask = synced.config, synced.mask
    assert mask is not None
    cfg = msg.content.config_records[P.CONFIG]
    pid = _partition(context, config)
    data = _data(context, config)
    version = int(cfg[P.CFG_MASK_VERSION])  # type: ignore[arg-type]

    sparse = SparseParameters(synced.model, mask)
    opt_config = config.optimizer_config()
    supermask = synced.model if isinstance(synced.model, SupermaskModel) else None
    round_lr = float(cfg[P.CFG_LR])  # type: ignore[arg-type]
    if supermask is None:
        optimizer = make_optimizer(sparse, opt_config)
        for group in optimizer.param_groups:
            group["lr"] = round_lr
    else:
        # Scores and head have their own rates; the round's schedule scales both.
        optimizer = make_supermask_optimizer(sparse, supermask.config)
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * (round_lr / config.lr)
    rnd = int(cfg[P.CFG_ROUND])  # type: ignore[arg-type]
    run_key = str(cfg.get(P.CFG_RUN_KEY, ""))
    # A resumed run starts with fresh node state: the disk copy carries it over.
    if (
        config.persist_optimizer
        and not load_optimizer(context.state, optimizer, version)
        and run_key
    ):
        load_optimizer_file(run_key, pid, rnd, optimizer, version)
    # The data order and dropout depend on the round and the partition, not on
    # node ids or on what this process ran before.
    seed = int(cfg[P.CFG_SEED]) * 7919 + pid  # type: ignore[arg-type]
    devices = [synced.device] if synced.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if supermask is not None:
            # Training samples drawn on the device that trains (no uniforms copied per pass).
            supermask.generator = torch.Generator(device=synced.device).manual_seed(seed)
        stats = train_steps(
            sparse,
            optimizer,
            data.client_loader(pid, seed=seed),
            steps=int(cfg[P.CFG_LOCAL_STEPS]),  # type: ignore[arg-type]
            device=synced.device,
            grad_clip=opt_config.grad_clip,
            amp=config.amp,
        )
    if config.persist_optimizer:
        save_optimizer(context.state, optimizer, version)
        if run_key:
            save_optimizer_file(run_key, pid, rnd, optimizer, version)

    trained = sparse.values()
    codec = UpdateCodec(config.update_dtype)
    if supermask is not None and config.supermask_uplink == "mask":
        # The head's update and a mask sampled from the trained scores, 1 bit per weight.
        layout = SupermaskLayout.of(supermask, mask)
        update = layout.head(trained) - layout.head(synced.values)
        arrays = {
            P.UPDATE: Array(codec.encode(update)),
            P.SAMPLED_MASK: Array(
                layout.sample_packed(trained, torch.Generator().manual_seed(seed + 1))
            ),
        }
    else:
        arrays = {P.UPDATE: Array(codec.encode(trained - synced.values))}
    buffers = P.flat_buffers(synced.model)
    if buffers.numel():
        arrays[P.BUFFERS] = Array(buffers.numpy())
    metrics = MetricRecord(
        {
            P.NUM_EXAMPLES: data.client_size(pid),
            P.TRAIN_LOSS: stats.mean_loss,
            P.METRIC_MASK_VERSION: version,
            P.BYTES_RECEIVED: int(message_to_proto(msg).ByteSize()),
        }
    )
    return Message(RecordDict({P.ARRAYS: ArrayRecord(arrays), P.METRICS: metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    synced = runtime.sync(msg.content, context.state)
    pid = _partition(context, synced.config)
    data = _data(context, synced.config)
    metrics = evaluate_model(
        synced.model, data.local_calibration_loader(pid), data.metric_task, synced.device
    )
    record = MetricRecord({P.NUM_EXAMPLES: data.client_size(pid), **metrics})
    return Message(RecordDict({P.METRICS: record}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    cfg = msg.content.config_records[P.CONFIG]
    if cfg.get(P.CFG_ACTION) != P.ACTION_FISHER:
        raise ValueError(f"unknown query action {cfg.get(P.CFG_ACTION)!r}")
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
    # float16 keeps ~3 significant digits; scale so the largest score is 1.
    scale = float(flat.max())
    scale = scale if scale > 0 and math.isfinite(scale) else 1.0
    half = (flat / scale).to(torch.float16).numpy()
    arrays = ArrayRecord({P.SCORES: Array(np.ascontiguousarray(half))})
    metrics = MetricRecord({P.NUM_EXAMPLES: n, "scores-scale": scale})
    return Message(RecordDict({P.ARRAYS: arrays, P.METRICS: metrics}), reply_to=msg)
