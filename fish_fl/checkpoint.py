"""Sparse fine-tuned checkpoints: only the entries that differ from the base.

A model fine-tuned through a fixed sparse mask differs from its pretrained
base in ``k`` entries only, so it can be stored as those entries' flat indices
and values next to a reference to the base. The FISH Mask paper (Sung, Nair
and Raffel, NeurIPS 2021, arXiv 2111.09839) notes that a 0.5% mask of
BERT-large stores in about 1% of the full checkpoint (32-bit indices plus
32-bit values); with the default 64-bit indices it is about 1.5%.

The file is safetensors. For every tensor of the state dict that changed it
holds whichever of two forms is smaller: ``indices/<name>`` (flat indices,
int64 by default) with ``values/<name>`` (the *fine-tuned* values, float32 or
float64, not differences, so applying is exact), or ``values/<name>`` alone,
the whole fine-tuned tensor in its own dtype. A densely trained model thus
stores in no more than its own size; a 0.5% one stays indices and values.
Its metadata carries a format tag (``fish-fl-delta/2``; files of version 1,
indices and values only, are still read), the base model's name and content
fingerprint, the entry counts, and (version 2) which form each tensor has. Applying refuses a base with a different fingerprint,
and checks the whole file before it writes anything: every metadata field,
every tensor (a known floating-point entry of the model, its shape, integer
indices within range and without duplicates, finite values of the right
dtype) and the counts. A refused delta raises :class:`DeltaError` (a
``ValueError``) with a one-line message naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .fileio import CorruptFileError, read_safetensors, save_safetensors_atomic

__all__ = [
    "DELTA_FORMAT",
    "DELTA_FORMATS",
    "DeltaError",
    "DeltaInfo",
    "apply_sparse_delta",
    "read_delta_info",
    "read_delta_metadata",
    "save_sparse_delta",
    "state_fingerprint",
]

logger = logging.getLogger(__name__)

DELTA_FORMAT = "fish-fl-delta/2"
_DELTA_FORMAT_V1 = "fish-fl-delta/1"
#: Every format this version reads.
DELTA_FORMATS = (DELTA_FORMAT, _DELTA_FORMAT_V1)
_RESERVED = ("format", "base_name", "base_fingerprint", "changed", "total", "shapes", "storage")
# How one tensor is stored: its changed entries' indices and values, or the whole tensor.
_SPARSE, _WHOLE = "indices", "whole"
_INDEX_DTYPES = {"int64": torch.int64, "int32": torch.int32}
# Same-width integer views, to compare floats bit for bit (-0.0 vs 0.0, NaN payloads).
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")
_COUNT = re.compile(r"0|[1-9][0-9]*")


class DeltaError(CorruptFileError):
    """A sparse delta file that cannot be applied; the message is one line."""


@dataclass(frozen=True)
class DeltaInfo:
    """What a sparse delta file holds.

    Attributes
    ----------
    path
        The file.
    changed
        Entries stored (entries that differ from the base).
    total
        Floating-point entries of the model (parameters and buffers).
    tensors
        Tensors with at least one changed entry.
    file_bytes
        Size of the file on disk.
    full_bytes
        Bytes of the same model as a dense float32 checkpoint, ``4 x total``
        (tensor data only).
    """

    path: Path
    changed: int
    total: int
    tensors: int
    file_bytes: int
    full_bytes: int

    @property
    def density(self) -> float:
        """Fraction of entries stored."""
        return self.changed / self.total if self.total else 0.0

    @property
    def size_ratio(self) -> float:
        """File size as a fraction of the dense float32 checkpoint."""
        return self.file_bytes / self.full_bytes if self.full_bytes else 0.0


def state_fingerprint(state: Mapping[str, Tensor]) -> str:
    """Content hash of a state dict (names, shapes, dtypes and bytes).

    Zero-dimensional tensors (BatchNorm's ``num_batches_tracked``) included.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _float_entries(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The floating-point tensors of a state dict, detached, on the CPU."""
    return {n: t.detach().cpu() for n, t in state.items() if t.is_floating_point()}


def _changed(new: Tensor, old: Tensor) -> Tensor:
    """Flat indices where ``new`` and ``old`` differ bit for bit."""
    bits = _BITS[new.element_size()]
    a = new.contiguous().reshape(-1).view(bits)
    b = old.contiguous().reshape(-1).view(bits)
    return torch.nonzero(a != b).reshape(-1)


def save_sparse_delta(
    model: nn.Module,
    base: nn.Module | Mapping[str, Tensor],
    path: str | Path,
    *,
    base_name: str,
    metadata: Mapping[str, str] | None = None,
    index_dtype: str = "int64",
) -> DeltaInfo:
    """Save the entries of ``model`` that differ from ``base``.

    Every floating-point tensor of the state dict is compared: parameters and
    buffers such as BatchNorm running statistics. Integer buffers (BatchNorm's
    ``num_batches_tracked``) are not stored. A changed tensor is stored the
    smaller way: its changed entries' indices and values, or whole.

    Parameters
    ----------
    model
        The fine-tuned model.
    base
        The model it was fine-tuned from, or that model's full ``state_dict()``
        (its fingerprint must match the model later passed to
        :func:`apply_sparse_delta`).
    path
        Where to write the safetensors file.
    base_name
        Name of the base (hub name or folder), stored for the reader.
    metadata
        Extra string metadata to store.
    index_dtype
        ``int64`` (default) or ``int32`` (the paper's accounting; enough for
        tensors of fewer than 2^31 entries).

    Returns
    -------
    DeltaInfo
        Entry counts and file size against a dense float32 checkpoint.

    Raises
    ------
    ValueError
        When the model's and the base's tensor names or shapes differ, on a
        reserved or non-string metadata entry, an unknown ``index_dtype``, or
        a changed entry that is not finite (NaN or infinite: no delta would
        apply it).
    """
    if index_dtype not in _INDEX_DTYPES:
        raise ValueError(
            f"index_dtype={index_dtype!r} is not allowed; choose one of {', '.join(_INDEX_DTYPES)}"
        )
    extra = dict(metadata or {})
    for key, value in extra.items():
        if key in _RESERVED:
            raise ValueError(f"metadata key {key!r} is reserved by the delta format")
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"metadata must map strings to strings, got {key!r}: {value!r}")
    base_state = base.state_dict() if isinstance(base, nn.Module) else dict(base)
    new = _float_entries(model.state_dict())
    old = _float_entries(base_state)
    if new.keys() != old.keys():
        only_model = sorted(new.keys() - old.keys())
        only_base = sorted(old.keys() - new.keys())
        raise ValueError(
            f"model and base have different tensors: only in the model {only_model[:5]}, "
            f"only in the base {only_base[:5]}"
        )

    tensors: dict[str, Tensor] = {}
    shapes: list[list[object]] = []
    storage: dict[str, str] = {}
    changed = total = 0
    for name, t in new.items():
        b = old[name]
        if t.shape != b.shape or t.dtype != b.dtype:
            raise ValueError(
                f"{name}: model has {tuple(t.shape)} {t.dtype}, base has {tuple(b.shape)} {b.dtype}"
            )
        total += t.numel()
        idx = _changed(t, b)
        if idx.numel() == 0:
            continue
        if index_dtype == "int32" and t.numel() > torch.iinfo(torch.int32).max:
            raise ValueError(f"{name}: {t.numel()} entries do not fit int32 indices")
        values = t.reshape(-1)[idx]
        if not bool(torch.isfinite(values).all()):
            raise ValueError(
                f"{name}: the model has non-finite values where it differs from the base"
            )
        # float64 keeps its precision; every narrower float is exact in float32.
        values = values if t.dtype == torch.float64 else values.to(torch.float32)
        sparse_bytes = idx.numel() * (_INDEX_DTYPES[index_dtype].itemsize + values.element_size())
        if sparse_bytes <= t.numel() * t.element_size():
            tensors[f"indices/{name}"] = idx.to(_INDEX_DTYPES[index_dtype]).contiguous()
            tensors[f"values/{name}"] = values.contiguous()
            storage[name] = _SPARSE
        else:
            tensors[f"values/{name}"] = t.reshape(-1).clone()
            storage[name] = _WHOLE
        shapes.append([name, list(t.shape)])
        changed += idx.numel()

    meta = {
        "format": DELTA_FORMAT,
        "base_name": base_name,
        "base_fingerprint": state_fingerprint(base_state),
        "changed": str(changed),
        "total": str(total),
        "shapes": json.dumps(shapes),
        "storage": json.dumps(storage),
        **extra,
    }
    path = Path(path)
    save_safetensors_atomic(tensors, path, meta)
    info = DeltaInfo(
        path=path,
        changed=changed,
        total=total,
        tensors=len(shapes),
        file_bytes=path.stat().st_size,
        full_bytes=4 * total,
    )
    logger.info(
        "saved sparse delta %s: %d of %d entries (%.3g%%) in %d bytes, %.3g%% of float32",
        path,
        changed,
        total,
        100 * info.density,
        info.file_bytes,
        100 * info.size_ratio,
    )
    return info


def _shapes(path: Path, text: str) -> list[tuple[str, tuple[int, ...]]]:
    try:
        shapes = json.loads(text)
    except json.JSONDecodeError as e:
        raise DeltaError(f"{path}: metadata 'shapes' is not JSON ({e})") from None
    ok = isinstance(shapes, list) and all(
        isinstance(entry, list)
        and len(entry) == 2
        and isinstance(entry[0], str)
        and isinstance(entry[1], list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry[1])
        for entry in shapes
    )
    if not ok:
        raise DeltaError(f"{path}: metadata 'shapes' must be a list of [name, [dims...]]")
    names = [entry[0] for entry in shapes]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DeltaError(f"{path}: metadata 'shapes' lists {twice[0]!r} twice")
    return [(name, tuple(dims)) for name, dims in shapes]


def read_delta_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a delta file (base name and fingerprint, counts, extras), checked."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sparse delta file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise DeltaError(f"{path} is not a safetensors file ({' '.join(str(e).split())})") from None
    if meta.get("format") not in DELTA_FORMATS:
        raise DeltaError(f"{path} is not a fish-fl sparse delta (format {meta.get('format')!r})")
    keys = ["base_name", "base_fingerprint", "changed", "total", "shapes"]
    for key in keys + (["storage"] if meta["format"] == DELTA_FORMAT else []):
        if key not in meta:
            raise DeltaError(f"{path}: metadata {key!r} is missing")
    if not _FINGERPRINT.fullmatch(meta["base_fingerprint"]):
        raise DeltaError(f"{path}: metadata 'base_fingerprint' is not 16 hex digits")
    for key in ("changed", "total"):
        if not _COUNT.fullmatch(meta[key]):
            raise DeltaError(f"{path}: metadata {key!r} must be a whole number, got {meta[key]!r}")
    _storage(path, meta, _shapes(path, meta["shapes"]))
    return meta


def _storage(
    path: Path, meta: Mapping[str, str], shapes: list[tuple[str, tuple[int, ...]]]
) -> dict[str, str]:
    """How each listed tensor is stored (version 1: always indices and values)."""
    if meta["format"] == _DELTA_FORMAT_V1:
        return {name: _SPARSE for name, _ in shapes}
    try:
        storage = json.loads(meta["storage"])
    except json.JSONDecodeError as e:
        raise DeltaError(f"{path}: metadata 'storage' is not JSON ({e})") from None
    if not isinstance(storage, dict) or set(storage) != {name for name, _ in shapes}:
        raise DeltaError(f"{path}: metadata 'storage' must name every tensor of 'shapes' once")
    for name, kind in storage.items():
        if kind not in (_SPARSE, _WHOLE):
            raise DeltaError(
                f"{path}: {name} is stored as {kind!r}; expected {_SPARSE!r} or {_WHOLE!r}"
            )
    return storage


def read_delta_info(path: str | Path) -> DeltaInfo:
    """The :class:`DeltaInfo` of an existing delta file, from its (checked) metadata."""
    path = Path(path)
    meta = read_delta_metadata(path)
    total = int(meta["total"])
    return DeltaInfo(
        path=path,
        changed=int(meta["changed"]),
        total=total,
        tensors=len(json.loads(meta["shapes"])),
        file_bytes=path.stat().st_size,
        full_bytes=4 * total,
    )


def _check_entry(path: Path, name: str, target: Tensor, idx: Tensor, values: Tensor) -> None:
    """One tensor's indices and values: integer, 1-D, matched, in range, unique, finite."""
    if idx.dtype not in _INDEX_DTYPES.values() or idx.ndim != 1:
        raise DeltaError(
            f"{path}: indices of {name} must be a 1-D int64 or int32 tensor, "
            f"got {idx.ndim}-D {str(idx.dtype).removeprefix('torch.')}"
        )
    want = torch.float64 if target.dtype == torch.float64 else torch.float32
    if values.dtype != want or values.shape != idx.shape:
        raise DeltaError(
            f"{path}: {name} has {tuple(idx.shape)} indices and {tuple(values.shape)} "
            f"{str(values.dtype).removeprefix('torch.')} values; expected as many "
            f"{str(want).removeprefix('torch.')} values as indices"
        )
    idx = idx.to(torch.int64)
    if int(idx.min()) < 0 or int(idx.max()) >= target.numel():
        raise DeltaError(f"{path}: an index of {name} is outside its {target.numel()} entries")
    if torch.unique(idx).numel() != idx.numel():
        raise DeltaError(f"{path}: {name} has duplicate indices")
    if not bool(torch.isfinite(values.to(target.dtype)).all()):
        raise DeltaError(
            f"{path}: {name} has non-finite values (NaN or infinite in {target.dtype})".replace(
                "torch.", ""
            )
        )


def _whole_entry(
    path: Path, name: str, target: Tensor, values: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """A tensor stored whole: its dtype and size, finite where it differs from the base.

    Returns the target, the changed indices and their values (what is written).
    """
    if values is None:
        raise DeltaError(f"{path}: values of {name!r} are missing")
    dtype = str(target.dtype).removeprefix("torch.")
    if values.dtype != target.dtype or values.ndim != 1 or values.numel() != target.numel():
        raise DeltaError(
            f"{path}: {name} is stored whole as {values.ndim}-D "
            f"{str(values.dtype).removeprefix('torch.')} of {values.numel()} entries; "
            f"expected 1-D {dtype} of {target.numel()}"
        )
    idx = _changed(values, target.detach().cpu())
    changed = values[idx]
    if not bool(torch.isfinite(changed).all()):
        raise DeltaError(f"{path}: {name} has non-finite values (NaN or infinite in {dtype})")
    return target, idx, changed


def apply_sparse_delta(base_model: nn.Module, path: str | Path) -> nn.Module:
    """Write a delta's values into ``base_model``, in place, and return it.

    The whole file is checked before anything is written, so a refused delta
    leaves the model untouched. Pass ``copy.deepcopy(base)`` to keep the base.

    Raises
    ------
    ValueError
        When the model's fingerprint differs from the base the delta was made
        from (naming the base and both fingerprints); :class:`DeltaError` on
        anything wrong in the file (see the module docstring).
    FileNotFoundError
        When ``path`` does not exist.
    """
    path = Path(path)
    meta = read_delta_metadata(path)
    state = base_model.state_dict()
    expected, actual = meta["base_fingerprint"], state_fingerprint(state)
    if expected != actual:
        raise ValueError(
            f"{path} was made from base {meta['base_name']!r} with fingerprint {expected}; "
            f"the given model has fingerprint {actual}"
        )
    total = sum(t.numel() for t in state.values() if t.is_floating_point())
    if int(meta["total"]) != total:
        raise DeltaError(f"{path}: metadata 'total' is {meta['total']}, the model has {total}")
    try:
        tensors, _ = read_safetensors(path)
    except CorruptFileError as e:
        raise DeltaError(str(e)) from None

    # 1. Read and check everything.
    shapes = _shapes(path, meta["shapes"])
    storage = _storage(path, meta, shapes)
    listed = {f"values/{name}" for name, _ in shapes} | {
        f"indices/{name}" for name, _ in shapes if storage[name] == _SPARSE
    }
    unexpected = sorted(set(tensors) - listed)
    if unexpected:
        raise DeltaError(f"{path}: tensor {unexpected[0]!r} is not listed in its shapes")
    updates: list[tuple[Tensor, Tensor, Tensor]] = []
    for name, shape in shapes:
        target = state.get(name)
        if target is None or not target.is_floating_point():
            raise DeltaError(f"{path}: tensor {name!r} is not a floating-point entry of the model")
        if tuple(target.shape) != shape:
            raise DeltaError(
                f"{path}: {name} has shape {shape} in the delta, {tuple(target.shape)} in the model"
            )
        if storage[name] == _WHOLE:
            updates.append(_whole_entry(path, name, target, tensors.get(f"values/{name}")))
            continue
        if f"indices/{name}" not in tensors or f"values/{name}" not in tensors:
            raise DeltaError(f"{path}: indices or values of {name!r} are missing")
        idx, values = tensors[f"indices/{name}"], tensors[f"values/{name}"]
        _check_entry(path, name, target, idx, values)
        updates.append((target, idx.to(torch.int64), values))
    changed = sum(int(idx.numel()) for _, idx, _ in updates)
    if changed != int(meta["changed"]):
        raise DeltaError(
            f"{path}: metadata 'changed' is {meta['changed']}, the file holds {changed}"
        )

    # 2. Write: state_dict tensors share storage with the model's parameters and buffers.
    with torch.no_grad():
        for target, idx, values in updates:
            values = values.to(device=target.device, dtype=target.dtype)
            idx = idx.to(target.device)
            if target.is_contiguous():
                target.view(-1)[idx] = values
            else:
                flat = target.reshape(-1).clone()
                flat[idx] = values
                target.copy_(flat.view(target.shape))
    logger.info(
        "applied sparse delta %s (%s entries) to base %s", path, meta["changed"], meta["base_name"]
    )
    return base_model
