"""From a :class:`RunConfig` to a model, client data, calibration and evaluation.

Both sides of a federation call these: the server for its calibration batches
and held-out evaluation, each client for its own partition. Everything is a
deterministic function of the config (and the client's partition id), so the
server and every client agree on the base model and on the split without
exchanging data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import state_fingerprint
from .config import ConfigError, RunConfig
from .data.partition import ClientPartitions, make_client_partitions
from .metrics import primary_metric, task_metrics
from .models import build_model, image_settings, is_vision_model, load_tokenizer
from .tasks import LabelSpace
from .training import evaluate

__all__ = [
    "TaskData",
    "build_base_model",
    "build_task_model",
    "check_calibration",
    "check_task",
    "client_partitions",
    "subset_rows",
    "train_rows",
    "evaluate_model",
    "load_task_data",
    "state_fingerprint",
]

logger = logging.getLogger(__name__)


def is_vision(config: RunConfig) -> bool:
    """True for an image task: the task decides, not the model's name."""
    from .tasks import task_for

    return task_for(config).is_image


def num_labels(config: RunConfig) -> int:
    from .tasks import task_for

    return task_for(config).num_labels(config)


def build_base_model(config: RunConfig) -> nn.Module:
    """The run's model itself, never wrapped: what a sparse delta of the run applies to.

    An image task builds a CIFAR ResNet, a ``torchvision:`` model or a
    Hugging Face image classifier; a text task a Hugging Face sequence
    classifier.
    """
    return build_model(
        config.model,
        num_labels(config),
        image=is_vision(config),
        width=config.width,
        seed=config.seed,
    )


def build_task_model(config: RunConfig) -> nn.Module:
    """The model the federation trains: the base model as the run's method wraps it.

    Most methods train the model itself (pretrained weights, or a seeded
    fresh init); a method may wrap it (see ``SparseMethod.wrap_model``), and
    the base every node rebuilds is then the wrapper.
    """
    from .methods import method_for

    return method_for(config).wrap_model(build_base_model(config), vision=is_vision(config))


@dataclass
class TaskData:
    """The run's data: training split, held-out split and the client partitions."""

    config: RunConfig
    train: Any  # TokenizedDataset or ImageSplit
    held_out: Any
    train_labels: np.ndarray
    partitions: ClientPartitions
    labels: LabelSpace = field(default_factory=LabelSpace)

    @property
    def metric_task(self) -> str:
        from .tasks import task_for

        return task_for(self.config).metric_task(self.config)

    @property
    def primary(self) -> str:
        return primary_metric(self.metric_task)

    def _loader(
        self, data: Any, indices: np.ndarray | None, *, train: bool, seed: int, batch: int
    ) -> DataLoader[Any]:
        gen = torch.Generator().manual_seed(seed) if train else None
        if is_vision(self.config):
            from .data.vision import make_image_loader

            settings = image_settings(self.config)
            return make_image_loader(
                data,
                indices,
                batch,
                train=train,
                augment=self.config.augment,
                generator=gen,
                mean=settings.mean,
                std=settings.std,
            )
        from .data.glue import make_text_loader

        subset = data if indices is None else data.subset(indices)
        return make_text_loader(subset, batch, train=train, generator=gen)

    def client_loader(self, partition_id: int, seed: int) -> DataLoader[Any]:
        """Shuffled (and augmented) training batches of one client."""
        if not 0 <= partition_id < self.partitions.num_clients:
            raise ValueError(
                f"partition-id {partition_id} out of range for {self.partitions.num_clients} partitions"
            )
        return self._loader(
            self.train,
            self.partitions.clients[partition_id],
            train=True,
            seed=seed,
            batch=self.config.batch_size,
        )

    def client_size(self, partition_id: int) -> int:
        return int(self.partitions.clients[partition_id].shape[0])

    def calibration_loader(self) -> DataLoader[Any]:
        """The server's calibration sample, in a fixed order, without augmentation."""
        if self.partitions.calibration.shape[0] == 0:
            raise ValueError("this run has no server calibration sample (mask-source=clients)")
        return self._loader(
            self.train,
            self.partitions.calibration,
            train=False,
            seed=0,
            batch=self.config.batch_size,
        )

    def local_calibration_loader(self, partition_id: int) -> DataLoader[Any]:
        """A client's own data in a fixed order, for a client-side Fisher."""
        return self._loader(
            self.train,
            self.partitions.clients[partition_id],
            train=False,
            seed=0,
            batch=self.config.batch_size,
        )

    def validation_loader(self) -> DataLoader[Any]:
        """The validation split carved from the training data (``validation-examples``)."""
        if self.partitions.validation.shape[0] == 0:
            raise ValueError("this run has no validation split (validation-examples=0)")
        return self._loader(
            self.train,
            self.partitions.validation,
            train=False,
            seed=0,
            batch=self.config.eval_batch_size,
        )

    def eval_loader(self) -> DataLoader[Any]:
        return self._loader(
            self.held_out, None, train=False, seed=0, batch=self.config.eval_batch_size
        )


def _subset(n: int, keep: int, seed: int) -> np.ndarray:
    """``keep`` of ``n`` rows drawn at random (seeded), in file order; all when ``keep`` is 0.

    Never the first rows: data files are often sorted by label (the CIFAR-10
    subset is), so a prefix would hold one class.
    """
    if keep <= 0 or keep >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=keep, replace=False)).astype(np.int64)


def check_task(config: RunConfig) -> None:
    """Raise :class:`ConfigError` unless the model is of the task's kind (text or image).

    A CIFAR ResNet or ``torchvision:`` model is an image model; a Hugging
    Face model is known by its config.json (a local folder, or a hub model
    already in the cache); a hub model not yet downloaded is let through and
    fails when it loads if it is of the wrong kind.
    """
    from .models import MINILM_ALIASES, hf_model_kind, resolve_model_source
    from .tasks import task_for

    task = task_for(config)
    model = config.model.strip().lower()
    if is_vision_model(config.model):
        kind: str | None = "image"
    elif model in MINILM_ALIASES:
        kind = "text"
    else:
        try:
            kind = hf_model_kind(resolve_model_source(config.model))
        except (OSError, ValueError):
            kind = None  # the model check names what is wrong with the name
    if task.is_image and kind == "text":
        raise ConfigError(
            f"task={config.task} is an image task and model={config.model!r} a text encoder; "
            "use an image model (resnet34-cifar, resnet18-cifar, a torchvision or Hugging Face "
            "image classifier)"
        )
    if not task.is_image and kind == "image":
        raise ConfigError(
            f"task={config.task} is a text task and model={config.model!r} an image model; "
            "use a Hugging Face sequence classifier (minilm, a hub name or a local folder)"
        )


def train_rows(config: RunConfig, available: int) -> int:
    """How many training examples the run keeps of ``available`` (``train-examples``)."""
    keep = config.train_examples
    return available if keep <= 0 or keep >= available else keep


def check_calibration(config: RunConfig, n_train: int) -> int:
    """The server's calibration sample size; raise if it, or the validation split after it,
    leaves no data to train on (with a validation split: fewer examples than clients)."""
    calibration = config.fisher_samples if config.mask_source == "server" else 0
    if calibration >= n_train:
        raise ConfigError(
            f"fisher-samples={config.fisher_samples} leaves no training data among {n_train} examples"
        )
    left = n_train - calibration - config.validation_examples
    if config.validation_examples and left < config.num_clients:
        after = f" and the {calibration} of the calibration sample" if calibration else ""
        raise ConfigError(
            f"validation-examples={config.validation_examples} leaves {max(left, 0)} of the "
            f"{n_train} training examples{after} for num-clients={config.num_clients}: "
            "every client needs at least one"
        )
    return calibration


def load_task_data(config: RunConfig) -> TaskData:
    """Load, subsample, tokenise and partition the run's data (deterministic)."""
    from .tasks import task_for

    check_task(config)
    task = task_for(config)
    splits = task.load(config)
    tr = subset_rows(config, len(splits.train))
    ev = _subset(len(splits.held_out), config.eval_examples, config.seed + 1)
    if task.is_image:
        from .data.vision import ImageSplit, resize_split

        size = image_settings(config).size

        def pick(split: ImageSplit, rows: np.ndarray) -> ImageSplit:
            # every image at the run's size (a no-op for a folder read at that size)
            return resize_split(
                ImageSplit(split.images[rows], split.labels[rows], split.classes), size
            )

        train: Any = pick(splits.train, tr)
        held_out: Any = pick(splits.held_out, ev)
        labels = np.asarray(train.labels)
    else:
        from .data.glue import TextSplit, tokenize_split

        def take(split: TextSplit, rows: np.ndarray) -> TextSplit:
            return TextSplit(
                split.task,
                [split.text_a[i] for i in rows],
                None if split.text_b is None else [split.text_b[i] for i in rows],
                split.labels[rows],
            )

        tokenizer = load_tokenizer(config.model)
        train_split = take(splits.train, tr)
        train = tokenize_split(train_split, tokenizer, config.max_length)
        held_out = tokenize_split(take(splits.held_out, ev), tokenizer, config.max_length)
        labels = np.asarray(train_split.labels)
    partitions = client_partitions(config, labels, splits.groups, tr)
    return TaskData(config, train, held_out, labels, partitions, splits.labels)


def client_partitions(
    config: RunConfig, labels: np.ndarray, groups: np.ndarray | None, rows: np.ndarray
) -> ClientPartitions:
    """The calibration sample, the validation split and the client partitions of the run's
    training rows.

    ``labels`` are those of the kept training rows; ``groups`` (the natural
    partition column) are of the whole split and ``rows`` pick the kept
    ones. Cheap (labels only), so pre-flight runs it too.
    """
    calibration = check_calibration(config, len(labels))
    return make_client_partitions(
        labels,
        config.num_clients,
        scheme=config.partition,
        alpha=config.dirichlet_alpha,
        seed=config.seed,
        calibration_size=calibration,
        validation_size=config.validation_examples,
        **_partition_options(config, groups, rows),
    )


def subset_rows(config: RunConfig, n_train: int) -> np.ndarray:
    """The training rows a run keeps of ``n_train`` (``train-examples``, seeded)."""
    return _subset(n_train, config.train_examples, config.seed)


def _partition_options(
    config: RunConfig, groups: np.ndarray | None, rows: np.ndarray
) -> dict[str, Any]:
    if config.partition == "natural":
        if groups is None:
            raise ConfigError(
                f"partition=natural needs a partition-column in the training data; task={config.task} has none"
            )
        return {"groups": groups[rows]}
    if config.partition == "pathological":
        return {"classes_per_client": config.classes_per_client}
    return {}


def evaluate_model(
    model: nn.Module, batches: Iterable[Any], task: str, device: torch.device
) -> dict[str, float]:
    """Task metrics and mean loss on ``batches`` (eval mode, no gradients)."""
    logits, targets, loss = evaluate(model, batches, device=device)
    metrics = task_metrics(task, logits, targets)
    metrics["loss"] = loss
    return metrics
