"""Writing files so that a crash never leaves a half-written one, and reading them back checked.

Every file the project writes whole goes through :func:`atomic_write` (or
:func:`atomic_path`, for writers that want a file name; ``metrics.jsonl`` is
appended to and flushed line by line instead): the content goes to
a temporary file in the same folder, is flushed to disk, and is renamed over
the target, and the folder is flushed so the rename itself survives a power
loss. A rename within a folder is atomic on POSIX file systems, so a reader
sees the old file or the new one, never a mix; when the writer fails, the
temporary file is removed and the old file stays as it was.

JSON is written strict (:func:`dumps_strict`): a non-finite float becomes
``null``, so every file parses with any JSON parser (Python's ``json`` would
otherwise write ``NaN``, which is not JSON).

Safetensors files may carry a SHA-256 checksum of every tensor and of their
other metadata (:func:`save_safetensors_atomic` with ``checksums=True``);
:func:`read_safetensors` verifies them, so a flipped bit is an error, not a
silently different model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

__all__ = [
    "CHECKSUMS",
    "CorruptFileError",
    "atomic_path",
    "atomic_write",
    "dumps_strict",
    "finite_or_none",
    "read_safetensors",
    "save_figure_atomic",
    "save_safetensors_atomic",
    "tensor_sha256",
    "write_json_atomic",
    "write_text_atomic",
]

#: The safetensors metadata entry holding the checksums (JSON: name -> SHA-256 hex).
CHECKSUMS = "sha256"
# The checksum entry for the other metadata entries (not a tensor name: safetensors
# names cannot be empty).
_METADATA = ""


class CorruptFileError(ValueError):
    """A file that cannot be read as what it claims to be; the message is one line."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _temporary(path: Path) -> Path:
    # Unique per writer, so processes writing the same file do not collide.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name to write; renamed over ``path`` when the block ends without error.

    For writers that take a file name (``safetensors.torch.save_file``). The
    temporary file is in ``path``'s folder; the writer must create it.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


@contextmanager
def atomic_write(
    path: str | Path, mode: str = "wb", *, encoding: str | None = None
) -> Iterator[IO[Any]]:
    """An open file that replaces ``path`` atomically when the block ends without error.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8 unless ``encoding`` says
    otherwise). On an exception inside the block the old file is left as it
    was and the temporary file is removed.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    binary = mode == "wb"
    with (
        atomic_path(path) as tmp,
        open(
            tmp,
            "xb" if binary else "x",
            encoding=None if binary else (encoding or "utf-8"),
            newline=None if binary else "\n",
        ) as f,
    ):
        yield f
        f.flush()


def write_text_atomic(path: str | Path, text: str, *, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``text`` atomically."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)


def finite_or_none(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, infinities) turned into ``None``."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {k: finite_or_none(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite_or_none(v) for v in data]
    return data


def dumps_strict(data: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes valid JSON only: non-finite floats become ``null``."""
    return json.dumps(finite_or_none(data), allow_nan=False, **kwargs)


def write_json_atomic(
    path: str | Path, data: Any, *, indent: int | None = 2, sort_keys: bool = True
) -> None:
    """Replace ``path`` with ``data`` as strict JSON (see :func:`dumps_strict`), atomically."""
    write_text_atomic(path, dumps_strict(data, indent=indent, sort_keys=sort_keys) + "\n")


def save_figure_atomic(figure: Any, path: str | Path, **savefig: Any) -> None:
    """Save a matplotlib figure atomically; the format follows the suffix, as ``savefig``'s."""
    path = Path(path)
    with atomic_write(path) as f:
        figure.savefig(f, format=path.suffix.lstrip(".") or None, **savefig)


# -- safetensors ----------------------------------------------------------------------
def tensor_sha256(tensor: Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (as stored: contiguous, on the CPU)."""
    t = tensor.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _metadata_sha256(metadata: Mapping[str, str]) -> str:
    rest = {k: v for k, v in metadata.items() if k != CHECKSUMS}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def save_safetensors_atomic(
    tensors: Mapping[str, Tensor],
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
    *,
    checksums: bool = False,
) -> None:
    """Write a safetensors file atomically; with ``checksums``, a SHA-256 of every tensor.

    The checksums (and one of the other metadata entries) are stored as JSON
    in the metadata entry :data:`CHECKSUMS`; :func:`read_safetensors`
    verifies them.
    """
    from safetensors.torch import save_file

    meta = dict(metadata or {})
    if CHECKSUMS in meta:
        raise ValueError(f"metadata key {CHECKSUMS!r} is reserved for checksums")
    if checksums:
        sums = {name: tensor_sha256(t) for name, t in tensors.items()}
        sums[_METADATA] = _metadata_sha256(meta)
        meta[CHECKSUMS] = json.dumps(sums, sort_keys=True)
    with atomic_path(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=meta)


def read_safetensors(
    path: str | Path, *, require_checksums: bool = False
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file, checksums verified when present.

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a file.
    CorruptFileError
        When the file is not a readable safetensors file, a checksum does not
        match, or (``require_checksums``) the file has none; the message names
        the file and the first problem.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types for a corrupt file
        raise CorruptFileError(
            f"{path} is not a readable safetensors file ({_one_line(e)})"
        ) from None
    if CHECKSUMS not in metadata:
        if require_checksums:
            raise CorruptFileError(f"{path} has no checksums (metadata {CHECKSUMS!r} is missing)")
        return tensors, metadata
    try:
        sums = json.loads(metadata[CHECKSUMS])
    except json.JSONDecodeError:
        sums = None
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise CorruptFileError(f"{path}: metadata {CHECKSUMS!r} is not a JSON object of digests")
    if sums.get(_METADATA) != _metadata_sha256(metadata):
        raise CorruptFileError(f"{path}: the metadata does not match its checksum")
    missing = sorted(set(sums) - set(tensors) - {_METADATA})
    if missing:
        raise CorruptFileError(f"{path}: tensor {missing[0]!r} is missing")
    for name, tensor in tensors.items():
        if name not in sums:
            raise CorruptFileError(f"{path}: tensor {name!r} has no checksum")
        if tensor_sha256(tensor) != sums[name]:
            raise CorruptFileError(f"{path}: tensor {name!r} does not match its checksum")
    return tensors, metadata
