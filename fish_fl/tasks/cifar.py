"""CIFAR-10 and CIFAR-100 as task entries: torchvision when online, a ``.npz`` file or an image folder offline."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import register_task
from .base import LabelSpace, Task, TaskSplits

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["Cifar10", "Cifar100", "check_image_source", "check_npz"]


class Cifar10(Task):
    """CIFAR-10 (Krizhevsky, 2009): 10 classes of 32x32 images, the paper's vision task."""

    name = "cifar10"
    kind = "image"
    aliases: tuple[str, ...] = ("cifar-10", "cifar")
    summary = "CIFAR-10 (torchvision online, .npz or image folder offline)"
    #: Classes of the data set (the npz may name them).
    num_classes = 10

    def check_config(self, config: RunConfig) -> None:
        from ..config import ConfigError

        if config.data_source == "local" and not config.data_dir:
            raise ConfigError(
                f"task={self.name} with data-source=local needs data-dir (a .npz file or an image folder)"
            )

    def label_space(self, config: RunConfig) -> LabelSpace:
        from ..data.vision import CIFAR_DATASETS

        return LabelSpace(CIFAR_DATASETS[self.name][3])

    def metric_task(self, config: RunConfig) -> str:
        return "cifar10"

    def load(self, config: RunConfig) -> TaskSplits:
        from ..data.vision import load_cifar

        if config.data_source == "embedded":
            self.preflight(config)
        source = "torchvision" if config.data_source == "hub" else config.data_dir
        images = load_cifar(source, dataset=self.name)
        return TaskSplits(images.train, images.test, LabelSpace(images.classes))

    def preflight(self, config: RunConfig) -> None:
        if config.data_source == "embedded":
            raise ValueError(
                f"no embedded {self.name} sample ships; use data-source=local (data-dir) or hub"
            )
        if config.data_source == "local":
            n = check_image_source(Path(config.data_dir), num_classes=self.num_classes)
            if n is not None:
                from ..task import train_rows

                n = train_rows(config, n)
                if config.num_clients > n:
                    raise ValueError(
                        f"num-clients={config.num_clients} exceeds the {n} training images"
                    )
        # the torchvision route downloads when it loads


class Cifar100(Cifar10):
    """CIFAR-100 (Krizhevsky, 2009): 100 classes of 32x32 images."""

    name = "cifar100"
    aliases = ("cifar-100",)
    summary = "CIFAR-100 (torchvision online, .npz or image folder offline)"
    num_classes = 100

    def metric_task(self, config: RunConfig) -> str:
        return "classification"


def check_image_source(
    path: Path, held_out: tuple[str, ...] = ("test",), num_classes: int = 10
) -> int | None:
    """A ``.npz`` file, torchvision's folder or an image folder, checked for its layout only.

    Returns the number of training images of a ``.npz`` file, None otherwise.
    """
    from ..data.vision import IMAGE_SUFFIXES

    if not path.exists():
        raise ValueError(
            f"data-dir={str(path)!r} does not exist: expected a .npz file or an image folder"
        )
    if path.is_file():
        return check_npz(path, num_classes)
    if (path / "cifar-10-batches-py").is_dir() or (path / "cifar-100-python").is_dir():
        return None
    found = [s for s in held_out if (path / s).is_dir()]
    for split in ("train", found[0] if found else held_out[0]):
        folder = path / split
        classes = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
        images = (f for c in classes for f in c.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if next(images, None) is None:
            raise ValueError(
                f"data-dir={str(path)!r}: {split}/ holds no <class>/*.png|jpg|jpeg images; "
                f"expected a .npz file, or train/ and {' or '.join(f'{s}/' for s in held_out)} "
                "image folders"
            )
    return None


def check_npz(path: Path, num_classes: int = 10) -> int:
    """Array names and shapes from the headers, and the labels, without reading the images.

    Labels must lie below the length of the file's ``classes`` array, or
    below ``num_classes`` when it has none. Returns the number of training images.
    """
    if path.suffix.lower() != ".npz":
        raise ValueError(f"data-dir={str(path)!r} is not a .npz file")
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
        raise ValueError(
            f"data-dir={str(path)!r} is not an image .npz with x_train, y_train, x_test, "
            f"y_test ({e})"
        ) from None
    with np.load(path, allow_pickle=False) as data:
        if "y_train" not in data.files or "y_test" not in data.files:
            raise ValueError(f"data-dir={str(path)!r} lacks y_train or y_test")
        classes = len(data["classes"]) if "classes" in data.files else num_classes
        for split in ("train", "test"):
            shape, labels = shapes[f"x_{split}"], data[f"y_{split}"].reshape(-1)
            if len(shape) != 4 or shape[-1] != 3:
                raise ValueError(
                    f"data-dir={str(path)!r}: x_{split} has shape {shape}, expected (N, H, W, 3)"
                )
            if labels.shape[0] != shape[0]:
                raise ValueError(
                    f"data-dir={str(path)!r}: {labels.shape[0]} labels for {shape[0]} {split} images"
                )
            if labels.size and (labels.min() < 0 or labels.max() >= classes):
                raise ValueError(f"data-dir={str(path)!r}: {split} labels outside [0, {classes})")
    return int(shapes["x_train"][0])


register_task(Cifar10())
register_task(Cifar100())
