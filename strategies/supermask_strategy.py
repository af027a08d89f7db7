"""Federated supermasks: the FISH strategy with learned masks instead of trained weights.

"How fine can fine-tuning be?" (Radiya-Dixit and Wang, AISTATS 2020, arXiv
2004.14129) fine-tunes by learning only a binary mask over the frozen
pre-trained weights. Here the global model is a
:class:`~fish_fl.supermask.SupermaskModel`; the ``supermask`` mask keeps its
scores and its task head, so the messages, the base model every node
rebuilds, validation, the ledger and checkpoints are the FISH strategy's.
What changes (``supermask-uplink``):

- ``scores``: nodes send their score and head updates, combined as any
  sparse update;
- ``mask``: nodes send a binary mask sampled from their trained scores,
  packed 1 bit per masked weight, plus the head's update; the new keep
  probability is the example-weighted mean of the masks (FedPM, Isik et al.,
  ICLR 2023), see :func:`fish_fl.supermask.combine_sampled_masks`.

Full-model equivalents are counted against the wrapped model's dense float32
size (the scores are not part of the model a user deploys).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fish_fl import protocol as P
from fish_fl.aggregate import ClientUpdate, aggregate_updates
from fish_fl.ledger import CommLedger
from fish_fl.supermask import SupermaskLayout, SupermaskModel, scores_fingerprint

from .fish_strategy import FishMaskStrategy, _Sent

__all__ = ["SupermaskStrategy"]

logger = logging.getLogger(__name__)


class SupermaskStrategy(FishMaskStrategy):
    """Federated supermask training; takes the arguments of :class:`FishMaskStrategy`.

    Raises
    ------
    ValueError
        If the model is not a :class:`SupermaskModel` or the run is not
        ``mask-method=supermask``.
    """

    def __init__(self, config: Any, model: torch.nn.Module, **kwargs: Any) -> None:
        if not isinstance(model, SupermaskModel) or config.mask_method != "supermask":
            raise ValueError(
                "SupermaskStrategy needs mask-method=supermask and a SupermaskModel "
                f"(got {config.mask_method!r} and {type(model).__name__})"
            )
        super().__init__(config, model, **kwargs)
        self.wrapper = model
        self.ledger = CommLedger(sum(p.numel() for p in model.model.parameters()))
        self.layout: SupermaskLayout | None = None
        self._masks: list[tuple[np.ndarray, float]] = []
        self._bits_up: list[float] = []
        # The masks and weights the current scores were made from (mask downlink).
        self.last_masks: list[np.ndarray] = []
        self.last_weights: list[float] = []
        self._train_up = (0, 0)  # bytes and messages of the last round's training replies

    @property
    def sends_masks(self) -> bool:
        return self.config.supermask_uplink == "mask"

    def _current_layout(self) -> SupermaskLayout:
        assert self.plan is not None
        if self.layout is None or self.layout.k != self.plan.union.k:
            self.layout = SupermaskLayout.of(self.wrapper, self.plan.union)
        return self.layout

    @property
    def masks_down(self) -> bool:
        return self.config.supermask_masks_down

    # -- what goes down -----------------------------------------------------------
    def _value_arrays(self, values: torch.Tensor) -> dict[str, np.ndarray]:
        if not self.masks_down:
            return super()._value_arrays(values)
        # The head as float32; the scores as the masks they were made from.
        layout = self._current_layout()
        arrays = {P.VALUES: layout.head(values).numpy()}
        if self.last_masks:
            arrays[P.SCORE_MASKS] = np.stack(self.last_masks)
            arrays[P.SCORE_WEIGHTS] = np.asarray(self.last_weights, dtype=np.float64)
        return arrays

    def _value_config(self, values: torch.Tensor) -> dict[str, Any]:
        if not self.masks_down:
            return {}
        return {P.CFG_SCORES_FINGERPRINT: scores_fingerprint(values, self._current_layout())}

    # -- replies ----------------------------------------------------------------
    def _reply_arrays(self) -> set[str]:
        return {P.UPDATE, P.SAMPLED_MASK} if self.sends_masks else {P.UPDATE}

    def _update_length(self, sent: _Sent) -> int:
        return self._current_layout().num_head if self.sends_masks else sent.k

    def _check_extra(self, arrays: ArrayRecord, sent: _Sent) -> None:
        if not self.sends_masks:
            return
        packed = arrays[P.SAMPLED_MASK].numpy()
        if packed.dtype != np.uint8 or packed.ndim != 1:
            raise ValueError(
                f"sampled mask must be a 1-D array of uint8 bytes, got {packed.dtype} {packed.shape}"
            )
        self._current_layout().unpack(packed)  # raises on a wrong size or set padding bits

    def _client_update(
        self, node_id: int, delta: torch.Tensor, sent: _Sent, arrays: ArrayRecord, weight: float
    ) -> ClientUpdate:
        if not self.sends_masks:
            return super()._client_update(node_id, delta, sent, arrays, weight)
        layout = self._current_layout()
        packed = arrays[P.SAMPLED_MASK].numpy().copy()
        self._masks.append((packed, weight))
        self._bits_up.append(8.0 * packed.size / layout.num_scores)
        return ClientUpdate(delta, layout.head_positions, weight)

    def _combine(self, updates: list[ClientUpdate]) -> torch.Tensor:
        if not self.sends_masks:
            return super()._combine(updates)
        from fish_fl.supermask import combine_sampled_masks

        layout = self._current_layout()
        # The head's updates in head order: aggregate over the k-vector, then pick.
        head = aggregate_updates(updates, layout.k, self.config.aggregation)[layout.head_positions]
        packed, weights = zip(*self._masks, strict=True)
        self.last_masks, self.last_weights = list(packed), [float(w) for w in weights]
        return combine_sampled_masks(
            self.values,
            layout,
            packed,
            head,
            weights,
            max_score=self.wrapper.config.score_high,
        )

    def _paper_bytes(self, k: int, *, value_bytes: int = 4) -> int:
        return 0  # the paper's values-and-indices accounting does not describe a supermask

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._masks, self._bits_up = [], []
        before = self.ledger.summary(server_round)
        result = super().aggregate_train(server_round, replies)
        after = self.ledger.summary(server_round)
        # The training replies alone (federated evaluation replies come later).
        self._train_up = (
            after["bytes_up"] - before["bytes_up"],
            after["messages_up"] - before["messages_up"],
        )
        return result

    # -- checkpoint ---------------------------------------------------------------
    def extra_state(self) -> dict[str, torch.Tensor]:
        if not self.last_masks:
            return {}
        return {
            "extra/score-masks": torch.from_numpy(np.stack(self.last_masks)),
            "extra/score-weights": torch.tensor(self.last_weights, dtype=torch.float64),
        }

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if "extra/score-masks" in tensors:
            self.last_masks = list(tensors["extra/score-masks"].numpy())
            self.last_weights = [float(w) for w in tensors["extra/score-weights"]]

    # -- per-round log ----------------------------------------------------------
    def _row(
        self, rnd: int, ev: dict[str, float] | None, fed: MetricRecord | None, round_time: float
    ) -> dict[str, Any]:
        row = super()._row(rnd, ev, fed, round_time)
        probs = torch.cat([p.reshape(-1).double() for p in self.wrapper.probabilities().values()])
        numel = int(probs.numel())
        up_bytes, up_messages = self._train_up if rnd > 0 else (0, 0)
        sent = max(1, int(row.get("messages_down") or 0))
        row["supermask"] = {
            "uplink": self.config.supermask_uplink,
            "masked_weights": numel,
            "sparsity_expected": 1.0 - float(probs.mean()),
            "sparsity_threshold": float((probs <= 0.5).double().mean()),
            # Measured on the serialised training replies: bytes per reply, per masked weight.
            "bits_per_weight_up": 8.0 * up_bytes / max(1, up_messages) / numel,
            "mask_bits_per_weight": self._bits_up[0] if self._bits_up and rnd > 0 else None,
            "downlink": "masks" if self.masks_down else "scores",
            "bits_per_weight_down": 0.0 if rnd == 0 else 8.0 * row["bytes_down"] / sent / numel,
        }
        return row
