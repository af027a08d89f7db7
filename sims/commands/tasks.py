"""``fish-fl tasks``: the registered tasks, their kind and where their data comes from."""

from __future__ import annotations

import re

import typer

__all__ = ["tasks_command"]


def tasks_command() -> None:
    """List the tasks a run can name (task=...): GLUE, CIFAR, and your own text or images."""
    from fish_fl.tasks import task_entry, task_names

    entries = [task_entry(name) for name in task_names()]
    width = max(len(e.name) for e in entries)
    for entry in entries:
        same = re.sub(r"[-_\s]", "", entry.name)
        aliases = [
            a for a in dict.fromkeys(entry.aliases) if re.sub(r"[-_\s]", "", a.lower()) != same
        ]
        also = f" (also {', '.join(aliases)})" if aliases else ""
        typer.echo(f"{entry.name:<{width}}  {entry.kind:<5}  {entry.summary}{also}")
    typer.echo("\nYour own data: docs/data.md; a new task is one registry entry (fish_fl/tasks).")
