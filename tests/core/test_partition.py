"""Client partitions (flwr-datasets) and the server's calibration split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fish_fl.data.partition import (
    class_ids,
    label_histograms,
    make_client_partitions,
    mean_tv_distance,
    partition_indices,
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


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_disjoint_cover_and_reproducible(scheme: str) -> None:
    parts = partition_indices(LABELS, 7, scheme=scheme, alpha=0.5, seed=3)
    assert len(parts) == 7
    assert_disjoint_cover(parts, np.arange(LABELS.size))
    again = partition_indices(LABELS, 7, scheme=scheme, alpha=0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(LABELS, 7, scheme=scheme, alpha=0.5, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_shards_are_equal_and_mixed() -> None:
    parts = partition_indices(LABELS, 7, scheme="iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == LABELS.size
    # a shuffle, not contiguous blocks: every shard sees every class
    assert (label_histograms(LABELS, parts) > 0).all()
    assert mean_tv_distance(LABELS, parts) < 0.1


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
