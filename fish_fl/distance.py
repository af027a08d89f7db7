"""How far fine-tuning moves each weight matrix from the pre-trained model.

"How fine can fine-tuning be? Learning efficient language models"
(Radiya-Dixit and Wang, AISTATS 2020, arXiv 2004.14129; Table 2 and Figure 2)
measures, per weight matrix of BERT, the L1 distance and the angular distance
between the pre-trained and the fine-tuned weights, and finds both small and
varying by layer and by matrix type.

For tensors ``a`` and ``b`` of the same shape:

* L1 distance ``sum |a - b|`` (also reported per entry, divided by the size);
* angular distance ``arccos(cos(a, b)) / pi`` in [0, 1], computed as
  ``2 atan2(|u - v|, |u + v|) / pi`` with ``u = a / |a|`` and ``v = b / |b|``
  in float64 (the same angle; exactly 0 for equal tensors, and accurate near
  0 where ``arccos`` is not).

Names are grouped by encoder block (``encoder.layer.N``) and matrix type
(``attention.self.query``, ``intermediate.dense``, ...) for a heat map.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ParameterDistance",
    "align_state_dicts",
    "angular_distance",
    "distance_heatmap_figure",
    "l1_distance",
    "layer_and_type",
    "load_state_dict",
    "parameter_distances",
    "plot_distance_heatmap",
]

logger = logging.getLogger(__name__)

_BLOCK = re.compile(r"(?:^|\.)(?:encoder\.layer|layers?|h|blocks?)\.(\d+)\.")
METRICS = ("angular", "l1_per_entry", "l1")


def l1_distance(a: Tensor, b: Tensor) -> float:
    """``sum |a - b|`` in float64."""
    _same_shape(a, b)
    return float((a.detach().double() - b.detach().double()).abs().sum())


def angular_distance(a: Tensor, b: Tensor) -> float:
    """``arccos(cos(a, b)) / pi`` in [0, 1] (see the module docstring).

    Two zero tensors are at distance 0; a zero and a non-zero tensor have no
    angle and give NaN.
    """
    _same_shape(a, b)
    x = a.detach().double().reshape(-1)
    y = b.detach().double().reshape(-1)
    nx, ny = float(torch.linalg.vector_norm(x)), float(torch.linalg.vector_norm(y))
    if nx == 0.0 or ny == 0.0:
        return 0.0 if nx == ny else math.nan
    u, v = x / nx, y / ny
    diff = float(torch.linalg.vector_norm(u - v))
    total = float(torch.linalg.vector_norm(u + v))
    return 2.0 * math.atan2(diff, total) / math.pi


def _same_shape(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"tensors differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")


def layer_and_type(name: str) -> tuple[int | None, str]:
    """Block index and matrix type of a parameter name.

    ``bert.encoder.layer.3.attention.self.query.weight`` gives
    ``(3, "attention.self.query")``; a name outside numbered blocks gives
    ``(None, <name without its model prefix and .weight>)``, e.g.
    ``(None, "embeddings.word_embeddings")``.
    """
    stem = re.sub(r"\.(weight|bias)$", "", name)
    m = _BLOCK.search(stem + ".")
    if m:
        return int(m.group(1)), (stem + ".")[m.end() :].rstrip(".") or "block"
    parts = stem.split(".")
    if len(parts) > 2 and parts[1] in ("embeddings", "encoder", "pooler"):
        parts = parts[1:]  # drop the model prefix (bert., roberta., ...)
    return None, ".".join(parts)


@dataclass(frozen=True)
class ParameterDistance:
    """Distances of one tensor between two checkpoints.

    Attributes
    ----------
    name
        Tensor name (as in the first checkpoint).
    layer
        Encoder block index, or ``None`` outside numbered blocks.
    kind
        Matrix type (``attention.self.key``, ``output.dense``, ...).
    numel
        Entries.
    l1
        ``sum |a - b|``.
    angular
        ``arccos(cos(a, b)) / pi``.
    """

    name: str
    layer: int | None
    kind: str
    numel: int
    l1: float
    angular: float

    @property
    def l1_per_entry(self) -> float:
        return self.l1 / self.numel if self.numel else 0.0

    def value(self, metric: str) -> float:
        if metric not in METRICS:
            raise ValueError(f"distance metric must be one of {', '.join(METRICS)}, got {metric!r}")
        return float(getattr(self, metric))


def align_state_dicts(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> list[tuple[str, str]]:
    """Pairs ``(name in a, name in b)`` of tensors present in both.

    Names are matched exactly, and the others up to a constant prefix on one
    side (a base encoder's ``encoder.layer.0...`` against a
    classifier's ``bert.encoder.layer.0...``).

    Raises
    ------
    ValueError
        If the checkpoints share no tensor.
    """
    pairs = [(n, n) for n in a if n in b]
    rest_a = [n for n in a if n not in b]
    rest_b = [n for n in b if n not in a]
    # A constant prefix on b's side (base "encoder.x" vs "bert.encoder.x") ...
    prefix = next((k[: -len(n)] for n in rest_a for k in rest_b if k.endswith("." + n)), None)
    if prefix is not None:
        pairs += [(n, prefix + n) for n in rest_a if prefix + n in b]
    else:
        # ... or on a's side.
        prefix = next((n[: -len(k)] for k in rest_b for n in rest_a if n.endswith("." + k)), None)
        if prefix is not None:
            pairs += [(prefix + k, k) for k in rest_b if prefix + k in a]
    if not pairs:
        raise ValueError("the two checkpoints share no tensor name (different models?)")
    return pairs


def parameter_distances(
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    *,
    matrices_only: bool = True,
) -> list[ParameterDistance]:
    """L1 and angular distance per tensor present in both state dicts.

    Tensors of different shapes (a new task head) and, with
    ``matrices_only``, tensors of fewer than two dimensions are skipped
    (logged). Integer buffers are skipped.

    Raises
    ------
    ValueError
        If no tensor is left to compare.
    """
    out = []
    skipped = []
    for na, nb in align_state_dicts(a, b):
        ta, tb = a[na], b[nb]
        if not (ta.is_floating_point() and tb.is_floating_point()):
            continue
        if ta.shape != tb.shape:
            skipped.append(na)
            continue
        if matrices_only and ta.dim() < 2:
            continue
        layer, kind = layer_and_type(na)
        out.append(
            ParameterDistance(
                name=na,
                layer=layer,
                kind=kind,
                numel=int(ta.numel()),
                l1=l1_distance(ta, tb),
                angular=angular_distance(ta, tb),
            )
        )
    if skipped:
        logger.info("skipped %d tensor(s) of different shapes, e.g. %s", len(skipped), skipped[0])
    if not out:
        raise ValueError("no tensor of the same name and shape to compare in the two checkpoints")
    return out


# --------------------------------------------------------------------------
# Loading checkpoints
# --------------------------------------------------------------------------
def _load_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a readable safetensors file ({e})") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle and zip errors of every kind
        raise ValueError(f"{path} is not a readable torch checkpoint ({e})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return dict(state)


def _load_folder(path: Path) -> dict[str, Tensor]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(_load_file(path / shard))
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return _load_file(path / name)
    raise ValueError(
        f"{path} holds no model.safetensors or pytorch_model.bin (not a save_pretrained folder)"
    )


def _is_delta(path: Path) -> bool:
    from safetensors import safe_open

    from .checkpoint import DELTA_FORMATS

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") in DELTA_FORMATS
    except Exception:  # not safetensors at all: _load_file reports it
        return False


def _load_delta(path: Path) -> dict[str, Tensor]:
    from .checkpoint import apply_sparse_delta, read_delta_metadata
    from .config import RunConfig
    from .task import build_task_model

    meta = read_delta_metadata(path)
    if "run-config" not in meta:
        raise ValueError(f"{path} does not say which run made it (no run-config metadata)")
    model = build_task_model(RunConfig.from_json(meta["run-config"]))
    apply_sparse_delta(model, path)
    return {n: t.detach() for n, t in model.state_dict().items()}


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a checkpoint on disk.

    ``path`` is a folder written by ``save_pretrained`` (``model.safetensors``,
    ``pytorch_model.bin`` or sharded), a ``.safetensors`` state dict, a
    ``.bin``/``.pt`` state dict, or a fish-fl sparse delta (applied to the
    base its stored run configuration names).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it is not a readable checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _load_folder(path)
    if path.suffix == ".safetensors" and _is_delta(path):
        return _load_delta(path)
    return _load_file(path)


# --------------------------------------------------------------------------
# The heat map
# --------------------------------------------------------------------------
def distance_heatmap_figure(
    distances: Sequence[ParameterDistance], metric: str = "angular"
) -> Figure:
    """Matrix type (rows) by encoder block (columns), coloured by ``metric``.

    Tensors outside numbered blocks are left out of the map.

    Raises
    ------
    ValueError
        If no tensor lies in a numbered block, or on an unknown metric.
    """
    from matplotlib.figure import Figure

    if metric not in METRICS:
        raise ValueError(f"distance metric must be one of {', '.join(METRICS)}, got {metric!r}")
    blocked = [d for d in distances if d.layer is not None]
    if not blocked:
        raise ValueError("no tensor lies in a numbered block (encoder.layer.N): nothing to map")
    layers = sorted({d.layer for d in blocked if d.layer is not None})
    kinds = list(dict.fromkeys(d.kind for d in blocked))
    grid = torch.full((len(kinds), len(layers)), math.nan, dtype=torch.float64)
    for d in blocked:
        grid[kinds.index(d.kind), layers.index(d.layer)] = d.value(metric)  # type: ignore[arg-type]
    fig = Figure(figsize=(1.2 + 0.7 * len(layers), 1.0 + 0.45 * len(kinds)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(layers)), [str(i) for i in layers])
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_xlabel("encoder block")
    label = {"angular": "angular distance", "l1": "L1 distance", "l1_per_entry": "L1 per entry"}
    fig.colorbar(image, ax=ax, label=label[metric])
    ax.set_title(f"{label[metric]} by block and matrix type")
    return fig


def plot_distance_heatmap(
    distances: Sequence[ParameterDistance], out: str | Path, metric: str = "angular"
) -> Path:
    """Write :func:`distance_heatmap_figure` to ``out`` (PNG, SVG or PDF by suffix)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from .fileio import save_figure_atomic

    fig = distance_heatmap_figure(distances, metric)
    FigureCanvasAgg(fig)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure_atomic(fig, out, dpi=120)
    return out
