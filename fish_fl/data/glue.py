"""GLUE: the nine evaluation settings of the FISH Mask paper's Table 1.

Sung, Nair and Raffel (NeurIPS 2021, arXiv 2111.09839) report CoLA, SST-2,
MRPC, STS-B, QQP, MNLI (matched and mismatched dev sets), QNLI and RTE. Each
is a :class:`GlueTask` here, keyed ``cola``, ``sst2``, ``mrpc``, ``stsb``,
``qqp``, ``mnli`` (matched), ``mnli-mm`` (mismatched), ``qnli``, ``rte``;
spellings such as ``SST-2``, ``STS-B`` or ``mnli_mismatched`` are accepted.

Sources (:func:`load_glue`):

* ``"hub"`` -- the ``nyu-mll/glue`` data set through ``datasets``, online;
* ``"embedded"`` -- the small SST-2 sample shipped as JSON Lines in
  ``fish_fl/resources/sst2_sample`` (task ``sst2`` only), so a demo needs
  neither network nor a local copy of GLUE;
* a folder in the official GLUE TSV layout, either the GLUE root
  (``<root>/SST-2/train.tsv``) or the task's own folder, read with quoting
  disabled (``csv.QUOTE_NONE``) as the files are not CSV-quoted.

Labels follow the hub's encoding (MNLI: entailment 0, neutral 1,
contradiction 2; QNLI, RTE: entailment 0, not_entailment 1); STS-B scores
are float32 in [0, 5]. The held-out evaluation split is the dev set.

Texts are tokenised once (:func:`tokenize_split`, no padding) and padded per
batch to the longest sequence by :class:`TextCollator`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fish_fl.data.hub import DataUnavailableError, hub_offline

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = [
    "GLUE_HUB_NAME",
    "GLUE_TASKS",
    "GlueSplits",
    "GlueTask",
    "TextCollator",
    "TextSplit",
    "TokenizedDataset",
    "TsvLayout",
    "embedded_sample_dir",
    "get_task",
    "glue_files",
    "load_glue",
    "load_glue_hub",
    "load_glue_tsv",
    "make_text_loader",
    "read_glue_tsv",
    "tokenize_split",
]

#: The GLUE data set on the Hugging Face hub.
GLUE_HUB_NAME = "nyu-mll/glue"

_BINARY = {"0": 0, "1": 1}
_NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
_NLI2 = {"entailment": 0, "not_entailment": 1}


@dataclass(frozen=True)
class TsvLayout:
    """Where a task's columns sit in its official GLUE TSV files.

    Attributes
    ----------
    text_columns : tuple of str or int
        One or two text columns, by header name (or position if no header).
    label_column : str or int
        The label column, by header name (or position).
    header : bool
        Whether the first line is a header.
    num_fields : int
        Fields per row for header-less files (0 when there is a header).
    """

    text_columns: tuple[str, ...] | tuple[int, ...]
    label_column: str | int
    header: bool = True
    num_fields: int = 0


@dataclass(frozen=True)
class GlueTask:
    """One GLUE evaluation setting.

    Attributes
    ----------
    name : str
        Canonical key (``"sst2"``, ``"mnli-mm"``, ...).
    folder : str
        Folder of the official GLUE layout (``"SST-2"``).
    hub_config : str
        Configuration of ``nyu-mll/glue``.
    hub_text_columns : tuple of str
        Text columns on the hub.
    hub_eval_split : str
        Held-out split on the hub (``"validation"``, ``"validation_matched"``).
    dev_file : str
        Held-out file of the TSV layout.
    tsv : TsvLayout
        Columns of the TSV files.
    label_map : mapping of str to int, or None
        Label strings of the TSV files; None for a float score (regression).
    label_names : tuple of str
        Class names in id order (empty for regression).
    """

    name: str
    folder: str
    hub_config: str
    hub_text_columns: tuple[str, ...]
    hub_eval_split: str
    dev_file: str
    tsv: TsvLayout
    label_map: Mapping[str, int] | None
    label_names: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        """True for STS-B (a float score)."""
        return self.label_map is None

    @property
    def is_pair(self) -> bool:
        """True when examples are sentence pairs."""
        return len(self.hub_text_columns) == 2

    @property
    def num_labels(self) -> int:
        """Outputs of the task head (1 for regression)."""
        return 1 if self.label_map is None else len(set(self.label_map.values()))


def _task(
    name: str,
    folder: str,
    hub_text: tuple[str, ...],
    tsv: TsvLayout,
    label_map: Mapping[str, int] | None,
    label_names: tuple[str, ...] = (),
    hub_config: str | None = None,
    hub_eval: str = "validation",
    dev_file: str = "dev.tsv",
) -> GlueTask:
    return GlueTask(
        name=name,
        folder=folder,
        hub_config=hub_config or name,
        hub_text_columns=hub_text,
        hub_eval_split=hub_eval,
        dev_file=dev_file,
        tsv=tsv,
        label_map=label_map,
        label_names=label_names,
    )


_MNLI_TSV = TsvLayout(("sentence1", "sentence2"), "gold_label")
_NLI_NAMES3 = ("entailment", "neutral", "contradiction")
_NLI_NAMES2 = ("entailment", "not_entailment")

#: Every task of the paper's Table 1, by canonical key.
GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        _task(
            "cola",
            "CoLA",
            ("sentence",),
            TsvLayout((3,), 1, header=False, num_fields=4),
            _BINARY,
            ("unacceptable", "acceptable"),
        ),
        _task(
            "sst2",
            "SST-2",
            ("sentence",),
            TsvLayout(("sentence",), "label"),
            _BINARY,
            ("negative", "positive"),
        ),
        _task(
            "mrpc",
            "MRPC",
            ("sentence1", "sentence2"),
            TsvLayout(("#1 String", "#2 String"), "Quality"),
            _BINARY,
            ("not_equivalent", "equivalent"),
        ),
        _task(
            "stsb",
            "STS-B",
            ("sentence1", "sentence2"),
            TsvLayout(("sentence1", "sentence2"), "score"),
            None,
        ),
        _task(
            "qqp",
            "QQP",
            ("question1", "question2"),
            TsvLayout(("question1", "question2"), "is_duplicate"),
            _BINARY,
            ("not_duplicate", "duplicate"),
        ),
        _task(
            "mnli",
            "MNLI",
            ("premise", "hypothesis"),
            _MNLI_TSV,
            _NLI3,
            _NLI_NAMES3,
            hub_eval="validation_matched",
            dev_file="dev_matched.tsv",
        ),
        _task(
            "mnli-mm",
            "MNLI",
            ("premise", "hypothesis"),
            _MNLI_TSV,
            _NLI3,
            _NLI_NAMES3,
            hub_config="mnli",
            hub_eval="validation_mismatched",
            dev_file="dev_mismatched.tsv",
        ),
        _task(
            "qnli",
            "QNLI",
            ("question", "sentence"),
            TsvLayout(("question", "sentence"), "label"),
            _NLI2,
            _NLI_NAMES2,
        ),
        _task(
            "rte",
            "RTE",
            ("sentence1", "sentence2"),
            TsvLayout(("sentence1", "sentence2"), "label"),
            _NLI2,
            _NLI_NAMES2,
        ),
    )
}

_ALIASES = {
    "mnlim": "mnli",
    "mnlimatched": "mnli",
    "mnlimm": "mnli-mm",
    "mnlimismatched": "mnli-mm",
}


def get_task(task: str | GlueTask) -> GlueTask:
    """Look a GLUE task up by name.

    Parameters
    ----------
    task : str or GlueTask
        Any spelling of a task (case, ``-`` and ``_`` are ignored), e.g.
        ``"SST-2"``, ``"sts_b"``, ``"MNLI-mm"``.

    Returns
    -------
    GlueTask
        The task.

    Raises
    ------
    ValueError
        For a name that is not one of the paper's GLUE tasks.
    """
    if isinstance(task, GlueTask):
        return task
    key = re.sub(r"[-_\s]", "", str(task).lower())
    key = _ALIASES.get(key, key)
    if key in GLUE_TASKS:
        return GLUE_TASKS[key]
    raise ValueError(f"unknown GLUE task {task!r}: expected one of {sorted(GLUE_TASKS)}")


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True, eq=False)
class TextSplit:
    """Texts and labels of one split of a GLUE task.

    Attributes
    ----------
    task : str
        Canonical task key.
    text_a : list of str
        First (or only) sentence of each example.
    text_b : list of str or None
        Second sentence for pair tasks.
    labels : numpy.ndarray
        int64 class ids, or float32 scores for STS-B.
    """

    task: str
    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.text_a)
        if self.labels.shape != (n,) or (self.text_b is not None and len(self.text_b) != n):
            raise ValueError(f"split of {self.task!r}: texts and labels differ in length")

    def __len__(self) -> int:
        return len(self.text_a)


@dataclass(frozen=True, eq=False)
class GlueSplits:
    """Training split and held-out dev split of one task."""

    task: GlueTask
    train: TextSplit
    dev: TextSplit


def _open_text(source: Path | Traversable) -> Any:
    # utf-8-sig: the official MRPC files begin with a byte-order mark.
    if isinstance(source, Path):
        return source.open("r", encoding="utf-8-sig", newline="")
    return source.open("r", encoding="utf-8-sig")


def read_glue_tsv(
    path: str | Path | Traversable, task: str | GlueTask, *, max_rows: int | None = None
) -> TextSplit:
    """Read one file of the official GLUE TSV layout.

    Rows with too few fields or an unreadable label (a handful exist in the
    original QQP and MNLI files) are skipped and counted in a warning; a
    header without the task's columns, or a header-less file whose first
    row does not fit the layout, is an error.

    Parameters
    ----------
    path : str, pathlib.Path or Traversable
        The ``.tsv`` file.
    task : str or GlueTask
        Which task's columns to read.
    max_rows : int, optional
        Stop after this many data lines (a quick look at a large file).

    Returns
    -------
    TextSplit
        The examples of the file.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the columns are not the task's, or no row could be read.
    """
    spec = get_task(task)
    layout = spec.tsv
    source: Path | Traversable = Path(path) if isinstance(path, str) else path
    if not source.is_file():
        raise FileNotFoundError(f"GLUE {spec.name} file {str(source)!r} does not exist")
    text_a: list[str] = []
    text_b: list[str] = []
    labels: list[float] = []
    skipped = 0
    with _open_text(source) as handle:
        reader: Iterator[list[str]] = csv.reader(
            handle, delimiter="\t", quoting=csv.QUOTE_NONE, strict=False
        )
        if layout.header:
            header = next(reader, None)
            if header is None:
                raise ValueError(f"GLUE {spec.name} file {str(source)!r} is empty")
            header = [h.strip() for h in header]
            wanted = [*layout.text_columns, layout.label_column]
            missing = [c for c in wanted if c not in header]
            if missing:
                raise ValueError(
                    f"GLUE {spec.name} file {str(source)!r} lacks columns {missing}: "
                    f"expected a header with {wanted}, got {header}"
                )
            text_idx = [header.index(str(c)) for c in layout.text_columns]
            label_idx = header.index(str(layout.label_column))
        else:
            text_idx = [int(c) for c in layout.text_columns]
            label_idx = int(layout.label_column)
        needed = max([*text_idx, label_idx]) + 1
        first = 2 if layout.header else 1
        for line_no, row in enumerate(reader, start=first):
            if max_rows is not None and line_no - first >= max_rows:
                break
            if not row or row == [""]:
                continue
            if not layout.header and line_no == 1 and len(row) != layout.num_fields:
                raise ValueError(
                    f"GLUE {spec.name} file {str(source)!r} has {len(row)} columns: expected "
                    f"{layout.num_fields} tab-separated columns and no header"
                )
            try:
                if len(row) < needed:
                    raise ValueError("too few fields")
                raw_label = row[label_idx].strip()
                label = float(raw_label) if spec.label_map is None else spec.label_map[raw_label]
            except (ValueError, KeyError) as err:
                if not layout.header and line_no == 1:
                    raise ValueError(
                        f"GLUE {spec.name} file {str(source)!r} line 1 has label "
                        f"{row[label_idx] if len(row) > label_idx else None!r}: expected one of "
                        f"{sorted(spec.label_map or {})}"
                    ) from err
                skipped += 1
                continue
            text_a.append(row[text_idx[0]])
            if len(text_idx) > 1:
                text_b.append(row[text_idx[1]])
            labels.append(label)
    if not labels:
        raise ValueError(f"GLUE {spec.name} file {str(source)!r} has no readable rows")
    if skipped:
        logger.warning("skipped %d malformed rows of %s", skipped, source)
    dtype = np.float32 if spec.is_regression else np.int64
    return TextSplit(
        task=spec.name,
        text_a=text_a,
        text_b=text_b if spec.is_pair else None,
        labels=np.asarray(labels, dtype=dtype),
    )


def _find_task_folder(root: Path, spec: GlueTask) -> Path:
    """The folder holding the task's TSV files, given the GLUE root or the task folder."""
    if (root / "train.tsv").is_file():
        return root
    candidate = root / spec.folder
    if candidate.is_dir():
        return candidate
    for child in root.iterdir():  # tolerate a different case, e.g. "sst-2"
        if child.is_dir() and child.name.lower() == spec.folder.lower():
            return child
    raise ValueError(
        f"{str(root)!r} is not a GLUE folder for {spec.name}: expected "
        f"{spec.folder}/train.tsv and {spec.folder}/{spec.dev_file} inside it, "
        "or train.tsv directly"
    )


def load_glue_tsv(path: str | Path, task: str | GlueTask) -> GlueSplits:
    """Load a task from a local folder in the official GLUE TSV layout.

    Parameters
    ----------
    path : str or pathlib.Path
        The GLUE root (holding ``SST-2/``, ``CoLA/``, ...) or the task folder.
    task : str or GlueTask
        The task.

    Returns
    -------
    GlueSplits
        ``train.tsv`` and the dev file (MNLI: ``dev_matched.tsv`` or
        ``dev_mismatched.tsv``).

    Raises
    ------
    FileNotFoundError
        If the folder or one of the two files does not exist.
    ValueError
        If the folder or a file is not in the task's layout.
    """
    spec = get_task(task)
    train_file, dev_file = glue_files(path, spec)
    train = read_glue_tsv(train_file, spec)
    dev = read_glue_tsv(dev_file, spec)
    logger.info(
        "loaded GLUE %s from %s: %d train, %d dev",
        spec.name,
        train_file.parent,
        len(train),
        len(dev),
    )
    return GlueSplits(task=spec, train=train, dev=dev)


def glue_files(path: str | Path, task: str | GlueTask) -> tuple[Path, Path]:
    """The training and the dev file of a task in a local GLUE folder (see :func:`load_glue_tsv`).

    Raises
    ------
    FileNotFoundError
        If the folder does not exist.
    ValueError
        If it is not a GLUE folder for the task.
    """
    spec = get_task(task)
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"GLUE folder {str(root)!r} does not exist")
    folder = _find_task_folder(root, spec)
    return folder / "train.tsv", folder / spec.dev_file


def embedded_sample_dir() -> Traversable:
    """Folder of the SST-2 sample shipped inside the package."""
    return files("fish_fl").joinpath("resources", "sst2_sample")


def _load_embedded(spec: GlueTask) -> GlueSplits:
    if spec.name != "sst2":
        raise ValueError(
            f"the embedded sample holds only sst2, not {spec.name!r}: use source='hub' or a "
            "local GLUE folder"
        )
    folder = embedded_sample_dir()
    return GlueSplits(
        task=spec,
        train=_read_sample(folder.joinpath("train.jsonl"), spec),
        dev=_read_sample(folder.joinpath("dev.jsonl"), spec),
    )


def _read_sample(source: Traversable, spec: GlueTask) -> TextSplit:
    """One JSON Lines file of the embedded sample: ``{"sentence", "label"}`` per line."""
    if not source.is_file():
        raise FileNotFoundError(f"embedded sample file {str(source)!r} does not exist")
    sentences, labels = [], []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            sentences.append(str(row["sentence"]))
            labels.append(int(row["label"]))
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{source}: line {number} is not a sample record") from None
    return TextSplit(spec.name, sentences, None, np.asarray(labels, dtype=np.int64))


def _hub_split(spec: GlueTask, data: Any) -> TextSplit:
    """Columns of one hub split, read through Arrow (row iteration is slow)."""
    table = data.with_format("arrow")
    missing = [c for c in (*spec.hub_text_columns, "label") if c not in data.column_names]
    if missing:
        raise ValueError(
            f"{GLUE_HUB_NAME}/{spec.hub_config} lacks columns {missing}: got {data.column_names}"
        )
    columns = spec.hub_text_columns
    dtype = np.float32 if spec.is_regression else np.int64
    return TextSplit(
        task=spec.name,
        text_a=table[columns[0]].to_pylist(),
        text_b=table[columns[1]].to_pylist() if spec.is_pair else None,
        labels=np.asarray(table["label"].to_numpy(), dtype=dtype),
    )


def load_glue_hub(task: str | GlueTask, cache_dir: str | Path | None = None) -> GlueSplits:
    """Load a task from the ``nyu-mll/glue`` data set on the hub.

    Parameters
    ----------
    task : str or GlueTask
        The task.
    cache_dir : str or pathlib.Path, optional
        ``datasets`` cache folder.

    Returns
    -------
    GlueSplits
        The hub's train split and the task's validation split.

    Raises
    ------
    DataUnavailableError
        If the hub cannot be reached (and, with ``HF_HUB_OFFLINE=1``, the
        data set is not cached either).
    """
    spec = get_task(task)
    forced_offline = any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    advice = (
        f"GLUE {spec.name} needs the hub ({GLUE_HUB_NAME}): be online, or pass a local GLUE "
        "folder in the official TSV layout"
        + (" (or source='embedded' for sst2)" if spec.name == "sst2" else "")
    )
    if not forced_offline and hub_offline():
        raise DataUnavailableError(f"the Hugging Face hub is unreachable; {advice}")
    from datasets import load_dataset

    try:
        data = load_dataset(
            GLUE_HUB_NAME,
            spec.hub_config,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    except (OSError, ConnectionError, ValueError) as err:
        raise DataUnavailableError(
            f"could not load {GLUE_HUB_NAME}/{spec.hub_config}; {advice}"
        ) from err
    return GlueSplits(
        task=spec,
        train=_hub_split(spec, data["train"]),
        dev=_hub_split(spec, data[spec.hub_eval_split]),
    )


def load_glue(
    task: str | GlueTask, source: str | Path = "hub", *, cache_dir: str | Path | None = None
) -> GlueSplits:
    """Load a GLUE task from the hub, the embedded sample or a local folder.

    Parameters
    ----------
    task : str or GlueTask
        One of :data:`GLUE_TASKS` (any spelling, see :func:`get_task`).
    source : str or pathlib.Path, default "hub"
        ``"hub"``, ``"embedded"`` (sst2 only) or a local GLUE folder.
    cache_dir : str or pathlib.Path, optional
        ``datasets`` cache folder of the hub route.

    Returns
    -------
    GlueSplits
        Train and held-out dev splits.

    Raises
    ------
    ValueError
        For an unknown task, a folder in the wrong layout, or ``"embedded"``
        with a task other than sst2.
    FileNotFoundError
        For a local folder or file that does not exist.
    DataUnavailableError
        For the hub route without network.
    """
    spec = get_task(task)
    if isinstance(source, str) and source.strip().lower() == "hub":
        return load_glue_hub(spec, cache_dir=cache_dir)
    if isinstance(source, str) and source.strip().lower() == "embedded":
        return _load_embedded(spec)
    return load_glue_tsv(source, spec)


# --------------------------------------------------------------------------- tokens


@dataclass(eq=False)
class TokenizedDataset(Dataset[tuple[dict[str, list[int]], float]]):
    """A tokenised split (no padding), optionally restricted to some rows.

    Items are ``(features, label)`` where ``features`` maps ``input_ids``
    (and ``token_type_ids`` when the tokenizer gives them) to token lists.
    The padding settings of the tokenizer travel with the data, so
    :func:`make_text_loader` needs no tokenizer.

    Attributes
    ----------
    features : dict of str to list of list of int
        Token lists of every example of the split.
    labels : numpy.ndarray
        int64 class ids or float32 scores.
    pad_token_id : int
        Padding id of ``input_ids``.
    pad_token_type_id : int, default 0
        Padding id of ``token_type_ids``.
    padding_side : {"right", "left"}, default "right"
        Where padding goes.
    rows : numpy.ndarray, optional
        Subset of examples exposed (all if None).
    """

    features: dict[str, list[list[int]]]
    labels: np.ndarray
    pad_token_id: int
    pad_token_type_id: int = 0
    padding_side: str = "right"
    rows: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        n = int(self.labels.shape[0])
        if self.rows is None:
            self.rows = np.arange(n, dtype=np.int64)
        else:
            self.rows = np.asarray(self.rows, dtype=np.int64)
            if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= n):
                raise ValueError(
                    f"indices must lie in [0, {n}), got [{self.rows.min()}, {self.rows.max()}]"
                )

    def __len__(self) -> int:
        assert self.rows is not None
        return int(self.rows.shape[0])

    def __getitem__(self, i: int) -> tuple[dict[str, list[int]], float]:
        assert self.rows is not None
        row = int(self.rows[i])
        return {k: v[row] for k, v in self.features.items()}, self.labels[row].item()

    @property
    def is_regression(self) -> bool:
        """True when labels are float scores."""
        return bool(np.issubdtype(self.labels.dtype, np.floating))

    def subset(self, indices: np.ndarray | Sequence[int]) -> TokenizedDataset:
        """The same tokens restricted to ``indices`` (rows of the full split).

        Parameters
        ----------
        indices : numpy.ndarray or sequence of int
            Row numbers of the full split (e.g. one client's partition).

        Returns
        -------
        TokenizedDataset
            A view sharing the token lists.
        """
        return TokenizedDataset(
            features=self.features,
            labels=self.labels,
            pad_token_id=self.pad_token_id,
            pad_token_type_id=self.pad_token_type_id,
            padding_side=self.padding_side,
            rows=np.asarray(indices, dtype=np.int64),
        )


def tokenize_split(
    split: TextSplit,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 128,
    chunk_size: int = 4096,
) -> TokenizedDataset:
    """Tokenise every example of a split once, truncating to ``max_length``.

    Parameters
    ----------
    split : TextSplit
        Single sentences or sentence pairs.
    tokenizer : transformers.PreTrainedTokenizerBase
        The model's tokenizer (see :func:`fish_fl.models.load_tokenizer`).
    max_length : int, default 128
        Maximum tokens per example, special tokens included (the paper: 128).
        Pairs are truncated longest-first.
    chunk_size : int, default 4096
        Examples per tokenizer call.

    Returns
    -------
    TokenizedDataset
        Token lists and labels; pairs carry ``token_type_ids`` 0 for the
        first segment and 1 for the second when the tokenizer uses them.

    Raises
    ------
    ValueError
        If ``max_length < 2`` or the tokenizer has no padding token.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no padding token: set tokenizer.pad_token"
        )
    keep = ["input_ids"]
    if "token_type_ids" in tokenizer.model_input_names:
        keep.append("token_type_ids")
    features: dict[str, list[list[int]]] = {k: [] for k in keep}
    for start in range(0, len(split), chunk_size):
        stop = start + chunk_size
        encoded = tokenizer(
            split.text_a[start:stop],
            split.text_b[start:stop] if split.text_b is not None else None,
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids="token_type_ids" in keep,
        )
        for k in keep:
            features[k].extend(encoded[k])
    return TokenizedDataset(
        features=features,
        labels=split.labels,
        pad_token_id=int(tokenizer.pad_token_id),
        pad_token_type_id=int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
        padding_side=str(getattr(tokenizer, "padding_side", "right")),
    )


class TextCollator:
    """Pad a list of tokenised examples to the longest one of the batch.

    Parameters
    ----------
    pad_token_id : int
        Padding id of ``input_ids``.
    pad_token_type_id : int, default 0
        Padding id of ``token_type_ids``.
    padding_side : {"right", "left"}, default "right"
        Where padding goes.
    regression : bool, default False
        Targets as float32 scores instead of int64 class ids.
    """

    def __init__(
        self,
        pad_token_id: int,
        pad_token_type_id: int = 0,
        padding_side: str = "right",
        regression: bool = False,
    ) -> None:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_values = {"input_ids": pad_token_id, "token_type_ids": pad_token_type_id}
        self.left = padding_side == "left"
        self.regression = regression

    def __call__(
        self, items: Sequence[tuple[Mapping[str, list[int]], float]]
    ) -> tuple[dict[str, Tensor], Tensor]:
        n = len(items)
        lengths = [len(f["input_ids"]) for f, _ in items]
        width = max(lengths, default=0)
        inputs: dict[str, Tensor] = {}
        for key in items[0][0] if items else ("input_ids",):
            inputs[key] = torch.full((n, width), self.pad_values.get(key, 0), dtype=torch.int64)
        mask = torch.zeros((n, width), dtype=torch.int64)
        for i, ((feats, _), length) in enumerate(zip(items, lengths, strict=True)):
            span = slice(width - length, width) if self.left else slice(0, length)
            for key, tensor in inputs.items():
                tensor[i, span] = torch.as_tensor(feats[key], dtype=torch.int64)
            mask[i, span] = 1
        ordered = {"input_ids": inputs.pop("input_ids"), "attention_mask": mask, **inputs}
        dtype = torch.float32 if self.regression else torch.int64
        targets = torch.tensor([label for _, label in items], dtype=dtype)
        return ordered, targets


def make_text_loader(
    dataset: TokenizedDataset,
    batch_size: int = 32,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader[tuple[dict[str, list[int]], float]]:
    """A DataLoader of dynamically padded ``(inputs, targets)`` batches.

    Parameters
    ----------
    dataset : TokenizedDataset
        From :func:`tokenize_split`, optionally ``.subset(indices)``.
    batch_size : int, default 32
        Examples per batch.
    train : bool
        Training loaders shuffle; evaluation loaders keep the order.
    generator : torch.Generator, optional
        Drives shuffling; required when ``train`` is True.
    drop_last : bool, default False
        Drop a last incomplete batch.
    num_workers : int, default 0
        Worker processes.

    Returns
    -------
    torch.utils.data.DataLoader
        Yields :data:`~fish_fl.data.batch.Batch` tuples.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if train and generator is None:
        raise ValueError("a training loader needs a torch.Generator (seeds are arguments)")
    collate = TextCollator(
        pad_token_id=dataset.pad_token_id,
        pad_token_type_id=dataset.pad_token_type_id,
        padding_side=dataset.padding_side,
        regression=dataset.is_regression,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        generator=generator if train else None,
        collate_fn=collate,
        drop_last=drop_last,
        num_workers=num_workers,
    )
