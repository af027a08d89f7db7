"""Typer parameters that several subcommands declare the same way."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["PresetArgument", "SetOption"]

#: The preset a command starts from (``fish-fl run``, ``fish-fl prune``).
PresetArgument = Annotated[
    str, typer.Argument(help="Preset name (see sims/presets) or a TOML file.")
]

#: Repeatable ``--set key=value`` overrides of the preset's run configuration.
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: --set lr=1e-3 (repeatable)."),
]
