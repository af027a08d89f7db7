"""An in-process Flower grid: the real strategy and the real client handlers, no Ray.

Messages are passed as Flower ``Message`` objects; every one is measured as
it crosses (the serialised protobuf), independently of the strategy's ledger.
A ``tamper`` hook may replace a node's reply, to play a hostile client.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.common.serde import message_to_proto
from flwr.supercore.task_identity import TaskIdentity

from clients import client_app
from fish_fl.config import RunConfig
from fish_fl.models import resolve_device
from fish_fl.task import build_task_model, evaluate_model, load_task_data
from strategies.fish_strategy import FishMaskStrategy

Tamper = Callable[[int, int, Message, Message], Message | None]


def set_identity() -> None:
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1


@dataclass
class Traffic:
    round: int
    node: int
    direction: str  # "down" or "up"
    kind: str
    nbytes: int
    keys: tuple[str, ...]


@dataclass
class InProcessGrid:
    """Enough of Flower's Grid for a strategy: node ids and send-and-receive."""

    num_nodes: int
    tamper: Tamper | None = None
    contexts: dict[int, Context] = field(default_factory=dict)
    traffic: list[Traffic] = field(default_factory=list)
    fail: set[tuple[int, int]] = field(default_factory=set)  # (round, partition) that raise
    node_ids: list[int] | None = None  # node id of each partition (default 1000 + id)

    def __post_init__(self) -> None:
        set_identity()
        for pid in range(self.num_nodes):
            node_id = self.node_ids[pid] if self.node_ids else 1000 + pid
            self.contexts[node_id] = Context(
                run_id=1,
                node_id=node_id,
                node_config={"partition-id": pid, "num-partitions": self.num_nodes},
                state=RecordDict(),
                run_config={},
            )

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        handlers = {
            MessageType.TRAIN: client_app.train,
            MessageType.EVALUATE: client_app.evaluate,
            MessageType.QUERY: client_app.query,
        }
        for msg in messages:
            node = msg.metadata.dst_node_id
            rnd = int(msg.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
            kind = msg.metadata.message_type
            keys = (
                tuple(sorted(msg.content.array_records["arrays"].keys()))
                if "arrays" in msg.content.array_records
                else ()
            )
            self.traffic.append(
                Traffic(rnd, node, "down", kind, message_to_proto(msg).ByteSize(), keys)
            )
            ctx = self.contexts[node]
            try:
                if (rnd, int(ctx.node_config["partition-id"])) in self.fail:
                    raise RuntimeError("injected failure")
                reply = handlers[kind](msg, ctx)
            except Exception as e:  # what Flower does with a raising ClientApp
                reply = Message(Error(code=2, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
            if self.tamper is not None:
                reply = self.tamper(rnd, node, msg, reply) or reply
            self.traffic.append(
                Traffic(rnd, node, "up", kind, message_to_proto(reply).ByteSize(), ())
            )
            replies.append(reply)
        return replies

    def bytes(self, direction: str, rnd: int | None = None) -> int:
        return sum(
            t.nbytes
            for t in self.traffic
            if t.direction == direction and (rnd is None or t.round == rnd)
        )


def tiny_vision_config(shared_data: Path, **changes: object) -> RunConfig:
    """ResNet-18 at width 4 on 400 real CIFAR-10 images: a federation in seconds."""
    values: dict[str, object] = {
        "task": "cifar10",
        "model": "resnet18",
        "width": 4,
        "data-source": "local",
        "data-dir": str(shared_data / "cifar10" / "cifar10_subset.npz"),
        "train-examples": 400,
        "eval-examples": 200,
        "num-clients": 2,
        "rounds": 3,
        "local-steps": 3,
        "batch-size": 16,
        "fisher-samples": 32,
        "mask-method": "fish",
        "density": 0.05,
        "optimizer": "sgd",
        "lr": 0.05,
        "progress": False,
        "out-dir": "",
    }
    values.update(changes)
    return RunConfig.from_mapping(values)


def tiny_scale_toml(shared_data: Path, *keys: str) -> str:
    """The tiny vision run as ``key = value`` lines of an experiment's ``[scale.cpu]`` table.

    The model, data and budget keys always; ``keys`` adds more (``lr``).
    """
    tiny = tiny_vision_config(shared_data, rounds=2).to_dict()
    names = ["model", "width", "data-source", "data-dir", "train-examples", "eval-examples"]
    names += ["rounds", "local-steps", "batch-size", "fisher-samples", "optimizer", *keys]
    return "\n".join(f"{k} = {json.dumps(tiny[k])}" for k in names)


def make_strategy(
    config: RunConfig, recorder: object | None = None, checkpoint: Path | None = None
) -> FishMaskStrategy:
    data = load_task_data(config)
    device = resolve_device("cpu")
    model = build_task_model(config)
    loader = data.eval_loader()
    val_loader = data.validation_loader() if config.validation_examples else None
    return FishMaskStrategy(
        config,
        model,
        calibration=data.calibration_loader if config.mask_source == "server" else None,
        evaluate_fn=lambda m: evaluate_model(m, loader, data.metric_task, device),
        primary_metric=data.primary,
        validate_fn=None
        if val_loader is None
        else (lambda m: evaluate_model(m, val_loader, data.metric_task, device)),
        recorder=recorder,  # type: ignore[arg-type]
        checkpoint=checkpoint,
        partition_max=max(len(c) for c in data.partitions.clients),
    )
