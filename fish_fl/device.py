"""Device selection.

The device is resolved once, at the edge of a run, and passed down to every
function that needs it; nothing inside the core picks ``cuda:0`` by itself.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["resolve_device"]


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
