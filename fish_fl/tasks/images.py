"""``image-classification``: the user's own images, one folder per class.

The layout is torchvision's ``ImageFolder`` under ``data-dir``::

    data-dir/train/<class>/*.png|jpg|jpeg
    data-dir/test/<class>/*          (or val/<class>/* when there is no test/)

Class ids are the sorted folder names of ``train/``; a held-out class that
``train/`` lacks is an error naming it (the head has no output for it).
Images are converted to RGB and resized to the run's image side
(``image-size``, by default the model's own; see
:func:`fish_fl.models.image_settings`) as they are read, so the files may
differ in size.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import register_task
from .base import LabelSpace, Task, TaskSplits

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["HELD_OUT_FOLDERS", "ImageClassification", "ImageFolderLayout", "image_folder_layout"]

logger = logging.getLogger(__name__)

#: Held-out split folders, in order of preference.
HELD_OUT_FOLDERS: tuple[str, ...] = ("test", "val")


@dataclass(frozen=True)
class ImageFolderLayout:
    """What the folder holds, found from its listing alone (no image is decoded)."""

    root: Path
    held_out: str
    classes: tuple[str, ...]
    train_images: int
    held_out_images: int


def _count_images(folder: Path) -> int:
    from ..data.vision import IMAGE_SUFFIXES

    return sum(
        1
        for _, _, files in os.walk(folder)
        for f in files
        if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES
    )


def image_folder_layout(root: Path) -> ImageFolderLayout:
    """Check ``root`` for the layout of the module docstring; raise ``ValueError`` in one line.

    Raises
    ------
    ValueError
        For a missing folder, no ``train/`` or held-out folder, no class
        folders, a split without images, or held-out classes that ``train/``
        lacks (named).
    """
    where = f"data-dir={str(root)!r}"
    expected = "expected train/<class>/*.png|jpg|jpeg and test/<class>/ (or val/<class>/)"
    if not root.exists():
        raise ValueError(f"{where} does not exist: {expected}")
    if not root.is_dir():
        raise ValueError(f"{where} is not a folder: {expected}")
    if not (root / "train").is_dir():
        raise ValueError(f"{where} has no train/ folder: {expected}")
    held_out = next((s for s in HELD_OUT_FOLDERS if (root / s).is_dir()), None)
    if held_out is None:
        raise ValueError(f"{where} has neither test/ nor val/: {expected}")
    classes = tuple(sorted(p.name for p in (root / "train").iterdir() if p.is_dir()))
    if not classes:
        raise ValueError(f"{where}: train/ has no class folders: {expected}")
    held_classes = {p.name for p in (root / held_out).iterdir() if p.is_dir()}
    extra = sorted(held_classes - set(classes))
    if extra:
        raise ValueError(
            f"{where}: {held_out}/ has classes {extra} that train/ lacks "
            "(the model has no output for them)"
        )
    counts = {split: _count_images(root / split) for split in ("train", held_out)}
    for split, n in counts.items():
        if n == 0:
            raise ValueError(f"{where}: {split}/ holds no images (<class>/*.png|jpg|jpeg)")
    return ImageFolderLayout(root, held_out, classes, counts["train"], counts[held_out])


class ImageClassification(Task):
    """The user's own image classification data (see the module docstring)."""

    name = "image-classification"
    kind = "image"
    aliases = ("images", "image-folder")
    summary = "your own images: data-dir/train/<class>/* and test/ (or val/)"

    def check_config(self, config: RunConfig) -> None:
        from ..config import ConfigError

        if config.data_source != "local" or not config.data_dir:
            raise ConfigError(
                f"task={self.name} reads an image folder: set data-source=local and data-dir "
                "(train/<class>/*, test/<class>/* or val/<class>/*)"
            )

    def label_space(self, config: RunConfig) -> LabelSpace:
        return LabelSpace(image_folder_layout(Path(config.data_dir)).classes)

    def load(self, config: RunConfig) -> TaskSplits:
        from ..data.vision import load_image_folder
        from ..models import image_settings

        layout = image_folder_layout(Path(config.data_dir))
        size = image_settings(config).size
        images = load_image_folder(layout.root, ("train", layout.held_out), size=size)
        return TaskSplits(images.train, images.test, LabelSpace(images.classes))

    def preflight(self, config: RunConfig) -> None:
        from ..task import check_calibration, train_rows

        layout = image_folder_layout(Path(config.data_dir))
        n = train_rows(config, layout.train_images)
        check_calibration(config, n)
        if config.num_clients > n:
            raise ValueError(f"num-clients={config.num_clients} exceeds the {n} training images")


register_task(ImageClassification())
