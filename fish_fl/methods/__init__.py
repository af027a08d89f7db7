"""Training methods as plugins: one registry from a method's name to its wire.

A method is a mask builder (registered in :mod:`fish_fl.masks` under its
name) plus a wire (:class:`SparseMethod` or a subclass of it) that says what
travels and how replies combine. Every builder uses :class:`SparseMethod`
unless a method registers its own wire here; the strategy and the ClientApp
only ever call ``method_for(config)``. Adding a method is one module (or
folder) that registers a builder and, if its messages differ, a wire; see
docs/design.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .base import SparseMethod, TrainReply

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = [
    "SparseMethod",
    "TrainReply",
    "method_class",
    "method_for",
    "register_method",
    "registered_methods",
    "trains",
]

M = TypeVar("M", bound=type[SparseMethod])
_METHODS: dict[str, type[SparseMethod]] = {}


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: ``name``'s runs use this wire instead of :class:`SparseMethod`."""

    def decorate(cls: M) -> M:
        if name in _METHODS:
            raise ValueError(f"method {name!r} already has a wire ({_METHODS[name].__name__})")
        _METHODS[name] = cls
        return cls

    return decorate


def registered_methods() -> dict[str, type[SparseMethod]]:
    """Methods with a wire of their own."""
    _load()
    return dict(_METHODS)


def method_class(name: str) -> type[SparseMethod]:
    """The wire of the method ``name`` (the sparse default for a plain mask builder)."""
    _load()
    return _METHODS.get(name, SparseMethod)


def method_for(config: RunConfig) -> SparseMethod:
    """The run's method, bound to its configuration."""
    return method_class(config.mask_method)(config)


def trains(name: str) -> str:
    """What the method ``name`` trains: ``share``, ``tensors``, ``all`` or ``learned``.

    See :data:`fish_fl.masks.registry.TRAINS`; reports describe a run's
    density by it.
    """
    _load()
    from ..masks import what_it_trains

    return what_it_trains(name)


def _load() -> None:
    # Methods with their own wire register on import.
    from ..ia3 import method as _ia3  # noqa: F401
    from ..lora import method as _lora  # noqa: F401
    from ..supermask import method  # noqa: F401
