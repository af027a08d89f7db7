"""Sparse training: only the ``k`` masked entries of a model move.

One training loop serves every mask; dense training is the mask of density 1.

How it works. Parameters whose entries are all kept are trained in place, as
usual. For a parameter with only some entries kept, the optimiser owns a
separate leaf vector holding just those entries: after each backward pass the
kept entries of the parameter's gradient are copied into the leaf's gradient,
the optimiser steps the leaf, and the leaf is written back into the kept
entries. So the optimiser state is O(k), weight decay touches only the kept
entries, and every other entry stays bit-identical to its starting value (the
FISH Mask reference code applies weight decay to frozen entries too; this
does not). Parameters without a kept entry get ``requires_grad=False`` and
never accumulate gradients.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.batch import forward_logits, move_batch
from .masks import Mask

__all__ = [
    "OptimizerConfig",
    "SparseParameters",
    "TrainStats",
    "cycle_batches",
    "evaluate",
    "make_optimizer",
    "optimizer_state_bytes",
    "task_loss",
    "train_steps",
]

logger = logging.getLogger(__name__)

DEFAULT_NO_DECAY: tuple[str, ...] = (
    r"bias$",
    r"LayerNorm\.weight$",
    r"layer_norm\.weight$",
    r"(^|\.)bn\d*\.weight$",
)


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimiser settings.

    Attributes
    ----------
    name
        ``adamw`` or ``sgd``.
    lr
        Learning rate (the paper: 5e-5 for BERT fine-tuning with AdamW).
    weight_decay
        Decoupled (AdamW) or L2 (SGD) weight decay, applied to kept entries only,
        and not to parameters matching ``no_decay``.
    momentum, nesterov
        SGD only.
    betas, eps
        AdamW only.
    no_decay
        Regexes of parameter names exempt from weight decay (biases and
        normalisation weights by default).
    grad_clip
        Clip the global gradient norm of the trained entries (0 disables).
    proximal_mu
        FedProx's ``mu``: the local loss gains ``(mu/2)·||w − w_received||²``
        over the trained entries (0 disables); see :func:`train_steps`.
    """

    name: str = "adamw"
    lr: float = 5e-5
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    no_decay: tuple[str, ...] = DEFAULT_NO_DECAY
    grad_clip: float = 0.0
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.name!r}")
        for key in ("lr", "weight_decay", "momentum", "eps", "grad_clip", "proximal_mu"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"optimizer {key} must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise ValueError("optimizer lr must be > 0, got 0")
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer 'sgd' with momentum > 0")
        b1, b2 = self.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"optimizer betas must be in [0, 1), got {self.betas!r}")


class SparseParameters:
    """The trainable entries of a model under a fixed mask.

    Parameters
    ----------
    model
        The model; its parameters must match the mask exactly.
    mask
        Which entries train.
    """

    def __init__(self, model: nn.Module, mask: Mask) -> None:
        mask.check(model)
        self.model = model
        self.mask = mask
        params = dict(model.named_parameters())
        self.full: dict[str, nn.Parameter] = {}
        self.partial: dict[str, tuple[nn.Parameter, Tensor, Tensor]] = {}
        self._hooks = False
        for name, p in params.items():
            idx = mask.indices[name]
            if idx.numel() == 0:
                p.requires_grad_(False)
                p.grad = None
            elif idx.numel() == p.numel():
                p.requires_grad_(True)
                self.full[name] = p
            else:
                p.requires_grad_(True)
                idx = idx.to(p.device)
                leaf = p.detach().reshape(-1)[idx].clone().requires_grad_(True)
                self.partial[name] = (p, idx, leaf)

    @property
    def k(self) -> int:
        return self.mask.k

    def named_trainable(self) -> Iterator[tuple[str, Tensor]]:
        """What the optimiser owns: full parameters and leaf vectors, by name."""
        for name, _ in self.model.named_parameters():
            if name in self.full:
                yield name, self.full[name]
            elif name in self.partial:
                yield name, self.partial[name][2]

    def trainable(self) -> list[Tensor]:
        return [t for _, t in self.named_trainable()]

    def collect_grads(self) -> None:
        """Move the kept entries of each partial parameter's gradient into its leaf.

        Inside :meth:`gradient_hooks` the backward pass has moved them already.
        """
        if self._hooks:
            return
        for p, idx, leaf in self.partial.values():
            if p.grad is None:
                leaf.grad = None
                continue
            g = p.grad.reshape(-1)[idx]
            leaf.grad = g if leaf.grad is None else leaf.grad.copy_(g)
            p.grad = None

    @contextlib.contextmanager
    def gradient_hooks(self) -> Iterator[None]:
        """Move each partial parameter's kept gradient entries into its leaf during backward.

        As soon as a parameter's gradient is complete its ``k`` kept entries
        are gathered and the full gradient is dropped, so a backward pass never
        holds every parameter's full gradient at once (at most one, plus what
        autograd is still computing). The values are the same as
        :meth:`collect_grads` gives after the pass.
        """

        def move(leaf: Tensor, idx: Tensor) -> Any:
            def hook(p: Tensor) -> None:
                assert p.grad is not None
                g = p.grad.reshape(-1)[idx]
                leaf.grad = g if leaf.grad is None else leaf.grad.add_(g)
                p.grad = None

            return hook

        handles = [
            p.register_post_accumulate_grad_hook(move(leaf, idx))
            for p, idx, leaf in self.partial.values()
        ]
        self._hooks = len(handles) > 0
        try:
            yield
        finally:
            self._hooks = False
            for h in handles:
                h.remove()

    @torch.no_grad()
    def write_back(self) -> None:
        """Write each leaf vector into its parameter's kept entries."""
        for p, idx, leaf in self.partial.values():
            p.view(-1).index_copy_(0, idx, leaf.detach().to(p.dtype))

    @torch.no_grad()
    def sync_from_model(self) -> None:
        """Reload the leaf vectors from the model (after the model was changed)."""
        for p, idx, leaf in self.partial.values():
            leaf.copy_(p.detach().reshape(-1)[idx])

    def values(self) -> Tensor:
        """The ``k`` trained values in mask order (float32, CPU)."""
        return self.mask.gather(self.model)

    def load_values(self, values: Tensor) -> None:
        """Write a mask-order ``k``-vector into the model (and the leaves)."""
        self.mask.scatter(self.model, values)
        self.sync_from_model()

    def zero_grad(self) -> None:
        for t in self.trainable():
            t.grad = None
        for p, _, _ in self.partial.values():
            p.grad = None


def make_optimizer(sparse: SparseParameters, config: OptimizerConfig) -> torch.optim.Optimizer:
    """An optimiser over the trained entries only, grouped by name for weight decay."""
    no_decay = (
        re.compile("|".join(f"(?:{p})" for p in config.no_decay)) if config.no_decay else None
    )
    decay: list[Tensor] = []
    plain: list[Tensor] = []
    for name, t in sparse.named_trainable():
        (plain if no_decay is not None and no_decay.search(name) else decay).append(t)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the mask keeps no entry: nothing to train")
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimiser's per-parameter state tensors."""
    return sum(
        v.numel() * v.element_size()
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, Tensor) and v.dim() > 0
    )


def task_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy for class targets, mean squared error for a single-output head."""
    if logits.dim() == 2 and logits.shape[-1] == 1 and targets.is_floating_point():
        return F.mse_loss(logits[:, 0].float(), targets.float())
    return F.cross_entropy(logits.float(), targets.long())


@dataclass
class TrainStats:
    """What a call of :func:`train_steps` did."""

    steps: int
    examples: int
    mean_loss: float


def cycle_batches(batches: Iterable[Any]) -> Iterator[Any]:
    """Batches of ``batches`` without end, re-iterating it (a new epoch) when it runs out."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("training data yielded no batch")


def train_steps(
    sparse: SparseParameters,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Any],
    *,
    steps: int,
    device: torch.device,
    grad_clip: float = 0.0,
    amp: bool = False,
    loss_fn: Any = task_loss,
    proximal_mu: float = 0.0,
) -> TrainStats:
    """Train the masked entries for ``steps`` optimiser steps.

    ``batches`` is re-iterated as often as needed (one pass is an epoch).
    With ``amp`` on CUDA the forward runs under bfloat16 autocast.

    With ``proximal_mu > 0`` this is FedProx's local solver (Li et al.,
    "Federated Optimization in Heterogeneous Networks", MLSys 2020): the loss
    gains ``(mu/2)·||w − w₀||²`` over the trained entries, ``w₀`` their values
    when the call starts (what the node received), so each trained entry's
    gradient gains ``mu·(w − w₀)`` before clipping. The reported loss is the
    task loss alone.
    """
    if steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if not math.isfinite(proximal_mu) or proximal_mu < 0:
        raise ValueError(f"proximal_mu must be a finite number >= 0, got {proximal_mu}")
    model = sparse.model
    model.train()
    trainable = sparse.trainable()
    # FedProx's anchor: the k received values (the leaves and full parameters), O(k).
    anchors = [t.detach().clone() for t in trainable] if proximal_mu > 0 else []
    use_amp = amp and device.type == "cuda"
    total_loss, examples = 0.0, 0
    stream = cycle_batches(batches)
    # Full gradients are dropped as soon as their kept entries are gathered.
    with sparse.gradient_hooks():
        for _ in range(steps):
            inputs, targets = move_batch(next(stream), device, non_blocking=True)
            # 1. forward and backward as usual: gradients land on the parameters.
            ctx = (
                torch.autocast("cuda", dtype=torch.bfloat16)
                if use_amp
                else contextlib.nullcontext()
            )
            with ctx:
                loss = loss_fn(forward_logits(model, inputs), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is not finite ({loss.item()})")
            sparse.zero_grad()
            loss.backward()
            # 2. keep only the masked entries' gradients, in the optimiser's leaves.
            sparse.collect_grads()
            # The proximal term's gradient, added directly rather than through the
            # loss, so it costs no graph and never reaches a frozen entry. A tensor
            # without a gradient this step (unused by the forward) is skipped by
            # the optimiser, and so is its proximal term.
            if proximal_mu > 0:
                for t, anchor in zip(trainable, anchors, strict=True):
                    if t.grad is not None:
                        t.grad.add_(t.detach() - anchor, alpha=proximal_mu)
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
            # 3. step the k values and write them back; nothing else is touched.
            optimizer.step()
            sparse.write_back()
            n = int(targets.shape[0])
            total_loss += float(loss.detach()) * n
            examples += n
    sparse.zero_grad()
    return TrainStats(steps=steps, examples=examples, mean_loss=total_loss / max(1, examples))


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[Any], *, device: torch.device
) -> tuple[Tensor, Tensor, float]:
    """Run the model over ``batches`` in eval mode.

    Returns
    -------
    (logits, targets, mean_loss)
        Concatenated on the CPU.
    """
    was_training = model.training
    model.eval()
    outs, tgts, total, n = [], [], 0.0, 0
    try:
        for batch in batches:
            inputs, targets = move_batch(batch, device)
            logits = forward_logits(model, inputs).float()
            total += float(task_loss(logits, targets)) * int(targets.shape[0])
            n += int(targets.shape[0])
            outs.append(logits.cpu())
            tgts.append(targets.cpu())
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluation data yielded no example")
    return torch.cat(outs), torch.cat(tgts), total / n
