"""Traffic and wall time per round: FISH 0.5% against plain Flower FedAvg.

Both run in this one script, as Flower simulations (Ray backend) of MiniLM on
the embedded SST-2 sample with the same clients, partitions, local steps and
batch size:

* ``fish``: fish-fl's strategy and ClientApp (the ``sst2-minilm`` preset);
* ``fedavg``: Flower's own ``FedAvg`` (``flwr.serverapp.strategy``) with a
  plain dense ClientApp that receives the whole model, trains every weight
  with AdamW and returns the whole model.

Every message of both is measured the same way, ``message_to_proto(msg)
.ByteSize()`` on the server. Prints one JSON line per method and the ratios.

Usage::

    python benchmarks/bench_comm.py [--rounds 10] [--local-steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from fish_fl.config import RunConfig
from fish_fl.masks import MaskSpec, build_mask
from fish_fl.task import build_task_model, evaluate_model, load_task_data
from fish_fl.training import SparseParameters, make_optimizer, train_steps
from sims.commands.run import load_preset
from sims.simulate import simulate

CPU = torch.device("cpu")


def fish_run(config: RunConfig, out: Path) -> dict[str, Any]:
    simulate(config, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summarise("fish", config, rows)


def summarise(name: str, config: RunConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    trained = [r for r in rows if r["round"] > 0]
    steady = trained[1:] if len(trained) > 1 else trained  # after the mask broadcast
    full = 4 * 22_713_986
    total = sum(r["bytes_up"] + r["bytes_down"] for r in trained)
    return {
        "method": name,
        "rounds": len(trained),
        "bytes_per_round_steady": sum(r["bytes_up"] + r["bytes_down"] for r in steady)
        / len(steady),
        "bytes_round1": trained[0]["bytes_up"] + trained[0]["bytes_down"],
        "cum_fme": total / full,
        "seconds_per_round": sum(r["round_time"] for r in steady) / len(steady),
        "final_accuracy": trained[-1]["score"],
    }


class MeasuredFedAvg(FedAvg):
    """Flower's FedAvg, with every message measured as fish-fl measures its own."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows: list[dict[str, Any]] = []
        self._down = 0
        self._t0 = 0.0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._t0 = time.monotonic()
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._down = sum(message_to_proto(m).ByteSize() for m in messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        up = sum(message_to_proto(m).ByteSize() for m in replies)
        self.rows.append({"round": server_round, "bytes_up": up, "bytes_down": self._down})
        return super().aggregate_train(server_round, replies)


def fedavg_run(config: RunConfig) -> dict[str, Any]:
    """Plain Flower FedAvg, dense, on the same task."""
    data = load_task_data(config)
    eval_loader = data.eval_loader()
    strategy = MeasuredFedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=config.num_clients
    )
    scores: dict[int, float] = {}

    def central(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        model = build_task_model(config)
        model.load_state_dict(arrays.to_torch_state_dict())
        metrics = evaluate_model(model, eval_loader, data.metric_task, CPU)
        scores[rnd] = metrics[data.primary]
        # Round time ends when the round's evaluation ends, as in fish-fl's log.
        if rnd > 0:
            strategy.rows[-1]["round_time"] = time.monotonic() - strategy._t0
        return MetricRecord({data.primary: metrics[data.primary]})

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        model = build_task_model(config)
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=config.rounds,
            train_config=ConfigRecord({"lr": config.lr}),
            evaluate_fn=central,
        )

    client = ClientApp()
    cache: dict[str, Any] = {}

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(max(1, int(config.client_num_cpus)))
        pid = int(context.node_config["partition-id"])  # type: ignore[arg-type]
        if "model" not in cache:
            cache["model"] = build_task_model(config)
            cache["data"] = load_task_data(config)
        model, cdata = cache["model"], cache["data"]
        model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
        sparse = SparseParameters(model, build_mask(model, MaskSpec(method="dense")))
        optimizer = make_optimizer(sparse, config.optimizer_config())
        rnd = int(msg.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
        train_steps(
            sparse,
            optimizer,
            cdata.client_loader(pid, seed=rnd * 1009 + pid),
            steps=config.local_steps,
            device=CPU,
            grad_clip=config.grad_clip,
        )
        reply = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"num-examples": cdata.client_size(pid)}),
            }
        )
        return Message(reply, reply_to=msg)

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=config.num_clients,
        backend_config={
            "client_resources": {"num_cpus": config.client_num_cpus, "num_gpus": 0.0},
            "init_args": {"include_dashboard": False, "log_to_driver": False},
        },  # type: ignore[arg-type]
    )
    rows = [dict(r, score=scores.get(r["round"])) for r in strategy.rows]
    return summarise("fedavg", config, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--dense-lr", type=float, default=5e-5, help="AdamW lr of dense FedAvg")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    overrides = [f"rounds={args.rounds}", f"local-steps={args.local_steps}"]
    config = load_preset("sst2-minilm", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        fish = fish_run(config, Path(tmp) / "fish")
    print(json.dumps(fish))
    dense = fedavg_run(config.replace(lr=args.dense_lr))
    print(json.dumps(dense))
    print(
        json.dumps(
            {
                "bytes_per_round_reduction": round(
                    dense["bytes_per_round_steady"] / fish["bytes_per_round_steady"], 1
                ),
                "round1_reduction": round(dense["bytes_round1"] / fish["bytes_round1"], 1),
                "fish_cum_fme": round(fish["cum_fme"], 4),
                "fedavg_cum_fme": round(dense["cum_fme"], 2),
                "time_per_round_ratio_fish_over_fedavg": round(
                    fish["seconds_per_round"] / dense["seconds_per_round"], 3
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
