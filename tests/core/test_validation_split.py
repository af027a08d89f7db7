"""The validation split carved from the training data (``validation-examples``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fish_fl.config import ConfigError, RunConfig
from fish_fl.data.partition import make_client_partitions
from fish_fl.task import check_calibration, load_task_data
from tests.flower_harness import tiny_vision_config

LABELS = np.repeat(np.arange(4), 250)  # 1,000 examples, 4 balanced classes


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_validation_is_disjoint_from_calibration_and_every_client(scheme: str) -> None:
    with_val = make_client_partitions(
        LABELS, 3, scheme=scheme, seed=7, calibration_size=64, validation_size=100
    )
    without = make_client_partitions(LABELS, 3, scheme=scheme, seed=7, calibration_size=64)
    val = with_val.validation
    assert val.shape == (100,) and val.dtype == np.int64
    np.testing.assert_array_equal(val, np.sort(val))
    assert np.unique(val).shape == (100,)
    assert not np.intersect1d(val, with_val.calibration).size
    for client in with_val.clients:
        assert not np.intersect1d(val, client).size
    # The calibration sample does not depend on the validation split.
    np.testing.assert_array_equal(with_val.calibration, without.calibration)
    # Calibration, validation and clients cover the split exactly once.
    joined = np.concatenate([with_val.calibration, val, *with_val.clients])
    np.testing.assert_array_equal(np.sort(joined), np.arange(1000))
    # The clients hold exactly 100 fewer examples in all.
    assert sum(with_val.sizes()) == sum(without.sizes()) - 100 == 1000 - 64 - 100
    assert without.validation.shape == (0,)
    assert "validation_size" not in without.summary(LABELS)
    assert with_val.summary(LABELS)["validation_size"] == 100


def test_validation_is_seeded() -> None:
    def draw(seed: int) -> np.ndarray:
        parts = make_client_partitions(
            LABELS, 2, seed=seed, calibration_size=32, validation_size=50
        )
        return parts.validation

    np.testing.assert_array_equal(draw(3), draw(3))
    assert not np.array_equal(draw(3), draw(4))


def test_validation_too_large_for_the_clients() -> None:
    with pytest.raises(ValueError, match=r"validation_size must lie in \[0, 968\]"):
        make_client_partitions(LABELS, 2, calibration_size=32, validation_size=969)
    with pytest.raises(ValueError, match="after 32 for calibration, 967 for validation"):
        make_client_partitions(LABELS, 2, calibration_size=32, validation_size=967)


def test_config_refuses_a_validation_split_that_leaves_a_client_empty() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^validation-examples=99 leaves 1 of train-examples=200 after fisher-samples=100 "
        r"for num-clients=2: every client needs at least one$",
    ):
        RunConfig.from_mapping(
            {"train-examples": 200, "fisher-samples": 100, "validation-examples": 99}
        )
    RunConfig.from_mapping(
        {"train-examples": 200, "fisher-samples": 100, "validation-examples": 98}
    )
    with pytest.raises(ConfigError, match="validation-examples=-1 must be >= 0"):
        RunConfig.from_mapping({"validation-examples": -1})
    # Against the data's own size (when train-examples is 0: all of it).
    config = RunConfig.from_mapping({"fisher-samples": 10, "validation-examples": 50})
    assert check_calibration(config, 62) == 10
    with pytest.raises(
        ConfigError, match=r"leaves 1 of the 61 training examples and the 10 of the calibration"
    ):
        check_calibration(config, 61)


def _digests(images: np.ndarray) -> set[str]:
    return {hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest() for x in images}


def test_task_data_validation_split(shared_data: Path) -> None:
    off = load_task_data(tiny_vision_config(shared_data))
    on_config = tiny_vision_config(shared_data, **{"validation-examples": 40})
    on = load_task_data(on_config)
    again = load_task_data(on_config)
    np.testing.assert_array_equal(on.partitions.validation, again.partitions.validation)
    val = on.partitions.validation
    assert val.shape == (40,)
    # The training rows and the held-out split are the same with the key on or off.
    np.testing.assert_array_equal(on.train_labels, off.train_labels)
    np.testing.assert_array_equal(on.partitions.calibration, off.partitions.calibration)
    assert sum(on.partitions.sizes()) == sum(off.partitions.sizes()) - 40
    for pid in range(on.partitions.num_clients):
        assert not np.intersect1d(val, on.partitions.clients[pid]).size
    # The loader serves exactly those training rows, unaugmented, in order.
    labels = np.concatenate([np.asarray(y) for _, y in on.validation_loader()])
    np.testing.assert_array_equal(labels, on.train_labels[val])
    # No validation image is a held-out (dev) image.
    assert not _digests(on.train.images[val]) & _digests(on.held_out.images)
    with pytest.raises(ValueError, match="no validation split"):
        off.validation_loader()
