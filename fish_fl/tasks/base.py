"""The contract of a task entry (see :mod:`fish_fl.tasks`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["LabelSpace", "Task", "TaskSplits"]


@dataclass(frozen=True)
class LabelSpace:
    """What the task head predicts: named classes, or one regression output."""

    names: tuple[str, ...] = ()
    regression: bool = False

    @property
    def num_labels(self) -> int:
        """Outputs of the task head."""
        return 1 if self.regression else len(self.names)

    def as_dict(self) -> dict[str, Any]:
        return {"regression": self.regression, "labels": list(self.names)}


@dataclass(frozen=True, eq=False)
class TaskSplits:
    """A task's data as loaded, before subsampling, tokenising and partitioning.

    Attributes
    ----------
    train, held_out
        :class:`~fish_fl.data.glue.TextSplit` for text tasks,
        :class:`~fish_fl.data.vision.ImageSplit` for image tasks.
    labels
        The label space (taken from the training split for a user's files).
    groups
        One value per training example of the column that defines a natural
        partition (``partition-column``), or None.
    """

    train: Any
    held_out: Any
    labels: LabelSpace
    groups: np.ndarray | None = None


class Task:
    """One task: how to load it, what it predicts, how it is scored.

    Subclasses set :attr:`name` (and :attr:`kind`, :attr:`aliases`) and
    implement :meth:`label_space`, :meth:`metric_task` and :meth:`load`;
    :meth:`check_config` and :meth:`preflight` refuse what cannot work
    before anything starts.
    """

    name: str = ""
    #: ``"text"`` or ``"image"``: how batches are built and which models fit.
    kind: ClassVar[str] = "text"
    aliases: tuple[str, ...] = ()
    #: One line for ``fish-fl`` help and the docs.
    summary: str = ""
    #: Whether the task can read a column of client ids (``partition=natural``).
    has_partition_column: ClassVar[bool] = False

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    def check_config(self, config: RunConfig) -> None:
        """Raise :class:`~fish_fl.config.ConfigError` for keys that do not fit this task.

        Called when the configuration is built: no file is read here.
        """

    def preflight(self, config: RunConfig) -> None:
        """Check, cheaply, that the data can be found and read (before Ray or a model).

        Raise ``ValueError`` or ``OSError`` with a one-line message.
        """

    def label_space(self, config: RunConfig) -> LabelSpace:
        raise NotImplementedError

    def num_labels(self, config: RunConfig) -> int:
        return self.label_space(config).num_labels

    def metric_task(self, config: RunConfig) -> str:
        """The name :func:`fish_fl.metrics.task_metrics` scores this task by."""
        return "regression" if self.label_space(config).regression else "classification"

    def load(self, config: RunConfig) -> TaskSplits:
        raise NotImplementedError
