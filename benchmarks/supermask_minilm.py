"""Supermask training against dense fine-tuning and a FISH mask, on MiniLM and SST-2.

The single-machine figures of the supermask section of docs/results.md.
Supermasks follow "How fine can fine-tuning be? Learning efficient language
models" (Radiya-Dixit and Wang, AISTATS 2020, arXiv 2004.14129); FISH masks
"Training Neural Networks with Fixed Sparse Masks" (Sung, Nair and Raffel,
NeurIPS 2021, arXiv 2111.09839).

Every method starts from the same MiniLM checkpoint (the offline
all-MiniLM-L6-v2 encoder with a fresh 2-class head), trains the same number
of steps on the same batches of the embedded SST-2 sample (4,000 sentences,
the first 256 held back for the Fisher), and is scored on the SST-2 dev set
(872 sentences):

* ``dense``: every weight trained (AdamW).
* ``fish``: a FISH mask of 0.5% (AdamW).
* ``supermask``: weights frozen, a Bernoulli mask over the encoder's weight
  matrices learned through straight-through gradients (Adam on the scores at
  0.2), the head trained normally. Scored with the expected mask, the most
  likely mask and ``--samples`` sampled masks (mean and standard deviation),
  with the final sparsity.
* ``supermask-lr0.002``: the same at a 100 times smaller score rate (the
  paper's Appendix C: small rates leave the mask where it started).

It also prints what the ``layers`` presets of the paper's Table 3 train on
MiniLM, and can save the dense model for ``fish-fl distance``.

Usage::

    nice -n 10 python benchmarks/supermask_minilm.py [--steps 250] [--batch-size 32]
        [--samples 5] [--methods dense,fish,supermask,supermask-lr0.002] [--save-dense DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from fish_fl.config import RunConfig
from fish_fl.masks import Mask, MaskSpec, build_mask, parameter_shapes
from fish_fl.supermask import (
    SupermaskConfig,
    SupermaskModel,
    bits_per_parameter,
    evaluate_supermask,
    make_supermask_optimizer,
    packed_size,
    supermask_parameters,
)
from fish_fl.task import build_task_model, evaluate_model, load_task_data
from fish_fl.training import OptimizerConfig, SparseParameters, make_optimizer, train_steps

CPU = torch.device("cpu")
METHODS = ("dense", "fish", "supermask", "supermask-lr0.002")


def layer_presets(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Trained entries of each Table 3 exclusion preset on this model."""
    rows = []
    for preset in ("no-key", "no-deepest-2", "no-word-embeddings", "no-all-three"):
        mask = build_mask(
            model, MaskSpec(method="layers", layers_preset=preset, head_patterns=("classifier",))
        )
        rows.append({"preset": preset, "trained": mask.k, "density": mask.density})
    return rows


def run_masked(
    config: RunConfig, data: Any, mask_of: Any, lr: float, steps: int
) -> tuple[torch.nn.Module, dict[str, Any]]:
    model = build_task_model(config)
    mask: Mask = mask_of(model)
    sparse = SparseParameters(model, mask)
    optimizer = make_optimizer(sparse, OptimizerConfig(lr=lr))
    start = time.perf_counter()
    stats = train_steps(
        sparse,
        optimizer,
        data.client_loader(0, config.seed),
        steps=steps,
        device=CPU,
        grad_clip=1.0,
    )
    train_s = time.perf_counter() - start
    metrics = evaluate_model(model, data.eval_loader(), config.task, CPU)
    return model, {
        "trained": mask.k,
        "density": mask.density,
        "accuracy": metrics["accuracy"],
        "train_loss": stats.mean_loss,
        "train_s": train_s,
    }


def run_supermask(
    config: RunConfig, data: Any, score_lr: float, steps: int, samples: int, init_sparsity: float
) -> dict[str, Any]:
    model = build_task_model(config)
    sm_config = SupermaskConfig(
        head_patterns=("classifier",),
        initial_sparsity=init_sparsity,
        score_lr=score_lr,
        head_lr=2e-3,
        seed=config.seed,
    )
    wrapper = SupermaskModel(model, sm_config)
    sparse = supermask_parameters(wrapper)
    optimizer = make_supermask_optimizer(sparse, sm_config)
    start = time.perf_counter()
    stats = train_steps(
        sparse,
        optimizer,
        data.client_loader(0, config.seed),
        steps=steps,
        device=CPU,
        grad_clip=0.0,
    )
    train_s = time.perf_counter() - start
    result = evaluate_supermask(
        wrapper,
        data.eval_loader(),
        config.task,
        device=CPU,
        samples=samples,
        generator=torch.Generator().manual_seed(config.seed + 1),
    )
    by_type: dict[str, list[float]] = defaultdict(list)
    by_block: dict[str, list[float]] = defaultdict(list)
    for layer in result.layers:
        parts = layer.name.split(".")
        i = parts.index("layer")
        by_block[parts[i + 1]].append(layer.expected)
        by_type[".".join(parts[i + 2 : -1])].append(layer.expected)
    n = wrapper.numel_maskable
    return {
        "trained": sparse.k,
        "density": sparse.k / sum(p.numel() for p in model.parameters()),
        "maskable": n,
        "accuracy": result.expected["accuracy"],
        **{k: v for k, v in result.summary().items() if k != "samples"},
        "samples": len(result.sampled),
        "train_loss": stats.mean_loss,
        "train_s": train_s,
        "packed_mask_bytes": packed_size(n),
        "bits_per_parameter_mask": bits_per_parameter(packed_size(n), n),
        "sparsity_by_block": {b: sum(v) / len(v) for b, v in by_block.items()},
        "sparsity_by_type": {t: sum(v) / len(v) for t, v in by_type.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--methods", default="dense,fish,supermask")
    parser.add_argument("--initial-sparsity", type=float, default=0.0)
    parser.add_argument("--dense-lr", type=float, default=1e-4)
    parser.add_argument("--fish-lr", type=float, default=2e-3)
    parser.add_argument("--save-dense", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--eval-examples", type=int, default=0, help="0: the whole dev set")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    config = RunConfig(
        model="minilm",
        task="sst2",
        data_source="embedded",
        max_length=args.max_length,
        eval_examples=args.eval_examples,
        num_clients=1,
        batch_size=args.batch_size,
        eval_batch_size=128,
        fisher_samples=256,
        head_patterns=("classifier",),
        seed=0,
    )
    data = load_task_data(config)
    base = build_task_model(config)
    total = sum(p.numel() for p in base.parameters())
    print(
        f"MiniLM: {total:,} parameters; {args.steps} steps of batch {config.batch_size}; "
        f"train {data.client_size(0)} sentences, dev {len(data.held_out)}"
    )
    for row in layer_presets(base):
        print(json.dumps({"layers_preset": row}))

    results: dict[str, dict[str, Any]] = {}
    for method in methods:
        print(f"-- {method}", flush=True)
        if method == "dense":
            model, res = run_masked(
                config, data, lambda m: Mask.full(parameter_shapes(m)), args.dense_lr, args.steps
            )
            if args.save_dense is not None:
                model.save_pretrained(str(args.save_dense))  # type: ignore[operator]
                base.save_pretrained(str(args.save_dense.with_name(args.save_dense.name + "-base")))  # type: ignore[operator]
        elif method == "fish":
            spec = MaskSpec(
                method="fish", density=0.005, fisher_samples=256, head_patterns=("classifier",)
            )
            _, res = run_masked(
                config,
                data,
                lambda m, spec=spec: build_mask(m, spec, data.calibration_loader()),
                args.fish_lr,
                args.steps,
            )
        else:
            lr = 0.2 if method == "supermask" else 0.002
            res = run_supermask(config, data, lr, args.steps, args.samples, args.initial_sparsity)
        results[method] = res
        print(json.dumps({method: res}), flush=True)

    print()
    print(
        "| method | trained entries | accuracy (dev) | sampled masks, mean ± std | "
        "final sparsity of masked weights | train s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for method, r in results.items():
        if method.startswith("supermask"):
            acc = f"{r['expected']:.4f} (expected) / {r['threshold']:.4f} (most likely)"
            sampled = f"{r['sampled_mean']:.4f} ± {r['sampled_std']:.4f} (n={r['samples']})"
            sparsity = f"{r['sparsity_expected']:.2%} (sampled {r['sparsity_sampled']:.2%})"
        else:
            acc, sampled, sparsity = f"{r['accuracy']:.4f}", "-", "0%"
        print(
            f"| {method} | {r['trained']:,} ({r['density']:.3%}) | {acc} | {sampled} | "
            f"{sparsity} | {r['train_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
