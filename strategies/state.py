"""The server's checkpoint: everything needed to continue a run after a crash.

After every round the strategy writes ``checkpoint.safetensors`` in the run
folder. One file, written to a temporary name, flushed to disk and renamed
over the old one, so a crash while writing leaves the previous checkpoint
intact (a rename within a folder is atomic on POSIX file systems).

Tensors:

- ``model/index``, ``model/value``: the global model's parameters as the
  entries that differ from the initial model every node builds (sparse for
  masked training, dense after dense warm-up rounds);
- ``model/buffers``: floating-point buffers (BatchNorm statistics);
- ``values``, ``base-values``, ``prev-values``: the masked values now, when
  the current base was taken, and before the last base change;
- ``plan/<which>/union`` and ``plan/<which>/slot<i>``: the mask plans (the
  compact mask encoding) and ``plan/<which>/pos<i>`` their slot positions;
- ``extra/...``: what the run's method keeps besides (``ServerState.extra``).

Metadata (JSON): round, mask and base versions, phase, the ledger, the
sampling generator's state, the elapsed wall time, the run key nodes use to
find their saved optimiser state, and the initial model's fingerprint (a
resumed run must start from the same model).

Nodes are not part of the checkpoint: a resumed run is a new Flower run whose
nodes have new ids, so the server sends each node the run config and mask
again on first contact (and the base, if it is not the initial model).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fish_fl import protocol as P
from fish_fl.federation.state import ServerState
from fish_fl.ledger import CommLedger
from fish_fl.masks import Mask
from fish_fl.masks.assign import MaskPlan

__all__ = ["CHECKPOINT", "load_server_state", "read_checkpoint_round", "save_server_state"]

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "fish-fl-server-state/1"


def _bytes_tensor(data: bytes) -> Tensor:
    return torch.from_numpy(np.frombuffer(bytearray(data), np.uint8))


def _plan_tensors(prefix: str, plan: MaskPlan | None) -> dict[str, Tensor]:
    # Plans share masks and positions (the base plan is often the current
    # one); every tensor is its own copy, as safetensors requires.
    if plan is None:
        return {}
    out = {f"{prefix}/union": _bytes_tensor(plan.union.to_bytes())}
    for i, (mask, positions) in enumerate(plan.slots):
        out[f"{prefix}/slot{i}"] = _bytes_tensor(mask.to_bytes())
        out[f"{prefix}/pos{i}"] = positions.to(torch.int64).clone()
    return out


def _plan_from(prefix: str, tensors: dict[str, Tensor]) -> MaskPlan | None:
    if f"{prefix}/union" not in tensors:
        return None
    union = Mask.from_bytes(tensors[f"{prefix}/union"].numpy())
    slots = []
    i = 0
    while f"{prefix}/slot{i}" in tensors:
        slots.append(
            (Mask.from_bytes(tensors[f"{prefix}/slot{i}"].numpy()), tensors[f"{prefix}/pos{i}"])
        )
        i += 1
    return MaskPlan(union, tuple(slots))


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state: list[Any]) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


def save_server_state(state: ServerState, path: Path, rnd: int, elapsed: float) -> None:
    """Write the server's state after round ``rnd`` atomically to ``path``."""
    from safetensors.torch import save_file

    current = P.flat_parameters(state.model)
    changed = torch.nonzero(current != state.initial_flat).view(-1)
    tensors: dict[str, Tensor] = {
        "model/index": changed,
        "model/value": current[changed].contiguous(),
        "model/buffers": P.flat_buffers(state.model).contiguous(),
        "values": state.values.float().clone(),
        "base-values": state.base_values.float().clone(),
        "prev-values": state.prev_values.float().clone(),
        **_plan_tensors("plan/current", state.plan),
        **_plan_tensors("plan/base", state.base_plan),
        **_plan_tensors("plan/prev", state.prev_plan),
        **{k: v.clone() for k, v in state.extra.items()},
    }
    meta = {
        "round": rnd,
        "phase": state.phase,
        "mask_version": state.mask_version,
        "prev_mask_version": state.prev_mask_version,
        "base_version": state.base_version,
        "base_fingerprint": state.base_fingerprint,
        "initial_fingerprint": state.initial_fingerprint,
        "stopped_by_budget": state.stopped_by_budget,
        "skipped_in_a_row": state.skipped_in_a_row,
        "norm_reference": state.norm_reference,
        "buffer_reference": state.buffer_reference,
        "ledger": state.ledger.to_dict(),
        "rng": _rng_state(state.rng),
        "elapsed": elapsed,
        "run_key": state.run_key,
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "state": json.dumps(meta)})
    _commit(tmp, path)


def _commit(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk and rename it over ``path``."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a fish-fl server checkpoint")
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable checkpoint: {e}") from e
    return tensors, json.loads(meta["state"])


def read_checkpoint_round(path: Path) -> int:
    """The last complete round a checkpoint holds."""
    return int(_read(path)[1]["round"])


def load_server_state(state: ServerState, path: Path) -> dict[str, Any]:
    """Restore the server's state from a checkpoint; returns its metadata (round, elapsed...)."""
    tensors, meta = _read(path)
    if meta["initial_fingerprint"] != state.initial_fingerprint:
        raise ValueError(
            f"checkpoint {path} was made from another initial model "
            f"({meta['initial_fingerprint']}, this one is {state.initial_fingerprint})"
        )
    flat = state.initial_flat.clone()
    flat[tensors["model/index"]] = tensors["model/value"]
    P.load_flat_parameters(state.model, flat)
    if tensors["model/buffers"].numel():
        P.load_flat_buffers(state.model, tensors["model/buffers"])
    state.values = tensors["values"]
    state.base_values = tensors["base-values"]
    state.prev_values = tensors["prev-values"]
    state.plan = _plan_from("plan/current", tensors)
    state.base_plan = _plan_from("plan/base", tensors)
    state.prev_plan = _plan_from("plan/prev", tensors)
    state.phase = meta["phase"]
    state.mask_version = int(meta["mask_version"])
    state.prev_mask_version = int(meta["prev_mask_version"])
    state.base_version = int(meta["base_version"])
    state.base_fingerprint = meta["base_fingerprint"]
    state.stopped_by_budget = bool(meta["stopped_by_budget"])
    state.skipped_in_a_row = int(meta.get("skipped_in_a_row", 0))
    state.norm_reference = [float(x) for x in meta.get("norm_reference", [])]
    state.buffer_reference = [float(x) for x in meta.get("buffer_reference", [])]
    state.run_key = str(meta["run_key"])
    state.ledger = CommLedger.from_dict(meta["ledger"])
    _set_rng_state(state.rng, meta["rng"])
    state.extra = {k: v for k, v in tensors.items() if k.startswith("extra/")}
    return meta
