"""Task metrics of the FISH Mask paper's evaluations.

Sung, Nair and Raffel (NeurIPS 2021, arXiv 2111.09839), Table 1, report per
GLUE task the standard metric -- Matthews correlation for CoLA, F1 and
accuracy for MRPC and QQP, Pearson and Spearman correlation for STS-B,
accuracy otherwise -- and a GLUE average in which MRPC and QQP count as the
mean of F1 and accuracy and STS-B as the mean of Pearson and Spearman. The
CIFAR-10 experiments report accuracy.

All values are fractions (accuracy 0.9, not 90). A statistic whose
denominator vanishes (a correlation of a constant, F1 with no positive
predictions or labels) is reported as 0.0, the "no signal" value, so that an
untrained model never yields NaN in a log or an average. F1 and the Matthews
correlation come from scikit-learn, Pearson and Spearman from scipy; accuracy
is the count of correct predictions over the examples. scipy and scikit-learn
are imported on first use: they take seconds to import and every node imports
this module.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "METRIC_TASKS",
    "accuracy",
    "f1_binary",
    "glue_average",
    "glue_score",
    "matthews_corrcoef",
    "pearson",
    "predictions_from_outputs",
    "primary_metric",
    "rankdata",
    "spearman",
    "task_metrics",
]

# Canonical task -> the metric reported as the task's single number.
_PRIMARY = {
    "cola": "matthews_correlation",
    "sst2": "accuracy",
    "mrpc": "f1_accuracy_mean",
    "stsb": "pearson_spearman_mean",
    "qqp": "f1_accuracy_mean",
    "mnli": "accuracy",
    "mnli-mm": "accuracy",
    "qnli": "accuracy",
    "rte": "accuracy",
    "wnli": "accuracy",
    "cifar10": "accuracy",
    "classification": "accuracy",
    "regression": "pearson_spearman_mean",
}
_ALIASES = {
    "mnlim": "mnli",
    "mnlimatched": "mnli",
    "mnlimm": "mnli-mm",
    "mnlimismatched": "mnli-mm",
    "cifar": "cifar10",
}

#: Task names understood by :func:`task_metrics` (canonical spellings).
METRIC_TASKS: tuple[str, ...] = tuple(_PRIMARY)


def _canonical(task: str) -> str:
    key = re.sub(r"[-_\s]", "", str(task).lower())
    key = _ALIASES.get(key, key)
    if key not in _PRIMARY:
        raise ValueError(f"unknown task {task!r} for metrics: expected one of {list(_PRIMARY)}")
    return key


def _array(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values)
    if array.dtype == object:
        raise ValueError(f"{name} must be numeric, got objects")
    return array


def _pair(predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _array(predictions, "predictions").reshape(-1)
    y = _array(labels, "labels").reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"predictions and labels differ in length: {p.shape[0]} and {y.shape[0]}")
    if p.size == 0:
        raise ValueError("metrics need at least one example, got none")
    return p, y


def accuracy(predictions: Any, labels: Any) -> float:
    """Fraction of predictions equal to the labels.

    Parameters
    ----------
    predictions, labels : array-like
        Class ids, same length.

    Returns
    -------
    float
        Accuracy in [0, 1].
    """
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def _constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


def f1_binary(predictions: Any, labels: Any, positive: int = 1) -> float:
    """F1 score of the positive class (MRPC, QQP), by scikit-learn.

    Parameters
    ----------
    predictions, labels : array-like
        Class ids, same length (other classes count as negatives).
    positive : int, default 1
        The positive class.

    Returns
    -------
    float
        ``2 TP / (2 TP + FP + FN)``; 0.0 when there are no positive
        predictions and no positive labels.
    """
    from sklearn.metrics import f1_score

    p, y = _pair(predictions, labels)
    # labels=[positive] scores that class alone (one against the rest, any
    # number of classes); zero_division=0.0 is the "no signal" value, silently.
    return float(f1_score(y, p, labels=[positive], average="macro", zero_division=0.0))


def matthews_corrcoef(predictions: Any, labels: Any) -> float:
    """Matthews correlation coefficient (CoLA), for any number of classes, by scikit-learn.

    Parameters
    ----------
    predictions, labels : array-like
        Class ids, same length.

    Returns
    -------
    float
        In [-1, 1]; 0.0 when either side is constant.
    """
    p, y = _pair(predictions, labels)
    # A constant side is exactly when the denominator vanishes; scikit-learn
    # returns 0.0 there too, but warns when both sides hold one class.
    if _constant(p) or _constant(y):
        return 0.0
    from sklearn.metrics import matthews_corrcoef as sk_matthews_corrcoef

    return float(sk_matthews_corrcoef(y, p))


def pearson(x: Any, y: Any) -> float:
    """Pearson correlation coefficient (STS-B), by scipy.

    Parameters
    ----------
    x, y : array-like
        Real values, same length.

    Returns
    -------
    float
        In [-1, 1]; 0.0 when either side is constant.
    """
    a, b = _pair(x, y)
    # scipy returns NaN with a ConstantInputWarning for a constant side (and
    # rejects a single example, which is constant too).
    if _constant(a) or _constant(b):
        return 0.0
    from scipy.stats import pearsonr

    return float(pearsonr(a.astype(np.float64), b.astype(np.float64)).statistic)


def rankdata(values: Any) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks (scipy's ``rankdata``).

    Parameters
    ----------
    values : array-like
        One-dimensional values.

    Returns
    -------
    numpy.ndarray
        float64 ranks (e.g. ``[10, 20, 20, 30] -> [1, 2.5, 2.5, 4]``).
    """
    from scipy.stats import rankdata as sp_rankdata

    v = _array(values, "values").reshape(-1)
    return np.asarray(sp_rankdata(v, method="average"), dtype=np.float64)


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation with tie-averaged ranks (STS-B), by scipy.

    Parameters
    ----------
    x, y : array-like
        Real values, same length.

    Returns
    -------
    float
        Pearson correlation of the ranks; 0.0 when either side is constant.
    """
    a, b = _pair(x, y)
    # As for pearson: scipy gives NaN and a warning for a constant side.
    if _constant(a) or _constant(b):
        return 0.0
    from scipy.stats import spearmanr

    return float(spearmanr(a.astype(np.float64), b.astype(np.float64)).statistic)


def predictions_from_outputs(outputs: Any, regression: bool = False) -> np.ndarray:
    """Turn model outputs into predictions.

    Parameters
    ----------
    outputs : array-like
        Class ids ``(N,)``, logits ``(N, C)`` with ``C > 1`` (arg-maxed), or
        regression scores ``(N,)`` / ``(N, 1)``.
    regression : bool, default False
        Whether the outputs are real-valued scores.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` predictions.
    """
    array = _array(outputs, "predictions")
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim == 2:
        if regression:
            raise ValueError(f"regression outputs must be (N,) or (N, 1), got {array.shape}")
        return np.argmax(array, axis=1)
    if array.ndim != 1:
        raise ValueError(f"outputs must be (N,) or (N, C), got shape {array.shape}")
    return array


def primary_metric(task: str) -> str:
    """Name of the metric that is the task's single reported number.

    ``matthews_correlation`` (CoLA), ``f1_accuracy_mean`` (MRPC, QQP),
    ``pearson_spearman_mean`` (STS-B), ``accuracy`` otherwise, CIFAR-10
    included.

    Raises
    ------
    ValueError
        For an unknown task.
    """
    return _PRIMARY[_canonical(task)]


def task_metrics(task: str, predictions_or_logits: Any, labels: Any) -> dict[str, float]:
    """All metrics of a task, from predictions or logits.

    Parameters
    ----------
    task : str
        A GLUE task (any spelling: ``"SST-2"``, ``"sts_b"``, ``"mnli-mm"``),
        ``"cifar10"`` or ``"classification"``.
    predictions_or_logits : array-like or torch.Tensor
        Class ids ``(N,)`` or logits ``(N, C)``; for STS-B scores ``(N,)`` or
        ``(N, 1)``.
    labels : array-like or torch.Tensor
        ``(N,)`` true class ids or scores.

    Returns
    -------
    dict of str to float
        ``accuracy`` for classification tasks; plus ``f1`` and
        ``f1_accuracy_mean`` for MRPC and QQP; ``matthews_correlation`` for
        CoLA; ``pearson``, ``spearman`` and ``pearson_spearman_mean`` for
        STS-B. The key :func:`primary_metric` names is always present.

    Raises
    ------
    ValueError
        For an unknown task, mismatched lengths or no examples.
    """
    key = _canonical(task)
    regression = key in ("stsb", "regression")
    preds = predictions_from_outputs(predictions_or_logits, regression=regression)
    y = _array(labels, "labels").reshape(-1)
    if regression:
        r, rho = pearson(preds, y), spearman(preds, y)
        return {"pearson": r, "spearman": rho, "pearson_spearman_mean": (r + rho) / 2.0}
    out = {"accuracy": accuracy(preds, y)}
    if key in ("mrpc", "qqp"):
        out["f1"] = f1_binary(preds, y)
        out["f1_accuracy_mean"] = (out["f1"] + out["accuracy"]) / 2.0
    if key == "cola":
        out["matthews_correlation"] = matthews_corrcoef(preds, y)
    return out


def glue_score(task: str, metrics: Mapping[str, float]) -> float:
    """The task's number in the paper's GLUE average (its primary metric)."""
    name = primary_metric(task)
    if name not in metrics:
        raise ValueError(f"metrics of {task!r} lack {name!r}: got {sorted(metrics)}")
    return float(metrics[name])


def glue_average(
    results: Mapping[str, Mapping[str, float]], tasks: Sequence[str] | None = None
) -> float:
    """GLUE average as the paper computes it.

    Parameters
    ----------
    results : mapping of task to metrics dict
        Output of :func:`task_metrics` per task.
    tasks : sequence of str, optional
        Tasks to average (default: all in ``results``).

    Returns
    -------
    float
        Unweighted mean over tasks of :func:`glue_score` (MRPC, QQP: mean of
        F1 and accuracy; STS-B: mean of Pearson and Spearman; CoLA: Matthews
        correlation; others: accuracy).

    Raises
    ------
    ValueError
        If no task is given or a task's metrics are missing.
    """
    names = list(results) if tasks is None else list(tasks)
    if not names:
        raise ValueError("glue_average needs at least one task, got none")
    missing = [t for t in names if t not in results]
    if missing:
        raise ValueError(f"glue_average: no metrics for tasks {missing}")
    return float(np.mean([glue_score(t, results[t]) for t in names]))
