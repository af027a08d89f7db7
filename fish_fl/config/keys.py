"""What a configuration key's metadata holds (help, allowed values, what it shapes)."""

from __future__ import annotations

from typing import Any

__all__ = ["PARTITION_SCHEMES", "SHAPES", "meta", "ray_host_port"]

#: Client split schemes (see :func:`fish_fl.data.partition.partition_indices`).
PARTITION_SCHEMES: tuple[str, ...] = (
    "iid",
    "dirichlet",
    "natural",
    "pathological",
    "linear",
    "square",
    "exponential",
)

#: What a key can shape: the data a node loads, the model it builds.
SHAPES: tuple[str, ...] = ("data", "model")


def meta(help: str, *, shapes: tuple[str, ...] = (), **checks: Any) -> dict[str, Any]:
    """Field metadata: ``help``, ``shapes`` and the checks (choices, min, gt, max, check).

    ``check`` is a function of the value that raises ``ValueError`` saying what
    is wrong with it, for a rule the other checks cannot state.
    """
    unknown = set(shapes) - set(SHAPES)
    if unknown:  # pragma: no cover - a programming error in a key's definition
        raise ValueError(f"unknown shapes {sorted(unknown)}; expected a subset of {SHAPES}")
    return {"help": help, "shapes": tuple(shapes), **checks}


def ray_host_port(address: str) -> tuple[str, int] | None:
    """``ray-address`` as ``(host, port)``; ``None`` for ``""`` and ``"auto"``.

    Raises ``ValueError`` for anything else that is not ``HOST:PORT``.
    """
    if address in ("", "auto"):
        return None
    if "://" in address:
        raise ValueError(
            "Ray Client addresses (ray://) are not supported; give the head node's "
            "HOST:PORT (the --port of `ray start --head`, 6379 by default) or auto"
        )
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or any(c.isspace() for c in host) or not port.isdigit():
        raise ValueError("expected '' (a local Ray), auto, or HOST:PORT of a Ray head node")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is not in 1..65535")
    return host, int(port)
