"""Message keys and the flat tensor layouts both sides of a federation share.

Keys are kebab-case. A server-to-node message holds two records:

``"arrays"`` (ArrayRecord)
    ``values``      float32, the node's ``k`` masked values in mask order
    ``buffers``     float32, all floating-point buffers (BatchNorm statistics), flat
    ``mask``        uint8, the node's mask (:meth:`Mask.to_bytes`), only when
                    the node does not hold this mask version yet
    ``base``        float32, every parameter, flat: a new base model, sent to a
                    node that cannot patch its old one
    ``base-patch``  float32, the final values of the node's previous mask: the
                    node's old base with these values written in is the new base

A method with a wire of its own (:mod:`fish_fl.methods`) may add keys to
both records; it defines them in its folder (e.g. the supermask's sampled
masks in :mod:`fish_fl.supermask.method`).
``"config"`` (ConfigRecord)
    see the ``CFG_*`` constants.

A node's reply holds ``"arrays"`` (``update``: the ``k``-vector of trained
minus received values in the run's wire dtype, ``buffers``, or for a Fisher
query ``scores``: float16 Fisher scores of every parameter, flat; a method's
own keys besides) and
``"metrics"`` (``num-examples``, ``mask-version``, ``train-loss``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector

T = TypeVar("T")

# -- records ---------------------------------------------------------------
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# -- arrays ------------------------------------------------------------------
VALUES = "values"
BUFFERS = "buffers"
MASK = "mask"
BASE = "base"
BASE_PATCH = "base-patch"
UPDATE = "update"
SCORES = "scores"

# -- config --------------------------------------------------------------------
CFG_ROUND = "server-round"
CFG_RUN_CONFIG = "run-config"  # the run's RunConfig as JSON, on first contact
CFG_PHASE = "phase"  # "dense" (warm-up) or "sparse"
CFG_MASK_VERSION = "mask-version"
CFG_MASK_FINGERPRINT = "mask-fingerprint"
CFG_BASE_VERSION = "base-version"
CFG_BASE_FINGERPRINT = "base-fingerprint"
CFG_LOCAL_STEPS = "local-steps"
CFG_LR = "lr"
CFG_SEED = "seed"  # seed of this round's data order (nodes mix in their partition id)
CFG_ACTION = "action"  # query messages: "fisher"
CFG_RUN_KEY = "run-key"  # names the run; nodes keep their optimiser state on disk under it

# -- metrics -------------------------------------------------------------------
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
METRIC_MASK_VERSION = "mask-version"
BYTES_RECEIVED = "bytes-received"  # the node's own measure of the message it answered
TRAIN_SECONDS = "train-seconds"  # the node's wall time in local training (reported, not trusted)

ACTION_FISHER = "fisher"


# -- status codes ------------------------------------------------------------------
class Status(enum.IntEnum):
    """Why a node could not answer a message, as the code of its error reply.

    Codes start at 100 so that they never collide with Flower's own
    ``ErrorCode`` values (0 to 8), which mean the ClientApp itself failed.
    The server reacts to the code alone, never to the text of the reason.
    """

    NO_RUN_CONFIG = 100  # the node lost the run config: send it again
    MISSING_BASE = 101  # the node lacks the base model the message refers to
    MISSING_MASK = 102  # the node lacks the mask version the message refers to
    BAD_MESSAGE = 103  # the message does not describe a model this node can build
    NODE_FAILURE = 104  # anything else that went wrong on the node

    @classmethod
    def of(cls, code: int) -> Status | None:
        """The fish-fl status of an error code, ``None`` for Flower's own codes."""
        try:
            return cls(code)
        except ValueError:
            return None


class NodeError(RuntimeError):
    """A node cannot follow a message; travels to the server as ``status``."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# -- results of validation ------------------------------------------------------
@dataclass(frozen=True)
class Accepted(Generic[T]):
    """A reply that passed every check, with what was decoded from it."""

    value: T


@dataclass(frozen=True)
class Rejected:
    """A reply that failed a check; ``reason`` is one line for the run log."""

    reason: str
    status: Status | None = None  # the node's own status, for error replies


Checked = Accepted[T] | Rejected


def flat_parameters(model: nn.Module) -> Tensor:
    """Every parameter, flattened and concatenated in the model's order (float32, CPU)."""
    return parameters_to_vector(model.parameters()).detach().to("cpu", torch.float32)


@torch.no_grad()
def load_flat_parameters(model: nn.Module, flat: Tensor) -> None:
    """Inverse of :func:`flat_parameters`; raises on a length mismatch.

    Written out rather than ``vector_to_parameters``, which rebinds each
    parameter to a view of ``flat`` (no copy, no cast to the parameter's
    device and dtype); here every parameter keeps its own storage.
    """
    total = sum(p.numel() for p in model.parameters())
    if flat.numel() != total:
        raise ValueError(f"flat parameters have {flat.numel()} values, the model has {total}")
    offset = 0
    for p in model.parameters():
        n = p.numel()
        p.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def float_buffers(model: nn.Module) -> list[Tensor]:
    """The model's floating-point buffers (BatchNorm running statistics), in order."""
    return [b for b in model.buffers() if b.is_floating_point()]


def flat_buffers(model: nn.Module) -> Tensor:
    bufs = float_buffers(model)
    if not bufs:
        return torch.zeros(0)
    return torch.cat([b.detach().reshape(-1).to("cpu", torch.float32) for b in bufs])


@torch.no_grad()
def load_flat_buffers(model: nn.Module, flat: Tensor) -> None:
    bufs = float_buffers(model)
    total = sum(b.numel() for b in bufs)
    if flat.numel() != total:
        raise ValueError(f"flat buffers have {flat.numel()} values, the model has {total}")
    offset = 0
    for b in bufs:
        n = b.numel()
        b.copy_(flat[offset : offset + n].view_as(b))
        offset += n
