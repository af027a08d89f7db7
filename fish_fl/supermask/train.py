"""Training and evaluating a supermask on one machine.

Supermask training (Radiya-Dixit and Wang, "How fine can fine-tuning be?",
AISTATS 2020, arXiv 2004.14129) moves only the mask scores and the task
head. Training reuses the project's one sparse loop: the ``supermask`` mask
over a :class:`SupermaskModel` keeps exactly the scores and the head, and
:func:`fish_fl.training.train_steps` steps them. Only the optimiser differs:
the scores need a learning rate (about 0.2) far above the head's.

Evaluation reports the task metric with the expected mask, with the most
likely mask and with several sampled masks (their mean and spread), and the
final sparsity per maskable weight.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..masks import MaskSpec, build_mask
from ..metrics import primary_metric, task_metrics
from ..training import SparseParameters, evaluate
from .config import SupermaskConfig
from .layer import SupermaskModel

__all__ = [
    "LayerSparsity",
    "SupermaskEval",
    "evaluate_supermask",
    "make_supermask_optimizer",
    "sparsity_by_parameter",
    "supermask_parameters",
]

logger = logging.getLogger(__name__)


def supermask_parameters(wrapper: SupermaskModel) -> SparseParameters:
    """The wrapper's trainable entries (scores and head) for :func:`train_steps`."""
    return SparseParameters(wrapper, build_mask(wrapper, MaskSpec(method="supermask")))


def make_supermask_optimizer(
    sparse: SparseParameters, config: SupermaskConfig
) -> torch.optim.Optimizer:
    """Adam over the scores at ``score_lr``, AdamW over the head at ``head_lr``.

    One optimiser with two parameter groups, built by name; the scores get no
    weight decay, nor do the head's biases.

    Raises
    ------
    ValueError
        If ``sparse`` trains something that is neither a score nor the head.
    """
    wrapper = sparse.model
    if not isinstance(wrapper, SupermaskModel):
        raise ValueError(
            f"make_supermask_optimizer needs a SupermaskModel, got {type(wrapper).__name__}"
        )
    scores_names = set(wrapper.score_parameter_names())
    head_names = set(wrapper.head_parameter_names())
    scores: list[torch.Tensor] = []
    head_decay: list[torch.Tensor] = []
    head_plain: list[torch.Tensor] = []
    for name, t in sparse.named_trainable():
        if name in scores_names:
            scores.append(t)
        elif name in head_names:
            (head_plain if name.endswith("bias") else head_decay).append(t)
        else:
            raise ValueError(f"supermask training does not train parameter {name!r}")
    groups: list[dict[str, Any]] = [
        {"params": scores, "lr": config.score_lr, "weight_decay": 0.0},
        {"params": head_decay, "lr": config.head_lr, "weight_decay": config.head_weight_decay},
        {"params": head_plain, "lr": config.head_lr, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    # AdamW with weight decay 0 is Adam: steps of about ``score_lr`` per score,
    # whatever the scale of the (small) straight-through gradients.
    return torch.optim.AdamW(groups, lr=config.score_lr)


@dataclass(frozen=True)
class LayerSparsity:
    """Final sparsity of one maskable weight (fractions of its entries masked out).

    Attributes
    ----------
    name
        Parameter name in the wrapped model.
    numel
        Its entries.
    expected
        ``1 - mean(p)``: the expected fraction dropped by a sampled mask.
    threshold
        Fraction with ``p <= 1/2`` (dropped by the most likely mask).
    sampled
        Fraction dropped by each evaluated sample.
    """

    name: str
    numel: int
    expected: float
    threshold: float
    sampled: tuple[float, ...] = ()


def sparsity_by_parameter(
    wrapper: SupermaskModel, samples: Iterable[dict[str, torch.Tensor]] = ()
) -> list[LayerSparsity]:
    """Per maskable weight: expected, most-likely and sampled sparsity."""
    samples = list(samples)
    probs = wrapper.probabilities()
    out = []
    for name in wrapper.maskable:
        p = probs[name]
        out.append(
            LayerSparsity(
                name=name,
                numel=int(p.numel()),
                expected=1.0 - float(p.double().mean()),
                threshold=float((p <= 0.5).double().mean()),
                sampled=tuple(1.0 - float(s[name].double().mean()) for s in samples),
            )
        )
    return out


def _overall(layers: list[LayerSparsity], value: Any) -> float:
    total = sum(layer.numel for layer in layers)
    return sum(value(layer) * layer.numel for layer in layers) / total if total else 0.0


@dataclass
class SupermaskEval:
    """The evaluation of a supermask.

    Attributes
    ----------
    metric
        Name of the task's primary metric.
    expected, threshold
        Task metrics (and ``loss``) with the expected and the most likely mask.
    sampled
        Task metrics with each sampled mask (one mask for the whole set).
    layers
        Final sparsity per maskable weight.
    """

    metric: str
    expected: dict[str, float]
    threshold: dict[str, float]
    sampled: list[dict[str, float]] = field(default_factory=list)
    layers: list[LayerSparsity] = field(default_factory=list)

    @property
    def sampled_mean(self) -> float:
        """Mean primary metric over the sampled masks (NaN without samples)."""
        values = [m[self.metric] for m in self.sampled]
        return statistics.fmean(values) if values else math.nan

    @property
    def sampled_std(self) -> float:
        """Sample standard deviation (n - 1) of the primary metric over sampled masks."""
        values = [m[self.metric] for m in self.sampled]
        return statistics.stdev(values) if len(values) > 1 else 0.0

    @property
    def sparsity_expected(self) -> float:
        """Expected fraction of maskable entries dropped, over all maskable weights."""
        return _overall(self.layers, lambda layer: layer.expected)

    @property
    def sparsity_threshold(self) -> float:
        return _overall(self.layers, lambda layer: layer.threshold)

    @property
    def sparsity_sampled(self) -> float:
        """Mean over samples of the fraction of maskable entries dropped."""
        if not self.layers or not self.layers[0].sampled:
            return math.nan
        return _overall(self.layers, lambda layer: statistics.fmean(layer.sampled))

    def summary(self) -> dict[str, float]:
        """Flat numbers for a table or a JSON line."""
        return {
            "expected": self.expected[self.metric],
            "threshold": self.threshold[self.metric],
            "sampled_mean": self.sampled_mean,
            "sampled_std": self.sampled_std,
            "samples": float(len(self.sampled)),
            "sparsity_expected": self.sparsity_expected,
            "sparsity_threshold": self.sparsity_threshold,
            "sparsity_sampled": self.sparsity_sampled,
        }


def evaluate_supermask(
    wrapper: SupermaskModel,
    batches: Iterable[Any],
    task: str,
    *,
    device: torch.device,
    samples: int = 5,
    generator: torch.Generator | None = None,
) -> SupermaskEval:
    """Evaluate with the expected mask, the most likely mask and ``samples`` sampled masks.

    ``batches`` is iterated ``samples + 2`` times (a DataLoader or a list).
    Each sampled mask is drawn once from ``generator`` (default: a fresh
    generator seeded with the wrapper's ``config.seed + 1``) and used for the
    whole set.

    Raises
    ------
    ValueError
        If ``samples`` is negative.
    """
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    gen = generator or torch.Generator().manual_seed(wrapper.config.seed + 1)

    def run(masks: dict[str, torch.Tensor]) -> dict[str, float]:
        with wrapper.use_masks(masks):
            logits, targets, loss = evaluate(wrapper, batches, device=device)
        metrics = task_metrics(task, logits, targets)
        metrics["loss"] = loss
        return metrics

    expected = run(wrapper.masks("expected"))
    threshold = run(wrapper.masks("threshold"))
    drawn = [wrapper.masks("sample", gen) for _ in range(samples)]
    sampled = [run(m) for m in drawn]
    result = SupermaskEval(
        metric=primary_metric(task),
        expected=expected,
        threshold=threshold,
        sampled=sampled,
        layers=sparsity_by_parameter(wrapper, drawn),
    )
    logger.info("supermask evaluation: %s", result.summary())
    return result
