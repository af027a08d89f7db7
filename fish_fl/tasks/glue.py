"""The nine GLUE settings of the FISH Mask paper as task entries (see :mod:`fish_fl.data.glue`)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.glue import GLUE_TASKS, GlueTask
from . import register_task
from .base import LabelSpace, Task, TaskSplits

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["SAMPLE_ROWS", "GlueEntry"]

#: Data rows pre-flight reads of each local GLUE file (the header is always read).
SAMPLE_ROWS = 200


class GlueEntry(Task):
    """One GLUE task: the hub, a local folder in the official TSV layout, or the embedded sample."""

    kind = "text"

    def __init__(self, spec: GlueTask) -> None:
        self.spec = spec
        self.name = spec.name
        extra = {"mnli": ("mnli-m", "mnli-matched"), "mnli-mm": ("mnli-mismatched",)}
        own = (spec.folder, spec.hub_config) if spec.name != "mnli-mm" else ()
        self.aliases = (*own, *extra.get(spec.name, ()))
        self.summary = f"GLUE {spec.folder}" + (
            " (mismatched dev)" if spec.name == "mnli-mm" else ""
        )

    def check_config(self, config: RunConfig) -> None:
        from ..config import ConfigError

        if config.data_source == "local" and not config.data_dir:
            raise ConfigError(
                f"task={self.name} with data-source=local needs data-dir (a GLUE folder)"
            )

    def label_space(self, config: RunConfig) -> LabelSpace:
        return LabelSpace(self.spec.label_names, regression=self.spec.is_regression)

    def metric_task(self, config: RunConfig) -> str:
        return self.name

    def _source(self, config: RunConfig) -> str:
        return {"embedded": "embedded", "hub": "hub"}.get(config.data_source, config.data_dir)

    def load(self, config: RunConfig) -> TaskSplits:
        from ..data.glue import load_glue

        splits = load_glue(self.spec, self._source(config))
        return TaskSplits(splits.train, splits.dev, self.label_space(config))

    def preflight(self, config: RunConfig) -> None:
        from ..data.glue import glue_files, load_glue, read_glue_tsv
        from ..data.hub import hub_offline
        from ..task import check_calibration, train_rows

        if config.data_source == "embedded":
            if self.name != "sst2":
                raise ValueError(
                    f"data-source=embedded holds only sst2, not task={config.task!r}; "
                    "use data-source=local (a GLUE folder in data-dir) or hub"
                )
            splits = load_glue(self.spec, "embedded")
            check_calibration(config, train_rows(config, len(splits.train)))
        elif config.data_source == "local":
            train_file, dev_file = glue_files(config.data_dir, self.spec)
            train = read_glue_tsv(train_file, self.spec, max_rows=SAMPLE_ROWS)
            read_glue_tsv(dev_file, self.spec, max_rows=SAMPLE_ROWS)
            if _lines(train_file, SAMPLE_ROWS + 2) <= SAMPLE_ROWS + int(self.spec.tsv.header):
                # The whole file was read (one row a line: the files are not quoted).
                check_calibration(config, train_rows(config, len(train)))
        elif not _forced_offline() and hub_offline():
            raise ValueError(
                "data-source=hub: the Hugging Face hub is unreachable; be online, or use "
                "data-source=local with a GLUE folder"
            )


def _lines(path: Path, most: int) -> int:
    """Lines of a text file, counting no further than ``most``."""
    with path.open("rb") as f:
        return sum(1 for _ in itertools.islice(f, most))


def _forced_offline() -> bool:
    import os

    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"} for v in names)


for _spec in GLUE_TASKS.values():
    register_task(GlueEntry(_spec))
