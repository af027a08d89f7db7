"""The server's checkpoint: everything needed to continue a run after a crash.

After every round the strategy writes ``checkpoint.safetensors`` in the run
folder. One file, written to a temporary name, flushed to disk and renamed
over the old one (:func:`fish_fl.fileio.save_safetensors_atomic`), so a crash
while writing leaves the previous checkpoint intact.

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
find their saved optimiser state, the number of model entries, and the
initial model's fingerprint (a resumed run must start from the same model).
Besides, a SHA-256 of every tensor and of the metadata (format 2).

Reading checks everything before anything is restored: the checksums (a
flipped bit is refused), every metadata field (present, of its type and
range), every tensor (present, dtype, shape, indices within the model, plan
positions that point at the slot's entries in the union), and, against the
model, the initial fingerprint, the sizes, and the base's fingerprint. Every
problem is one :class:`CheckpointError` (a ``ValueError``) whose one-line
message names the file and what is wrong.

Nodes are not part of the checkpoint: a resumed run is a new Flower run whose
nodes have new ids, so the server sends each node the run config and mask
again on first contact (and the base, if it is not the initial model).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fish_fl import protocol as P
from fish_fl.federation.state import ServerState
from fish_fl.federation.sync import flat_fingerprint
from fish_fl.fileio import CHECKSUMS, CorruptFileError, read_safetensors, save_safetensors_atomic
from fish_fl.ledger import CommLedger, RoundTraffic
from fish_fl.masks import Mask
from fish_fl.masks.assign import MaskPlan
from fish_fl.masks.registry import parameter_shapes

__all__ = [
    "CHECKPOINT",
    "FORMAT",
    "CheckpointError",
    "load_server_state",
    "read_checkpoint_round",
    "save_server_state",
]

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "fish-fl-server-state/2"
_OLD_FORMATS = ("fish-fl-server-state/1",)
_PLANS = ("current", "base", "prev")
_PHASES = ("sparse", "dense")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")
_RUN_KEY = re.compile(r"[0-9A-Za-z]+")
_PLAN_PART = re.compile(r"plan/(current|base|prev)/(union|slot\d+|pos\d+)")
_FIXED = ("model/index", "model/value", "model/buffers", "values", "base-values", "prev-values")


class CheckpointError(CorruptFileError):
    """A server checkpoint that cannot be resumed from; the message is one line."""


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


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def save_server_state(state: ServerState, path: Path, rnd: int, elapsed: float) -> None:
    """Write the server's state after round ``rnd`` atomically to ``path``."""
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
        "total": state.total,
    }
    save_safetensors_atomic(
        tensors, path, {"format": FORMAT, "state": json.dumps(meta)}, checksums=True
    )


# -- reading: every field checked, one line per problem --------------------------------
def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class _Checkpoint:
    """A checkpoint whose every field and tensor was checked on its own (not yet against a model)."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, Tensor]
    plans: dict[str, MaskPlan | None]
    ledger: CommLedger
    rng: tuple[Any, ...]

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {what}")


class _Reader:
    """Checks a checkpoint's fields and tensors; each check raises a one-line error."""

    def __init__(self, path: Path, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.path, self.meta, self.tensors = path, meta, tensors

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {what}")

    # -- metadata fields ---------------------------------------------------------
    def field(self, key: str) -> Any:
        if key not in self.meta:
            raise self.fail(f"metadata field {key!r} is missing")
        return self.meta[key]

    def count(self, key: str) -> int:
        value = self.field(key)
        if not _is_count(value):
            raise self.fail(
                f"metadata field {key!r} must be a whole number >= 0, got {_show(value)}"
            )
        return int(value)

    def flag(self, key: str) -> bool:
        value = self.field(key)
        if not isinstance(value, bool):
            raise self.fail(f"metadata field {key!r} must be true or false, got {_show(value)}")
        return value

    def text(self, key: str, pattern: re.Pattern[str], what: str) -> str:
        value = self.field(key)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise self.fail(f"metadata field {key!r} must be {what}, got {_show(value)}")
        return value

    def numbers(self, key: str) -> list[float]:
        value = self.field(key)
        if not isinstance(value, list) or not all(_is_number(x) for x in value):
            raise self.fail(f"metadata field {key!r} must be a list of finite numbers")
        return [float(x) for x in value]

    def ledger(self) -> CommLedger:
        value = self.field("ledger")
        names = [f.name for f in dataclasses.fields(RoundTraffic)]
        if (
            not isinstance(value, dict)
            or set(value) != {"model_numel", "rounds"}
            or not _is_count(value["model_numel"])
            or value["model_numel"] == 0
            or not isinstance(value["rounds"], list)
        ):
            raise self.fail("metadata field 'ledger' is not a ledger (model_numel and rounds)")
        last = -1
        for r in value["rounds"]:
            if not isinstance(r, dict) or sorted(r) != sorted(names):
                raise self.fail(f"a round of the ledger is malformed: {_show(r)}")
            if not all(_is_count(r[n]) for n in names) or r["round"] <= last:
                raise self.fail(f"ledger round {_show(r.get('round'))} has a bad count or order")
            last = r["round"]
        return CommLedger.from_dict(value)

    def rng(self) -> tuple[Any, ...]:
        value = self.field("rng")
        ok = (
            isinstance(value, list)
            and len(value) == 3
            and isinstance(value[1], list)
            and all(_is_count(x) and x < 2**32 for x in value[1])
            and (value[2] is None or _is_number(value[2]))
        )
        if ok:
            state = (value[0], tuple(value[1]), value[2])
            try:
                random.Random().setstate(state)
            except (TypeError, ValueError, OverflowError):
                ok = False
        if not ok:
            raise self.fail("metadata field 'rng' is not a random generator's state")
        return state

    # -- tensors -----------------------------------------------------------------
    def tensor(self, name: str, dtype: torch.dtype) -> Tensor:
        t = self.tensors.get(name)
        if t is None:
            raise self.fail(f"tensor {name!r} is missing")
        if t.dtype != dtype or t.ndim != 1:
            raise self.fail(
                f"tensor {name!r} must be 1-D {dtype}, got {t.ndim}-D {t.dtype}".replace(
                    "torch.", ""
                )
            )
        return t

    def mask(self, name: str, total: int) -> Mask:
        data = self.tensor(name, torch.uint8)
        try:
            mask = Mask.from_bytes(data.numpy())
        except (ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise self.fail(f"tensor {name!r} is not a mask ({' '.join(str(e).split())})") from None
        if mask.total != total:
            raise self.fail(f"mask {name!r} covers {mask.total} entries, the model has {total}")
        return mask

    def plan(self, which: str, total: int) -> MaskPlan | None:
        prefix = f"plan/{which}"
        parts = {k[len(prefix) + 1 :] for k in self.tensors if k.startswith(prefix + "/")}
        if not parts:
            return None
        union = self.mask(f"{prefix}/union", total)
        n = sum(1 for p in parts if p.startswith("slot"))
        expected = {"union"} | {f"slot{i}" for i in range(n)} | {f"pos{i}" for i in range(n)}
        if n == 0 or parts != expected:
            odd = sorted(parts ^ expected)
            raise self.fail(f"plan {which!r} has no slot or unmatched parts ({', '.join(odd)})")
        union_flat = union.flat_positions()
        slots = []
        for i in range(n):
            mask = self.mask(f"{prefix}/slot{i}", total)
            if mask.shapes != union.shapes:
                raise self.fail(f"mask {prefix}/slot{i} covers other parameters than the union")
            pos = self.tensor(f"{prefix}/pos{i}", torch.int64)
            if pos.numel() != mask.k:
                raise self.fail(
                    f"{prefix}/pos{i} has {pos.numel()} positions for a mask of {mask.k}"
                )
            if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= union.k):
                raise self.fail(f"{prefix}/pos{i} points outside the union's {union.k} entries")
            if not torch.equal(union_flat[pos], mask.flat_positions()):
                raise self.fail(
                    f"{prefix}/pos{i} does not point at slot {i}'s entries in the union"
                )
            slots.append((mask, pos))
        return MaskPlan(union, tuple(slots))

    def values(self, name: str, plan: MaskPlan | None, which: str) -> None:
        t = self.tensor(name, torch.float32)
        k = plan.union.k if plan is not None else 0
        if t.numel() != k:
            raise self.fail(f"tensor {name!r} has {t.numel()} values, plan {which!r} has {k}")


def _read(path: Path) -> _Checkpoint:
    """Read and check a checkpoint on its own (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        tensors, raw = read_safetensors(path)
    except CorruptFileError as e:
        raise CheckpointError(str(e)) from None
    fmt = raw.get("format")
    if fmt in _OLD_FORMATS:
        raise CheckpointError(
            f"{path} is a checkpoint of format {fmt}, this version reads {FORMAT} only "
            "(it cannot be resumed; start the run again)"
        )
    if fmt != FORMAT:
        raise CheckpointError(f"{path} is not a fish-fl server checkpoint (format {_show(fmt)})")
    if CHECKSUMS not in raw:
        raise CheckpointError(f"{path} has no checksums (metadata {CHECKSUMS!r} is missing)")
    if "state" not in raw:
        raise CheckpointError(f"{path}: metadata entry 'state' is missing")
    try:
        meta = json.loads(raw["state"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata entry 'state' is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata entry 'state' is not a JSON object")
    r = _Reader(path, meta, tensors)

    # 1. Metadata fields.
    for key in ("round", "mask_version", "prev_mask_version", "base_version", "skipped_in_a_row"):
        r.count(key)
    total = r.count("total")
    if total == 0:
        raise r.fail("metadata field 'total' must be positive")
    if r.field("phase") not in _PHASES:
        raise r.fail(f"metadata field 'phase' must be one of {', '.join(_PHASES)}")
    for key in ("base_fingerprint", "initial_fingerprint"):
        r.text(key, _FINGERPRINT, "16 hex digits")
    r.text("run_key", _RUN_KEY, "letters and digits")
    r.flag("stopped_by_budget")
    r.numbers("norm_reference")
    r.numbers("buffer_reference")
    elapsed = r.field("elapsed")
    if not _is_number(elapsed) or elapsed < 0:
        raise r.fail(f"metadata field 'elapsed' must be a number >= 0, got {_show(elapsed)}")
    ledger = r.ledger()
    rng = r.rng()

    # 2. Tensors: nothing unknown, each of its dtype and size, indices within the model.
    for name in tensors:
        if name not in _FIXED and not _PLAN_PART.fullmatch(name) and not name.startswith("extra/"):
            raise r.fail(f"unexpected tensor {name!r}")
    index = r.tensor("model/index", torch.int64)
    value = r.tensor("model/value", torch.float32)
    if index.numel() != value.numel():
        raise r.fail(f"model/index has {index.numel()} entries, model/value {value.numel()}")
    if index.numel() and (int(index[0]) < 0 or int(index[-1]) >= total):
        raise r.fail(f"model/index has an index outside the model's {total} entries")
    if index.numel() > 1 and not bool((index[1:] > index[:-1]).all()):
        raise r.fail("model/index is not strictly increasing (duplicate or unsorted indices)")
    r.tensor("model/buffers", torch.float32)
    plans = {which: r.plan(which, total) for which in _PLANS}
    r.values("values", plans["current"], "current")
    r.values("base-values", plans["base"], "base")
    r.values("prev-values", plans["prev"], "prev")
    return _Checkpoint(path, meta, tensors, plans, ledger, rng)


def read_checkpoint_round(path: Path) -> int:
    """The last complete round a checkpoint holds (the whole file is checked)."""
    return int(_read(path).meta["round"])


def load_server_state(state: ServerState, path: Path) -> dict[str, Any]:
    """Restore the server's state from a checkpoint; returns its metadata (round, elapsed...).

    Everything is checked first (see the module docstring); a refused
    checkpoint leaves ``state`` as it was.
    """
    ck = _read(path)
    meta, tensors = ck.meta, ck.tensors

    # 1. Against this model: the same initial model, sizes and parameters.
    if meta["initial_fingerprint"] != state.initial_fingerprint:
        raise ValueError(
            f"checkpoint {path} was made from another initial model "
            f"({meta['initial_fingerprint']}, this one is {state.initial_fingerprint})"
        )
    if meta["total"] != state.total:
        raise ck.fail(f"it holds {meta['total']} model entries, the model has {state.total}")
    if ck.ledger.model_numel != state.ledger.model_numel:
        raise ck.fail(
            f"its ledger counts {ck.ledger.model_numel} parameters, "
            f"the model has {state.ledger.model_numel}"
        )
    buffers = tensors["model/buffers"]
    want = P.flat_buffers(state.model).numel()
    if buffers.numel() != want:
        raise ck.fail(f"model/buffers has {buffers.numel()} values, the model has {want}")
    shapes = parameter_shapes(state.model)
    for which, plan in ck.plans.items():
        if plan is not None and list(plan.union.shapes.items()) != list(shapes.items()):
            raise ck.fail(f"the masks of plan {which!r} cover other parameters than the model's")

    # 2. The global model, and the base nodes rebuild from it (its fingerprint is stored).
    flat = state.initial_flat.clone()
    flat[tensors["model/index"]] = tensors["model/value"]
    base = flat.clone()
    if ck.plans["base"] is not None:
        base[ck.plans["base"].union.flat_positions()] = tensors["base-values"]
    if flat_fingerprint(base, shapes) != meta["base_fingerprint"]:
        raise ck.fail("the model and base values do not give the base fingerprint it records")

    # 3. Restore.
    P.load_flat_parameters(state.model, flat)
    if buffers.numel():
        P.load_flat_buffers(state.model, buffers)
    state.values = tensors["values"]
    state.base_values = tensors["base-values"]
    state.prev_values = tensors["prev-values"]
    state.plan = ck.plans["current"]
    state.base_plan = ck.plans["base"]
    state.prev_plan = ck.plans["prev"]
    state.phase = meta["phase"]
    state.mask_version = meta["mask_version"]
    state.prev_mask_version = meta["prev_mask_version"]
    state.base_version = meta["base_version"]
    state.base_fingerprint = meta["base_fingerprint"]
    state.stopped_by_budget = meta["stopped_by_budget"]
    state.skipped_in_a_row = meta["skipped_in_a_row"]
    state.norm_reference = [float(x) for x in meta["norm_reference"]]
    state.buffer_reference = [float(x) for x in meta["buffer_reference"]]
    state.run_key = meta["run_key"]
    state.ledger = ck.ledger
    state.rng.setstate(ck.rng)
    state.extra = {k: v for k, v in tensors.items() if k.startswith("extra/")}
    return meta
