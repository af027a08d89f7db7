"""``text-classification``: the user's own text data, from files or a hub data set by name.

Files are read through the ``datasets`` library's local loaders, chosen by
extension: ``.csv``, ``.tsv`` / ``.tab`` (tab-separated, quoting off, as
GLUE's files), ``.json`` / ``.jsonl`` / ``.ndjson`` and ``.parquet``. CSV and
TSV files may start with a UTF-8 byte-order mark, and may have no header
(``header=false``): columns are then named by position, ``0``, ``1``, ...

Labels
------
The label set is taken from the training file: its distinct values in sorted
order (integers by value, strings alphabetically), so label ids do not
depend on row order or on which client loads the file. A float column means
regression (one output, scored by Pearson and Spearman correlation) unless
``label-type=classes``. An evaluation label that the training file lacks is
an error naming it: the head has no output for it.

A hub data set (``data-source=hub``, ``hub-dataset=NAME``) takes the same
column keys and is read through flwr-datasets' ``FederatedDataset``; offline
it fails at once, naming the data set and the local route.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import register_task
from .base import LabelSpace, Task, TaskSplits

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..data.glue import TextSplit

__all__ = [
    "FILE_FORMATS",
    "TextClassification",
    "TextTable",
    "encode_labels",
    "label_space",
    "load_hub_split",
    "read_text_table",
]

logger = logging.getLogger(__name__)

#: File suffix -> ``datasets`` loader.
FILE_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass(frozen=True, eq=False)
class TextTable:
    """The columns of one file that a run uses, as plain Python lists."""

    source: str
    text_a: list[str]
    text_b: list[str] | None
    labels: list[Any]
    #: float, int, bool or str: the label column's type.
    label_kind: str
    groups: list[Any] | None

    def __len__(self) -> int:
        return len(self.text_a)


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No "Generating train split" bars or cache chatter on the terminal."""
    from datasets.utils import logging as ds_logging

    level = ds_logging.get_verbosity()
    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.set_verbosity(ds_logging.CRITICAL)  # the error itself is raised, once
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if bars:
            ds_logging.enable_progress_bar()


def _load_file(path: Path, header: bool, what: str) -> Any:
    """One file as a ``datasets.Dataset``, through the library's local loader."""
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{what}={str(path)!r} has an unknown format: expected one of "
            f"{', '.join(sorted(FILE_FORMATS))}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{what}={str(path)!r} does not exist")
    from datasets import load_dataset

    kwargs: dict[str, Any] = {}
    if fmt in ("csv", "tsv"):
        kwargs = {"encoding": "utf-8-sig", "header": 0 if header else None}
        if fmt == "tsv":
            kwargs |= {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    loader = "csv" if fmt == "tsv" else fmt
    try:
        with _quiet_datasets():
            data = load_dataset(loader, data_files={"train": str(path)}, split="train", **kwargs)
    except Exception as e:  # the loaders raise many types for an unreadable file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "corresponds to no data" in first:
            raise ValueError(f"{what}={str(path)!r} holds no rows") from None
        raise ValueError(f"{what}={str(path)!r} cannot be read as {fmt}: {first}") from None
    return data


def _columns(data: Any, wanted: dict[str, str], what: str, source: str, header: bool) -> None:
    missing = {key: col for key, col in wanted.items() if col and col not in data.column_names}
    if missing:
        asked = ", ".join(f"{key}={col!r}" for key, col in missing.items())
        hint = "" if header else " (header=false: columns are named by position)"
        raise ValueError(
            f"{what}={source!r} lacks the columns asked for ({asked}): found "
            f"{list(data.column_names)}{hint}"
        )


def _kind(feature: Any) -> str:
    dtype = str(getattr(feature, "dtype", "string"))
    if dtype.startswith("float") or dtype.startswith("double"):
        return "float"
    if dtype.startswith("int") or dtype.startswith("uint"):
        return "int"
    if dtype == "bool":
        return "bool"
    return "str"


def _texts(values: list[Any], column: str, what: str, source: str) -> list[str]:
    for row, v in enumerate(values):
        if v is None:
            raise ValueError(f"{what}={source!r}: row {row + 1} has no {column!r} text")
    return [str(v) for v in values]


def _table(data: Any, config: RunConfig, what: str, source: str, *, groups: bool) -> TextTable:
    wanted = {
        "text-column": config.text_column,
        "text-pair-column": config.text_pair_column,
        "label-column": config.label_column,
    }
    if groups:
        wanted["partition-column"] = config.partition_column
    _columns(data, wanted, what, source, config.header)
    if len(data) == 0:
        raise ValueError(f"{what}={source!r} holds no rows")
    table = data.with_format("arrow")
    labels = table[config.label_column].to_pylist()
    for row, v in enumerate(labels):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise ValueError(
                f"{what}={source!r}: row {row + 1} has no {config.label_column!r} label"
            )
    pair = config.text_pair_column
    return TextTable(
        source=source,
        text_a=_texts(table[config.text_column].to_pylist(), config.text_column, what, source),
        text_b=None if not pair else _texts(table[pair].to_pylist(), pair, what, source),
        labels=labels,
        label_kind=_kind(data.features[config.label_column]),
        groups=table[config.partition_column].to_pylist() if groups else None,
    )


def read_text_table(config: RunConfig, split: str) -> TextTable:
    """The ``train`` or ``eval`` split of the run's text data, as read from its file or the hub.

    Raises
    ------
    FileNotFoundError
        For a file that does not exist.
    ValueError
        For a format it cannot read, columns it lacks (naming those found and
        those asked for), empty files and rows without a label or text.
    """
    natural = split == "train" and config.partition == "natural"
    if config.data_source == "hub":
        return _hub_table(config, split, natural)
    what = "train-file" if split == "train" else "eval-file"
    path = Path(config.train_file if split == "train" else config.eval_file).expanduser()
    stat = path.stat() if path.is_file() else None
    return _cached_table(
        str(path),
        None if stat is None else (stat.st_size, stat.st_mtime_ns),
        config.header,
        config.text_column,
        config.text_pair_column,
        config.label_column,
        config.partition_column if natural else "",
        what,
    )


@lru_cache(maxsize=8)
def _cached_table(
    path: str,
    stamp: tuple[int, int] | None,
    header: bool,
    text_column: str,
    pair_column: str,
    label_column: str,
    partition_column: str,
    what: str,
) -> TextTable:
    # Keyed by the file's size and modification time, so an edited file is read again.
    from types import SimpleNamespace

    data = _load_file(Path(path), header, what)
    keys = SimpleNamespace(
        header=header,
        text_column=text_column,
        text_pair_column=pair_column,
        label_column=label_column,
        partition_column=partition_column,
    )
    return _table(data, keys, what, path, groups=bool(partition_column))  # type: ignore[arg-type]


def _hub_table(config: RunConfig, split: str, natural: bool) -> TextTable:
    data, source = load_hub_split(config, split)
    return _table(data, config, "hub-dataset", source, groups=natural)


def load_hub_split(config: RunConfig, split: str) -> tuple[Any, str]:
    """The ``train`` or held-out split of ``hub-dataset``, through flwr-datasets' FederatedDataset.

    Raises
    ------
    DataUnavailableError
        Offline (at once, before any download is tried), or when the data set
        cannot be loaded; the message names it and the local route.
    """
    from ..data.hub import DataUnavailableError, hub_offline

    name = config.hub_dataset
    route = "or save its splits as files and pass them as local data (see docs/data.md)"
    if hub_offline():
        raise DataUnavailableError(
            f"hub-dataset={name!r} needs the Hugging Face hub, which is unreachable: be online, {route}"
        )
    from flwr_datasets import FederatedDataset

    try:
        with _quiet_datasets():
            fds = FederatedDataset(
                dataset=name,
                subset=config.hub_subset or None,
                partitioners={"train": 1},
                shuffle=False,
            )
            if split == "train":
                wanted = "train"
            elif config.hub_eval_split:
                wanted = config.hub_eval_split
            else:
                available = set(fds.load_split("train").info.splits or {})
                wanted = "validation" if "validation" in available or not available else "test"
            return fds.load_split(wanted), f"{name}[{wanted}]"
    except (OSError, ConnectionError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataUnavailableError(
            f"hub-dataset={name!r} could not be loaded ({first}); {route}"
        ) from None


# --------------------------------------------------------------------------- labels


def _parses_as_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def label_space(table: TextTable, label_type: str, source: str) -> LabelSpace:
    """The label space a training table defines (see the module docstring)."""
    regression = label_type == "regression" or (
        label_type == "auto" and table.label_kind == "float"
    )
    if regression:
        bad = next((v for v in table.labels if not _parses_as_number(v)), None)
        if bad is not None:
            raise ValueError(
                f"train-file={source!r}: label {bad!r} does not parse as a number (label-type=regression)"
            )
        return LabelSpace((), regression=True)
    values = sorted(set(table.labels), key=_order)
    if label_type == "auto" and table.label_kind == "str" and len(values) > 2:
        numeric = [v for v in values if _parses_as_number(v)]
        if numeric and len(numeric) >= len(values) / 2:
            bad = next(v for v in values if not _parses_as_number(v))
            raise ValueError(
                f"train-file={source!r}: label {bad!r} does not parse as a number, while most "
                "labels do; fix the file, or set label-type=classes to treat every value as a class"
            )
    if len(values) < 2:
        raise ValueError(
            f"train-file={source!r}: the label column holds one value only ({values[0]!r}); "
            "a classifier needs at least two classes"
        )
    return LabelSpace(tuple(str(v) for v in values))


def _order(value: Any) -> tuple[int, Any]:
    # Numbers by value, then strings alphabetically: a stable order for any mix.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def encode_labels(table: TextTable, labels: LabelSpace, what: str) -> np.ndarray:
    """Label ids (int64) or scores (float32) of a table, in the training file's label space."""
    if labels.regression:
        try:
            return np.asarray([float(v) for v in table.labels], dtype=np.float32)
        except (TypeError, ValueError):
            bad = next(v for v in table.labels if not _parses_as_number(v))
            raise ValueError(
                f"{what}={table.source!r}: label {bad!r} does not parse as a number"
            ) from None
    ids = {name: i for i, name in enumerate(labels.names)}
    out = np.empty(len(table.labels), dtype=np.int64)
    for row, value in enumerate(table.labels):
        key = str(value)
        if key not in ids:
            raise ValueError(
                f"{what}={table.source!r}: label {key!r} (row {row + 1}) does not occur in the "
                f"training data, whose labels are {', '.join(labels.names)}"
            )
        out[row] = ids[key]
    return out


def _split(table: TextTable, labels: LabelSpace, what: str) -> TextSplit:
    from ..data.glue import TextSplit

    return TextSplit(
        "text-classification", table.text_a, table.text_b, encode_labels(table, labels, what)
    )


# --------------------------------------------------------------------------- the entry


class TextClassification(Task):
    """The user's own text classification or regression data (see the module docstring)."""

    name = "text-classification"
    kind = "text"
    has_partition_column = True
    aliases = ("text", "text-regression")
    summary = "your own text files (csv, tsv, json, jsonl, parquet) or a hub data set"

    def check_config(self, config: RunConfig) -> None:
        from ..config import ConfigError

        if config.data_source == "hub":
            if not config.hub_dataset:
                raise ConfigError(
                    f"task={self.name} with data-source=hub needs hub-dataset (a data set's name)"
                )
        else:
            missing = [
                k
                for k, v in (("train-file", config.train_file), ("eval-file", config.eval_file))
                if not v
            ]
            if missing:
                raise ConfigError(
                    f"task={self.name} needs {' and '.join(missing)} (or data-source=hub with hub-dataset)"
                )
        if not config.text_column or not config.label_column:
            raise ConfigError(f"task={self.name} needs text-column and label-column")
        if config.label_type == "regression" and config.partition in ("dirichlet", "pathological"):
            raise ConfigError(
                f"partition={config.partition} splits by class, and label-type=regression has none"
            )

    def _train(self, config: RunConfig) -> tuple[TextTable, LabelSpace]:
        table = read_text_table(config, "train")
        return table, label_space(table, config.label_type, table.source)

    def label_space(self, config: RunConfig) -> LabelSpace:
        return self._train(config)[1]

    def load(self, config: RunConfig) -> TaskSplits:
        table, labels = self._train(config)
        held_out = read_text_table(config, "eval")
        if (held_out.text_b is None) != (table.text_b is None):  # pragma: no cover - same keys
            raise ValueError("train and eval data differ in their text columns")
        groups = None if table.groups is None else np.asarray([str(g) for g in table.groups])
        logger.info(
            "loaded %s: %d train, %d held-out, %s",
            table.source,
            len(table),
            len(held_out),
            "regression" if labels.regression else f"{labels.num_labels} classes",
        )
        return TaskSplits(
            _split(table, labels, "train-file"),
            _split(held_out, labels, "eval-file" if config.data_source != "hub" else "hub-dataset"),
            labels,
            groups,
        )

    def preflight(self, config: RunConfig) -> None:
        from ..task import check_calibration, client_partitions, subset_rows, train_rows

        splits = self.load(config)  # reads both files once; later loads hit the cache
        if splits.labels.regression and config.partition in ("dirichlet", "pathological"):
            raise ValueError(
                f"partition={config.partition} splits by class, and the labels of "
                f"{config.train_file or config.hub_dataset!r} are float scores (regression)"
            )
        n = train_rows(config, len(splits.train))
        left = n - check_calibration(config, n)
        if config.num_clients > left:
            kept = (
                f" left after the {n - left} of the server's calibration sample" if left < n else ""
            )
            raise ValueError(
                f"num-clients={config.num_clients} exceeds the {left} training examples{kept}"
            )
        # The split itself (labels only): a natural column with another number of
        # values than num-clients, or a pathological split it cannot make, fails here.
        rows = subset_rows(config, len(splits.train))
        client_partitions(config, splits.train.labels[rows], splits.groups, rows)


register_task(TextClassification())
