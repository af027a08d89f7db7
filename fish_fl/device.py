"""Device selection and optional automatic mixed precision.

The device is resolved once, at the edge of a run, and passed down to every
function that needs it; nothing inside the core picks ``cuda:0`` by itself.
Mixed precision is only ever used on CUDA: on the CPU the helpers below are
no-ops, so training code can call them unconditionally.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["autocast", "make_grad_scaler", "resolve_device"]

_AMP_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a device request into a concrete :class:`torch.device`.

    Parameters
    ----------
    device : str or torch.device, default "auto"
        ``"auto"`` picks CUDA when it is present and the CPU otherwise;
        anything else (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a
        ``torch.device``) is taken as is, after checking that it is usable.

    Returns
    -------
    torch.device
        The device to pass down to models, data loaders and training code.

    Raises
    ------
    ValueError
        If the string is not a device name, or names an accelerator that is
        not available on this machine.
    """
    if isinstance(device, str) and device.strip().lower() == "auto":
        chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        logger.info("device 'auto' resolved to %s", chosen)
        return chosen
    try:
        chosen = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"unknown device {device!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from err
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r} requested but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} requested but MPS is not available")
    return chosen


def _amp_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"autocast dtype {dtype} is not supported: expected float16 or bfloat16"
            )
        return dtype
    try:
        return _AMP_DTYPES[dtype.lower()]
    except KeyError as err:
        raise ValueError(
            f"autocast dtype {dtype!r} is not supported: expected 'float16' or 'bfloat16'"
        ) from err


def autocast(
    device: torch.device,
    enabled: bool = True,
    dtype: str | torch.dtype = "float16",
) -> contextlib.AbstractContextManager[Any]:
    """Return an autocast context for the forward pass.

    Parameters
    ----------
    device : torch.device
        The device the model runs on (from :func:`resolve_device`).
    enabled : bool, default True
        Whether mixed precision is wanted. It is only ever switched on for
        CUDA devices; on the CPU (and MPS) a no-op context is returned.
    dtype : str or torch.dtype, default "float16"
        The reduced precision type, ``"float16"`` or ``"bfloat16"``.

    Returns
    -------
    contextlib.AbstractContextManager
        ``torch.autocast("cuda", dtype=...)`` or a no-op context.
    """
    amp_dtype = _amp_dtype(dtype)
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=amp_dtype)
    return contextlib.nullcontext()


def make_grad_scaler(device: torch.device, enabled: bool = True) -> torch.amp.GradScaler:
    """Return a gradient scaler, active only for float16 autocast on CUDA.

    Parameters
    ----------
    device : torch.device
        The training device.
    enabled : bool, default True
        Whether mixed precision is wanted; ignored (scaler disabled) off CUDA.

    Returns
    -------
    torch.amp.GradScaler
        A scaler whose ``scale``/``step``/``update`` are pass-throughs when
        disabled, so the training loop needs no branches.
    """
    active = enabled and device.type == "cuda"
    return torch.amp.GradScaler("cuda" if active else "cpu", enabled=active)
