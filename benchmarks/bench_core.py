"""Benchmark of the core: Fisher speed and sparse-training cost.

Measured side by side in one run, on whatever machine runs it:

1. Fisher with N examples (default 256) on ResNet-34 (CIFAR stem, 32x32
   CIFAR-10 images) and on the MiniLM encoder (SST-2 sentences padded to
   sequence length 128): the hook-based :func:`fisher_diagonal` against the
   one-example-at-a-time loop and against one plain batched forward/backward
   over the same examples.
2. One training step at density 0.5% against a dense step (same model, same
   batch), and the optimiser state bytes of both (AdamW).

Usage::

    python benchmarks/bench_core.py [--samples 256] [--batch 32] [--loop-samples 64]

The loop is timed on ``--loop-samples`` examples and scaled to N (it is linear
in N: one forward and backward per example).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fish_fl.data.glue import load_glue_tsv
from fish_fl.data.vision import load_cifar10_npz
from fish_fl.fisher import fisher_diagonal, fisher_diagonal_reference
from fish_fl.masks import MaskSpec, build_mask
from fish_fl.models import build_model, load_tokenizer
from fish_fl.training import (
    OptimizerConfig,
    SparseParameters,
    make_optimizer,
    optimizer_state_bytes,
    task_loss,
    train_steps,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CPU = torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device = CPU) -> float:
    """Wall seconds of ``fn()``, with the device's queue drained before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def resnet_case(n: int, batch: int) -> tuple[nn.Module, list[Any]]:
    model = build_model("resnet34", 10, seed=0)
    npz = SHARED / "cifar10" / "cifar10_subset.npz"
    if npz.is_file():
        splits = load_cifar10_npz(npz)
        x = torch.from_numpy(np.asarray(splits.train.images[:n])).permute(0, 3, 1, 2).float() / 255
        y = torch.as_tensor(np.asarray(splits.train.labels[:n]), dtype=torch.long)
    else:
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    x = (x - 0.5) / 0.25
    return model, [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def minilm_case(n: int, batch: int) -> tuple[nn.Module, list[Any]]:
    model = build_model("minilm", 2, seed=0)
    tok = load_tokenizer("minilm")
    tsv = SHARED / "glue" / "SST-2"
    if tsv.is_dir():
        split = load_glue_tsv(tsv, "sst2").train
        sentences, labels = list(split.text_a[:n]), list(split.labels[:n])
    else:
        sentences, labels = [f"sentence number {i}" for i in range(n)], [i % 2 for i in range(n)]
    enc = tok(sentences, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    y = torch.as_tensor(labels, dtype=torch.long)
    inputs = {
        k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    return model, [
        ({k: v[i : i + batch] for k, v in inputs.items()}, y[i : i + batch])
        for i in range(0, n, batch)
    ]


def plain_backward(model: nn.Module, batches: list[Any]) -> None:
    model.eval()
    for inputs, targets in batches:
        model.zero_grad(set_to_none=True)
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
        task_loss(getattr(out, "logits", out), targets).backward()
    model.zero_grad(set_to_none=True)


def bench_fisher(
    name: str,
    model: nn.Module,
    batches: list[Any],
    n: int,
    loop_n: int,
    device: torch.device = CPU,
) -> dict[str, Any]:
    """Fisher by hooks, by the per-example loop (``loop_n`` examples, scaled to ``n``), and
    one plain batched backward, on ``device`` (the model and batches must be there)."""
    loop_batches = [(b[0], b[1]) for b in batches]
    # Warm-up (allocator, kernels), then measure each path.
    fisher_diagonal(model, batches[:1], n_samples=2, progress=False)
    plain_backward(model, batches[:1])
    t_fast = timed(lambda: fisher_diagonal(model, batches, n_samples=n, progress=False), device)
    t_plain = timed(lambda: plain_backward(model, batches), device)
    t_loop = timed(
        lambda: fisher_diagonal_reference(model, loop_batches, n_samples=loop_n), device
    ) * (n / loop_n)
    row = {
        "case": name,
        "n": n,
        "fast_s": round(t_fast, 2),
        "loop_s": round(t_loop, 2),
        "plain_backward_s": round(t_plain, 2),
        "speedup_vs_loop": round(t_loop / t_fast, 2),
        "ratio_to_plain": round(t_fast / t_plain, 2),
    }
    print(json.dumps(row))
    return row


def bench_step(
    name: str,
    model: nn.Module,
    batches: list[Any],
    density: float,
    steps: int,
    device: torch.device = CPU,
    amp: bool = False,
) -> dict[str, Any]:
    """A training step at ``density`` against a dense one (AdamW), interleaved; ``amp``:
    bfloat16 autocast on CUDA."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    dense_model, sparse_model = copy.deepcopy(model), copy.deepcopy(model)
    setups = {}
    for label, m, spec in (
        ("dense", dense_model, MaskSpec(method="dense")),
        ("sparse", sparse_model, MaskSpec(method="magnitude", density=density)),
    ):
        sparse = SparseParameters(m, build_mask(m, spec))
        opt = make_optimizer(sparse, OptimizerConfig(lr=1e-4, weight_decay=0.01))
        train_steps(sparse, opt, batches[:1], steps=2, device=device, amp=amp)  # warm-up, state
        setups[label] = (sparse, opt)
    times: dict[str, list[float]] = {"dense": [], "sparse": []}
    for _ in range(steps):  # interleaved, so drifts in machine load hit both
        for label, (sparse, opt) in setups.items():
            times[label].append(
                timed(
                    lambda s=sparse, o=opt: train_steps(
                        s, o, batches[:1], steps=1, device=device, amp=amp
                    ),
                    device,
                )
            )
    dense_t, sparse_t = statistics.median(times["dense"]), statistics.median(times["sparse"])
    dense_state = optimizer_state_bytes(setups["dense"][1])
    sparse_state = optimizer_state_bytes(setups["sparse"][1])
    row = {
        "case": name,
        "amp": amp,
        "density": density,
        "dense_step_s": round(dense_t, 4),
        "sparse_step_s": round(sparse_t, 4),
        "step_ratio": round(sparse_t / dense_t, 3),
        "dense_state_mb": round(dense_state / 2**20, 2),
        "sparse_state_mb": round(sparse_state / 2**20, 3),
        "state_ratio": round(sparse_state / dense_state, 5),
        "state_target": round(density * 1.1, 5),
    }
    print(json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--loop-samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--density", type=float, default=0.005)
    parser.add_argument("--only", choices=("fisher", "step"), default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, make in (("resnet34-cifar", resnet_case), ("minilm-seq128", minilm_case)):
        model, batches = make(args.samples, args.batch)
        if args.only in (None, "fisher"):
            bench_fisher(name, model, batches, args.samples, args.loop_samples)
        if args.only in (None, "step"):
            bench_step(name, model, batches, args.density, args.steps)


if __name__ == "__main__":
    main()
