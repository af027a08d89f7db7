"""The run-configuration keys every registered method adds, composed in one class.

A method with keys of its own defines them as a frozen dataclass in its
folder (names prefixed by the method, e.g. ``supermask-uplink``) and adds
that class to the bases below: one line. :class:`~fish_fl.config.RunConfig`
inherits :class:`MethodKeys`, so the keys are flat ``--set`` keys like any
other and are checked by the same metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ia3.keys import IA3Keys
from ..lora.keys import LoraKeys
from ..supermask.keys import SupermaskKeys

__all__ = ["MethodKeys"]


@dataclass(frozen=True)
class MethodKeys(IA3Keys, LoraKeys, SupermaskKeys):
    """Every method's own keys."""
