"""The :class:`Mask`: which entries of which parameters are trained.

A mask stores, for every parameter of a model (in the model's order), the
sorted flat indices of the entries that are kept. With the mask fixed and
known to both sides of a federation, an update is just the ``k`` kept values
in *mask order*: parameters in the mask's order, and within a parameter its
kept entries in increasing flat index.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Mask", "ParameterStats", "block_of"]

_MAGIC = b"FISHMASK"
_FORMAT_VERSION = 1
# Version 2 stores the compact encoding (:meth:`Mask.to_bytes`); version 1
# files (one int64 index tensor per parameter) are still read.
_SAFETENSORS_FORMAT = "fish-fl-mask/2"
_SAFETENSORS_FORMAT_V1 = "fish-fl-mask/1"


@dataclass(frozen=True)
class ParameterStats:
    """Kept entries of one parameter (or one block of parameters)."""

    name: str
    numel: int
    kept: int

    @property
    def fraction(self) -> float:
        return self.kept / self.numel if self.numel else 0.0


def block_of(name: str) -> str:
    """The block a parameter belongs to, for per-block statistics.

    The path up to the first numeric component (``bert.encoder.layer.3``,
    ``layer1.0``), else the owning module's parent (``bert.embeddings``), else
    the owning module (``fc``, ``classifier``).
    """
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    if len(parts) > 2:
        return ".".join(parts[:-2])
    return parts[0]


# --------------------------------------------------------------------------
# Varint (LEB128) coding of index gaps, vectorised with NumPy
# --------------------------------------------------------------------------
def _varint_encode(values: np.ndarray) -> bytes:
    values = values.astype(np.uint64, copy=False)
    if values.size == 0:
        return b""
    thresholds = np.uint64(1) << (7 * np.arange(1, 10, dtype=np.uint64))
    nbytes = 1 + (values[:, None] >= thresholds[None, :]).sum(1)
    width = int(nbytes.max())
    shifts = (7 * np.arange(width, dtype=np.uint64))[None, :]
    groups = (values[:, None] >> shifts) & np.uint64(0x7F)
    cont = np.arange(width)[None, :] < (nbytes[:, None] - 1)
    groups = groups | (cont.astype(np.uint64) << np.uint64(7))
    used = np.arange(width)[None, :] < nbytes[:, None]
    return groups[used].astype(np.uint8).tobytes()


def _varint_decode(data: bytes, count: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    if count == 0:
        if raw.size:
            raise ValueError("mask encoding has trailing bytes")
        return np.zeros(0, dtype=np.uint64)
    ends = (raw & 0x80) == 0
    if raw.size == 0 or not ends[-1] or int(ends.sum()) != count:
        raise ValueError("mask encoding is truncated or corrupt (varint count mismatch)")
    starts = np.concatenate(([0], np.flatnonzero(ends)[:-1] + 1))
    group = np.cumsum(np.concatenate(([0], ends[:-1].astype(np.int64))))
    pos = np.arange(raw.size) - starts[group]
    if pos.max() > 9:
        raise ValueError("mask encoding is corrupt (varint longer than 64 bits)")
    parts = (raw & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    return np.add.reduceat(parts, starts)


# --------------------------------------------------------------------------
# The mask
# --------------------------------------------------------------------------
class Mask:
    """Per-parameter sorted flat indices of the kept entries.

    Parameters
    ----------
    indices
        Parameter name to a 1-D integer tensor of kept flat indices (any
        order, no duplicates). Parameters with nothing kept may be omitted.
    shapes
        Parameter name to shape, for *every* parameter the mask covers, in
        mask order.

    Raises
    ------
    ValueError
        On an index out of range, a duplicate index, or a name in
        ``indices`` that is not in ``shapes``.
    """

    def __init__(
        self,
        indices: Mapping[str, Tensor],
        shapes: Mapping[str, tuple[int, ...]],
    ) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {
            n: tuple(int(d) for d in s) for n, s in shapes.items()
        }
        unknown = set(indices) - set(self.shapes)
        if unknown:
            raise ValueError(f"mask indices name parameters without a shape: {sorted(unknown)[:5]}")
        self.indices: dict[str, Tensor] = {}
        for name, shape in self.shapes.items():
            numel = int(np.prod(shape, dtype=np.int64))
            idx = indices.get(name)
            if idx is None:
                idx = torch.zeros(0, dtype=torch.long)
            idx = torch.as_tensor(idx).detach().to("cpu", torch.long).reshape(-1)
            idx, _ = torch.sort(idx)
            if idx.numel():
                if int(idx[0]) < 0 or int(idx[-1]) >= numel:
                    raise ValueError(
                        f"mask index out of range for parameter {name!r} with {numel} entries"
                    )
                if idx.numel() > 1 and bool((idx[1:] == idx[:-1]).any()):
                    raise ValueError(f"mask has duplicate indices for parameter {name!r}")
            self.indices[name] = idx
        self._offsets: dict[str, int] = {}
        offset = 0
        for name in self.shapes:
            self._offsets[name] = offset
            offset += self.indices[name].numel()
        self._k = offset
        self._fingerprint: str | None = None

    # -- construction helpers --------------------------------------------------
    @classmethod
    def from_bool(cls, keep: Mapping[str, Tensor]) -> Mask:
        """Build from boolean tensors of each parameter's shape."""
        return cls(
            {n: torch.flatten(t).nonzero().view(-1) for n, t in keep.items()},
            {n: tuple(t.shape) for n, t in keep.items()},
        )

    @classmethod
    def full(cls, shapes: Mapping[str, tuple[int, ...]]) -> Mask:
        """Keep every entry (dense training)."""
        return cls(
            {n: torch.arange(int(np.prod(s, dtype=np.int64))) for n, s in shapes.items()},
            shapes,
        )

    # -- sizes -----------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.shapes)

    @property
    def k(self) -> int:
        """Number of kept entries."""
        return self._k

    @property
    def total(self) -> int:
        """Number of entries the mask covers (all parameters)."""
        return sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes.values())

    @property
    def density(self) -> float:
        return self.k / self.total if self.total else 0.0

    def numel(self, name: str) -> int:
        return int(np.prod(self.shapes[name], dtype=np.int64))

    def segments(self) -> Iterator[tuple[str, Tensor, int]]:
        """Yield ``(name, indices, offset)`` for parameters with kept entries."""
        for name, idx in self.indices.items():
            if idx.numel():
                yield name, idx, self._offsets[name]

    def flat_positions(self) -> Tensor:
        """Kept entries as positions in all covered parameters flattened and
        concatenated in mask order (the layout of ``protocol.flat_parameters``)."""
        parts, offset = [], 0
        for name in self.shapes:
            parts.append(self.indices[name] + offset)
            offset += self.numel(name)
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    @property
    def fingerprint(self) -> str:
        """A content hash (names, shapes, kept indices): equal masks, equal prints."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name, shape in self.shapes.items():
                h.update(name.encode())
                h.update(json.dumps(shape).encode())
                h.update(self.indices[name].numpy().astype("<i8").tobytes())
                h.update(b"\x00")
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask):
            return NotImplemented
        return self.shapes == other.shapes and all(
            torch.equal(self.indices[n], other.indices[n]) for n in self.shapes
        )

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return (
            f"Mask(k={self.k}, total={self.total}, density={self.density:.4%}, "
            f"parameters={len(self.shapes)}, fingerprint={self.fingerprint})"
        )

    def to_bool(self, name: str) -> Tensor:
        out = torch.zeros(self.numel(name), dtype=torch.bool)
        out[self.indices[name]] = True
        return out.view(self.shapes[name])

    # -- checking a model against the mask -------------------------------------
    def _tensors(
        self, source: nn.Module | Mapping[str, Tensor], *, exact: bool
    ) -> dict[str, Tensor]:
        tensors: dict[str, Tensor]
        if isinstance(source, nn.Module):
            tensors = dict(source.named_parameters())
            exact = True
        else:
            tensors = dict(source.items())
        missing = [n for n in self.shapes if n not in tensors]
        if missing:
            raise ValueError(
                f"model does not match the mask: {len(missing)} masked parameter(s) missing, "
                f"e.g. {missing[0]!r}"
            )
        if exact:
            extra = [n for n in tensors if n not in self.shapes]
            if extra:
                raise ValueError(
                    f"model does not match the mask: parameter {extra[0]!r} is not covered "
                    f"by the mask ({len(extra)} in all)"
                )
        for name, shape in self.shapes.items():
            if tuple(tensors[name].shape) != shape:
                raise ValueError(
                    f"model does not match the mask: parameter {name!r} has shape "
                    f"{tuple(tensors[name].shape)}, the mask expects {shape}"
                )
        return tensors

    def check(self, source: nn.Module | Mapping[str, Tensor]) -> None:
        """Raise ``ValueError`` if names or shapes of ``source`` differ from the mask."""
        self._tensors(source, exact=True)

    # -- gather / scatter --------------------------------------------------------
    def gather(self, source: nn.Module | Mapping[str, Tensor]) -> Tensor:
        """The kept values, as one float32 vector of length ``k`` in mask order.

        ``source`` is a model (its parameters must match the mask exactly) or
        a state dict (it must contain every masked parameter).
        """
        tensors = self._tensors(source, exact=False)
        if self.k == 0:
            return torch.zeros(0)
        parts = [
            tensors[name].detach().reshape(-1)[idx.to(tensors[name].device)]
            for name, idx, _ in self.segments()
        ]
        return torch.cat([p.to("cpu", torch.float32) for p in parts])

    def scatter(self, target: nn.Module | Mapping[str, Tensor], values: Tensor) -> None:
        """Write a length-``k`` vector (mask order) into the kept entries, in place."""
        values = torch.as_tensor(values).reshape(-1)
        if values.numel() != self.k:
            raise ValueError(f"scatter needs {self.k} values for this mask, got {values.numel()}")
        tensors = self._tensors(target, exact=False)
        with torch.no_grad():
            for name, idx, offset in self.segments():
                t = tensors[name]
                flat = t.view(-1)
                part = values[offset : offset + idx.numel()].to(t.device, t.dtype)
                flat.index_copy_(0, idx.to(t.device), part)

    # -- statistics ---------------------------------------------------------------
    def parameter_stats(self) -> list[ParameterStats]:
        """Kept entries per parameter, in mask order."""
        return [ParameterStats(n, self.numel(n), int(self.indices[n].numel())) for n in self.shapes]

    def block_stats(self) -> list[ParameterStats]:
        """Kept entries per block (see :func:`block_of`), in first-seen order."""
        blocks: dict[str, list[int]] = {}
        for s in self.parameter_stats():
            acc = blocks.setdefault(block_of(s.name), [0, 0])
            acc[0] += s.numel
            acc[1] += s.kept
        return [ParameterStats(b, n, k) for b, (n, k) in blocks.items()]

    # -- compact encoding -----------------------------------------------------
    def to_bytes(self) -> bytes:
        """Compact binary encoding: per parameter, a bitmap or varint-coded gaps.

        Each parameter is coded the smaller way: ``empty`` and ``full`` cost no
        payload, a ``bitmap`` costs ``ceil(numel / 8)`` bytes, ``delta`` the
        LEB128 varints of the gaps between consecutive kept indices.
        """
        entries, payloads = [], []
        for name, shape in self.shapes.items():
            idx = self.indices[name].numpy()
            numel = self.numel(name)
            if idx.size == 0:
                kind, payload = "e", b""
            elif idx.size == numel:
                kind, payload = "f", b""
            else:
                gaps = np.diff(idx, prepend=-1) - 1
                delta = _varint_encode(gaps.astype(np.uint64))
                if len(delta) <= (numel + 7) // 8:
                    kind, payload = "d", delta
                else:
                    bits = np.zeros(numel, dtype=bool)
                    bits[idx] = True
                    kind, payload = "b", np.packbits(bits, bitorder="little").tobytes()
            entries.append([name, list(shape), kind, int(idx.size), len(payload)])
            payloads.append(payload)
        header = json.dumps(entries, separators=(",", ":")).encode()
        return b"".join(
            [_MAGIC, struct.pack("<BI", _FORMAT_VERSION, len(header)), header, *payloads]
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview | np.ndarray) -> Mask:
        """Decode :meth:`to_bytes` exactly; raises ``ValueError`` on corrupt input."""
        buf = bytes(data.tobytes() if isinstance(data, np.ndarray) else data)
        if not buf.startswith(_MAGIC) or len(buf) < len(_MAGIC) + 5:
            raise ValueError("not a fish-fl mask encoding (bad magic)")
        version, header_len = struct.unpack_from("<BI", buf, len(_MAGIC))
        if version != _FORMAT_VERSION:
            raise ValueError(f"unsupported mask encoding version {version}")
        pos = len(_MAGIC) + 5
        try:
            entries = json.loads(buf[pos : pos + header_len])
        except ValueError:
            raise ValueError("mask encoding has a corrupt header") from None
        pos += header_len
        indices, shapes = {}, {}
        for name, shape, kind, count, length in entries:
            payload = buf[pos : pos + length]
            if len(payload) != length:
                raise ValueError("mask encoding is truncated")
            pos += length
            shapes[name] = tuple(shape)
            numel = int(np.prod(shape, dtype=np.int64))
            if kind == "e":
                idx = np.zeros(0, dtype=np.int64)
            elif kind == "f":
                idx = np.arange(numel, dtype=np.int64)
            elif kind == "d":
                gaps = _varint_decode(payload, count).astype(np.int64)
                idx = np.cumsum(gaps + 1) - 1
            elif kind == "b":
                bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
                idx = np.flatnonzero(bits[:numel]).astype(np.int64)
            else:
                raise ValueError(f"mask encoding has unknown parameter coding {kind!r}")
            if idx.size != count:
                raise ValueError(f"mask encoding is corrupt for parameter {name!r}")
            indices[name] = torch.from_numpy(idx)
        if pos != len(buf):
            raise ValueError("mask encoding has trailing bytes")
        return cls(indices, shapes)

    # -- files ------------------------------------------------------------------
    def save(self, path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
        """Save as safetensors (atomically): the compact encoding as one uint8 tensor.

        Each parameter is coded the smallest way (see :meth:`to_bytes`), so a
        parameter kept whole costs a few header bytes, not 8 bytes per entry.
        """
        from ..fileio import save_safetensors_atomic

        encoding = torch.from_numpy(np.frombuffer(bytearray(self.to_bytes()), np.uint8))
        meta = {
            "format": _SAFETENSORS_FORMAT,
            "fingerprint": self.fingerprint,
            "k": str(self.k),
            **(metadata or {}),
        }
        save_safetensors_atomic({"encoding": encoding}, path, meta)

    @classmethod
    def load(cls, path: str | Path) -> Mask:
        """Read a mask file of version 2 or 1; raises ``ValueError`` on a corrupt one."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"mask file not found: {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            fmt = meta.get("format")
            if fmt == _SAFETENSORS_FORMAT:
                try:
                    mask = cls.from_bytes(f.get_tensor("encoding").numpy())
                except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
                    raise ValueError(f"{path}: not a mask encoding ({e})") from None
            elif fmt == _SAFETENSORS_FORMAT_V1:
                shapes = {n: tuple(s) for n, s in json.loads(meta["shapes"])}
                mask = cls({n: f.get_tensor(f"indices/{n}") for n in shapes}, shapes)
            else:
                raise ValueError(f"{path} is not a fish-fl mask file")
        if meta.get("fingerprint") and meta["fingerprint"] != mask.fingerprint:
            raise ValueError(f"{path}: mask content does not match its stored fingerprint")
        return mask


def compile_patterns(patterns: list[str] | tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex matching a parameter name when any pattern matches a whole path component run.

    ``"fc"`` matches ``fc.weight`` but not ``fc1.weight``; a pattern may itself
    be a regex spanning components, e.g. ``attention\\.self\\.key``.
    """
    if not patterns:
        return None
    body = "|".join(f"(?:{p})" for p in patterns)
    return re.compile(rf"(?:^|\.)(?:{body})(?:\.|$)")
