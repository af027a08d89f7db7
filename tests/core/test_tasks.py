"""The task registry and the user's own text data (``task=text-classification``)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fish_fl.config import ConfigError, RunConfig
from fish_fl.tasks import Task, register_task, task_entry, task_names

ROWS = [
    ("a quiet film", "the plot drifts", "sports"),
    ("great goals tonight", "the team won", "sports"),
    ("stocks fell", "markets slid", "business"),
    ("new phone released", "a faster chip", "tech"),
    ("rates rise again", "the bank decided", "business"),
    ("a chip shortage", "factories wait", "tech"),
]


def write_table(
    path: Path, rows: list[dict[str, Any]], *, header: bool = True, bom: bool = False
) -> Path:
    """Write ``rows`` in the format the suffix names (each writer by hand, no shared helper)."""
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
            writer = csv.writer(
                f,
                delimiter=delimiter,
                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
            )
            if header:
                writer.writerow(list(rows[0]))
            for row in rows:
                writer.writerow(list(row.values()))
    elif suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
        path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:  # pragma: no cover - a test's own mistake
        raise AssertionError(suffix)
    return path


def news(n: int = 6, pair: bool = False) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        a, b, label = ROWS[i % len(ROWS)]
        row: dict[str, Any] = {"text": f"{a} {i}"}
        if pair:
            row["second"] = b
        row["label"] = label
        out.append(row)
    return out


def config_for(train: Path, dev: Path, **keys: Any) -> RunConfig:
    return RunConfig.from_mapping(
        {"task": "text-classification", "train-file": str(train), "eval-file": str(dev), **keys}
    )


def load(config: RunConfig) -> Any:
    return task_entry(config.task).load(config)


# --------------------------------------------------------------------------- registry


def test_every_glue_task_and_cifar_are_entries() -> None:
    names = task_names()
    for name in (
        "cola",
        "sst2",
        "mrpc",
        "stsb",
        "qqp",
        "mnli",
        "mnli-mm",
        "qnli",
        "rte",
        "cifar10",
    ):
        assert name in names
    assert task_entry("SST-2").name == "sst2" and task_entry("MNLI_mismatched").name == "mnli-mm"
    assert task_entry("STS-B").label_space(RunConfig()).regression
    assert task_entry("cifar10").is_image and not task_entry("sst2").is_image


def test_unknown_task_fails_when_the_config_is_built() -> None:
    with pytest.raises(
        ConfigError, match=r"task='agnews' is not known; choose one of .*text-classification"
    ):
        RunConfig.from_mapping({"task": "agnews"})


def test_a_new_task_is_one_entry() -> None:
    class Tiny(Task):
        name = "tiny-test-task"
        aliases = ("tiny",)

    entry = register_task(Tiny())
    assert task_entry("TINY") is entry
    with pytest.raises(ValueError, match="already taken"):

        class Other(Task):
            name = "other-test-task"
            aliases = ("tiny",)

        register_task(Other())


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_format_reads_the_same_split(tmp_path: Path, suffix: str) -> None:
    rows = news(6, pair=True)
    train = write_table(tmp_path / f"train{suffix}", rows)
    dev = write_table(tmp_path / f"dev{suffix}", rows[:3])
    config = config_for(train, dev, **{"text-pair-column": "second"})
    splits = load(config)
    # The label set is the training file's, sorted; ids index into it.
    assert splits.labels.names == ("business", "sports", "tech")
    expected = [("business", "sports", "tech").index(r["label"]) for r in rows]
    assert splits.train.labels.tolist() == expected and splits.train.labels.dtype == np.int64
    assert splits.train.text_a == [r["text"] for r in rows]
    assert splits.train.text_b == [r["second"] for r in rows]
    assert splits.held_out.labels.tolist() == expected[:3]
    assert task_entry("text-classification").metric_task(config) == "classification"


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path, suffix: str) -> None:
    rows = news(6)
    train = write_table(tmp_path / f"train{suffix}", rows, bom=True)
    assert train.read_bytes().startswith(b"\xef\xbb\xbf")
    splits = load(config_for(train, train))
    assert splits.train.text_a[0] == rows[0]["text"]


def test_headerless_files_name_columns_by_position(tmp_path: Path) -> None:
    rows = news(6)
    train = write_table(tmp_path / "train.tsv", rows, header=False)
    config = config_for(train, train, header=False, **{"text-column": "0", "label-column": "1"})
    splits = load(config)
    assert splits.train.text_a == [r["text"] for r in rows]  # the first row is data, not a header
    assert splits.labels.names == ("business", "sports", "tech")


def test_integer_labels_keep_their_order_and_float_labels_mean_regression(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": v} for i, v in enumerate([10, 2, 33, 2, 10, 33])]
    ints = write_table(tmp_path / "ints.csv", rows)
    splits = load(config_for(ints, ints))
    assert splits.labels.names == ("2", "10", "33")  # by value, not as strings
    assert splits.train.labels.tolist() == [1, 0, 2, 0, 1, 2]
    scores = [{"text": f"t{i}", "label": v} for i, v in enumerate([0.5, 4.25, 3.0, 1.75])]
    floats = write_table(tmp_path / "scores.jsonl", scores)
    config = config_for(floats, floats)
    splits = load(config)
    assert splits.labels.regression and splits.labels.num_labels == 1
    assert splits.train.labels.dtype == np.float32
    np.testing.assert_array_equal(splits.train.labels, [0.5, 4.25, 3.0, 1.75])
    assert task_entry(config.task).metric_task(config) == "regression"
    # label-type=classes overrides the float column
    forced = load(config_for(floats, floats, **{"label-type": "classes"}))
    assert forced.labels.names == ("0.5", "1.75", "3.0", "4.25")


def test_regression_metrics_are_pearson_and_spearman() -> None:
    from fish_fl.metrics import primary_metric, task_metrics

    preds = np.array([1.0, 2.0, 3.0, 5.0])
    labels = np.array([1.0, 2.0, 3.5, 4.0])
    got = task_metrics("regression", preds, labels)
    r = float(np.corrcoef(preds, labels)[0, 1])
    assert got["pearson"] == pytest.approx(r) and got["spearman"] == pytest.approx(1.0)
    assert primary_metric("regression") == "pearson_spearman_mean"


def test_the_natural_partition_column_is_read_with_the_training_file(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": i % 2, "user": f"u{i % 3}"} for i in range(9)]
    train = write_table(tmp_path / "train.csv", rows)
    config = config_for(
        train, train, partition="natural", **{"partition-column": "user", "num-clients": 3}
    )
    splits = load(config)
    assert splits.groups is not None and splits.groups.tolist() == [r["user"] for r in rows]


# --------------------------------------------------------------------------- errors


def _preflight_error(config: RunConfig) -> str:
    from fish_fl.preflight import PreflightError, preflight

    t0 = time.monotonic()
    with pytest.raises(PreflightError) as info:
        preflight(config)
    assert time.monotonic() - t0 < 10
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    rows = news(6)
    dev = write_table(tmp_path / "dev.csv", rows)
    assert "train-file=" in _preflight_error(config_for(tmp_path / "nope.csv", dev))
    assert "does not exist" in _preflight_error(config_for(tmp_path / "nope.csv", dev))
    odd = tmp_path / "train.xlsx"
    odd.write_bytes(b"PK")
    assert "unknown format" in _preflight_error(config_for(odd, dev))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    assert "cannot be read as parquet" in _preflight_error(config_for(broken, dev))
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n", encoding="utf-8")
    assert "holds no rows" in _preflight_error(config_for(empty, dev))


def test_missing_columns_name_the_file_the_columns_found_and_asked_for(tmp_path: Path) -> None:
    rows = [{"sentence": r["text"], "sentiment": r["label"]} for r in news(6)]
    train = write_table(tmp_path / "train.csv", rows)
    message = _preflight_error(config_for(train, train))
    assert str(train) in message
    assert "text-column='text'" in message and "label-column='label'" in message
    assert "['sentence', 'sentiment']" in message


def test_an_evaluation_label_unseen_in_training_is_named(tmp_path: Path) -> None:
    train = write_table(tmp_path / "train.csv", news(6))
    dev = write_table(tmp_path / "dev.csv", [{"text": "x", "label": "weather"}])
    message = _preflight_error(config_for(train, dev))
    assert (
        "eval-file=" in message and "'weather'" in message and "business, sports, tech" in message
    )


def test_labels_that_do_not_parse(tmp_path: Path) -> None:
    rows = [
        {"text": f"t{i}", "label": v} for i, v in enumerate(["0.5", "1.5", "2.5", "oops", "3.5"])
    ]
    train = write_table(tmp_path / "train.csv", rows)
    assert "label 'oops' does not parse as a number" in _preflight_error(config_for(train, train))
    forced = config_for(train, train, **{"label-type": "regression"})
    assert "label 'oops' does not parse as a number" in _preflight_error(forced)
    one = write_table(
        tmp_path / "one.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}]
    )
    assert "one value only" in _preflight_error(config_for(one, one))


def test_more_clients_than_examples(tmp_path: Path) -> None:
    train = write_table(tmp_path / "train.csv", news(6))
    config = config_for(train, train, **{"num-clients": 7, "fisher-samples": 1})
    assert "num-clients=7 exceeds the 5 training examples" in _preflight_error(config)


def test_a_bom_in_an_official_glue_file_loads(tmp_path: Path) -> None:
    """The official MRPC files begin with a byte-order mark before ``Quality``."""
    from fish_fl.data.glue import read_glue_tsv

    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    body = "1\t1\t2\tHe said so.\tHe did say so.\n0\t3\t4\tA cat.\tA dog.\n"
    path = tmp_path / "train.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + (header + body).encode())
    split = read_glue_tsv(path, "mrpc")
    assert split.labels.tolist() == [1, 0] and split.text_b == ["He did say so.", "A dog."]


def test_a_natural_column_with_another_number_of_values_than_clients(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": i % 2, "user": f"u{i % 3}"} for i in range(30)]
    train = write_table(tmp_path / "train.csv", rows)
    keys = {"partition": "natural", "partition-column": "user", "fisher-samples": 4}
    message = _preflight_error(config_for(train, train, **keys, **{"num-clients": 2}))
    assert "3 distinct values" in message and "num-clients=3" in message
    missing = _preflight_error(config_for(train, train, **{**keys, "partition-column": "site"}))
    assert "partition-column='site'" in missing


def test_the_documented_task_example_runs(tmp_path: Path) -> None:
    """docs/data.md's "Adding a data set" entry, executed as written there."""
    import re

    from fish_fl.task import load_task_data
    from fish_fl.tasks import text_files  # noqa: F401  (the registry's own entries first)

    doc = (Path(__file__).parents[2] / "docs" / "data.md").read_text()
    section = doc[doc.index("### Adding a data set") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    classes = ("business", "sci/tech", "sports", "world")
    for name, n in (("train.tsv", 40), ("test.tsv", 8)):
        lines = [f"news item {i}\t{classes[i % 4]}" for i in range(n)]
        (tmp_path / name).write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    namespace: dict[str, Any] = {}
    from fish_fl import tasks

    try:
        exec(compile(code.group(1), "docs/data.md", "exec"), namespace)
        config = RunConfig.from_mapping(
            {
                "task": "ag-news",
                "data-source": "local",
                "data-dir": str(tmp_path),
                "num-clients": 2,
                "fisher-samples": 8,
            }
        )
        data = load_task_data(config)
        assert data.labels.names == classes and data.metric_task == "classification"
        assert sorted(data.train_labels.tolist()) == sorted(i % 4 for i in range(40))
        assert sum(data.partitions.sizes()) == 40 - 8
        config = RunConfig.from_mapping(
            {"task": "agnews", "data-source": "local", "data-dir": str(tmp_path / "x")}
        )
        assert "lacks train.tsv" in _preflight_error(config)
    finally:
        tasks._TASKS.pop("agnews", None)
        tasks._ALIASES.pop("agnews", None)


def test_a_hub_data_set_offline_fails_at_once_naming_it_and_the_local_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = RunConfig.from_mapping(
        {"task": "text-classification", "data-source": "hub", "hub-dataset": "fancyzhx/ag_news"}
    )
    message = _preflight_error(config)
    assert "hub-dataset='fancyzhx/ag_news'" in message and "unreachable" in message
    assert "docs/data.md" in message
