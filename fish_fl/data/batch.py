"""The batch contract between data loaders and training code.

Every loader of :mod:`fish_fl.data` yields ``(inputs, targets)``:

* vision: ``inputs`` is a float32 tensor ``(B, 3, H, W)``, normalised;
* language: ``inputs`` is a dict of int64 tensors ``(B, L)``: ``input_ids``,
  ``attention_mask`` and, if the tokenizer gives them, ``token_type_ids``,
  padded to the longest sequence of the batch;
* ``targets`` is int64 class ids ``(B,)``, or float32 scores for regression
  (STS-B).

A model is called as ``model(**inputs)`` when ``inputs`` is a dict, as
``model(pixel_values=inputs)`` when it is a Hugging Face image model (its
``main_input_name``), and ``model(inputs)`` otherwise (a wrapper passes the
tensor on positionally, which Hugging Face image models take as
``pixel_values``); :func:`forward_logits` does that and returns the logits
either way.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import torch
from torch import Tensor, nn

__all__ = ["Batch", "Inputs", "batch_size", "forward_logits", "move_batch"]

#: Model inputs: a tensor (vision) or a dict of tensors (language).
Inputs: TypeAlias = Tensor | dict[str, Tensor]

#: One batch: ``(inputs, targets)``.
Batch: TypeAlias = tuple[Inputs, Tensor]


def move_batch(batch: Batch, device: torch.device, non_blocking: bool = False) -> Batch:
    """Move a batch to ``device``.

    Parameters
    ----------
    batch : Batch
        ``(inputs, targets)`` as yielded by the loaders.
    device : torch.device
        Target device.
    non_blocking : bool, default False
        Passed to :meth:`torch.Tensor.to` (useful with pinned memory).

    Returns
    -------
    Batch
        The same batch on ``device``.
    """
    inputs, targets = batch
    moved: Inputs
    if isinstance(inputs, dict):
        moved = {k: v.to(device, non_blocking=non_blocking) for k, v in inputs.items()}
    else:
        moved = inputs.to(device, non_blocking=non_blocking)
    return moved, targets.to(device, non_blocking=non_blocking)


def batch_size(batch: Batch) -> int:
    """Number of examples in a batch."""
    return int(batch[1].shape[0])


def forward_logits(model: nn.Module, inputs: Inputs) -> Tensor:
    """Run ``model`` on ``inputs`` and return its logits.

    Parameters
    ----------
    model : torch.nn.Module
        A vision model (called on a tensor), a Hugging Face image classifier
        (called with ``pixel_values``) or sequence classifier (called with
        keyword tensors); Hugging Face models return an output with ``logits``.
    inputs : Inputs
        The first element of a batch.

    Returns
    -------
    torch.Tensor
        Logits ``(B, num_labels)``.
    """
    out: Any
    if isinstance(inputs, dict):
        out = model(**inputs)
    elif getattr(model, "main_input_name", None) == "pixel_values":
        out = model(pixel_values=inputs)
    else:
        out = model(inputs)
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)):
        logits = out[0]
    if not isinstance(logits, Tensor):
        raise TypeError(f"model {type(model).__name__} returned {type(out).__name__}, not logits")
    return logits
