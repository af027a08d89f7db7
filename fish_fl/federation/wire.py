"""Framework-free views of a reply, and decoding that no crafted reply can break.

A Flower ``Array`` carries claimed metadata (``stype``, ``dtype``, ``shape``)
and the bytes of an ``.npy`` file. ``Array.numpy()`` trusts both: a foreign
``stype`` raises ``TypeError``, and an ``.npy`` header that claims 2^41
floats makes NumPy allocate them before it notices the data is short. So the
server never calls it on a reply. :func:`decode_array` checks the claimed
metadata against what the server expects, parses the ``.npy`` header itself,
checks that the bytes hold exactly that many values, and only then reads
them (:func:`numpy.frombuffer`, no allocation beyond the message itself).

The Flower layer turns a reply into a :class:`ReplyView` (no decoding, plain
Python values); everything after that is in the core and testable without
Flower.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["NUMPY_STYPE", "ArrayView", "ReplyView", "WireError", "decode_array", "metric"]

#: The only serialisation type the server accepts (Flower's ``SType.NUMPY``).
NUMPY_STYPE = "numpy.ndarray"


class WireError(ValueError):
    """A reply's record or array is not what the server expects."""


@dataclass(frozen=True)
class ArrayView:
    """What an array of a reply claims to be, and its raw bytes."""

    stype: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class ReplyView:
    """A reply as plain values: its error, or its records."""

    node_id: int
    error: tuple[int, str] | None = None
    record_kinds: Mapping[str, str] = field(default_factory=dict)  # name -> "arrays" ...
    arrays: Mapping[str, ArrayView] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)


def decode_array(
    view: ArrayView, name: str, *, dtype: np.dtype | str, length: int | None = None
) -> np.ndarray:
    """The 1-D array ``name`` of ``dtype`` with ``length`` values, or :class:`WireError`.

    ``length=None`` accepts any length (the caller checks it against what
    the values must mean, e.g. a packed mask's size).
    """
    want = np.dtype(dtype)
    if view.stype != NUMPY_STYPE:
        raise WireError(f"{name}: serialisation type {view.stype!r}, expected {NUMPY_STYPE!r}")
    if not isinstance(view.data, (bytes, bytearray, memoryview)):
        raise WireError(f"{name}: data is {type(view.data).__name__}, not bytes")
    shape = tuple(view.shape) if isinstance(view.shape, (tuple, list)) else None
    if shape is None or len(shape) != 1 or not all(isinstance(s, int) for s in shape):
        raise WireError(f"{name}: shape {view.shape!r}, expected a 1-D array")
    if length is not None and shape != (length,):
        raise WireError(f"{name}: {shape[0]} values, expected {length}")
    try:
        claimed = np.dtype(view.dtype)
    except TypeError:
        raise WireError(f"{name}: unknown dtype {view.dtype!r}") from None
    if claimed != want:
        raise WireError(f"{name}: dtype {claimed}, expected {want}")
    buffer = io.BytesIO(bytes(view.data))
    try:
        version = np.lib.format.read_magic(buffer)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(buffer)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(buffer)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as e:  # a malformed header, in any of NumPy's ways
        raise WireError(f"{name}: not a NumPy array ({type(e).__name__}: {e})") from None
    file_shape, fortran, file_dtype = header
    if tuple(file_shape) != shape or file_dtype != want or fortran:
        raise WireError(
            f"{name}: bytes hold {file_dtype} {tuple(file_shape)}, the array claims {want} {shape}"
        )
    offset = buffer.tell()
    need = math.prod(shape) * want.itemsize
    if len(view.data) - offset != need:
        raise WireError(f"{name}: {len(view.data) - offset} bytes of data, expected {need}")
    return np.frombuffer(bytes(view.data), dtype=want, count=shape[0], offset=offset).copy()


def metric(metrics: Mapping[str, Any], key: str) -> int | float | None:
    """A finite number from a metrics record, ``None`` if absent or not a finite number."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
