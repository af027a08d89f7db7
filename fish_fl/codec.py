"""Encoding of ``k``-vector updates for the wire.

An update is the ``k`` masked values in mask order. It travels as a NumPy
array of float32 or float16, or, for bfloat16, as the raw 16-bit words in a
uint16 array (Flower's arrays have no bfloat16 dtype). Decoding gives float32
and is exact: ``decode(encode(x)) == x.to(dtype).float()`` bit for bit.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["WIRE_DTYPES", "UpdateCodec", "WireDtype"]

WireDtype = Literal["float32", "float16", "bfloat16"]
WIRE_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
_NUMPY_DTYPE: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
}
_TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class UpdateCodec:
    """Encode and decode ``k``-vectors in one wire dtype.

    Parameters
    ----------
    dtype
        ``float32``, ``float16`` or ``bfloat16``.
    """

    def __init__(self, dtype: str = "float32") -> None:
        if dtype not in WIRE_DTYPES:
            raise ValueError(f"update dtype must be one of {', '.join(WIRE_DTYPES)}, got {dtype!r}")
        self.dtype = dtype

    @property
    def bytes_per_value(self) -> int:
        return 4 if self.dtype == "float32" else 2

    @property
    def numpy_dtype(self) -> np.dtype:
        """The dtype of encoded arrays (uint16 for bfloat16 words)."""
        return _NUMPY_DTYPE[self.dtype]

    def encode(self, values: Tensor) -> np.ndarray:
        """Cast to the wire dtype; raises ``ValueError`` on NaN, Inf or overflow."""
        flat = torch.as_tensor(values).detach().reshape(-1).cpu()
        cast = flat.to(_TORCH_DTYPE[self.dtype])
        if not torch.isfinite(cast).all():
            bad = "non-finite values" if not torch.isfinite(flat).all() else "values that overflow"
            raise ValueError(f"update has {bad} for {self.dtype}")
        if self.dtype == "bfloat16":
            return cast.view(torch.int16).numpy().view(np.uint16).copy()
        return cast.numpy().astype(self.numpy_dtype, copy=True)

    def decode(self, array: np.ndarray, *, expected: int | None = None) -> Tensor:
        """Back to a float32 tensor; checks dtype, length and finiteness."""
        array = np.asarray(array)
        if array.dtype != self.numpy_dtype:
            raise ValueError(
                f"update has dtype {array.dtype}, expected {self.numpy_dtype} ({self.dtype})"
            )
        if array.ndim != 1:
            raise ValueError(f"update must be 1-D, got shape {array.shape}")
        if expected is not None and array.size != expected:
            raise ValueError(f"update has {array.size} values, expected {expected}")
        if self.dtype == "bfloat16":
            words = torch.from_numpy(array.astype(np.int16, copy=True).view(np.int16))
            out = words.view(torch.bfloat16).float()
        else:
            out = torch.from_numpy(array.astype(np.float32))
        if not torch.isfinite(out).all():
            raise ValueError("update has non-finite values")
        return out
