"""The communication ledger: bytes up and down, per round and cumulative.

Besides the bytes measured on the serialised messages, the ledger keeps the
FISH Mask paper's accounting (Sung et al., 2021, Figure 3): a sparse message
costs its ``k`` values plus ``k`` indices, a dense one the whole model. Both
are also reported as *full-model equivalents*: bytes divided by the bytes of
the dense float32 model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["CommLedger", "RoundTraffic", "paper_message_bytes"]


def paper_message_bytes(k: int, total: int, *, value_bytes: int = 4, index_bytes: int = 4) -> int:
    """The paper's cost of one message carrying ``k`` of ``total`` values.

    Dense messages (``k == total``) need no indices.
    """
    if k >= total:
        return total * value_bytes
    return k * (value_bytes + index_bytes)


@dataclass
class RoundTraffic:
    """Traffic of one round. ``bytes_down`` includes ``mask_bytes``."""

    round: int
    bytes_up: int = 0
    bytes_down: int = 0
    mask_bytes: int = 0
    mask_broadcasts: int = 0
    paper_bytes_up: int = 0
    paper_bytes_down: int = 0
    messages_up: int = 0
    messages_down: int = 0


@dataclass
class CommLedger:
    """Communication accounting of a run.

    Parameters
    ----------
    model_numel
        Parameters of the full model; one full-model equivalent is
        ``4 x model_numel`` bytes (dense float32).
    """

    model_numel: int
    rounds: list[RoundTraffic] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.model_numel <= 0:
            raise ValueError(f"model_numel must be positive, got {self.model_numel}")

    @property
    def full_model_bytes(self) -> int:
        return 4 * self.model_numel

    def _round(self, rnd: int) -> RoundTraffic:
        if not self.rounds or self.rounds[-1].round != rnd:
            if self.rounds and rnd < self.rounds[-1].round:
                raise ValueError(f"round {rnd} recorded after round {self.rounds[-1].round}")
            self.rounds.append(RoundTraffic(round=rnd))
        return self.rounds[-1]

    def record_down(
        self, rnd: int, nbytes: int, *, paper_bytes: int = 0, mask_bytes: int = 0
    ) -> None:
        """One server-to-node message of ``nbytes`` (of which ``mask_bytes`` mask)."""
        r = self._round(rnd)
        r.bytes_down += nbytes
        r.paper_bytes_down += paper_bytes
        r.messages_down += 1
        if mask_bytes:
            r.mask_bytes += mask_bytes
            r.mask_broadcasts += 1

    def record_up(self, rnd: int, nbytes: int, *, paper_bytes: int = 0) -> None:
        """One node-to-server message of ``nbytes``."""
        r = self._round(rnd)
        r.bytes_up += nbytes
        r.paper_bytes_up += paper_bytes
        r.messages_up += 1

    # -- totals --------------------------------------------------------------
    def total(self, key: str, upto: int | None = None) -> int:
        return sum(getattr(r, key) for r in self.rounds if upto is None or r.round <= upto)

    def fme(self, nbytes: int) -> float:
        """Bytes as full-model equivalents."""
        return nbytes / self.full_model_bytes

    def summary(self, rnd: int) -> dict[str, Any]:
        """Round ``rnd``'s traffic and the cumulative totals up to it, JSON-ready."""
        this = next((r for r in self.rounds if r.round == rnd), RoundTraffic(round=rnd))
        up, down = self.total("bytes_up", rnd), self.total("bytes_down", rnd)
        p_up, p_down = self.total("paper_bytes_up", rnd), self.total("paper_bytes_down", rnd)
        return {
            "bytes_up": this.bytes_up,
            "bytes_down": this.bytes_down,
            "mask_bytes": this.mask_bytes,
            "mask_broadcasts": this.mask_broadcasts,
            "messages_up": this.messages_up,
            "messages_down": this.messages_down,
            "paper_bytes_up": this.paper_bytes_up,
            "paper_bytes_down": this.paper_bytes_down,
            "cum_bytes_up": up,
            "cum_bytes_down": down,
            "cum_mask_bytes": self.total("mask_bytes", rnd),
            "cum_fme": self.fme(up + down),
            "cum_fme_up": self.fme(up),
            "cum_fme_down": self.fme(down),
            "cum_paper_fme": self.fme(p_up + p_down),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"model_numel": self.model_numel, "rounds": [asdict(r) for r in self.rounds]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CommLedger:
        return cls(
            model_numel=int(data["model_numel"]),
            rounds=[RoundTraffic(**r) for r in data["rounds"]],
        )
