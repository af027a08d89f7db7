"""Supermasks: a learned Bernoulli mask over frozen pre-trained weights.

"How fine can fine-tuning be? Learning efficient language models"
(Radiya-Dixit and Wang, AISTATS 2020, arXiv 2004.14129) fine-tunes BERT by
learning only a binary mask over its pre-trained weights, as Zhou et al.
(2019, "Deconstructing lottery tickets: zeros, signs, and the supermask") did
for networks at initialisation.

How it works. Every maskable weight ``W`` gets a real-valued score tensor
``s`` of its shape and the probability ``p = sigmoid(s)`` of keeping each
entry. In training, every forward pass draws ``m ~ Bernoulli(p)`` (one uniform
``u`` per entry from the wrapper's ``torch.Generator``; ``m = [u < p]``) and
runs the model with ``W * m`` in place of ``W`` through
:func:`torch.func.functional_call`: the model's parameters are never written,
so they stay bit-identical to the pre-trained ones. Sampling has no gradient;
the straight-through estimator takes ``dm/dp = 1``, so

    dL/ds = (dL/d(W * m) * W) * p * (1 - p).

At evaluation the mask is the expected one (``W * p``), the most likely one
(``W * [p > 1/2]``) or a sample fixed for the whole evaluation set.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector

from ..masks import head_names, parameter_shapes
from ..masks.mask import compile_patterns
from .config import SupermaskConfig

__all__ = [
    "MaskKind",
    "SupermaskModel",
    "initial_scores",
    "maskable_parameters",
    "sample_bernoulli",
    "straight_through_bernoulli",
]

logger = logging.getLogger(__name__)

#: How a mask is made from the scores: a Bernoulli sample, the probabilities
#: themselves (the expected mask), or the most likely binary mask.
MaskKind = Literal["sample", "expected", "threshold"]
_KINDS = ("sample", "expected", "threshold")
SCORES_PREFIX = "scores."
MODEL_PREFIX = "model."


def sample_bernoulli(probs: Tensor, generator: torch.Generator) -> Tensor:
    """A boolean sample ``[u < p]`` with one uniform ``u`` per entry from ``generator``.

    The uniforms are drawn on the generator's device and moved to ``probs``'s,
    so the same generator gives the same mask whatever the device of ``probs``.
    """
    u = torch.rand(probs.shape, generator=generator, device=generator.device)
    return u.to(probs.device) < probs.detach().float()


class _StraightThrough(torch.autograd.Function):
    """Forward: the given 0/1 sample. Backward: the incoming gradient, unchanged."""

    @staticmethod
    def forward(ctx: Any, probs: Tensor, sample: Tensor) -> Tensor:
        return sample.to(probs.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def straight_through_bernoulli(probs: Tensor, generator: torch.Generator) -> Tensor:
    """A 0/1 Bernoulli sample of ``probs`` whose gradient passes straight to ``probs``.

    The forward value is exactly 0 or 1 (in ``probs``'s dtype), so ``W * m``
    is exactly ``W`` or zero.
    """
    return _StraightThrough.apply(probs, sample_bernoulli(probs, generator))  # type: ignore[no-any-return]


def maskable_parameters(model: nn.Module, config: SupermaskConfig) -> list[str]:
    """Names of the parameters the supermask covers, in the model's order.

    Raises
    ------
    ValueError
        If no parameter matches ``config.maskable`` (outside the head).
    """
    regex = compile_patterns(config.maskable)
    heads = set(head_names(parameter_shapes(model), config.head_patterns))
    names = [
        n
        for n, p in model.named_parameters()
        if regex is not None
        and regex.search(n)
        and n not in heads
        and (p.dim() >= 2 or not config.matrices_only)
    ]
    if not names:
        raise ValueError(
            f"supermask maskable patterns {list(config.maskable)!r} match no "
            f"{'weight matrix' if config.matrices_only else 'parameter'} of the model"
        )
    return names


def initial_scores(weight: Tensor, config: SupermaskConfig) -> Tensor:
    """Scores from a magnitude mask: the ``initial_sparsity`` smallest ``|W|`` low, the rest high.

    Ties in magnitude are broken by flat index (the earlier entry is dropped first).
    """
    flat = weight.detach().abs().reshape(-1).float().cpu()
    off = int(round(config.initial_sparsity * flat.numel()))
    scores = torch.full((flat.numel(),), float(config.score_high))
    if off:
        order = torch.argsort(flat, stable=True)[:off]
        scores[order] = float(config.score_low)
    return scores.view(weight.shape).to(weight.device)


def _score_key(name: str) -> str:
    # Module attribute names cannot hold dots.
    return name.replace(".", ":")


class SupermaskModel(nn.Module):
    """A model whose maskable weights are multiplied by a learned binary mask.

    The wrapped model's parameters are frozen (``requires_grad=False``) and
    never written, except those of the task head, which train normally. The
    wrapper's own parameters are the scores, ``scores.<name with ':' for '.'>``,
    one per maskable weight, so ``wrapper.named_parameters()`` is the wrapped
    model's parameters (``model.<name>``) followed by the scores.

    Parameters
    ----------
    model
        The pre-trained model (called as ``model(*args, **kwargs)``).
    config
        Which weights are masked and how the scores start.
    generator
        Generator of the training samples; default: seeded with ``config.seed``.
        Uniforms are drawn on its device.
    eval_mask
        Mask used in eval mode when none is fixed: ``expected`` (default),
        ``threshold`` or ``sample``.

    Raises
    ------
    ValueError
        If nothing is maskable or ``eval_mask`` is unknown.
    """

    def __init__(
        self,
        model: nn.Module,
        config: SupermaskConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        eval_mask: MaskKind = "expected",
    ) -> None:
        super().__init__()
        config = config or SupermaskConfig()
        if eval_mask not in _KINDS:
            raise ValueError(f"eval_mask must be one of {', '.join(_KINDS)}, got {eval_mask!r}")
        self.model = model
        self.config = config
        self.eval_mask: MaskKind = eval_mask
        self.generator = generator or torch.Generator().manual_seed(config.seed)
        self.maskable: tuple[str, ...] = tuple(maskable_parameters(model, config))
        params = dict(model.named_parameters())
        heads = set(head_names(parameter_shapes(model), config.head_patterns))
        self.head: tuple[str, ...] = tuple(n for n in params if n in heads)
        if not self.head:
            logger.warning("no parameter matches the head patterns %s", config.head_patterns)
        for name, p in params.items():
            p.requires_grad_(name in heads)
        self.scores = nn.ParameterDict(
            {_score_key(n): nn.Parameter(initial_scores(params[n], config)) for n in self.maskable}
        )
        self._fixed: dict[str, Tensor] | None = None
        logger.info(
            "supermask over %d weight tensors (%d entries), initial sparsity %.3g",
            len(self.maskable),
            self.numel_maskable,
            config.initial_sparsity,
        )

    # -- the pieces ----------------------------------------------------------
    @property
    def numel_maskable(self) -> int:
        """Entries covered by the mask."""
        return sum(int(s.numel()) for s in self.scores.values())

    def score(self, name: str) -> nn.Parameter:
        """The score tensor of maskable parameter ``name`` (a wrapped-model name)."""
        return self.scores[_score_key(name)]

    def score_parameter_names(self) -> list[str]:
        """Names of the scores among ``self.named_parameters()``, in maskable order."""
        return [SCORES_PREFIX + _score_key(n) for n in self.maskable]

    def head_parameter_names(self) -> list[str]:
        """Names of the head among ``self.named_parameters()``."""
        return [MODEL_PREFIX + n for n in self.head]

    def probabilities(self) -> dict[str, Tensor]:
        """``sigmoid(score)`` per maskable parameter (detached)."""
        return {n: torch.sigmoid(self.score(n).detach()) for n in self.maskable}

    # -- masks ---------------------------------------------------------------
    def masks(self, kind: MaskKind, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """One mask per maskable parameter, detached.

        ``sample``: boolean, drawn from ``generator`` (default: the wrapper's);
        ``threshold``: boolean, ``score > 0``; ``expected``: float, the
        probabilities.
        """
        if kind == "sample":
            gen = generator or self.generator
            return {n: sample_bernoulli(p, gen) for n, p in self.probabilities().items()}
        if kind == "threshold":
            return {n: self.score(n).detach() > 0 for n in self.maskable}
        if kind == "expected":
            return self.probabilities()
        raise ValueError(f"mask kind must be one of {', '.join(_KINDS)}, got {kind!r}")

    @contextlib.contextmanager
    def use_masks(self, masks: Mapping[str, Tensor]) -> Iterator[None]:
        """Run every forward pass inside the block with these fixed masks."""
        self._check_masks(masks)
        previous, self._fixed = self._fixed, {n: masks[n].detach() for n in self.maskable}
        try:
            yield
        finally:
            self._fixed = previous

    def _check_masks(self, masks: Mapping[str, Tensor]) -> None:
        for n in self.maskable:
            if n not in masks:
                raise ValueError(f"mask for maskable parameter {n!r} is missing")
            if tuple(masks[n].shape) != tuple(self.score(n).shape):
                raise ValueError(
                    f"mask of {n!r} has shape {tuple(masks[n].shape)}, "
                    f"expected {tuple(self.score(n).shape)}"
                )

    # -- forward ---------------------------------------------------------------
    def _multipliers(self) -> dict[str, Tensor]:
        if self._fixed is not None:
            return self._fixed
        if self.training:
            return {
                n: straight_through_bernoulli(torch.sigmoid(self.score(n)), self.generator)
                for n in self.maskable
            }
        return self.masks(self.eval_mask)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        params = dict(self.model.named_parameters())
        masked = {
            n: params[n] * m.to(device=params[n].device, dtype=params[n].dtype)
            for n, m in self._multipliers().items()
        }
        return functional_call(self.model, masked, args, kwargs, strict=False)

    # -- flat views (for federated exchange) -------------------------------------
    def score_vector(self) -> Tensor:
        """All scores as one float32 vector, maskable parameters in order."""
        scores = (self.score(n) for n in self.maskable)
        return parameters_to_vector(scores).detach().float().cpu()

    def load_score_vector(self, values: Tensor) -> None:
        """Write a vector laid out as :meth:`score_vector` into the scores.

        Raises
        ------
        ValueError
            On a wrong length or a non-finite value.
        """
        values = torch.as_tensor(values).reshape(-1)
        if values.numel() != self.numel_maskable:
            raise ValueError(
                f"score vector needs {self.numel_maskable} values, got {values.numel()}"
            )
        if not torch.isfinite(values).all():
            raise ValueError("score vector has non-finite values")
        offset = 0
        with torch.no_grad():
            for n in self.maskable:
                s = self.score(n)
                s.copy_(values[offset : offset + s.numel()].view(s.shape).to(s.device, s.dtype))
                offset += s.numel()

    def mask_vector(self, masks: Mapping[str, Tensor]) -> Tensor:
        """Masks concatenated in maskable order (the layout of :meth:`score_vector`)."""
        self._check_masks(masks)
        return torch.cat([masks[n].detach().reshape(-1).cpu() for n in self.maskable])

    def masks_from_vector(self, vector: Tensor) -> dict[str, Tensor]:
        """Split a vector laid out as :meth:`score_vector` into per-parameter masks."""
        vector = torch.as_tensor(vector).reshape(-1)
        if vector.numel() != self.numel_maskable:
            raise ValueError(
                f"mask vector needs {self.numel_maskable} entries, got {vector.numel()}"
            )
        out, offset = {}, 0
        for n in self.maskable:
            shape = self.score(n).shape
            out[n] = vector[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        return out

    # -- export ----------------------------------------------------------------
    @torch.no_grad()
    def materialize(self, masks: Mapping[str, Tensor]) -> nn.Module:
        """A copy of the wrapped model with ``W * mask`` written into its weights."""
        self._check_masks(masks)
        model = copy.deepcopy(self.model)
        params = dict(model.named_parameters())
        for n in self.maskable:
            p = params[n]
            p.mul_(masks[n].to(device=p.device, dtype=p.dtype))
        return model
