"""Tasks as a registry: what a run trains on, and everything that follows from it.

A task knows how to load its training and held-out splits, its label space
(classes or one regression output), the metrics it reports, and whether it
is a text or an image task, which decides how it is batched and which kind
of model a run builds. The GLUE tasks, CIFAR-10 and CIFAR-100 are entries,
as are the two routes to a user's own data: ``text-classification`` (CSV,
TSV, JSON, JSON Lines or Parquet files, or a hub data set by name) and
``image-classification`` (an image folder). Adding a data set is one module
that subclasses :class:`Task` and calls :func:`register_task`; see
docs/data.md for a worked example.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .base import LabelSpace, Task, TaskSplits

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = [
    "ENTRY_POINT_GROUP",
    "LabelSpace",
    "Task",
    "TaskSplits",
    "register_task",
    "task_entry",
    "task_for",
    "task_names",
]

_TASKS: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return re.sub(r"[-_\s]", "", str(name).strip().lower())


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry under its name and aliases; returns it."""
    if not task.name:
        raise ValueError(f"{type(task).__name__} has no name")
    for spelling in (task.name, *task.aliases):
        key = _key(spelling)
        if key in _ALIASES and _ALIASES[key] != task.name:
            raise ValueError(f"task name {spelling!r} is already taken by {_ALIASES[key]!r}")
        _ALIASES[key] = task.name
    _TASKS[task.name] = task
    return task


def task_names() -> list[str]:
    """Canonical names of every registered task, sorted."""
    _load()
    return sorted(_TASKS)


def task_entry(name: str) -> Task:
    """The task registered as ``name`` (case, ``-``, ``_`` and spaces ignored).

    Raises
    ------
    ValueError
        For a name no task registered, listing the known ones.
    """
    _load()
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        raise ValueError(
            f"task={name!r} is not known; choose one of {', '.join(sorted(_TASKS))} "
            "(text-classification and image-classification read your own files)"
        )
    return _TASKS[canonical]


def task_for(config: RunConfig) -> Task:
    """The run's task."""
    return task_entry(config.task)


_PLUGINS_LOADED = False

#: Entry-point group through which another package adds tasks (see docs/data.md).
ENTRY_POINT_GROUP = "fish_fl.tasks"


def _load() -> None:
    # The built-in entries register on import; then any installed package's
    # entry points, once, so every process of a run (the server, each Ray
    # worker) sees the same registry.
    global _PLUGINS_LOADED
    from . import cifar, glue, images, text_files  # noqa: F401

    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as e:  # a broken plugin names itself, and nothing else fails
            raise ImportError(
                f"task plugin {point.name!r} ({point.value}) failed to load: {e}"
            ) from e
