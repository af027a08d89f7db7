"""``supermask`` as a federated method: the sparse wire with learned masks instead of weights.

"How fine can fine-tuning be?" (Radiya-Dixit and Wang, AISTATS 2020, arXiv
2004.14129) fine-tunes by learning only a binary mask over the frozen
pre-trained weights. The federation's model is a :class:`SupermaskModel`;
the ``supermask`` mask keeps its scores and its task head, so the base every
node rebuilds, validation, the ledger and checkpoints are the sparse wire's.
What changes (``supermask-uplink``):

- ``scores``: nodes send their score and head updates, combined as any
  sparse update;
- ``mask``: nodes send a binary mask sampled from their trained scores,
  packed 1 bit per masked weight, plus the head's update; the new keep
  probability is the example-weighted mean of the masks (FedPM, Isik et al.,
  ICLR 2023), see :func:`combine_sampled_masks`.

With ``supermask-downlink=masks`` (or ``auto`` below 32 clients a round) the
server sends the last round's sampled masks instead of float32 scores, and
the node rebuilds the scores (:func:`values_from_masks`). Full-model
equivalents count against the wrapped model's dense float32 size.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import protocol as P
from ..aggregate import aggregate_updates
from ..codec import UpdateCodec
from ..federation.wire import ArrayView, decode_array
from ..fileio import write_json_atomic
from ..masks import Mask
from ..methods import SparseMethod, TrainReply, register_method
from ..training import SparseParameters
from .config import DEFAULT_MASKABLE, SupermaskConfig
from .federated import SupermaskLayout, combine_sampled_masks, scores_fingerprint, values_from_masks
from .layer import SupermaskModel
from .train import evaluate_supermask, make_supermask_optimizer

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..federation.state import ServerState
    from ..federation.sync import Sent

__all__ = [
    "CFG_SCORES_FINGERPRINT",
    "SAMPLED_MASK",
    "SCORE_MASKS",
    "SCORE_WEIGHTS",
    "SupermaskMethod",
    "VISION_MASKABLE",
]

# The method's own message keys (besides those in fish_fl.protocol).
#: Uplink: a sampled binary mask, 1 bit per masked weight (with ``update``: the head's).
SAMPLED_MASK = "sampled-mask"
#: Downlink with ``supermask-downlink=masks``: the last aggregation's packed masks,
#: one row each (``values`` then holds the head's values only) ...
SCORE_MASKS = "score-masks"
#: ... and their weights (float64); the node rebuilds the scores from both.
SCORE_WEIGHTS = "score-weights"
#: Config: a fingerprint of the scores the node must rebuild (checked by the node).
CFG_SCORES_FINGERPRINT = "scores-fingerprint"

#: Default supermask patterns of a CIFAR ResNet: the stem and every block's convolutions.
VISION_MASKABLE: tuple[str, ...] = ("conv1", r"layer\d+")

# Keys of the method's state in the server checkpoint.
_MASKS = "extra/score-masks"
_WEIGHTS = "extra/score-weights"

#: The four keys with which a supermask learns its own mask.
_FIXED = {
    "mask_source": "server",
    "mask_assignment": "shared",
    "warmup_rounds": 0,
    "mask_refresh": 0,
}


def supermask_config(config: RunConfig, *, vision: bool) -> SupermaskConfig:
    """The supermask options of a run (``vision``: default patterns of a ResNet)."""
    maskable = config.supermask_maskable or (VISION_MASKABLE if vision else DEFAULT_MASKABLE)
    return SupermaskConfig(
        maskable=maskable,
        head_patterns=config.head_patterns,
        initial_sparsity=config.supermask_initial_sparsity,
        score_lr=config.supermask_score_lr,
        head_lr=config.lr,
        head_weight_decay=config.weight_decay,
        seed=config.seed,
    )


def masks_down(config: RunConfig) -> bool:
    """True when the scores go down as the last round's sampled masks."""
    if config.supermask_downlink == "auto":
        # n masks of 1 bit per weight beat 32-bit scores below 32 replies a round.
        return config.supermask_uplink == "mask" and config.sampled_clients < 32
    return config.supermask_downlink == "masks"


@register_method("supermask")
class SupermaskMethod(SparseMethod):
    """Federated supermask training (see the module docstring)."""

    model_keys = (
        "supermask-initial-sparsity",
        "supermask-score-lr",
        "supermask-maskable",
        "supermask-eval",
        "head-patterns",
        "lr",
        "weight-decay",
    )
    # A reply carries scores or mask bits beside the head's update: not for dp-mode.
    plain_updates = False
    # The share of masked weights the most likely mask drops.
    log_columns = (("dropped", 8),)

    report_columns = (
        ("sm_sparsity_pct", "mask sparsity %", ".2f"),
        ("sm_sampled", "sampled masks", ".4f"),
        ("sm_bits_up", "bits up per masked weight", ".4g"),
    )
    report_note = (
        "Supermask runs: mask sparsity = masked weights dropped by the final most likely "
        "mask; sampled masks = the metric with masks sampled from the final scores (mean "
        "over the samples, then over seeds); bits up per masked weight = the bytes of a "
        "reply in the last round, as serialised, x 8 / masked weights."
    )

    @classmethod
    def log_cells(cls, row: dict[str, Any]) -> list[str]:
        dropped = (row.get("supermask") or {}).get("sparsity_threshold")
        return ["-" if dropped is None else f"{100 * dropped:.2f}%"]

    @classmethod
    def report_stats(cls, rows: list[dict[str, Any]], run_dir: Path | None) -> dict[str, float]:
        """The final mask: sparsity, sampled-mask score, uplink bits per weight.

        From ``supermask.json`` (written after the last round) and the last
        round's ``supermask`` entry in ``metrics.jsonl``.
        """
        out: dict[str, float] = {}
        if run_dir is not None and (run_dir / "supermask.json").is_file():
            report = json.loads((run_dir / "supermask.json").read_text(encoding="utf-8"))
            out["sm_sparsity_pct"] = 100.0 * float(report["sparsity_threshold"])
            if report.get("sampled_metrics"):
                out["sm_sampled"] = float(report["sampled_mean"])
        logged = [r for r in rows if isinstance(r.get("supermask"), dict) and r["round"] > 0]
        if logged:
            out["sm_bits_up"] = float(logged[-1]["supermask"]["bits_per_weight_up"])
        return out

    def __init__(self, config: RunConfig) -> None:
        super().__init__(config)
        self.sends_masks = config.supermask_uplink == "mask"
        self.masks_down = masks_down(config)
        self._layout: SupermaskLayout | None = None

    # -- configuration ------------------------------------------------------------
    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        from ..config import ConfigError

        for name, allowed in _FIXED.items():
            value = getattr(config, name)
            if value != allowed:
                key = name.replace("_", "-")
                raise ConfigError(
                    f"mask-method=supermask learns its own mask; it needs {key}={allowed!r}, got {value!r}"
                )
        if config.optimizer != "adamw":
            raise ConfigError(
                "mask-method=supermask trains its scores with Adam and its head with AdamW; "
                f"it needs optimizer='adamw', got {config.optimizer!r}"
            )
        if config.supermask_uplink == "mask" and config.aggregation != "mean":
            raise ConfigError(
                f"supermask-uplink=mask averages the sampled masks; it needs aggregation='mean', got {config.aggregation!r}"
            )
        if config.supermask_uplink == "mask" and config.server_optimizer != "none":
            raise ConfigError(
                "supermask-uplink=mask estimates the scores from the sampled masks, and nodes "
                "rebuild them from those masks; it needs server-optimizer='none', got "
                f"{config.server_optimizer!r} (supermask-uplink=scores takes a server optimiser)"
            )
        if config.supermask_downlink == "masks" and config.supermask_uplink != "mask":
            raise ConfigError(
                "supermask-downlink=masks forwards the clients' sampled masks; it needs "
                f"supermask-uplink='mask', got {config.supermask_uplink!r}"
            )
        if config.supermask_initial_sparsity >= 1.0:
            raise ConfigError(
                f"supermask-initial-sparsity={config.supermask_initial_sparsity!r} must be < 1"
            )
        try:
            supermask_config(config, vision=False)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    # -- the model ------------------------------------------------------------------
    def wrap_model(self, model: nn.Module, *, vision: bool) -> nn.Module:
        return SupermaskModel(
            model,
            supermask_config(self.config, vision=vision),
            eval_mask=self.config.supermask_eval,  # type: ignore[arg-type]
        )

    def model_numel(self, model: nn.Module) -> int:
        assert isinstance(model, SupermaskModel)
        return sum(p.numel() for p in model.model.parameters())

    def layout(self, state: ServerState) -> SupermaskLayout:
        assert state.plan is not None and isinstance(state.model, SupermaskModel)
        if self._layout is None or self._layout.k != state.plan.union.k:
            self._layout = SupermaskLayout.of(state.model, state.plan.union)
        return self._layout

    # -- server: what goes down -------------------------------------------------------
    def value_arrays(self, values: Tensor, state: ServerState) -> dict[str, np.ndarray]:
        if not self.masks_down:
            return super().value_arrays(values, state)
        # The head as float32; the scores as the masks they were made from.
        layout = self.layout(state)
        arrays = {P.VALUES: layout.head(values).numpy()}
        if _MASKS in state.extra:
            arrays[SCORE_MASKS] = state.extra[_MASKS].numpy()
            arrays[SCORE_WEIGHTS] = state.extra[_WEIGHTS].numpy()
        return arrays

    def value_config(self, values: Tensor, state: ServerState) -> dict[str, Any]:
        if not self.masks_down:
            return {}
        return {CFG_SCORES_FINGERPRINT: scores_fingerprint(values, self.layout(state))}

    def paper_bytes(self, k: int, total: int, *, value_bytes: int = 4) -> int:
        return 0  # the paper's values-and-indices accounting does not describe a supermask

    # -- server: what comes up -----------------------------------------------------------
    def reply_arrays(self) -> set[str]:
        return {P.UPDATE, SAMPLED_MASK} if self.sends_masks else {P.UPDATE}

    def update_length(self, sent: Sent, state: ServerState) -> int:
        return self.layout(state).num_head if self.sends_masks else sent.k

    def decode_extra(
        self, arrays: Mapping[str, ArrayView], state: ServerState
    ) -> dict[str, np.ndarray]:
        if not self.sends_masks:
            return {}
        layout = self.layout(state)
        packed = decode_array(
            arrays[SAMPLED_MASK], SAMPLED_MASK, dtype="u1", length=layout.packed_bytes
        )
        layout.unpack(packed)  # raises on set padding bits
        return {SAMPLED_MASK: packed}

    def combine(self, state: ServerState, replies: list[TrainReply]) -> Tensor:
        if not self.sends_masks:
            return super().combine(state, replies)
        layout = self.layout(state)
        # The head's updates in head order: aggregate over the k-vector, then pick.
        updates = [
            dataclasses.replace(r, positions=layout.head_positions).update() for r in replies
        ]
        head = aggregate_updates(updates, layout.k, self.config.aggregation_config())[
            layout.head_positions
        ]
        packed = [r.extra[SAMPLED_MASK] for r in replies]
        weights = [r.weight for r in replies]
        assert isinstance(state.model, SupermaskModel)
        state.extra[_MASKS] = torch.from_numpy(np.stack(packed))
        state.extra[_WEIGHTS] = torch.tensor(weights, dtype=torch.float64)
        return combine_sampled_masks(
            state.values,
            layout,
            packed,
            head,
            weights,
            max_score=state.model.config.score_high,
        )

    def round_info(self, state: ServerState, row: Mapping[str, Any]) -> dict[str, Any]:
        wrapper = state.model
        assert isinstance(wrapper, SupermaskModel)
        probs = torch.cat([p.reshape(-1).double() for p in wrapper.probabilities().values()])
        numel = int(probs.numel())
        rnd = int(row["round"])
        up_bytes = int(row.get("train_bytes_up") or 0) if rnd > 0 else 0
        up_messages = int(row.get("train_messages_up") or 0) if rnd > 0 else 0
        sent = max(1, int(row.get("messages_down") or 0))
        mask_bits = None
        if rnd > 0 and self.sends_masks and _MASKS in state.extra and row.get("replies"):
            mask_bits = 8.0 * state.extra[_MASKS].shape[1] / self.layout(state).num_scores
        return {
            "supermask": {
                "uplink": self.config.supermask_uplink,
                "masked_weights": numel,
                "sparsity_expected": 1.0 - float(probs.mean()),
                "sparsity_threshold": float((probs <= 0.5).double().mean()),
                # Measured on the serialised training replies: bytes per reply, per masked weight.
                "bits_per_weight_up": 8.0 * up_bytes / max(1, up_messages) / numel,
                "mask_bits_per_weight": mask_bits,
                "downlink": "masks" if self.masks_down else "scores",
                "bits_per_weight_down": 0.0 if rnd == 0 else 8.0 * row["bytes_down"] / sent / numel,
            }
        }

    def finish(
        self, model: nn.Module, evaluate: Any, run_dir: Any
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Final scores with the expected, most likely and sampled masks; sparsity per weight.

        ``evaluate`` is ``(loader, metric_task, device)`` of the held-out set.
        """
        assert isinstance(model, SupermaskModel)
        loader, task, device = evaluate
        report = evaluate_supermask(
            model,
            loader,
            task,
            device=device,
            samples=self.config.supermask_eval_samples,
            generator=torch.Generator().manual_seed(self.config.seed + 1),
        )
        summary = {
            "metric": report.metric,
            **report.summary(),
            "expected_metrics": report.expected,
            "threshold_metrics": report.threshold,
            "sampled_metrics": report.sampled,
            "layers": [dataclasses.asdict(layer) for layer in report.layers],
        }
        write_json_atomic(Path(run_dir) / "supermask.json", summary, sort_keys=False)
        # The deployable model: the most likely binary mask laid over the weights.
        return model.materialize(model.masks("threshold")), {"supermask": summary}

    # -- node --------------------------------------------------------------------------------
    def node_values(
        self,
        model: nn.Module,
        mask: Mask,
        values: Tensor,
        cfg: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
    ) -> Tensor:
        """With the mask downlink: rebuild the scores from the masks, checked by fingerprint."""
        if not self.masks_down:
            return values
        if not isinstance(model, SupermaskModel):
            raise P.NodeError(
                P.Status.BAD_MESSAGE, "a supermask message reached a node whose model is not one"
            )
        layout = SupermaskLayout.of(model, mask)
        packed: list[np.ndarray] = []
        weights: list[float] = []
        if SCORE_MASKS in arrays:
            rows = np.asarray(arrays[SCORE_MASKS])
            raw = np.asarray(arrays[SCORE_WEIGHTS]) if SCORE_WEIGHTS in arrays else None
            if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != layout.packed_bytes:
                raise P.NodeError(
                    P.Status.BAD_MESSAGE,
                    f"score masks must be uint8 rows of {layout.packed_bytes} bytes, "
                    f"got {rows.dtype} {rows.shape}",
                )
            if raw is None or raw.shape != (rows.shape[0],):
                raise P.NodeError(P.Status.BAD_MESSAGE, "score masks came without one weight each")
            packed, weights = list(rows), [float(w) for w in raw]
        try:
            rebuilt = values_from_masks(
                mask.gather(model),
                layout,
                values,
                packed,
                weights,
                max_score=model.config.score_high,
            )
        except ValueError as e:
            raise P.NodeError(P.Status.BAD_MESSAGE, f"cannot rebuild the scores: {e}") from None
        expected = str(cfg.get(CFG_SCORES_FINGERPRINT, ""))
        got = scores_fingerprint(rebuilt, layout)
        if got != expected:
            raise P.NodeError(
                P.Status.BAD_MESSAGE,
                f"rebuilt scores have fingerprint {got}, the server's are {expected}",
            )
        return rebuilt

    def node_optimizer(
        self, sparse: SparseParameters, model: nn.Module, round_lr: float
    ) -> torch.optim.Optimizer:
        # Scores and head have their own rates; the round's schedule scales both.
        assert isinstance(model, SupermaskModel)
        optimizer = make_supermask_optimizer(sparse, model.config)
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * (round_lr / self.config.lr)
        return optimizer

    def before_training(self, model: nn.Module, device: torch.device, seed: int) -> None:
        # Training samples drawn on the device that trains (no uniforms copied per pass).
        assert isinstance(model, SupermaskModel)
        model.generator = torch.Generator(device=device).manual_seed(seed)

    def node_reply(
        self,
        trained: Tensor,
        received: Tensor,
        model: nn.Module,
        mask: Mask,
        seed: int,
        codec: UpdateCodec,
    ) -> dict[str, np.ndarray]:
        if not self.sends_masks:
            return super().node_reply(trained, received, model, mask, seed, codec)
        # The head's update and a mask sampled from the trained scores, 1 bit per weight.
        assert isinstance(model, SupermaskModel)
        layout = SupermaskLayout.of(model, mask)
        return {
            P.UPDATE: codec.encode(layout.head(trained) - layout.head(received)),
            SAMPLED_MASK: layout.sample_packed(trained, torch.Generator().manual_seed(seed + 1)),
        }
