"""The server's checkpoint: everything needed to continue a run after a crash.

After every round the strategy writes ``checkpoint.safetensors`` in the run
folder. One file, written to a temporary name, flushed to disk and renamed
over the old one (:func:`fish_fl.fileio.save_safetensors_atomic`), so a crash
while writing leaves the previous checkpoint intact.

Tensors (format 3): nothing that can be rebuilt exactly is stored twice.

- ``model/at``, ``model/value``: the global model's parameters as the entries
  that differ (bit for bit) from the initial model every node builds, or the
  whole model when that is smaller; ``model/at`` is the compact mask encoding
  of those positions (:meth:`fish_fl.masks.Mask.to_bytes`: a bitmap, varint
  gaps, or "every entry"), so a dense run stores one float32 copy;
- ``model/buffers``: floating-point buffers (BatchNorm statistics);
- ``values/...``, ``base-values/...``, ``prev-values/...``: the masked values
  now, when the current base was taken, and before the last base change, each
  as ``at`` and ``value`` in the same way, against the entries under its
  plan of the model or of the initial model (``references`` in the metadata
  says which): the values now are the model's own entries and store nothing;
- ``plan/<which>/union`` and ``plan/<which>/slot<i>``: the mask plans (the
  compact mask encoding; an empty slot is the union itself). A plan equal to
  an earlier one is stored once (``plans`` in the metadata); the slots'
  positions in the union are rebuilt from the masks;
- ``extra/...``: what the run's method keeps besides (``ServerState.extra``).

Metadata (JSON): round, mask and base versions, phase, the ledger, the
sampling generator's state, the elapsed wall time, the run key nodes use to
find their saved optimiser state, the number of model entries, the initial
model's fingerprint (a resumed run must start from the same model), the plans
and the references. Besides, a SHA-256 of every tensor and of the metadata.

Reading checks everything before anything is restored: the checksums (a
flipped bit is refused), every metadata field (present, of its type and
range), every tensor (present, dtype, size, position encodings over the
right number of entries, slots within their union), and, against the
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
FORMAT = "fish-fl-server-state/3"
_OLD_FORMATS = ("fish-fl-server-state/1", "fish-fl-server-state/2")
_PLANS = ("current", "base", "prev")
_PHASES = ("sparse", "dense")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")
_RUN_KEY = re.compile(r"[0-9A-Za-z]+")
_PLAN_PART = re.compile(r"plan/(current|base|prev)/(union|slot\d+)")
# The masked values now, at the base, before the last base change: the plan each is under.
_VALUES = {"values": "current", "base-values": "base", "prev-values": "prev"}
_REFERENCES = ("model", "initial")
_FIXED = ("model/buffers", *(f"{n}/{p}" for n in ("model", *_VALUES) for p in ("at", "value")))


class CheckpointError(CorruptFileError):
    """A server checkpoint that cannot be resumed from; the message is one line."""


def _bytes_tensor(data: bytes) -> Tensor:
    return torch.from_numpy(np.frombuffer(bytearray(data), np.uint8))


def _plans(state: ServerState) -> tuple[dict[str, Tensor], dict[str, int | str | None]]:
    """The plans' masks, each distinct plan once, and what the metadata says of each."""
    tensors: dict[str, Tensor] = {}
    meta: dict[str, int | str | None] = {}
    stored: dict[str, MaskPlan] = {}
    plans = {"current": state.plan, "base": state.base_plan, "prev": state.prev_plan}
    for which, plan in plans.items():
        if plan is None:
            meta[which] = None
            continue
        same = next((w for w, p in stored.items() if _same_plan(p, plan)), None)
        if same is not None:
            meta[which] = same
            continue
        stored[which] = plan
        meta[which] = plan.num_slots
        tensors[f"plan/{which}/union"] = _bytes_tensor(plan.union.to_bytes())
        for i, (mask, _) in enumerate(plan.slots):
            tensors[f"plan/{which}/slot{i}"] = _bytes_tensor(
                b"" if mask == plan.union else mask.to_bytes()
            )
    return tensors, meta


def _same_plan(a: MaskPlan, b: MaskPlan) -> bool:
    return a is b or (
        a.num_slots == b.num_slots
        and a.union == b.union
        and all(x == y for (x, _), (y, _) in zip(a.slots, b.slots, strict=True))
    )


def _flat_mask(positions: Tensor, n: int) -> Mask:
    return Mask({"flat": positions}, {"flat": (n,)})


def _differences(target: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Where ``target`` differs from ``reference`` bit for bit, and its values there.

    As ``(at, value)``: ``at`` the compact encoding of the positions, or of
    every position with ``value`` the whole of ``target`` when that is smaller.
    """
    n = target.numel()
    at = torch.nonzero(target.view(torch.int32) != reference.view(torch.int32)).view(-1)
    encoding = _flat_mask(at, n).to_bytes()
    if len(encoding) + 4 * at.numel() >= 4 * n:
        return _bytes_tensor(_flat_mask(torch.arange(n), n).to_bytes()), target.clone()
    return _bytes_tensor(encoding), target[at].contiguous()


def _value_references(state: ServerState, flat: Tensor) -> dict[str, dict[str, Tensor]]:
    """Per values tensor, the entries under its plan of the model and of the initial model."""
    plans = {"current": state.plan, "base": state.base_plan, "prev": state.prev_plan}
    out = {}
    for name, which in _VALUES.items():
        plan = plans[which]
        at = plan.union.flat_positions() if plan is not None else torch.zeros(0, dtype=torch.long)
        out[name] = {"model": flat[at], "initial": state.initial_flat[at]}
    return out


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def save_server_state(state: ServerState, path: Path, rnd: int, elapsed: float) -> None:
    """Write the server's state after round ``rnd`` atomically to ``path``."""
    current = P.flat_parameters(state.model)
    model_at, model_value = _differences(current, state.initial_flat)
    tensors: dict[str, Tensor] = {
        "model/at": model_at,
        "model/value": model_value,
        "model/buffers": P.flat_buffers(state.model).contiguous(),
        **{k: v.clone() for k, v in state.extra.items()},
    }
    # Each values tensor against whichever reference it differs from least.
    references: dict[str, str] = {}
    candidates = _value_references(state, current)
    for name, target in (
        ("values", state.values),
        ("base-values", state.base_values),
        ("prev-values", state.prev_values),
    ):
        target = target.float().contiguous()
        best = None
        for ref in _REFERENCES:
            at, value = _differences(target, candidates[name][ref])
            if (
                best is None
                or at.numel() + 4 * value.numel() < best[1].numel() + 4 * best[2].numel()
            ):
                best = (ref, at, value)
        assert best is not None
        references[name] = best[0]
        tensors[f"{name}/at"], tensors[f"{name}/value"] = best[1], best[2]
    plan_tensors, plans = _plans(state)
    tensors.update(plan_tensors)
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
        "plans": plans,
        "references": references,
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

    def plans(self, total: int) -> dict[str, MaskPlan | None]:
        """The three plans; ``plans`` in the metadata says which are stored, which repeat one."""
        value = self.field("plans")
        if not isinstance(value, dict) or set(value) != set(_PLANS):
            raise self.fail(f"metadata field 'plans' must name {', '.join(_PLANS)}")
        out: dict[str, MaskPlan | None] = {}
        for which in _PLANS:
            entry = value[which]
            prefix = f"plan/{which}"
            parts = {k[len(prefix) + 1 :] for k in self.tensors if k.startswith(prefix + "/")}
            if entry is None or isinstance(entry, str):
                if entry is not None and out.get(entry) is None:
                    raise self.fail(f"plan {which!r} repeats {_show(entry)}, not an earlier plan")
                if parts:
                    raise self.fail(f"plan {which!r} is not stored but has tensors under {prefix}")
                out[which] = None if entry is None else out[entry]
            elif _is_count(entry) and entry > 0:
                out[which] = self.plan(which, entry, parts, total)
            else:
                raise self.fail(f"plan {which!r} in metadata field 'plans' is {_show(entry)}")
        return out

    def plan(self, which: str, n: int, parts: set[str], total: int) -> MaskPlan:
        prefix = f"plan/{which}"
        expected = {"union"} | {f"slot{i}" for i in range(n)}
        if parts != expected:
            odd = sorted(parts ^ expected)
            raise self.fail(f"plan {which!r} has missing or unmatched parts ({', '.join(odd)})")
        union = self.mask(f"{prefix}/union", total)
        union_flat = union.flat_positions()
        slots = []
        for i in range(n):
            if self.tensor(f"{prefix}/slot{i}", torch.uint8).numel() == 0:
                slots.append((union, torch.arange(union.k)))
                continue
            mask = self.mask(f"{prefix}/slot{i}", total)
            if mask.shapes != union.shapes:
                raise self.fail(f"mask {prefix}/slot{i} covers other parameters than the union")
            # Mask orders agree, so the slot's entries sit in the union in its own order.
            flat = mask.flat_positions()
            pos = torch.searchsorted(union_flat, flat)
            inside = pos < union.k
            if not bool(inside.all()) or not torch.equal(union_flat[pos], flat):
                raise self.fail(f"mask {prefix}/slot{i} is not within the union")
            slots.append((mask, pos))
        return MaskPlan(union, tuple(slots))

    def differences(self, name: str, n: int) -> tuple[Tensor, Tensor]:
        """``name/at`` and ``name/value``: positions among ``n`` entries and as many values."""
        at = self.tensor(f"{name}/at", torch.uint8)
        try:
            mask = Mask.from_bytes(at.numpy())
        except (ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise self.fail(
                f"tensor '{name}/at' is not a position encoding ({' '.join(str(e).split())})"
            ) from None
        if list(mask.shapes.items()) != [("flat", (n,))]:
            raise self.fail(f"tensor '{name}/at' does not cover the {n} entries of {name}")
        value = self.tensor(f"{name}/value", torch.float32)
        if value.numel() != mask.k:
            raise self.fail(
                f"{name}/value has {value.numel()} values, {name}/at {mask.k} positions"
            )
        return mask.indices["flat"], value


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

    # 2. Tensors: nothing unknown, each of its dtype and size, positions within their tensor.
    for name in tensors:
        if name not in _FIXED and not _PLAN_PART.fullmatch(name) and not name.startswith("extra/"):
            raise r.fail(f"unexpected tensor {name!r}")
    r.differences("model", total)
    r.tensor("model/buffers", torch.float32)
    plans = r.plans(total)
    references = r.field("references")
    if not isinstance(references, dict) or set(references) != set(_VALUES):
        raise r.fail(f"metadata field 'references' must name {', '.join(_VALUES)}")
    for name, which in _VALUES.items():
        if references[name] not in _REFERENCES:
            raise r.fail(f"the reference of {name} must be one of {', '.join(_REFERENCES)}")
        plan = plans[which]
        r.differences(name, plan.union.k if plan is not None else 0)
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

    # 2. The global model, the masked values (against the model or the initial model),
    # and the base nodes rebuild from them (its fingerprint is stored).
    r = _Reader(path, meta, tensors)
    at, value = r.differences("model", state.total)
    flat = state.initial_flat.clone()
    flat[at] = value
    values: dict[str, Tensor] = {}
    for name, which in _VALUES.items():
        plan = ck.plans[which]
        where = (
            plan.union.flat_positions() if plan is not None else torch.zeros(0, dtype=torch.long)
        )
        out = (flat if meta["references"][name] == "model" else state.initial_flat)[where]
        at, value = r.differences(name, where.numel())
        out[at] = value
        values[name] = out
    base = flat.clone()
    if ck.plans["base"] is not None:
        base[ck.plans["base"].union.flat_positions()] = values["base-values"]
    if flat_fingerprint(base, shapes) != meta["base_fingerprint"]:
        raise ck.fail("the model and base values do not give the base fingerprint it records")

    # 3. Restore.
    P.load_flat_parameters(state.model, flat)
    if buffers.numel():
        P.load_flat_buffers(state.model, buffers)
    state.values = values["values"]
    state.base_values = values["base-values"]
    state.prev_values = values["prev-values"]
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
