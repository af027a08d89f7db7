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

import itertools
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import RunConfig
from .data.hub import hub_offline
from .device import resolve_device

__all__ = ["SAMPLE_ROWS", "PreflightError", "check_resources", "preflight"]

logger = logging.getLogger(__name__)

#: Data rows read of each local GLUE file (the header is always read).
SAMPLE_ROWS = 200

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
    the simulation would then fail only after it started.
    """
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


# --------------------------------------------------------------------------- data


def _check_data(config: RunConfig) -> None:
    from .models import is_vision_model

    if is_vision_model(config.model):
        if config.data_source == "local":
            _check_cifar(Path(config.data_dir))
        return  # the torchvision route downloads when it loads
    from .data.glue import get_task, glue_files, load_glue, read_glue_tsv
    from .task import check_calibration, train_rows

    task = get_task(config.task)
    if config.data_source == "embedded":
        if task.name != "sst2":
            raise PreflightError(
                f"data-source=embedded holds only sst2, not task={config.task!r}; "
                "use data-source=local (a GLUE folder) or hub"
            )
        splits = load_glue(task, "embedded")
        check_calibration(config, train_rows(config, len(splits.train)))
    elif config.data_source == "local":
        train_file, dev_file = glue_files(config.data_dir, task)
        train = read_glue_tsv(train_file, task, max_rows=SAMPLE_ROWS)
        read_glue_tsv(dev_file, task, max_rows=SAMPLE_ROWS)
        if _lines(train_file, SAMPLE_ROWS + 2) <= SAMPLE_ROWS + int(task.tsv.header):
            # The whole file was read (one row a line: the files are not quoted).
            check_calibration(config, train_rows(config, len(train)))
    elif not _forced_offline() and hub_offline():
        raise PreflightError(
            "data-source=hub: the Hugging Face hub is unreachable; be online, or use "
            "data-source=local with a GLUE folder"
        )


def _lines(path: Path, most: int) -> int:
    """Lines of a text file, counting no further than ``most``."""
    with path.open("rb") as f:
        return sum(1 for _ in itertools.islice(f, most))


def _forced_offline() -> bool:
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"} for v in names)


def _check_cifar(path: Path) -> None:
    """A CIFAR-10 source is in a layout :func:`~fish_fl.data.vision.load_cifar10` reads."""
    from .data.vision import IMAGE_SUFFIXES

    if not path.exists():
        raise PreflightError(
            f"data-dir={str(path)!r} does not exist: expected a CIFAR-10 .npz file or image folder"
        )
    if path.is_file():
        _check_npz(path)
        return
    if (path / "cifar-10-batches-py").is_dir():
        return
    for split in ("train", "test"):
        folder = path / split
        classes = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
        images = (f for c in classes for f in c.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if next(images, None) is None:
            raise PreflightError(
                f"data-dir={str(path)!r}: {split}/ holds no <class>/*.png|jpg|jpeg images; "
                "expected a .npz file, train/ and test/ image folders or cifar-10-batches-py"
            )


def _check_npz(path: Path) -> None:
    """Array names and shapes from the headers, and the labels, without reading the images."""
    if path.suffix.lower() != ".npz":
        raise PreflightError(f"data-dir={str(path)!r} is not a .npz file")
    try:
        with zipfile.ZipFile(path) as archive:
            shapes = {}
            for name in ("x_train", "x_test"):
                with archive.open(f"{name}.npy") as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shapes[name] = read(f)[0]
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise PreflightError(
            f"data-dir={str(path)!r} is not a CIFAR-10 .npz with x_train, y_train, x_test, "
            f"y_test ({e})"
        ) from None
    with np.load(path, allow_pickle=False) as data:
        if "y_train" not in data.files or "y_test" not in data.files:
            raise PreflightError(f"data-dir={str(path)!r} lacks y_train or y_test")
        classes = len(data["classes"]) if "classes" in data.files else 10
        for split in ("train", "test"):
            shape, labels = shapes[f"x_{split}"], data[f"y_{split}"].reshape(-1)
            if len(shape) != 4 or shape[-1] != 3:
                raise PreflightError(
                    f"data-dir={str(path)!r}: x_{split} has shape {shape}, expected (N, H, W, 3)"
                )
            if labels.shape[0] != shape[0]:
                raise PreflightError(
                    f"data-dir={str(path)!r}: {labels.shape[0]} labels for {shape[0]} {split} images"
                )
            if labels.size and (labels.min() < 0 or labels.max() >= classes):
                raise PreflightError(
                    f"data-dir={str(path)!r}: {split} labels outside [0, {classes})"
                )


# --------------------------------------------------------------------------- model


def _check_model(config: RunConfig) -> None:
    """The model resolves to something this machine can load (without loading its weights)."""
    from .models import is_vision_model, load_tokenizer, resolve_model_source

    if is_vision_model(config.model):
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


# --------------------------------------------------------------------------- mask


def _check_mask(config: RunConfig) -> None:
    """Run the mask method's check on the model's parameter names, if it has one."""
    from .masks import check_mask_spec, has_mask_check

    if not has_mask_check(config.mask_method):
        return
    names = [n for n, _ in _skeleton(config).named_parameters()]
    try:
        check_mask_spec(names, config.mask_spec())
    except ValueError as e:
        raise PreflightError(f"mask-method={config.mask_method}: {e}") from None


def _skeleton(config: RunConfig) -> nn.Module:
    """The run's model with its parameters on the ``meta`` device: names and shapes, no data."""
    from .methods import method_for
    from .models import build_resnet_cifar, is_vision_model, resolve_model_source
    from .task import num_labels

    vision = is_vision_model(config.model)
    with torch.device("meta"):
        if vision:
            model: nn.Module = build_resnet_cifar(
                config.model, num_classes=num_labels(config), width=config.width
            )
        else:
            from transformers import AutoConfig, AutoModelForSequenceClassification

            source = resolve_model_source(config.model)
            hf_config = AutoConfig.from_pretrained(
                source.location, num_labels=num_labels(config), local_files_only=source.local
            )
            model = AutoModelForSequenceClassification.from_config(hf_config)
        return method_for(config).wrap_model(model, vision=vision)
