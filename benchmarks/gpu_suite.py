"""GPU suite: Fisher, sparse training and peak memory at the paper's model sizes.

Needs only torch, transformers and torchvision (no Flower, Ray, data sets or
network): both models are randomly initialised and fed random inputs, which
costs the same as real ones.

Cases:

- ``bert-large``: a BERT-large-sized encoder (24 layers, hidden 1024, 16
  heads, feed-forward 4096; 335M parameters with the 2-class head), N = 1024
  examples of 128 tokens in batches of 32;
- ``resnet34-cifar``: the project's ResNet-34 with the CIFAR stem (21.3M
  parameters), N = 256 images of 32x32 in batches of 32.

For each: the Fisher by hooks (:func:`fish_fl.fisher.fisher_diagonal`)
against the one-example-at-a-time loop (timed on ``--loop-samples`` examples
and scaled to N: it is linear in N) and against one plain batched
forward/backward over the same examples; then one AdamW step at density 0.5%
against a dense step, in float32 and under bfloat16 autocast. The peak GPU
memory of each is measured from a reset (``torch.cuda.max_memory_allocated``).

Usage::

    python benchmarks/gpu_suite.py [--json gpu_suite.json]     # about 5 minutes on one H200
    python benchmarks/gpu_suite.py --smoke                     # tiny models, CPU, seconds

It prints one JSON line per measurement, then a Markdown table, and writes
all rows with the machine's description to ``--json``. ``--smoke`` runs the
same code paths on tiny models (CI runs it on CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_core import bench_fisher, bench_step  # noqa: E402
from fish_fl.models import build_model  # noqa: E402


@dataclass(frozen=True)
class Scale:
    """Sizes of one run of the suite."""

    bert_layers: int
    bert_hidden: int
    bert_heads: int
    bert_ffn: int
    seq_len: int
    bert_n: int
    resnet_width: int
    resnet_n: int
    batch: int
    loop_n: int
    steps: int


FULL = Scale(
    bert_layers=24,
    bert_hidden=1024,
    bert_heads=16,
    bert_ffn=4096,
    seq_len=128,
    bert_n=1024,
    resnet_width=64,
    resnet_n=256,
    batch=32,
    loop_n=128,
    steps=10,
)
SMOKE = Scale(
    bert_layers=2,
    bert_hidden=32,
    bert_heads=2,
    bert_ffn=64,
    seq_len=16,
    bert_n=8,
    resnet_width=4,
    resnet_n=8,
    batch=4,
    loop_n=4,
    steps=2,
)


def bert_case(scale: Scale, device: torch.device) -> tuple[nn.Module, list[Any]]:
    """A randomly initialised BERT encoder with a 2-class head, and random token batches."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522,
        hidden_size=scale.bert_hidden,
        num_hidden_layers=scale.bert_layers,
        num_attention_heads=scale.bert_heads,
        intermediate_size=scale.bert_ffn,
        max_position_embeddings=max(512, scale.seq_len),
        num_labels=2,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).to(device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, config.vocab_size, (scale.bert_n, scale.seq_len), generator=g)
    labels = torch.randint(0, 2, (scale.bert_n,), generator=g)
    mask = torch.ones_like(ids)
    batches = []
    for i in range(0, scale.bert_n, scale.batch):
        inputs = {
            "input_ids": ids[i : i + scale.batch].to(device),
            "attention_mask": mask[i : i + scale.batch].to(device),
        }
        batches.append((inputs, labels[i : i + scale.batch].to(device)))
    return model, batches


def resnet_case(scale: Scale, device: torch.device) -> tuple[nn.Module, list[Any]]:
    """The project's ResNet-34 (CIFAR stem) and random normalised 32x32 images."""
    model = build_model("resnet34", 10, width=scale.resnet_width, seed=0).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(scale.resnet_n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (scale.resnet_n,), generator=g)
    return model, [
        (x[i : i + scale.batch].to(device), y[i : i + scale.batch].to(device))
        for i in range(0, scale.resnet_n, scale.batch)
    ]


def with_peak_memory(fn: Callable[[], dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """``fn()``'s row with ``peak_gib``: the peak GPU memory allocated while it ran."""
    if device.type != "cuda":
        return {**fn(), "peak_gib": None}
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    row = fn()
    return {**row, "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def run_suite(scale: Scale, device: torch.device, density: float = 0.005) -> list[dict[str, Any]]:
    """Every measurement of the suite at ``scale`` on ``device``."""
    rows: list[dict[str, Any]] = []
    for name, make, n in (
        ("bert-large" if scale is FULL else "bert-tiny", bert_case, scale.bert_n),
        ("resnet34-cifar" if scale is FULL else "resnet-tiny", resnet_case, scale.resnet_n),
    ):
        model, batches = make(scale, device)
        numel = sum(p.numel() for p in model.parameters())
        fisher = with_peak_memory(
            partial(bench_fisher, name, model, batches, n, scale.loop_n, device), device
        )
        rows.append({"kind": "fisher", "parameters": numel, **fisher})
        for amp in (False, True):
            if amp and device.type != "cuda":
                continue  # bfloat16 autocast is a CUDA path (train_steps ignores it on CPU)
            step = with_peak_memory(
                partial(bench_step, name, model, batches, density, scale.steps, device, amp),
                device,
            )
            rows.append({"kind": "step", "parameters": numel, **step})
        del model, batches
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The suite's two tables (Fisher, training step) in Markdown."""

    def gib(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        "| case | N | hooks | per-example loop | speed-up | plain backward | hooks / plain | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if r["kind"] == "fisher"):
        lines.append(
            f"| {r['case']} | {r['n']} | {r['fast_s']:.2f} s | {r['loop_s']:.2f} s | "
            f"{r['speedup_vs_loop']:.2f}x | {r['plain_backward_s']:.2f} s | "
            f"{r['ratio_to_plain']:.2f} | {gib(r['peak_gib'])} |"
        )
    lines += [
        "",
        "| case | precision | dense step | sparse step | sparse / dense | dense state MB | sparse state MB | peak GiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if r["kind"] == "step"):
        lines.append(
            f"| {r['case']} | {'bf16 autocast' if r['amp'] else 'fp32'} | "
            f"{r['dense_step_s']:.4f} s | {r['sparse_step_s']:.4f} s | {r['step_ratio']:.3f} | "
            f"{r['dense_state_mb']:.1f} | {r['sparse_state_mb']:.2f} | {gib(r['peak_gib'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on CPU (seconds)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--density", type=float, default=0.005)
    parser.add_argument("--json", type=Path, default=Path("gpu_suite.json"))
    args = parser.parse_args(argv)
    if args.device == "auto":
        device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    else:
        device = torch.device(args.device)
    scale = SMOKE if args.smoke else FULL
    info = machine(device)
    print(json.dumps(info))
    start = time.perf_counter()
    rows = run_suite(scale, device, args.density)
    info["suite_s"] = round(time.perf_counter() - start, 1)
    table = markdown(rows)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    print(f"suite: {info['suite_s']} s; rows written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
