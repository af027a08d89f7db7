"""Task metrics against hand-computed values and written-out formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fish_fl.metrics import (
    accuracy,
    f1_binary,
    glue_average,
    glue_score,
    matthews_corrcoef,
    pearson,
    predictions_from_outputs,
    primary_metric,
    rankdata,
    spearman,
    task_metrics,
)

# preds vs labels: TP = 2 (idx 0, 4), TN = 1 (idx 2), FP = 1 (idx 1), FN = 1 (idx 3)
PREDS = [1, 1, 0, 0, 1]
LABELS = [1, 0, 0, 1, 1]


def test_accuracy_by_hand() -> None:
    assert accuracy(PREDS, LABELS) == pytest.approx(3 / 5)
    assert accuracy([2, 1, 0], [2, 1, 0]) == 1.0


def test_f1_by_hand() -> None:
    # 2 TP / (2 TP + FP + FN) = 4 / 6
    assert f1_binary(PREDS, LABELS) == pytest.approx(4 / 6)
    # positive class 0: TP = 1, FP = 1, FN = 1 -> 2 / 4
    assert f1_binary(PREDS, LABELS, positive=0) == pytest.approx(2 / 4)
    assert f1_binary([0, 0], [0, 0]) == 0.0


def test_matthews_by_hand() -> None:
    # (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3 * 3 * 2 * 2)
    assert matthews_corrcoef(PREDS, LABELS) == pytest.approx(1 / 6)
    assert matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 0, 1], [0, 1, 1, 0]) == pytest.approx(-1.0)
    assert matthews_corrcoef([1, 1, 1, 1], [0, 1, 1, 0]) == 0.0  # constant predictions


def test_matthews_multiclass_by_hand() -> None:
    # confusion (rows true, cols pred): [[1,1,0],[0,2,0],[0,0,1]]; c = 4, s = 5
    # t = [2,2,1], p = [1,3,1]; (c s - p.t) / sqrt((s^2 - p.p)(s^2 - t.t)) = (20 - 9) / sqrt(14 * 16)
    preds = [0, 1, 1, 1, 2]
    labels = [0, 0, 1, 1, 2]
    assert matthews_corrcoef(preds, labels) == pytest.approx(11 / math.sqrt(14 * 16))


def test_pearson_by_hand() -> None:
    # dx = [-1.5, -.5, .5, 1.5], dy = [-1.75, .25, 1.25, .25]: 3.5 / sqrt(5 * 4.75)
    assert pearson([1, 2, 3, 4], [2, 4, 5, 4]) == pytest.approx(3.5 / math.sqrt(5 * 4.75))
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_rankdata_averages_ties() -> None:
    np.testing.assert_array_equal(rankdata([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(rankdata([3, 1, 3, 3]), [3, 1, 3, 3])
    np.testing.assert_array_equal(rankdata([0.5, -1.0]), [2, 1])


def test_spearman_with_ties_by_hand() -> None:
    # ranks of y = [1, 3.5, 3.5, 2]; Pearson with [1, 2, 3, 4] = 1.5 / sqrt(5 * 4.5)
    assert spearman([1, 2, 3, 4], [1, 3, 3, 2]) == pytest.approx(1.5 / math.sqrt(22.5))
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)


def _reference_mcc(p: np.ndarray, t: np.ndarray) -> float:
    # The confusion-matrix formula of the Matthews correlation, written out.
    classes = np.unique(np.concatenate([p, t]))
    confusion = np.array([[np.sum((t == a) & (p == b)) for b in classes] for a in classes], float)
    t_k, p_k, c, s = confusion.sum(1), confusion.sum(0), np.trace(confusion), confusion.sum()
    return (c * s - p_k @ t_k) / math.sqrt((s * s - p_k @ p_k) * (s * s - t_k @ t_k))


def _reference_ranks(v: np.ndarray) -> np.ndarray:
    # Each value's rank is 1 + (values below it) + (ties - 1) / 2.
    return np.array([1 + np.sum(v < x) + (np.sum(v == x) - 1) / 2 for x in v])


def test_against_written_out_formulas() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, 200).astype(float)  # many ties
    y = x + rng.normal(0, 2, 200)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    yr = np.round(y)
    np.testing.assert_array_equal(rankdata(yr), _reference_ranks(yr))
    rho = np.corrcoef(_reference_ranks(x), _reference_ranks(yr))[0, 1]
    assert spearman(x, yr) == pytest.approx(rho, abs=1e-12)
    p, t = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    tp, fp, fn = (np.sum((p == a) & (t == b)) for a, b in ((1, 1), (1, 0), (0, 1)))
    assert f1_binary(p, t) == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
    assert matthews_corrcoef(p, t) == pytest.approx(_reference_mcc(p, t), abs=1e-12)
    p3, t3 = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert matthews_corrcoef(p3, t3) == pytest.approx(_reference_mcc(p3, t3), abs=1e-12)


def test_f1_of_one_class_among_three() -> None:
    # class 2 against the rest: TP = 1 (idx 3), FP = 1 (idx 0), FN = 1 (idx 4) -> 2 / 4
    assert f1_binary([2, 0, 1, 2, 0], [0, 0, 1, 2, 2], positive=2) == pytest.approx(0.5)


def test_torch_inputs_with_float_labels() -> None:
    # evaluation hands over float logits and labels that _array turns into float32
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([1, 0, 0, 0])
    out = task_metrics("qqp", logits, labels)
    assert out == pytest.approx(
        {"accuracy": 0.75, "f1": 2 / 3, "f1_accuracy_mean": (0.75 + 2 / 3) / 2}
    )


@pytest.mark.filterwarnings("error")
def test_degenerate_inputs_are_zero_without_warnings() -> None:
    assert matthews_corrcoef([1, 1, 1], [1, 1, 1]) == 0.0
    assert matthews_corrcoef([0, 1, 2], [2, 2, 2]) == 0.0
    assert matthews_corrcoef([1], [0]) == 0.0
    assert f1_binary([0, 2, 0], [2, 0, 0]) == 0.0  # no class 1 anywhere
    assert pearson([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]) == 0.0
    assert pearson([1.5], [2.5]) == 0.0
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0
    assert spearman([3.0], [1.0]) == 0.0
    assert task_metrics("stsb", [2.0, 2.0], [1.0, 4.0])["pearson_spearman_mean"] == 0.0
    assert task_metrics("cola", [1, 1], [0, 1])["matthews_correlation"] == 0.0


def test_predictions_from_outputs() -> None:
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 0.5]])
    np.testing.assert_array_equal(predictions_from_outputs(logits), [1, 0, 1])
    np.testing.assert_array_equal(
        predictions_from_outputs(np.array([[0.5], [2.5]]), regression=True), [0.5, 2.5]
    )
    with pytest.raises(ValueError, match="regression outputs"):
        predictions_from_outputs(logits, regression=True)


def test_task_metrics_per_task() -> None:
    logits = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    mrpc = task_metrics("MRPC", logits, torch.tensor(LABELS))
    assert mrpc == pytest.approx(
        {"accuracy": 0.6, "f1": 4 / 6, "f1_accuracy_mean": (0.6 + 4 / 6) / 2}
    )
    cola = task_metrics("CoLA", PREDS, LABELS)
    assert cola == pytest.approx({"accuracy": 0.6, "matthews_correlation": 1 / 6})
    assert task_metrics("sst-2", PREDS, LABELS) == pytest.approx({"accuracy": 0.6})
    assert task_metrics("MNLI-mm", [0, 1, 2], [0, 1, 1]) == pytest.approx({"accuracy": 2 / 3})
    scores = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    stsb = task_metrics("STS-B", scores, [1, 3, 3, 2])
    r = pearson([1, 2, 3, 4], [1, 3, 3, 2])
    rho = 1.5 / math.sqrt(22.5)
    assert stsb == pytest.approx(
        {"pearson": r, "spearman": rho, "pearson_spearman_mean": (r + rho) / 2}
    )
    for task in (
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
        labels = [0.0, 1.0, 2.0] if task == "stsb" else [0, 1, 1]
        assert primary_metric(task) in task_metrics(task, [0, 1, 0], labels)


def test_primary_metric_names() -> None:
    assert primary_metric("cola") == "matthews_correlation"
    assert primary_metric("QQP") == "f1_accuracy_mean"
    assert primary_metric("sts_b") == "pearson_spearman_mean"
    assert primary_metric("rte") == "accuracy"
    assert primary_metric("cifar10") == "accuracy"


def test_glue_average_as_in_the_paper() -> None:
    results = {
        "cola": {"accuracy": 0.8, "matthews_correlation": 0.5},
        "mrpc": {"accuracy": 0.8, "f1": 0.9, "f1_accuracy_mean": 0.85},
        "stsb": {"pearson": 0.9, "spearman": 0.8, "pearson_spearman_mean": 0.85},
        "rte": {"accuracy": 0.6},
    }
    assert glue_score("mrpc", results["mrpc"]) == 0.85
    assert glue_average(results) == pytest.approx((0.5 + 0.85 + 0.85 + 0.6) / 4)
    assert glue_average(results, tasks=["cola", "rte"]) == pytest.approx(0.55)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown task 'glue-x'"):
        task_metrics("glue-x", [0], [0])
    with pytest.raises(ValueError, match="unknown task"):
        primary_metric("squad")
    with pytest.raises(ValueError, match="differ in length: 2 and 3"):
        accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="at least one example"):
        pearson([], [])
    with pytest.raises(ValueError, match="lack 'f1_accuracy_mean'"):
        glue_score("qqp", {"accuracy": 0.5})
    with pytest.raises(ValueError, match="no metrics for tasks"):
        glue_average({"rte": {"accuracy": 0.5}}, tasks=["rte", "cola"])
    with pytest.raises(ValueError, match="at least one task"):
        glue_average({})
