"""Client partitions (flwr-datasets) and the server's calibration split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fish_fl.data.partition import (
    PARTITION_SCHEMES,
    TV_WARNING,
    class_ids,
    label_histograms,
    make_client_partitions,
    mean_tv_distance,
    partition_indices,
    partition_report,
    partition_summary,
    split_calibration,
)

LABELS = np.repeat(np.arange(10), 300)  # 3,000 examples, 10 balanced classes


def assert_disjoint_cover(parts: list[np.ndarray], expected: np.ndarray) -> None:
    joined = np.concatenate(parts)
    assert joined.shape[0] == np.unique(joined).shape[0], "partitions overlap"
    np.testing.assert_array_equal(np.sort(joined), np.sort(expected))
    for p in parts:
        assert p.dtype == np.int64
        np.testing.assert_array_equal(p, np.sort(p))


@pytest.mark.parametrize(
    "scheme", ["iid", "dirichlet", "pathological", "linear", "square", "exponential"]
)
def test_disjoint_cover_and_reproducible(scheme: str) -> None:
    parts = partition_indices(LABELS, 7, scheme=scheme, alpha=0.5, seed=3, classes_per_client=4)
    assert len(parts) == 7
    assert_disjoint_cover(parts, np.arange(LABELS.size))
    again = partition_indices(LABELS, 7, scheme=scheme, alpha=0.5, seed=3, classes_per_client=4)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(LABELS, 7, scheme=scheme, alpha=0.5, seed=4, classes_per_client=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_scheme_list() -> None:
    assert PARTITION_SCHEMES == (
        "iid",
        "dirichlet",
        "natural",
        "pathological",
        "linear",
        "square",
        "exponential",
    )


GROUPS = np.array(["bob", 7, "alice", "bob", 7, "carol", "alice", 10, "bob", 10], dtype=object)


def test_natural_split_matches_hand_grouping() -> None:
    labels = np.zeros(GROUPS.size, dtype=np.int64)
    parts = partition_indices(labels, 5, scheme="natural", groups=GROUPS)
    assert_disjoint_cover(parts, np.arange(GROUPS.size))
    # distinct values sorted as strings: "10" < "7" < "alice" < "bob" < "carol"
    expected = [[7, 9], [1, 4], [2, 6], [0, 3, 8], [5]]
    assert [p.tolist() for p in parts] == expected
    # the seed plays no part
    again = partition_indices(labels, 5, scheme="natural", groups=GROUPS, seed=99)
    assert [p.tolist() for p in again] == expected


def test_natural_split_errors() -> None:
    labels = np.zeros(GROUPS.size, dtype=np.int64)
    with pytest.raises(ValueError, match="has 5 distinct values; set num-clients=5"):
        partition_indices(labels, 4, scheme="natural", groups=GROUPS)
    with pytest.raises(ValueError, match="needs a group column"):
        partition_indices(labels, 5, scheme="natural")
    with pytest.raises(ValueError, match="groups has 9 values but there are 10 labels"):
        partition_indices(labels, 5, scheme="natural", groups=GROUPS[:9])
    with pytest.raises(ValueError, match="min_partition_size=2"):
        partition_indices(labels, 5, scheme="natural", groups=GROUPS, min_partition_size=2)


def test_natural_client_partitions_and_names() -> None:
    groups = np.repeat([f"user{i:02d}" for i in range(6)], 50)
    labels = np.tile([0, 1], 150)
    result = make_client_partitions(
        labels, 6, scheme="natural", groups=groups, seed=0, calibration_size=30
    )
    assert result.names == [f"user{i:02d}" for i in range(6)]
    assert_disjoint_cover([*result.clients, result.calibration], np.arange(300))
    for name, client in zip(result.names, result.clients, strict=True):
        assert set(groups[client]) == {name}
        assert not set(client) & set(result.calibration)
    summary = result.summary(labels)
    assert summary["client_names"] == result.names
    assert summary["single_class_clients"] == [] and summary["warnings"] == []
    assert "client_names" not in make_client_partitions(labels, 6).summary(labels)
    assert make_client_partitions(labels, 6).names is None


def test_natural_calibration_takes_a_whole_group() -> None:
    groups = np.array(["a"] * 50 + ["b"] * 50 + ["c"])
    labels = np.zeros(groups.size, dtype=np.int64)
    # find a seed whose calibration draw takes the lone "c" row
    seed = next(s for s in range(100) if 100 in split_calibration(101, 20, _calibration_seed(s))[0])
    with pytest.raises(ValueError, match="leaving 2 distinct groups, fewer than the 3 clients"):
        make_client_partitions(
            labels, 3, scheme="natural", groups=groups, seed=seed, calibration_size=20
        )
    # the two groups left are fine for two clients
    result = make_client_partitions(
        labels, 2, scheme="natural", groups=groups, seed=seed, calibration_size=20
    )
    assert result.names == ["a", "b"]


def _calibration_seed(seed: int) -> int:
    calib_seq, _ = np.random.SeedSequence(seed).spawn(2)
    return int(calib_seq.generate_state(1)[0])


def test_pathological_gives_exactly_k_classes() -> None:
    for k in (1, 2, 3):
        parts = partition_indices(LABELS, 10, scheme="pathological", seed=0, classes_per_client=k)
        assert_disjoint_cover(parts, np.arange(LABELS.size))
        hist = label_histograms(LABELS, parts)
        assert ((hist > 0).sum(axis=1) == k).all(), hist
        # each class is shared evenly by the clients that hold it
        for column in hist.T:
            held = column[column > 0]
            assert held.max() - held.min() <= 1
    a = partition_indices(LABELS, 10, scheme="pathological", seed=5)
    b = partition_indices(LABELS, 10, scheme="pathological", seed=5)
    c = partition_indices(LABELS, 10, scheme="pathological", seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(label_histograms(LABELS, a), label_histograms(LABELS, c))


def test_pathological_errors() -> None:
    with pytest.raises(ValueError, match=r"classes_per_client must lie in \[1, 10\].*got 11"):
        partition_indices(LABELS, 10, scheme="pathological", classes_per_client=11)
    with pytest.raises(ValueError, match=r"classes_per_client must lie in \[1, 10\].*got 0"):
        partition_indices(LABELS, 10, scheme="pathological", classes_per_client=0)
    with pytest.raises(ValueError, match="cover at most 6 of the 10 classes"):
        partition_indices(LABELS, 5, scheme="pathological", classes_per_client=2)
    with pytest.raises(ValueError, match="fewer examples than clients"):
        partition_indices(np.array([0, 0, 0, 1]), 3, scheme="pathological", classes_per_client=2)


def test_size_skewed_schemes() -> None:
    sizes = {
        scheme: [len(p) for p in partition_indices(LABELS, 6, scheme=scheme, seed=1)]
        for scheme in ("linear", "square", "exponential")
    }
    for scheme, s in sizes.items():
        assert sum(s) == LABELS.size
        assert all(a < b for a, b in zip(s, s[1:], strict=False)), (scheme, s)
    # linear: proportional to 1..6
    assert sizes["linear"][-1] / sizes["linear"][0] == pytest.approx(6, rel=0.05)
    assert sizes["square"][-1] / sizes["square"][0] == pytest.approx(36, rel=0.1)
    ratio = {k: s[-1] / s[0] for k, s in sizes.items()}
    assert ratio["exponential"] > 10 * ratio["linear"], ratio
    # shuffled first: the largest client is not a block of the sorted file
    parts = partition_indices(LABELS, 6, scheme="linear", seed=1)
    assert (label_histograms(LABELS, parts) > 0).all()
    with pytest.raises(ValueError, match="partition=exponential.*use fewer clients"):
        partition_indices(LABELS, 12, scheme="exponential")


def test_iid_shards_are_equal_and_mixed() -> None:
    parts = partition_indices(LABELS, 7, scheme="iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == LABELS.size
    # a shuffle, not contiguous blocks: every shard sees every class
    assert (label_histograms(LABELS, parts) > 0).all()
    assert mean_tv_distance(LABELS, parts) < 0.1


@pytest.mark.parametrize(("n", "parts"), [(100, 7), (4000, 1000), (5, 5), (10, 1)])
def test_iid_equals_flwr_datasets_iid_partitioner(n: int, parts: int) -> None:
    """The direct IID split is IidPartitioner's, shard for shard, on the same shuffle."""
    from datasets import Dataset
    from flwr_datasets.partitioner import IidPartitioner

    order = np.random.default_rng(3).permutation(n)
    partitioner = IidPartitioner(num_partitions=parts)
    partitioner.dataset = Dataset.from_dict({"index": order})
    ours = partition_indices(np.zeros(n, dtype=int), parts, scheme="iid", seed=3)
    for i, mine in enumerate(ours):
        theirs = np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64))
        assert mine.dtype == np.int64 and np.array_equal(mine, theirs), i


def test_numpy_generator_seed() -> None:
    a = partition_indices(LABELS, 4, seed=np.random.default_rng(9))
    b = partition_indices(LABELS, 4, seed=np.random.default_rng(9))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    def skew(alpha: float) -> float:
        return float(
            np.mean(
                [
                    mean_tv_distance(
                        LABELS,
                        partition_indices(
                            LABELS, 10, "dirichlet", alpha=alpha, seed=s, min_partition_size=0
                        ),
                    )
                    for s in range(3)
                ]
            )
        )

    tv = [skew(a) for a in (100.0, 1.0, 0.1)]
    assert tv[0] < tv[1] < tv[2], tv
    assert tv[0] < 0.1 and tv[2] > 0.5, tv


def test_mean_tv_distance_by_hand() -> None:
    labels = np.array([0, 0, 1, 1])
    assert mean_tv_distance(labels, [np.array([0, 2]), np.array([1, 3])]) == 0.0
    # one class per client against a 50/50 global mix: distance 0.5 each
    assert mean_tv_distance(labels, [np.array([0, 1]), np.array([2, 3])]) == pytest.approx(0.5)


def test_histograms_and_summary() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    parts = [np.array([0, 1]), np.array([2, 3, 4, 5])]
    hist = label_histograms(labels, parts)
    np.testing.assert_array_equal(hist, [[1, 1, 0], [0, 1, 3]])
    assert label_histograms(labels, parts, num_classes=5).shape == (2, 5)
    summary = partition_summary(labels, parts)
    assert summary["sizes"] == [2, 4]
    assert summary["histograms"] == [[1, 1, 0], [0, 1, 3]]
    assert 0.0 < summary["mean_tv_distance"] < 1.0


def test_float_labels_are_binned() -> None:
    ids, k = class_ids(np.array([0.0, 0.4, 2.6, 5.0], dtype=np.float32))
    np.testing.assert_array_equal(ids, [0, 0, 3, 5])
    assert k == 6
    scores = np.random.default_rng(0).uniform(0, 5, 500).astype(np.float32)
    parts = partition_indices(scores, 5, scheme="dirichlet", alpha=1.0, seed=0)
    assert_disjoint_cover(parts, np.arange(500))


def test_calibration_split() -> None:
    calib, rest = split_calibration(100, 16, seed=1)
    assert calib.shape == (16,) and rest.shape == (84,)
    assert_disjoint_cover([calib, rest], np.arange(100))
    again, _ = split_calibration(100, 16, seed=1)
    np.testing.assert_array_equal(calib, again)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_client_partitions_exclude_calibration(scheme: str) -> None:
    result = make_client_partitions(
        LABELS, 5, scheme=scheme, alpha=1.0, seed=2, calibration_size=256
    )
    assert result.num_clients == 5 and result.calibration.shape == (256,)
    assert_disjoint_cover([*result.clients, result.calibration], np.arange(LABELS.size))
    assert sum(result.sizes()) == LABELS.size - 256
    np.testing.assert_array_equal(result.histograms(LABELS).sum(axis=1), result.sizes())
    summary = result.summary(LABELS)
    assert summary["calibration_size"] == 256 and summary["sizes"] == result.sizes()
    again = make_client_partitions(
        LABELS, 5, scheme=scheme, alpha=1.0, seed=2, calibration_size=256
    )
    np.testing.assert_array_equal(result.calibration, again.calibration)
    assert all(np.array_equal(a, b) for a, b in zip(result.clients, again.clients, strict=True))


def test_client_partitions_may_share_calibration() -> None:
    result = make_client_partitions(
        LABELS, 4, seed=0, calibration_size=100, exclude_calibration=False
    )
    assert_disjoint_cover(result.clients, np.arange(LABELS.size))
    assert result.calibration.shape == (100,)


def test_real_cifar_labels(shared_data: Path) -> None:
    with np.load(shared_data / "cifar10" / "cifar10_subset.npz") as data:
        labels = data["y_train"]
    result = make_client_partitions(
        labels, 10, scheme="dirichlet", alpha=0.5, seed=0, calibration_size=512
    )
    assert_disjoint_cover([*result.clients, result.calibration], np.arange(10_000))
    assert min(result.sizes()) >= 1


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="cannot split 3 examples among 4 clients"):
        partition_indices([0, 1, 0], 4)
    with pytest.raises(ValueError, match="Dirichlet alpha must be > 0, got 0.0"):
        partition_indices(LABELS, 3, scheme="dirichlet", alpha=0.0)
    with pytest.raises(ValueError, match="Dirichlet alpha must be > 0, got -1"):
        partition_indices(LABELS, 3, scheme="dirichlet", alpha=-1)
    with pytest.raises(ValueError, match="unknown partition scheme 'shards'"):
        partition_indices(LABELS, 3, scheme="shards")
    with pytest.raises(ValueError, match="num_partitions must be >= 1, got 0"):
        partition_indices(LABELS, 0)
    with pytest.raises(ValueError, match="min_partition_size=2000"):
        partition_indices(LABELS, 2, min_partition_size=2000)
    with pytest.raises(ValueError, match="raise alpha or lower min_partition_size"):
        partition_indices(LABELS, 10, scheme="dirichlet", alpha=0.01, min_partition_size=290)
    with pytest.raises(ValueError, match=r"calibration_size must lie in \[0, 3000\]"):
        make_client_partitions(LABELS, 2, calibration_size=3001)
    with pytest.raises(ValueError, match="after 2998 for calibration"):
        make_client_partitions(LABELS, 3, calibration_size=2998)
    with pytest.raises(ValueError, match="seed must be"):
        partition_indices(LABELS, 2, seed=-1)
    with pytest.raises(ValueError, match="one-dimensional"):
        partition_indices(np.zeros((4, 2)), 2)


def test_report_lines_are_capped() -> None:
    parts = partition_indices(LABELS, 25, seed=0)
    report = partition_report(LABELS, parts)
    assert len(report.lines) == 21
    assert all(line.startswith(f"client {i}: ") for i, line in enumerate(report.lines[:20]))
    sizes = [len(p) for p in parts][20:]
    assert report.lines[-1] == (
        f"... and 5 more clients: sizes {min(sizes)} to {max(sizes)} "
        f"(median {int(np.median(sizes))})"
    )
    assert report.warnings == []
    assert len(partition_report(LABELS, parts, max_lines=30).lines) == 25


def test_report_line_format() -> None:
    labels = np.array([0] * 602 + [1] * 602 + [1] * 3)
    parts = [np.arange(1204), np.arange(1204, 1207)]
    report = partition_report(
        labels, parts, label_names=["negative", "positive"], client_names=["x", "y"]
    )
    assert report.lines == [
        "client x: 1,204 examples  negative 602  positive 602",
        "client y: 3 examples  positive 3",
    ]
    assert partition_report(labels, parts).lines[1] == "client 1: 3 examples  #1 3"


def test_report_single_class_warning() -> None:
    labels = np.array([0, 1, 0, 1, 1, 1, 0, 0])
    parts = [np.array([0, 1]), np.array([4, 5]), np.array([2, 3]), np.array([6, 7])]
    report = partition_report(labels, parts)
    assert report.single_class_clients == [1, 3]
    single = [w for w in report.warnings if "single class" in w]
    assert len(single) == 1 and "2 of 4 clients" in single[0] and "client 1, 3" in single[0]
    many = partition_report(np.repeat([0, 1], 8), [np.array([i]) for i in range(16)])
    assert (
        "16 of 16 clients" in many.warnings[0] and "0, 1, 2, 3, 4 and 11 more" in (many.warnings[0])
    )
    assert many.as_dict()["single_class_clients"] == list(range(16))


def test_report_tv_warning() -> None:
    labels = np.repeat([0, 1], 200)
    skewed = partition_indices(labels, 4, "dirichlet", alpha=0.1, seed=0, min_partition_size=0)
    report = partition_report(labels, skewed)
    assert report.mean_tv_distance is not None and report.mean_tv_distance > TV_WARNING
    assert any("exceeds 0.3: the split is strongly non-IID" in w for w in report.warnings)
    iid = partition_report(labels, partition_indices(labels, 4, "iid", seed=0))
    assert iid.warnings == [] and iid.single_class_clients == []


def test_report_tv_by_hand() -> None:
    # global 6:2; client 0 holds [0, 0, 0, 1] (distance 0), client 1 [0, 0, 0, 1]
    # (0); then a split with client 0 = [0, 0, 0, 0], client 1 = [0, 0, 1, 1]:
    # |1 - .75| + |0 - .25| = .5 -> 0.25; |.5 - .75| + |.5 - .25| = .5 -> 0.25
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    even = partition_report(labels, [np.array([0, 1, 2, 6]), np.array([3, 4, 5, 7])])
    assert even.mean_tv_distance == pytest.approx(0.0) and even.warnings == []
    uneven = partition_report(labels, [np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7])])
    assert uneven.mean_tv_distance == pytest.approx(0.25)
    assert uneven.single_class_clients == [0]
    assert not any("total-variation" in w for w in uneven.warnings)
    # one class per client against a 50/50 mix: 0.5 > 0.3
    halves = partition_report(np.array([0, 0, 1, 1]), [np.array([0, 1]), np.array([2, 3])])
    assert halves.mean_tv_distance == pytest.approx(0.5)
    assert halves.warnings[-1] == (
        "mean total-variation distance 0.50 between client and global label distributions "
        "exceeds 0.3: the split is strongly non-IID"
    )
    assert halves.as_dict() == {
        "sizes": [2, 2],
        "histograms": [[2, 0], [0, 2]],
        "mean_tv_distance": pytest.approx(0.5),
        "single_class_clients": [0, 1],
        "warnings": halves.warnings,
    }


def test_report_regression_labels() -> None:
    scores = np.random.default_rng(0).uniform(0, 5, 300).astype(np.float32)
    parts = partition_indices(scores, 4, "linear", seed=0)
    report = partition_report(scores, parts, max_lines=2)
    assert report.lines[:2] == [f"client {i}: {len(parts[i])} examples" for i in range(2)]
    assert report.lines[2].startswith("... and 2 more clients")
    assert report.warnings == [] and report.single_class_clients == []
    assert report.as_dict()["histograms"] is None and report.mean_tv_distance is None
    # even a client of one score is no single-class warning
    assert (
        partition_report(np.array([1.0, 1.0, 2.0]), [np.array([0, 1]), np.array([2])]).warnings
        == []
    )
