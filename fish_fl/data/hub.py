"""Network access: is the Hugging Face hub reachable, and the error when not.

Libraries that talk to the hub retry a missing network for half a minute
before giving up. The loaders in :mod:`fish_fl.data` and :mod:`fish_fl.models`
ask this module first, so an offline machine gets a clear error at once
instead of a long wait and a generic connection message.
"""

from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

__all__ = ["DataUnavailableError", "hub_offline"]


class DataUnavailableError(OSError):
    """A data set must be downloaded, and the network (or hub) is unreachable."""


_TRUTHY = {"1", "true", "yes", "on"}
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_offline(timeout: float = 3.0) -> bool:
    """Tell whether the Hugging Face hub should be treated as unreachable.

    Parameters
    ----------
    timeout : float, default 3.0
        Seconds to wait for a TCP connection to the hub endpoint.

    Returns
    -------
    bool
        True when one of ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE`` or
        ``TRANSFORMERS_OFFLINE`` is set, or when the hub host (``HF_ENDPOINT``,
        default ``huggingface.co``) cannot be reached on port 443. When an
        HTTPS proxy is configured the probe is skipped and the hub is assumed
        reachable, since the proxy decides.
    """
    for name in _OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in _TRUTHY:
            logger.debug("hub offline: %s is set", name)
            return True
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return False
    except OSError as err:
        logger.debug("hub offline: cannot reach %s:%d (%s)", host, port, err)
        return True
