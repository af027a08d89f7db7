"""Diagonal Fisher information of a model's parameters.

Implements the parameter-importance score of FISH Mask (Sung, Nair and Raffel,
"Training Neural Networks with Fixed Sparse Masks", NeurIPS 2021,
arXiv:2111.09839): the diagonal of the Fisher information matrix, estimated as
the mean over ``N`` examples of the squared *per-example* gradient of the
log-likelihood,

    F_theta = 1/N * sum_i (d/dtheta log p(y_i | x_i))^2.

Two estimators are offered:

``empirical``
    ``y_i`` is the true label (the paper's choice).
``true``
    the exact expectation over the model's own predictive distribution,
    ``sum_c p(c | x_i) (d/dtheta log p(c | x_i))^2``.

For a single-output (regression) head the likelihood is a unit-variance
Gaussian ``N(y; f(x), 1)``: the empirical form scores ``(y - f)^2 (df)^2`` and
the true form ``(df)^2``.

Speed. Squared per-example gradients are computed without a Python loop over
examples for the layer types of ResNet and BERT (``Linear``, ``Conv2d``,
``Embedding``, ``LayerNorm``, ``RMSNorm`` and ``BatchNorm`` in eval mode).
Forward hooks record each layer's input, tensor hooks receive the gradient
with respect to its output, and the per-example weight gradients are formed
(and squared) from those two, as Opacus and BackPACK do. We do not use
Opacus's ``GradSampleModule`` itself: it materialises every per-example
gradient of every parameter (memory ``B x model``), rejects BatchNorm even in
eval mode and computes the ordinary batch gradients as well; here each layer's
squares are summed as soon as its gradient arrives, a Linear layer without a
sequence dimension never forms per-example gradients at all
(``sum_b g_b^2 x_b^2``), and the batch weight gradients are never computed.
Parameters of any other layer type fall back to a loop over single examples;
the same loop (:func:`fisher_diagonal_reference`) is the test reference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.batch import forward_logits

__all__ = [
    "FisherKind",
    "Likelihood",
    "fisher_diagonal",
    "fisher_diagonal_reference",
    "supported_parameters",
]

logger = logging.getLogger(__name__)

FisherKind = Literal["empirical", "true"]
Likelihood = Literal["auto", "categorical", "gaussian"]
Batch = tuple[Any, Tensor]

# Upper bound on the size of one block of materialised per-example gradients.
_CHUNK_BYTES = 256 * 2**20


# --------------------------------------------------------------------------
# Small helpers shared by the fast path and the reference loop
# --------------------------------------------------------------------------
def _batch_size(inputs: Any) -> int:
    if isinstance(inputs, Tensor):
        return int(inputs.shape[0])
    if isinstance(inputs, Mapping):
        for value in inputs.values():
            if isinstance(value, Tensor):
                return int(value.shape[0])
    raise ValueError(
        f"batch inputs must be a Tensor or a mapping of Tensors, got {type(inputs).__name__}"
    )


def _slice(inputs: Any, start: int, stop: int) -> Any:
    if isinstance(inputs, Tensor):
        return inputs[start:stop]
    return {k: (v[start:stop] if isinstance(v, Tensor) else v) for k, v in inputs.items()}


def _to_device(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in inputs.items()}


def _forward(model: nn.Module, inputs: Any) -> Tensor:
    try:
        logits = forward_logits(model, dict(inputs) if isinstance(inputs, Mapping) else inputs)
    except TypeError as e:
        raise ValueError(str(e)) from None
    if logits.dim() == 1:
        logits = logits.unsqueeze(-1)
    return logits


def _resolve_likelihood(
    likelihood: Likelihood, logits: Tensor
) -> Literal["categorical", "gaussian"]:
    if likelihood == "auto":
        return "gaussian" if logits.shape[-1] == 1 else "categorical"
    return likelihood


def _loss_terms(
    logits: Tensor, targets: Tensor, kind: FisherKind, likelihood: Likelihood
) -> list[Tensor]:
    """Scalar losses whose per-example gradients, squared and summed, give the Fisher.

    Each returned scalar is ``sum_b w_b * l_b`` where the gradient of ``l_b``
    is (up to sign) the score of example ``b`` and ``w_b`` a detached weight,
    so the square of example ``b``'s gradient carries the weight ``w_b^2``.
    """
    like = _resolve_likelihood(likelihood, logits)
    if like == "gaussian":
        if logits.shape[-1] != 1:
            raise ValueError(
                f"gaussian likelihood needs a single-output head, got {logits.shape[-1]} outputs"
            )
        pred = logits[:, 0].float()
        if kind == "empirical":
            return [0.5 * (pred - targets.to(pred.dtype)).pow(2).sum()]
        return [pred.sum()]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    if kind == "empirical":
        return [-log_probs.gather(1, targets.long().view(-1, 1)).sum()]
    weights = log_probs.detach().exp().sqrt()
    return [(weights[:, c] * log_probs[:, c]).sum() for c in range(log_probs.shape[-1])]


def _check_kind(kind: str, likelihood: str) -> None:
    if kind not in ("empirical", "true"):
        raise ValueError(f"fisher kind must be 'empirical' or 'true', got {kind!r}")
    if likelihood not in ("auto", "categorical", "gaussian"):
        raise ValueError(
            f"likelihood must be 'auto', 'categorical' or 'gaussian', got {likelihood!r}"
        )


def _iter_examples(
    batches: Iterable[Batch], n_samples: int, device: torch.device
) -> Iterator[tuple[Any, Tensor]]:
    """Yield batches truncated so that exactly ``n_samples`` examples are seen."""
    if n_samples <= 0:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples}")
    seen = 0
    for batch in batches:
        try:
            inputs, targets = batch
        except (TypeError, ValueError):
            raise ValueError("each batch must be a pair (inputs, targets)") from None
        size = _batch_size(inputs)
        if size == 0:
            continue
        take = min(size, n_samples - seen)
        if take < size:
            inputs, targets = _slice(inputs, 0, take), targets[:take]
        yield _to_device(inputs, device), targets.to(device)
        seen += take
        if seen == n_samples:
            return
    raise ValueError(f"calibration data ran out after {seen} examples; n_samples={n_samples}")


class _EvalMode:
    """Put a model in eval mode and restore each module's flag afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for module, flag in self.flags:
            module.training = flag


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="ex", leave=False)


# --------------------------------------------------------------------------
# Per-layer rules: per-example gradients from (layer input, output gradient)
# --------------------------------------------------------------------------
# A rule returns, for one call of a layer, a function that maps the output
# gradient to {local parameter name: per-example gradient [B, *shape]}, and
# optionally a fast function giving the *squared sums* directly.
PerExample = Callable[[nn.Module, Tensor, Tensor], dict[str, Tensor]]


def _flat_middle(t: Tensor) -> Tensor:
    """[B, *, F] -> [B, T, F] (T = 1 when there is no middle dimension)."""
    return t.reshape(t.shape[0], -1, t.shape[-1])


def _square_sum_bmm(left: Tensor, right: Tensor, active: Tensor | None = None) -> Tensor:
    """``sum_b (left_b @ right_b)^2`` for ``left [B, O, L]``, ``right [B, L, I]``.

    Per-example products are formed a few examples at a time in one reused
    buffer (about 32 MB), squared in place and summed: the cost is the batched
    weight gradient's multiply-adds plus one pass over the per-example block.

    ``active [B, L]`` marks the positions that can contribute (padding tokens
    get exactly zero gradient): examples are taken in order of their active
    span and each chunk is cut to the span it needs, which skips padding.
    """
    b, o, i = left.shape[0], left.shape[1], right.shape[2]
    chunk = max(1, min(b, (32 * 2**20) // max(1, 4 * o * i)))
    acc = left.new_zeros(o, i)
    buf = left.new_empty(chunk, o, i)
    order: Tensor | None = None
    if active is not None:
        positions = torch.arange(active.shape[1], device=active.device)
        first = torch.where(active, positions, active.shape[1]).amin(1)
        last = torch.where(active, positions, -1).amax(1)
        order = torch.argsort(last - first, stable=True)
    for lo in range(0, b, chunk):
        hi = min(b, lo + chunk)
        if order is None:
            lhs, rhs = left[lo:hi], right[lo:hi]
        else:
            rows = order[lo:hi]
            start, stop = int(first[rows].min()), int(last[rows].max()) + 1
            if stop <= start:
                continue  # nothing active: these examples contribute zero
            lhs, rhs = left[rows, :, start:stop], right[rows, start:stop]
        out = buf[: hi - lo]
        torch.bmm(lhs, rhs, out=out)
        acc.add_(out.square_().sum(0))
    return acc


def _linear_grads(m: nn.Module, x: Tensor, g: Tensor) -> dict[str, Tensor]:
    x3, g3 = _flat_middle(x), _flat_middle(g)
    out = {"weight": torch.bmm(g3.transpose(1, 2), x3)}
    if getattr(m, "bias", None) is not None:
        out["bias"] = g3.sum(1)
    return out


def _linear_squares(m: nn.Module, x: Tensor, g: Tensor) -> dict[str, Tensor]:
    if x.dim() == 2:
        # No sequence dimension: sum_b (g_b x_b^T)^2 = (g^2)^T (x^2), never per example.
        out = {"weight": g.pow(2).t() @ x.pow(2)}
    else:
        x3, g3 = _flat_middle(x), _flat_middle(g)
        active = g3.abs().amax(-1) > 0
        out = {"weight": _square_sum_bmm(g3.transpose(1, 2), x3, active)}
    if getattr(m, "bias", None) is not None:
        out["bias"] = _flat_middle(g).sum(1).pow(2).sum(0)
    return out


def _conv2d_columns(m: nn.Conv2d, x: Tensor) -> Tensor:
    """Input patches ``[B, G, C/G * kh * kw, L]`` (im2col through strided views)."""
    assert not isinstance(m.padding, str)
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = m.kernel_size, m.stride, m.dilation, m.padding
    b, c = x.shape[:2]
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    # Windows of the dilated kernel, then the dilation's stride inside each window.
    v = xp.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    v = v[..., ::dh, ::dw]  # [B, C, Ho, Wo, kh, kw]
    ho, wo = v.shape[2], v.shape[3]
    cols = v.permute(0, 1, 4, 5, 2, 3).reshape(b, m.groups, (c // m.groups) * kh * kw, ho * wo)
    return cols


def _conv2d_grads(m: nn.Module, x: Tensor, g: Tensor) -> dict[str, Tensor]:
    assert isinstance(m, nn.Conv2d)
    b = x.shape[0]
    cols = _conv2d_columns(m, x)
    g4 = g.reshape(b, m.groups, -1, g.shape[-2] * g.shape[-1])
    weight = torch.einsum("bgol,bgcl->bgoc", g4, cols).reshape(b, *m.weight.shape)
    out = {"weight": weight}
    if m.bias is not None:
        out["bias"] = g.sum((2, 3))
    return out


def _conv2d_squares(m: nn.Module, x: Tensor, g: Tensor) -> dict[str, Tensor]:
    assert isinstance(m, nn.Conv2d)
    b, groups = x.shape[0], m.groups
    cols = _conv2d_columns(m, x)  # [B, G, Ckk, L]
    g4 = g.reshape(b, groups, -1, g.shape[-2] * g.shape[-1])  # [B, G, O/G, L]
    parts = [
        _square_sum_bmm(g4[:, j], cols[:, j].transpose(1, 2)) for j in range(groups)
    ]  # each [O/G, Ckk]
    out = {"weight": torch.cat(parts, 0).reshape(m.weight.shape)}
    if m.bias is not None:
        out["bias"] = g.sum((2, 3)).pow(2).sum(0)
    return out


def _conv2d_supported(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str)


def _embedding_squares(m: nn.Module, ids: Tensor, g: Tensor) -> dict[str, Tensor]:
    assert isinstance(m, nn.Embedding)
    b = ids.shape[0]
    ids2 = ids.reshape(b, -1)
    g2 = g.reshape(b, -1, g.shape[-1])
    vocab = m.num_embeddings
    keep = torch.ones_like(ids2, dtype=torch.bool)
    if m.padding_idx is not None:
        keep = ids2 != m.padding_idx
    rows = torch.arange(b, device=ids.device).view(-1, 1).expand_as(ids2)
    keys = (rows * vocab + ids2)[keep]
    uniq, inverse = torch.unique(keys, return_inverse=True)
    sums = g2.new_zeros(uniq.numel(), g2.shape[-1]).index_add_(0, inverse, g2[keep])
    out = g2.new_zeros(m.weight.shape).index_add_(0, uniq % vocab, sums.pow(2))
    return {"weight": out}


def _embedding_grads(m: nn.Module, ids: Tensor, g: Tensor) -> dict[str, Tensor]:
    assert isinstance(m, nn.Embedding)
    b = ids.shape[0]
    ids2 = ids.reshape(b, -1)
    g2 = g.reshape(b, -1, g.shape[-1])
    if m.padding_idx is not None:
        g2 = g2 * (ids2 != m.padding_idx).unsqueeze(-1).to(g2.dtype)
    out = g2.new_zeros(b, *m.weight.shape)
    out.scatter_add_(1, ids2.unsqueeze(-1).expand_as(g2), g2)
    return {"weight": out}


def _embedding_supported(m: nn.Module) -> bool:
    return isinstance(m, nn.Embedding) and m.max_norm is None and not m.scale_grad_by_freq


def _norm_grads(
    m: nn.Module, x: Tensor, g: Tensor, x_hat: Tensor, feat_dims: int
) -> dict[str, Tensor]:
    """Affine norm layers: d weight = sum over non-feature dims of g * x_hat."""
    b = x.shape[0]
    feat_shape = x.shape[x.dim() - feat_dims :]
    gx = (g * x_hat).reshape(b, -1, *feat_shape).sum(1)
    out = {}
    if getattr(m, "weight", None) is not None:
        out["weight"] = gx
    if getattr(m, "bias", None) is not None:
        out["bias"] = g.reshape(b, -1, *feat_shape).sum(1)
    return out


def _layer_norm_grads(m: nn.Module, x: Tensor, g: Tensor) -> dict[str, Tensor]:
    assert isinstance(m, nn.LayerNorm)
    dims = tuple(range(x.dim() - len(m.normalized_shape), x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    x_hat = (x - mean) * torch.rsqrt(var + m.eps)
    return _norm_grads(m, x, g, x_hat, len(m.normalized_shape))


def _rms_norm_grads(m: nn.Module, x: Tensor, g: Tensor) -> dict[str, Tensor]:
    assert isinstance(m, nn.RMSNorm)
    dims = tuple(range(x.dim() - len(m.normalized_shape), x.dim()))
    eps = m.eps if m.eps is not None else torch.finfo(x.dtype).eps
    x_hat = x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
    return _norm_grads(m, x, g, x_hat, len(m.normalized_shape))


def _batch_norm_grads(m: nn.Module, x: Tensor, g: Tensor) -> dict[str, Tensor]:
    assert isinstance(m, nn.modules.batchnorm._BatchNorm)
    assert m.running_mean is not None and m.running_var is not None
    shape = [1, -1] + [1] * (x.dim() - 2)
    x_hat = (x - m.running_mean.view(shape)) * torch.rsqrt(m.running_var.view(shape) + m.eps)
    b, c = x.shape[:2]
    out = {}
    if m.weight is not None:
        out["weight"] = (g * x_hat).reshape(b, c, -1).sum(-1)
    if m.bias is not None:
        out["bias"] = g.reshape(b, c, -1).sum(-1)
    return out


def _batch_norm_supported(m: nn.Module) -> bool:
    # In eval mode with running statistics, BatchNorm is a per-example affine map.
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None


@dataclass(frozen=True)
class _Rule:
    supported: Callable[[nn.Module], bool]
    grads: PerExample
    squares: Callable[[nn.Module, Tensor, Tensor], dict[str, Tensor] | None] | None = None


_RULES: tuple[_Rule, ...] = (
    _Rule(lambda m: isinstance(m, nn.Linear), _linear_grads, _linear_squares),
    _Rule(_conv2d_supported, _conv2d_grads, _conv2d_squares),
    _Rule(_embedding_supported, _embedding_grads, _embedding_squares),
    _Rule(lambda m: isinstance(m, nn.LayerNorm), _layer_norm_grads),
    _Rule(lambda m: isinstance(m, nn.RMSNorm), _rms_norm_grads),
    _Rule(_batch_norm_supported, _batch_norm_grads),
)


def _rule_for(module: nn.Module) -> _Rule | None:
    for rule in _RULES:
        if rule.supported(module):
            return rule
    return None


def supported_parameters(model: nn.Module) -> tuple[list[str], list[str]]:
    """Split a model's trainable parameters into hook-supported and fallback ones.

    Returns
    -------
    (fast, fallback)
        Parameter names scored by per-layer hooks, and names that need the
        per-example loop (unsupported layer types or parameters shared by
        several modules). BatchNorm is judged as in eval mode, the mode used
        for scoring.
    """
    owners: dict[int, list[tuple[str, nn.Module]]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            owners.setdefault(id(p), []).append((full, module))
    fast, fallback = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mods = {id(m) for _, m in owners[id(p)]}
        module = owners[id(p)][0][1]
        if len(mods) == 1 and _rule_for(module) is not None:
            fast.append(name)
        else:
            fallback.append(name)
    return fast, fallback


# --------------------------------------------------------------------------
# The fast path: hooks
# --------------------------------------------------------------------------
@dataclass
class _Call:
    module_key: str
    x: Tensor


@dataclass
class _HookState:
    """What the hooks of one forward/backward pass record."""

    rules: dict[str, tuple[nn.Module, _Rule, dict[str, str]]]
    accum: dict[str, Tensor]
    calls: dict[str, int] = field(default_factory=dict)
    pending: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    outputs: list[Tensor] = field(default_factory=list)
    scale: float = 1.0
    batch_size: int = 0


def _chunks(b: int, per_example_bytes: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_BYTES // max(1, per_example_bytes))
    return [(i, min(b, i + step)) for i in range(0, b, step)]


class _Hooks:
    """Forward and tensor hooks that turn layer gradients into squared sums."""

    def __init__(self, model: nn.Module, names: list[str], accum: dict[str, Tensor]) -> None:
        wanted = set(names)
        rules: dict[str, tuple[nn.Module, _Rule, dict[str, str]]] = {}
        for mod_name, module in model.named_modules():
            local = {}
            for p_name, _ in module.named_parameters(recurse=False):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if full in wanted:
                    local[p_name] = full
            if local:
                rule = _rule_for(module)
                assert rule is not None
                rules[mod_name] = (module, rule, local)
        self.state = _HookState(rules=rules, accum=accum)
        self.enabled = True
        self.handles = [
            module.register_forward_hook(self._make_forward_hook(key))
            for key, (module, _, _) in rules.items()
        ]

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def _make_forward_hook(self, key: str) -> Callable[..., Tensor | None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Tensor | None:
            if not self.enabled or not isinstance(output, Tensor) or not output.requires_grad:
                return None
            x, b = args[0].detach(), self.state.batch_size
            replaced = None
            if x.shape[0] != b or output.shape[0] != b:
                if x.shape[0] == 1 and output.shape[0] == 1:
                    # A layer applied once and broadcast over the batch (BERT's
                    # position embeddings): give each example its own copy so
                    # that its gradient arrives per example.
                    x = x.expand(b, *x.shape[1:])
                    output = replaced = output.expand(b, *output.shape[1:])
                else:
                    raise ValueError(
                        f"layer {key!r} saw a leading dimension of {x.shape[0]} in a batch of "
                        f"{b}; the fast Fisher needs batch-first layers (use method='loop')"
                    )
            call = _Call(key, x)
            self.state.calls[key] = self.state.calls.get(key, 0) + 1
            self.state.outputs.append(output)
            output.register_hook(lambda g, call=call: self._on_grad(call, g))
            return replaced

        return hook

    def _on_grad(self, call: _Call, g: Tensor) -> None:
        module, rule, local = self.state.rules[call.module_key]
        g = g.detach() * self.state.scale
        x = call.x
        single = self.state.calls[call.module_key] == 1
        if single and rule.squares is not None:
            squares = rule.squares(module, x, g)
            if squares is not None:
                self._add(local, squares)
                return
        numel = sum(p.numel() for p in module.parameters(recurse=False))
        for lo, hi in _chunks(x.shape[0], 4 * numel):
            grads = rule.grads(module, x[lo:hi], g[lo:hi])
            if single:
                self._add(local, {k: v.pow(2).sum(0) for k, v in grads.items()})
            else:
                self._pend(call.module_key, lo, hi, x.shape[0], grads)

    def _add(self, local: dict[str, str], squares: dict[str, Tensor]) -> None:
        for p_name, sq in squares.items():
            if p_name in local:
                self.state.accum[local[p_name]].add_(sq)

    def _pend(self, key: str, lo: int, hi: int, b: int, grads: dict[str, Tensor]) -> None:
        store = self.state.pending.setdefault(key, {})
        for p_name, v in grads.items():
            if p_name not in store:
                store[p_name] = v.new_zeros(b, *v.shape[1:])
            store[p_name][lo:hi] += v

    def finish_pass(self) -> None:
        """Square the summed per-example gradients of layers called several times."""
        for key, grads in self.state.pending.items():
            _, _, local = self.state.rules[key]
            self._add(local, {k: v.pow(2).sum(0) for k, v in grads.items()})
        self.state.pending.clear()

    def reset_forward(self) -> None:
        self.state.calls.clear()
        self.state.outputs.clear()
        self.state.pending.clear()


def _loop_squares(
    model: nn.Module,
    inputs: Any,
    targets: Tensor,
    params: dict[str, nn.Parameter],
    kind: FisherKind,
    likelihood: Likelihood,
    accum: dict[str, Tensor],
) -> None:
    """Add squared per-example gradients of ``params``, one example at a time."""
    names = list(params)
    tensors = [params[n] for n in names]
    for i in range(_batch_size(inputs)):
        logits = _forward(model, _slice(inputs, i, i + 1))
        for loss in _loss_terms(logits, targets[i : i + 1], kind, likelihood):
            grads = torch.autograd.grad(loss, tensors, retain_graph=True, allow_unused=True)
            for name, grad in zip(names, grads, strict=True):
                if grad is not None:
                    accum[name].add_(grad.detach().pow(2))


def _prepare(
    model: nn.Module, n_samples: int, kind: str, likelihood: str
) -> tuple[dict[str, nn.Parameter], dict[str, Tensor], torch.device]:
    _check_kind(kind, likelihood)
    params = _trainable(model)
    if not params:
        raise ValueError("model has no trainable parameters to score")
    device = next(iter(params.values())).device
    accum = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    return params, accum, device


def _finish(accum: dict[str, Tensor], n_samples: int) -> dict[str, Tensor]:
    for name, value in accum.items():
        value.div_(n_samples)
        if not torch.isfinite(value).all():
            raise ValueError(f"Fisher score of parameter {name!r} is not finite")
    return accum


def fisher_diagonal(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    n_samples: int,
    kind: FisherKind = "empirical",
    likelihood: Likelihood = "auto",
    method: Literal["auto", "loop"] = "auto",
    progress: bool = True,
) -> dict[str, Tensor]:
    """Diagonal empirical (or true) Fisher information of every trainable parameter.

    Parameters
    ----------
    model
        Called as ``model(inputs)`` for Tensor inputs or ``model(**inputs)``
        for mapping inputs; returns logits or an object with ``.logits``.
    batches
        Iterable of ``(inputs, targets)``. Exactly ``n_samples`` examples are
        used, in the order given (the last batch is truncated).
    n_samples
        Number of examples ``N`` to average over (the paper: 256 to 1024).
    kind
        ``"empirical"`` (true labels) or ``"true"`` (expectation over the
        model's predictive distribution).
    likelihood
        ``"categorical"`` (softmax over logits), ``"gaussian"`` (single output,
        unit variance; for regression such as STS-B) or ``"auto"`` (gaussian
        when the head has one output).
    method
        ``"auto"``: per-layer hooks where the layer type allows, the
        per-example loop elsewhere; ``"loop"``: the loop for everything (for
        models whose layers are not batch-first).
    progress
        Show a progress bar over examples.

    Returns
    -------
    dict
        Parameter name to a float32 tensor of the parameter's shape, for
        every parameter with ``requires_grad``.

    Notes
    -----
    The model is scored in eval mode (no dropout, BatchNorm uses and keeps its
    running statistics) and each module's mode is restored afterwards.
    ``.grad`` fields are left untouched.
    """
    if method == "loop":
        return fisher_diagonal_reference(
            model, batches, n_samples=n_samples, kind=kind, likelihood=likelihood, progress=progress
        )
    if method != "auto":
        raise ValueError(f"fisher method must be 'auto' or 'loop', got {method!r}")
    params, accum, device = _prepare(model, n_samples, kind, likelihood)
    fast, fallback = supported_parameters(model)
    if fallback:
        logger.info(
            "Fisher: %d parameter(s) need the per-example loop: %s",
            len(fallback),
            ", ".join(fallback[:5]) + (" ..." if len(fallback) > 5 else ""),
        )
    hooks = _Hooks(model, fast, accum)
    bar = _progress(n_samples, progress, "Fisher")
    try:
        with _EvalMode(model):
            for inputs, targets in _iter_examples(batches, n_samples, device):
                hooks.reset_forward()
                hooks.state.batch_size = _batch_size(inputs)
                logits = _forward(model, inputs)
                losses = _loss_terms(logits, targets, kind, likelihood)
                drivers = list(hooks.state.outputs)
                for loss in losses:
                    if drivers:
                        # Gradients with respect to layer outputs only: the hooks
                        # see every output gradient, no weight gradient is formed.
                        torch.autograd.grad(loss, drivers, retain_graph=True, allow_unused=True)
                        hooks.finish_pass()
                if fallback:
                    hooks.reset_forward()
                    hooks.enabled = False
                    _loop_squares(
                        model,
                        inputs,
                        targets,
                        {n: params[n] for n in fallback},
                        kind,
                        likelihood,
                        accum,
                    )
                    hooks.enabled = True
                bar.update(_batch_size(inputs))
    finally:
        hooks.close()
        bar.close()
    return _finish(accum, n_samples)


def fisher_diagonal_reference(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    n_samples: int,
    kind: FisherKind = "empirical",
    likelihood: Likelihood = "auto",
    progress: bool = False,
) -> dict[str, Tensor]:
    """The slow, obvious Fisher: one backward pass per example (and per class).

    Same contract as :func:`fisher_diagonal`; used as the test reference and
    to score layer types the fast path does not know.
    """
    params, accum, device = _prepare(model, n_samples, kind, likelihood)
    bar = _progress(n_samples, progress, "Fisher (loop)")
    try:
        with _EvalMode(model):
            for inputs, targets in _iter_examples(batches, n_samples, device):
                _loop_squares(model, inputs, targets, params, kind, likelihood, accum)
                bar.update(_batch_size(inputs))
    finally:
        bar.close()
    return _finish(accum, n_samples)
