"""Images: CIFAR-10 and CIFAR-100 from torchvision, a local ``.npz`` or an image folder.

Three sources give the same in-memory form, an :class:`ImageSplits` of uint8
NHWC arrays:

* ``"torchvision"`` -- torchvision's CIFAR-10 or CIFAR-100, downloaded when
  online (or already present in ``root``);
* a ``.npz`` file with arrays ``x_train`` (N, H, W, 3) uint8, ``y_train``,
  ``x_test``, ``y_test`` and optionally ``classes`` (the format of
  ``../shared/data/cifar10/cifar10_subset.npz``);
* a folder ``<root>/<split>/<class>/*.png|jpg|jpeg`` with a training and a
  held-out split, read by torchvision's ``ImageFolder`` (images in
  subfolders of a class folder count for that class); classes are the sorted
  folder names of the training split. Given a ``size``, every image is
  resized to ``size`` x ``size`` as it is read, so a folder of photographs of
  different sizes becomes one array.

Batches are built by :class:`ImageCollator`: uint8 images are scaled to
[0, 1], augmented on the whole batch at once (random crop with zero padding
4 and horizontal flip, as in the FISH Mask paper's CIFAR-10 training, drawn
from a ``torch.Generator`` passed in), then normalised with the channel mean and
standard deviation of the run (CIFAR-10's by default; see
:func:`fish_fl.models.image_settings`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fish_fl.data.hub import DataUnavailableError

logger = logging.getLogger(__name__)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR_DATASETS",
    "IMAGE_SUFFIXES",
    "ImageCollator",
    "ImageSplit",
    "ImageSplits",
    "ImageTensorDataset",
    "augment_images",
    "default_cifar_root",
    "load_cifar",
    "load_cifar10",
    "load_cifar10_npz",
    "load_cifar10_torchvision",
    "load_cifar_torchvision",
    "load_image_folder",
    "load_image_npz",
    "make_image_loader",
    "normalize_images",
    "resize_split",
]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
#: Per-channel mean and standard deviation of the CIFAR-10 training images.
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

#: File suffixes read from an image folder (case-insensitive).
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg"})

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

#: The CIFAR data sets: display name, torchvision class, its folder, and the
#: class names of a ``.npz`` without ``classes`` (CIFAR-100's are numbered).
CIFAR_DATASETS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "cifar10": ("CIFAR-10", "CIFAR10", "cifar-10-batches-py", CIFAR10_CLASSES),
    "cifar100": ("CIFAR-100", "CIFAR100", "cifar-100-python", tuple(str(i) for i in range(100))),
}


@dataclass(frozen=True)
class ImageSplit:
    """Images and labels of one split, in memory.

    Attributes
    ----------
    images : numpy.ndarray
        ``(N, H, W, 3)`` uint8.
    labels : numpy.ndarray
        ``(N,)`` int64 class ids in ``[0, len(classes))``.
    classes : tuple of str
        Class names in id order.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be a uint8 (N, H, W, 3) array, got {self.images.dtype} "
                f"{self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {self.labels.shape}"
            )
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(
                f"labels must lie in [0, {len(self.classes)}), got "
                f"[{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


@dataclass(frozen=True)
class ImageSplits:
    """The training split and the held-out test split of an image data set."""

    train: ImageSplit
    test: ImageSplit

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in id order."""
        return self.train.classes


# --------------------------------------------------------------------------- loading


def default_cifar_root(dataset: str = "cifar10") -> Path:
    """Default download folder of the torchvision route: ``~/.cache/fish-fl/<dataset>``."""
    return Path.home() / ".cache" / "fish-fl" / dataset


def _split(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> ImageSplit:
    return ImageSplit(
        images=np.ascontiguousarray(images, dtype=np.uint8),
        labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        classes=classes,
    )


def load_cifar10_npz(path: str | Path) -> ImageSplits:
    """Load CIFAR-10 from a ``.npz`` file (see :func:`load_image_npz`)."""
    return load_image_npz(path)


def load_image_npz(path: str | Path, dataset: str = "cifar10") -> ImageSplits:
    """Load an image data set from a ``.npz`` file.

    Parameters
    ----------
    path : str or pathlib.Path
        File with ``x_train``, ``y_train``, ``x_test``, ``y_test`` and
        optionally ``classes``.
    dataset : {"cifar10", "cifar100"}, default "cifar10"
        Names the data set in messages and gives the class names when the
        file has no ``classes``.

    Returns
    -------
    ImageSplits
        Train and test splits.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If arrays are missing or have the wrong type or shape.
    """
    title, _, _, default_classes = CIFAR_DATASETS[dataset]
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{title} file {str(path)!r} does not exist")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in _NPZ_KEYS if k not in data.files]
        if missing:
            raise ValueError(
                f"{str(path)!r} lacks arrays {missing}: expected {list(_NPZ_KEYS)} (+ optional classes)"
            )
        classes = (
            tuple(str(c) for c in data["classes"]) if "classes" in data.files else default_classes
        )
        try:
            train = _split(data["x_train"], data["y_train"], classes)
            test = _split(data["x_test"], data["y_test"], classes)
        except ValueError as err:
            raise ValueError(f"{str(path)!r}: {err}") from err
    logger.info("loaded %s from %s: %d train, %d test", title, path, len(train), len(test))
    return ImageSplits(train=train, test=test)


def load_cifar10_torchvision(root: str | Path | None = None, download: bool = True) -> ImageSplits:
    """Load CIFAR-10 through torchvision (see :func:`load_cifar_torchvision`)."""
    return load_cifar_torchvision(root, download)


def load_cifar_torchvision(
    root: str | Path | None = None, download: bool = True, dataset: str = "cifar10"
) -> ImageSplits:
    """Load CIFAR-10 or CIFAR-100 through torchvision, downloading it if needed.

    Parameters
    ----------
    root : str or pathlib.Path, optional
        Download folder (default :func:`default_cifar_root`).
    download : bool, default True
        Download when the files are not in ``root`` yet.
    dataset : {"cifar10", "cifar100"}, default "cifar10"
        Which one.

    Returns
    -------
    ImageSplits
        The official 50,000 / 10,000 split.

    Raises
    ------
    DataUnavailableError
        If the files are absent and cannot be downloaded.
    """
    import torchvision.datasets

    title, class_name, _, _ = CIFAR_DATASETS[dataset]
    loader = getattr(torchvision.datasets, class_name)
    root = Path(root) if root is not None else default_cifar_root(dataset)
    try:
        train_set = loader(str(root), train=True, download=download)
        test_set = loader(str(root), train=False, download=download)
    except (OSError, RuntimeError) as err:
        raise DataUnavailableError(
            f"{title} is not in {str(root)!r} and could not be downloaded ({err}): "
            "be online, or pass a local .npz file or image folder"
        ) from err
    classes = tuple(train_set.classes)
    return ImageSplits(
        train=_split(train_set.data, np.asarray(train_set.targets), classes),
        test=_split(test_set.data, np.asarray(test_set.targets), classes),
    )


def _resized(image: Any, size: int | None) -> Any:
    """``image`` (PIL) resized to ``size`` x ``size`` (bilinear), or as is for None."""
    from PIL import Image

    if size is None or image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BILINEAR)


def resize_split(split: ImageSplit, size: int) -> ImageSplit:
    """``split`` with every image resized to ``size`` x ``size``; itself when already that size."""
    if split.images.shape[1:3] == (size, size):
        return split
    from PIL import Image

    images = [np.asarray(_resized(Image.fromarray(a), size)) for a in split.images]
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return _split(stacked, split.labels, split.classes)


def _read_split_folder(folder: Path, classes: Sequence[str], size: int | None = None) -> ImageSplit:
    from torchvision.datasets import ImageFolder

    class _KnownClasses(ImageFolder):
        # Class ids come from the training split's folders, so a held-out
        # split that lacks a class keeps the training split's numbering.
        def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
            return list(classes), {name: i for i, name in enumerate(classes)}

    dataset = _KnownClasses(
        str(folder),
        is_valid_file=lambda name: Path(name).suffix.lower() in IMAGE_SUFFIXES,
        allow_empty=True,
    )
    if not dataset.samples:
        raise ValueError(
            f"image folder {str(folder)!r} holds no images: expected <class>/*.png|jpg|jpeg"
        )
    images: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    for (file, _), (image, _) in zip(dataset.samples, dataset, strict=True):
        # the loader has converted to RGB
        array = np.asarray(_resized(image, size), dtype=np.uint8)
        if shape is None:
            shape = array.shape
        elif array.shape != shape:
            raise ValueError(
                f"image {file!r} is {array.shape[1]}x{array.shape[0]}: expected every "
                f"image of the folder to be {shape[1]}x{shape[0]}"
            )
        images.append(array)
    return _split(np.stack(images), np.asarray(dataset.targets), tuple(classes))


def load_image_folder(
    path: str | Path, splits: tuple[str, str] = ("train", "test"), size: int | None = None
) -> ImageSplits:
    """Load an image classification folder ``<path>/<split>/<class>/<image>``.

    Parameters
    ----------
    path : str or pathlib.Path
        Root folder.
    splits : tuple of (str, str), default ("train", "test")
        Names of the training and the held-out split folders.
    size : int, optional
        Resize every image to ``size`` x ``size`` as it is read; None keeps
        the files' size, which must then be the same for every image.

    Returns
    -------
    ImageSplits
        Both splits; class ids follow the sorted class folders of the
        training split, and the test split must use the same class names.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If a split folder is missing, has no class folders or images, has a
        class unknown to the training split, or images differ in size.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    folders = [root / s for s in splits]
    for folder in folders:
        if not folder.is_dir():
            raise ValueError(
                f"image folder {str(root)!r} lacks the split folder {folder.name!r}: expected "
                f"{'/, '.join(splits)}/ each with one folder per class"
            )
    classes = sorted(p.name for p in folders[0].iterdir() if p.is_dir())
    if not classes:
        raise ValueError(
            f"{str(folders[0])!r} has no class folders: expected <class>/*.png|jpg|jpeg"
        )
    extra = sorted({p.name for p in folders[1].iterdir() if p.is_dir()} - set(classes))
    if extra:
        raise ValueError(f"{str(folders[1])!r} has classes {extra} that {str(folders[0])!r} lacks")
    train = _read_split_folder(folders[0], classes, size)
    test = _read_split_folder(folders[1], classes, size)
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(
            f"images of {str(folders[0])!r} and {str(folders[1])!r} differ in size: "
            f"{train.images.shape[1:]} and {test.images.shape[1:]}"
        )
    logger.info("loaded image folder %s: %d train, %d test", root, len(train), len(test))
    return ImageSplits(train=train, test=test)


def load_cifar10(
    source: str | Path = "torchvision", *, root: str | Path | None = None
) -> ImageSplits:
    """Load CIFAR-10 from any of the supported sources (see :func:`load_cifar`)."""
    return load_cifar(source, root=root)


def load_cifar(
    source: str | Path = "torchvision", *, dataset: str = "cifar10", root: str | Path | None = None
) -> ImageSplits:
    """Load CIFAR-10 or CIFAR-100 from any of the supported sources.

    Parameters
    ----------
    source : str or pathlib.Path, default "torchvision"
        ``"torchvision"`` (download when online), a ``.npz`` file, an image
        folder, or a folder that already holds torchvision's
        ``cifar-10-batches-py`` (``cifar-100-python``).
    dataset : {"cifar10", "cifar100"}, default "cifar10"
        Which one.
    root : str or pathlib.Path, optional
        Download folder of the torchvision route.

    Returns
    -------
    ImageSplits
        Train and held-out test splits.

    Raises
    ------
    FileNotFoundError
        If ``source`` is a path that does not exist.
    ValueError
        If it exists but is in none of the expected layouts.
    DataUnavailableError
        If torchvision has to download and cannot.
    """
    title, _, folder, _ = CIFAR_DATASETS[dataset]
    if isinstance(source, str) and source.strip().lower() == "torchvision":
        return load_cifar_torchvision(root, dataset=dataset)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"{title} source {str(path)!r} does not exist: expected 'torchvision', a .npz "
            "file or an image folder"
        )
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(f"{title} file {str(path)!r} is not a .npz file")
        return load_image_npz(path, dataset)
    if (path / folder).is_dir():
        return load_cifar_torchvision(path, download=False, dataset=dataset)
    if (path / "train").is_dir():
        return load_image_folder(path)
    raise ValueError(
        f"{str(path)!r} is not in a known {title} layout: expected a .npz file, a folder "
        f"with train/<class>/ and test/<class>/ images, or torchvision's {folder}"
    )


# --------------------------------------------------------------------------- batches


class ImageTensorDataset(Dataset[tuple[Tensor, int]]):
    """Map-style dataset over an :class:`ImageSplit`, optionally a subset.

    Items are ``(image, label)`` with ``image`` a uint8 ``(3, H, W)`` tensor;
    scaling, augmentation and normalisation happen per batch in
    :class:`ImageCollator`.

    Parameters
    ----------
    split : ImageSplit
        The images.
    indices : numpy.ndarray, optional
        Rows of ``split`` to expose (a client partition); all rows if None.
    """

    def __init__(
        self, split: ImageSplit, indices: np.ndarray | Sequence[int] | None = None
    ) -> None:
        self._images = torch.from_numpy(split.images).permute(0, 3, 1, 2)  # NCHW view
        self._labels = split.labels
        rows = np.arange(len(split)) if indices is None else np.asarray(indices, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(split)):
            raise ValueError(
                f"indices must lie in [0, {len(split)}), got [{rows.min()}, {rows.max()}]"
            )
        self._rows = rows

    def __len__(self) -> int:
        return int(self._rows.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        row = int(self._rows[i])
        return self._images[row], int(self._labels[row])


def augment_images(
    images: Tensor, generator: torch.Generator | None, padding: int = 4, flip: bool = True
) -> Tensor:
    """Random crop with zero padding and random horizontal flip, per example.

    Parameters
    ----------
    images : torch.Tensor
        ``(B, C, H, W)`` float images in [0, 1] (padding adds black borders,
        as torchvision's ``RandomCrop(padding=4)`` on the raw image).
    generator : torch.Generator or None
        Source of the crop offsets and flips; None uses torch's global
        generator (avoid it for reproducible runs).
    padding : int, default 4
        Pixels of zero padding on each side before cropping back to H x W.
    flip : bool, default True
        Flip each image left-right with probability 1/2.

    Returns
    -------
    torch.Tensor
        Augmented images, same shape.
    """
    b, c, h, w = images.shape
    if b == 0:
        return images
    out = images
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
        batch_idx = torch.arange(b)[:, None, None, None]
        chan_idx = torch.arange(c)[None, :, None, None]
        out = padded[batch_idx, chan_idx, rows, cols]
    if flip:
        flips = torch.rand(b, generator=generator) < 0.5
        out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    return out


def normalize_images(
    images: Tensor,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> Tensor:
    """Subtract the channel mean and divide by the channel standard deviation.

    Parameters
    ----------
    images : torch.Tensor
        ``(B, C, H, W)`` float images in [0, 1].
    mean, std : sequence of float
        Per-channel statistics (CIFAR-10 by default).

    Returns
    -------
    torch.Tensor
        Normalised images.
    """
    from torchvision.transforms.v2.functional import normalize

    return normalize(images, list(mean), list(std))


class ImageCollator:
    """Collate ``(uint8 image, label)`` items into a normalised float batch.

    Parameters
    ----------
    augment : bool, default False
        Apply :func:`augment_images` (training batches).
    generator : torch.Generator, optional
        Random source of the augmentation; required when ``augment`` is on.
    mean, std : sequence of float
        Normalisation statistics.
    """

    def __init__(
        self,
        augment: bool = False,
        generator: torch.Generator | None = None,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        if augment and generator is None:
            raise ValueError("augmentation needs a torch.Generator (seeds are arguments)")
        self.augment = augment
        self.generator = generator
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, items: Sequence[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
        images = torch.stack([img for img, _ in items]).float().div_(255.0)
        labels = torch.tensor([label for _, label in items], dtype=torch.int64)
        if self.augment:
            images = augment_images(images, self.generator)
        return normalize_images(images, self.mean, self.std), labels


def make_image_loader(
    split: ImageSplit,
    indices: np.ndarray | Sequence[int] | None = None,
    batch_size: int = 128,
    *,
    train: bool,
    augment: bool = True,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> DataLoader[tuple[Tensor, int]]:
    """A DataLoader of ``(images, labels)`` batches over a split or a subset.

    Parameters
    ----------
    split : ImageSplit
        The images.
    indices : numpy.ndarray, optional
        Rows to use (a client partition); all if None.
    batch_size : int, default 128
        Examples per batch.
    train : bool
        Training loaders shuffle and (if ``augment``) augment; evaluation
        loaders keep the order and never augment.
    augment : bool, default True
        Random crop and flip for training batches.
    generator : torch.Generator, optional
        Drives shuffling and augmentation; required when ``train`` is True.
    drop_last : bool, default False
        Drop a last incomplete batch.
    num_workers : int, default 0
        Worker processes. Keep 0 for reproducible augmentation (workers
        would each get a copy of the generator).
    mean, std : sequence of float
        Normalisation statistics (CIFAR-10's by default).

    Returns
    -------
    torch.utils.data.DataLoader
        Yields :data:`~fish_fl.data.batch.Batch` tuples.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if train and generator is None:
        raise ValueError("a training loader needs a torch.Generator (seeds are arguments)")
    collate = ImageCollator(augment=train and augment, generator=generator, mean=mean, std=std)
    return DataLoader(
        ImageTensorDataset(split, indices),
        batch_size=batch_size,
        shuffle=train,
        generator=generator if train else None,
        collate_fn=collate,
        drop_last=drop_last,
        num_workers=num_workers,
    )
