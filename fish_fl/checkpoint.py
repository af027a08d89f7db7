"""Sparse fine-tuned checkpoints: only the entries that differ from the base.

A model fine-tuned through a fixed sparse mask differs from its pretrained
base in ``k`` entries only, so it can be stored as those entries' flat indices
and values next to a reference to the base. The FISH Mask paper (Sung, Nair
and Raffel, NeurIPS 2021, arXiv 2111.09839) notes that a 0.5% mask of
BERT-large stores in about 1% of the full checkpoint (32-bit indices plus
32-bit values); with the default 64-bit indices it is about 1.5%.

The file is safetensors: for every tensor of the state dict that changed,
``indices/<name>`` (flat indices, int64 by default) and ``values/<name>``
(the *fine-tuned* values, not differences, so applying is exact). Its
metadata carries a format tag, the base model's name and content fingerprint,
and the entry counts. Applying refuses a base with a different fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "DELTA_FORMAT",
    "DeltaInfo",
    "apply_sparse_delta",
    "read_delta_info",
    "read_delta_metadata",
    "save_sparse_delta",
    "state_fingerprint",
]

logger = logging.getLogger(__name__)

DELTA_FORMAT = "fish-fl-delta/1"
_RESERVED = ("format", "base_name", "base_fingerprint", "changed", "total", "shapes")
_INDEX_DTYPES = {"int64": torch.int64, "int32": torch.int32}
# Same-width integer views, to compare floats bit for bit (-0.0 vs 0.0, NaN payloads).
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


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
    ``num_batches_tracked``) are not stored.

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
        reserved or non-string metadata entry, or an unknown ``index_dtype``.
    """
    from safetensors.torch import save_file

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
        # float64 keeps its precision; every narrower float is exact in float32.
        values = values if t.dtype == torch.float64 else values.to(torch.float32)
        tensors[f"indices/{name}"] = idx.to(_INDEX_DTYPES[index_dtype]).contiguous()
        tensors[f"values/{name}"] = values.contiguous()
        shapes.append([name, list(t.shape)])
        changed += idx.numel()

    meta = {
        "format": DELTA_FORMAT,
        "base_name": base_name,
        "base_fingerprint": state_fingerprint(base_state),
        "changed": str(changed),
        "total": str(total),
        "shapes": json.dumps(shapes),
        **extra,
    }
    path = Path(path)
    save_file(tensors, str(path), metadata=meta)
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


def read_delta_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a delta file (base name and fingerprint, counts, extras)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sparse delta file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise ValueError(f"{path} is not a safetensors file ({e})") from None
    if meta.get("format") != DELTA_FORMAT:
        raise ValueError(f"{path} is not a fish-fl sparse delta (format {meta.get('format')!r})")
    return meta


def read_delta_info(path: str | Path) -> DeltaInfo:
    """The :class:`DeltaInfo` of an existing delta file, from its metadata."""
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


def apply_sparse_delta(base_model: nn.Module, path: str | Path) -> nn.Module:
    """Write a delta's values into ``base_model``, in place, and return it.

    The whole file is checked before anything is written, so a refused delta
    leaves the model untouched. Pass ``copy.deepcopy(base)`` to keep the base.

    Raises
    ------
    ValueError
        When the model's fingerprint differs from the base the delta was made
        from (naming the base and both fingerprints), when a stored tensor is
        missing from the model or has another shape, or on a corrupt file.
    FileNotFoundError
        When ``path`` does not exist.
    """
    from safetensors import safe_open

    path = Path(path)
    meta = read_delta_metadata(path)
    state = base_model.state_dict()
    expected, actual = meta["base_fingerprint"], state_fingerprint(state)
    if expected != actual:
        raise ValueError(
            f"{path} was made from base {meta['base_name']!r} with fingerprint {expected}; "
            f"the given model has fingerprint {actual}"
        )

    # 1. Read and check everything.
    updates: list[tuple[Tensor, Tensor, Tensor]] = []
    with safe_open(str(path), framework="pt") as f:
        stored = set(f.keys())
        for name, shape in json.loads(meta["shapes"]):
            target = state.get(name)
            if target is None or not target.is_floating_point():
                raise ValueError(
                    f"{path}: tensor {name!r} is not a floating-point entry of the model"
                )
            if list(target.shape) != list(shape):
                raise ValueError(
                    f"{path}: {name} has shape {tuple(shape)} in the delta, "
                    f"{tuple(target.shape)} in the model"
                )
            if f"indices/{name}" not in stored or f"values/{name}" not in stored:
                raise ValueError(f"{path}: indices or values of {name!r} are missing")
            idx = f.get_tensor(f"indices/{name}").to(torch.int64)
            values = f.get_tensor(f"values/{name}")
            if idx.ndim != 1 or idx.shape != values.shape:
                raise ValueError(
                    f"{path}: {name} has {tuple(idx.shape)} indices but {tuple(values.shape)} values"
                )
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= target.numel()):
                raise ValueError(
                    f"{path}: an index of {name} is outside its {target.numel()} entries"
                )
            updates.append((target, idx, values))

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
