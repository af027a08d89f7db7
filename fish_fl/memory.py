"""Process memory: keep freed tensor memory from piling up in the C heap.

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes with its
own ``mmap`` and unmaps it when it is freed, but it raises that threshold
each time such a block is freed (up to 32 MiB on 64-bit). After the first
training step every activation of a MiniLM batch (one to seven MiB each) is
therefore carved from the heap instead, and batches of varying sequence
length fragment it: a client process grew by about 600 MiB over 20 local
steps and never gave it back. A fixed threshold turns the dynamic adjustment
off, so those blocks go back to the system when freed; with it the same
steps leave the resident set where the first step put it. Allocation is the
only thing this changes, never a value.

:func:`keep_torchvision_out` saves a text run's node process the 160 MiB
that importing torchvision costs: transformers imports it whenever it is
installed, for image utilities a text model never uses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["MMAP_THRESHOLD", "keep_torchvision_out", "limit_heap_growth"]

logger = logging.getLogger(__name__)

#: Allocations from this size on (bytes) get their own mapping.
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_done = False


def limit_heap_growth() -> bool:
    """Fix glibc's mmap threshold for this process; False where that is not glibc.

    Idempotent, and cheap to call at every entry point.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        logger.debug("mallopt(M_MMAP_THRESHOLD) refused")
        return False
    _done = True
    return True


def keep_torchvision_out() -> bool:
    """Make torchvision unimportable in this process; False where it is too late.

    For a process that will only ever build and train a text model (a
    simulated node's process, which serves one run): transformers then finds
    no torchvision and skips its image utilities. Too late once torchvision
    or transformers' model code has been imported. A later ``import
    torchvision`` in this process raises ``ModuleNotFoundError``.
    """
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"] is None
    if "transformers.modeling_utils" in sys.modules:
        return False
    sys.modules["torchvision"] = None  # type: ignore[assignment]
    logger.debug("torchvision kept out of this text-only process")
    return True
