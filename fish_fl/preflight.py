"""Pre-flight: check what a run needs before its folder, its model or Ray exist.

:class:`~fish_fl.config.RunConfig` checks each value by itself. This module
checks what needs the machine: that the task fits the model, that the data
can be found and read, that the model loads offline, that the mask can be
built for the model's parameters, and that the machine has the resources a
simulated client asks for. ``fish-fl run`` (through ``sims.simulate``) and the
ServerApp that ``flwr run`` starts call :func:`preflight` first, so a run that
cannot work fails in one line within a second, instead of after Ray has
started or after round 0.

The checks are cheap by design. A local GLUE folder is read only for its
header and first :data:`SAMPLE_ROWS` rows, a CIFAR-10 ``.npz`` only for its
array headers and labels, an image folder only for its layout; the model's
parameter names come from a skeleton on the ``meta`` device (no weights),
built only when the mask method registered a check on them. The embedded
SST-2 sample is small and is read whole (a few milliseconds).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .config import RunConfig
from .config.keys import ray_host_port
from .data.hub import hub_offline
from .device import resolve_device
from .tasks.glue import SAMPLE_ROWS

if TYPE_CHECKING:
    from .methods import SparseMethod

__all__ = [
    "SAMPLE_ROWS",
    "Footprint",
    "PreflightError",
    "check_resources",
    "footprint",
    "preflight",
]

logger = logging.getLogger(__name__)

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class PreflightError(ValueError):
    """The run cannot start on this machine; the message names the key and what is wrong."""


def preflight(config: RunConfig, *, simulation: bool = True) -> None:
    """Check that ``config`` can run here; raise :class:`PreflightError` if not.

    Parameters
    ----------
    config
        The run.
    simulation
        Also check the resources of the simulated clients (``client-num-cpus``,
        ``client-num-gpus``) against this machine. A ServerApp started by
        ``flwr run`` leaves them out: its clients run elsewhere.
    """
    from .task import check_task

    _wrap(check_task, config)
    _wrap(_check_data, config)
    _wrap(_check_model, config)
    _wrap(_check_mask, config)
    _wrap(_check_attack, config)
    if config.device != "auto":  # auto always resolves
        try:
            resolve_device(config.device)
        except ValueError as e:
            raise PreflightError(f"device={config.device!r}: {e}") from None
    if simulation:
        check_resources(config)


def _wrap(check: Callable[[RunConfig], None], config: RunConfig) -> None:
    """Run ``check(config)``; any error it names becomes a one-line :class:`PreflightError`."""
    try:
        check(config)
    except PreflightError:
        raise
    except (ValueError, OSError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PreflightError(text) from None


# --------------------------------------------------------------------------- resources


def check_resources(config: RunConfig) -> None:
    """Refuse client resources that Ray could never give on this machine.

    Ray builds no actor for a client that asks for more than a node has, and
    the simulation would then fail only after it started. With a
    ``ray-address``, the clients run on that cluster's nodes, not here: its
    head node must answer (Ray itself would retry for minutes), and the
    resources are checked against the cluster once attached
    (``sims.ray_cluster.attach``).
    """
    if config.ray_address:
        _check_ray_reachable(config.ray_address)
        return
    cpus = os.cpu_count() or 1
    if config.client_num_cpus > cpus:
        raise PreflightError(
            f"client-num-cpus={config.client_num_cpus:g} exceeds the {cpus} CPUs of this machine"
        )
    if config.client_num_gpus > 0:
        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise PreflightError(
                f"client-num-gpus={config.client_num_gpus:g} but no CUDA GPU is visible "
                "(torch.cuda.device_count() is 0); set client-num-gpus=0"
            )
        if config.client_num_gpus > gpus:
            raise PreflightError(
                f"client-num-gpus={config.client_num_gpus:g} exceeds the {gpus} CUDA GPU(s) "
                "of this machine"
            )


def _check_ray_reachable(address: str, timeout: float = 5.0) -> None:
    """The head node at ``HOST:PORT`` accepts a TCP connection (``auto`` is left to Ray)."""
    target = ray_host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise PreflightError(
            f"ray-address={address}: no Ray head node answers there ({reason}); "
            f"start one with `ray start --head --port {target[1]}` or fix the address"
        ) from None


# --------------------------------------------------------------------------- data


def _check_data(config: RunConfig) -> None:
    """The task's own check: files found, columns and labels readable, enough examples."""
    from .tasks import task_for

    task_for(config).preflight(config)


# --------------------------------------------------------------------------- model


def _check_model(config: RunConfig) -> None:
    """The model resolves to something this machine can load (without loading its weights)."""
    from .models import (
        build_torchvision_model,
        cifar_resnet_arch,
        load_tokenizer,
        resolve_model_source,
        torchvision_name,
    )
    from .task import is_vision

    if cifar_resnet_arch(config.model) is not None:
        return
    if torchvision_name(config.model) is not None:
        with torch.device("meta"):  # the name is checked, nothing is allocated
            build_torchvision_model(config.model, num_classes=1)
        return
    source = resolve_model_source(config.model)
    if source.local:
        folder = Path(source.location)
        if not any((folder / name).is_file() for name in _WEIGHT_FILES):
            raise PreflightError(
                f"model={config.model!r}: {str(folder)!r} holds no PyTorch weights "
                f"(one of {', '.join(_WEIGHT_FILES)})"
            )
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(str(folder), local_files_only=True)
            if not is_vision(config):  # an image model's processor is optional
                load_tokenizer(str(folder))
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PreflightError(f"model={config.model!r} cannot be loaded: {first}") from None
        return
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source.location, "config.json"), str):
            raise PreflightError(
                f"model={config.model!r} is not in the local cache and the Hugging Face hub is "
                "unreachable: be online to download it, or pass a local model folder"
            )


# --------------------------------------------------------------------------- attack


def _check_attack(config: RunConfig) -> None:
    """Label flipping needs classes: the task's label space says (a text file's is read)."""
    if config.attack != "label-flip":
        return
    from .tasks import task_for

    if task_for(config).label_space(config).regression:
        raise PreflightError(
            f"attack=label-flip flips class labels; task={config.task} is a regression"
        )


# --------------------------------------------------------------------------- mask


def _check_mask(config: RunConfig) -> None:
    """Run the mask method's check on the model's parameter names, if it has one."""
    from .masks import check_mask_spec, has_mask_check

    if not has_mask_check(config.mask_method):
        return
    try:
        names = [n for n, _ in _skeleton(config).named_parameters()]
        check_mask_spec(names, config.mask_spec())
    except ValueError as e:
        raise PreflightError(f"mask-method={config.mask_method}: {e}") from None


def _skeleton(config: RunConfig, method: SparseMethod | None = None) -> nn.Module:
    """The run's model with its parameters on the ``meta`` device: names and shapes, no data."""
    from .methods import method_for
    from .models import (
        build_resnet_cifar,
        build_torchvision_model,
        cifar_resnet_arch,
        resolve_model_source,
        torchvision_name,
    )
    from .task import is_vision, num_labels

    vision = is_vision(config)
    n = num_labels(config)
    with torch.device("meta"):
        if cifar_resnet_arch(config.model) is not None:
            model: nn.Module = build_resnet_cifar(config.model, num_classes=n, width=config.width)
        elif torchvision_name(config.model) is not None:
            model = build_torchvision_model(config.model, num_classes=n)
        else:
            from transformers import (
                AutoConfig,
                AutoModelForImageClassification,
                AutoModelForSequenceClassification,
            )

            source = resolve_model_source(config.model)
            hf_config = AutoConfig.from_pretrained(
                source.location, num_labels=n, local_files_only=source.local
            )
            auto = AutoModelForImageClassification if vision else AutoModelForSequenceClassification
            model = auto.from_config(hf_config)
        return (method or method_for(config)).wrap_model(model, vision=vision)


# --------------------------------------------------------------------------- footprint


@dataclass(frozen=True)
class Footprint:
    """What a run trains and sends, from a ``meta`` skeleton (no weights, no data).

    ``bytes_down`` and ``bytes_up`` are one client's values in one round
    (float32 values down, the run's ``update-dtype`` up), without message
    headers, masks or BatchNorm buffers.
    """

    k: int
    total: int
    bytes_down: int
    bytes_up: int
    clients: int
    method_line: str = ""

    def lines(self) -> list[str]:
        per_round = self.clients * (self.bytes_down + self.bytes_up)
        out = [
            f"trains {self.k:,} of {self.total:,} entries ({self.k / self.total:.3%}); about "
            f"{per_round:,} bytes per round ({self.clients} clients x ({self.bytes_down:,} down "
            f"+ {self.bytes_up:,} up))"
        ]
        return out + ([self.method_line] if self.method_line else [])


def footprint(config: RunConfig) -> Footprint | None:
    """The run's trained entries and bytes per round; None when they cannot be told cheaply.

    A share of the model (``fish``, ``random``, ``magnitude``) is ``k =
    round(density x total)``; a mask of whole tensors is built on the
    skeleton, which needs only names and shapes.
    """
    from .masks import build_mask
    from .masks.registry import budget
    from .methods import method_for, trains

    method = method_for(config)
    try:
        skeleton = _skeleton(config, method)
        total = method.model_numel(skeleton)
        kind = trains(config.mask_method)
        if kind == "share":
            k = budget(sum(p.numel() for p in skeleton.parameters()), config.density)
        elif kind == "all":
            k = sum(p.numel() for p in skeleton.parameters())
        else:
            k = build_mask(skeleton, config.mask_spec()).k
        line = method.describe(skeleton)
    except Exception as e:  # the footprint is a report; never stop a run over it
        logger.debug("no footprint for %s: %s", config.mask_method, e)
        return None
    up = {"float32": 4, "float16": 2, "bfloat16": 2}[config.update_dtype]
    return Footprint(k, total, 4 * k, up * k, config.sampled_clients, line)
