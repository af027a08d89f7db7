"""Server time of each aggregator on the k-vector against the same aggregator on the dense vector.

n simulated replies (standard normal updates) of k = 113,570 values (MiniLM at
density 0.5%) and of the dense 22.7M-parameter vector, measured side by side:
the time of ``aggregate_updates`` for one round (replies already decoded).
Dense sizes whose replies alone would not fit in ``--max-gib`` are skipped and
reported as such.

    python benchmarks/bench_robust.py --out docs/figures/bench_robust.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fish_fl.aggregate import ClientUpdate, aggregate_updates
from fish_fl.federation.robust import Aggregation

SIZES = {"k (MiniLM 0.5%)": 113_570, "dense (MiniLM)": 22_713_216}
RULES = [
    Aggregation("mean"),
    Aggregation("median"),
    Aggregation("trimmed-mean", trim_beta=0.1),
    Aggregation("krum", krum_f=1),
    Aggregation("multi-krum", krum_f=1),
]


def _time(updates: list[ClientUpdate], k: int, rule: Aggregation, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        aggregate_updates(updates, k, rule)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--max-gib", type=float, default=4.0, help="largest stack of replies")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    gen = torch.Generator().manual_seed(0)
    for label, k in SIZES.items():
        for n in args.n:
            gib = n * k * 4 / 2**30
            if gib > args.max_gib:
                print(f"{label:16s} n={n:5d}: skipped ({gib:.1f} GiB of replies > --max-gib)")
                rows.append({"size": label, "k": k, "n": n, "skipped": f"{gib:.1f} GiB"})
                continue
            positions = torch.arange(k)
            updates = [
                ClientUpdate(torch.randn(k, generator=gen), positions, 1.0) for _ in range(n)
            ]
            for rule in RULES:
                seconds = _time(updates, k, rule, args.repeats)
                print(f"{label:16s} n={n:5d} {rule.name:13s} {seconds * 1e3:10.1f} ms", flush=True)
                rows.append({"size": label, "k": k, "n": n, "rule": rule.name, "seconds": seconds})
            del updates
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
