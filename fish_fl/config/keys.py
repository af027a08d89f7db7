"""What a configuration key's metadata holds (help, allowed values, what it shapes)."""

from __future__ import annotations

from typing import Any

__all__ = ["PARTITION_SCHEMES", "SHAPES", "meta"]

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
    """Field metadata: ``help``, ``shapes`` and the checks (choices, min, gt, max)."""
    unknown = set(shapes) - set(SHAPES)
    if unknown:  # pragma: no cover - a programming error in a key's definition
        raise ValueError(f"unknown shapes {sorted(unknown)}; expected a subset of {SHAPES}")
    return {"help": help, "shapes": tuple(shapes), **checks}
