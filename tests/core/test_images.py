"""Image tasks: the user's image folder, CIFAR-100, Hugging Face image models, image settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fish_fl.config import ConfigError, RunConfig
from fish_fl.data import forward_logits
from fish_fl.data.vision import CIFAR10_MEAN, CIFAR10_STD
from fish_fl.models import IMAGENET_MEAN, IMAGENET_STD, image_settings
from fish_fl.preflight import PreflightError, preflight
from fish_fl.task import build_base_model, build_task_model, check_task, load_task_data

PROCESSOR_MEAN = (0.1, 0.2, 0.3)
PROCESSOR_STD = (0.4, 0.5, 0.6)


def write_images(root: Path, layout: dict[str, dict[str, list[tuple[int, int]]]]) -> None:
    """PNGs of random pixels: ``layout[split][class]`` lists each image's (width, height)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for name, sizes in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, (w, h) in enumerate(sizes):
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


#: Three classes, images of different sizes, a val/ split and no test/.
LAYOUT = {
    "train": {
        "owl": [(7, 5)],
        "cat": [(10, 12), (12, 10), (40, 40)],
        "dog": [(20, 20), (9, 9)],
    },
    "val": {"owl": [(8, 8)], "cat": [(11, 11)]},
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_images(tmp_path / "images", LAYOUT)
    return tmp_path / "images"


def image_config(data: Path, **changes: object) -> RunConfig:
    values: dict[str, object] = {
        "task": "image-classification",
        "model": "resnet18",
        "width": 4,
        "data-source": "local",
        "data-dir": str(data),
        "num-clients": 2,
        "batch-size": 4,
        "fisher-samples": 2,
        "density": 0.05,
        "device": "cpu",
        "progress": False,
    }
    values.update(changes)
    return RunConfig.from_mapping(values)


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised ViT (5 labels) and its image processor, saved as a model folder."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    path = tmp_path_factory.mktemp("vit")
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(
        size={"height": 32, "width": 32},
        image_mean=list(PROCESSOR_MEAN),
        image_std=list(PROCESSOR_STD),
    ).save_pretrained(path)
    return path


# ---------------------------------------------------------------- the image folder


def test_image_folder_reads_val_with_training_ids_and_resizes(folder: Path) -> None:
    from PIL import Image

    data = load_task_data(image_config(folder, **{"image-size": 16}))
    assert data.labels.names == ("cat", "dog", "owl")
    assert data.train.images.shape == (6, 16, 16, 3) and data.train.images.dtype == np.uint8
    np.testing.assert_array_equal(data.train.labels, [0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(data.held_out.labels, [0, 2])  # val/: cat, owl
    with Image.open(folder / "train" / "cat" / "2.png") as img:  # 40x40, the third cat
        expected = np.asarray(img.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(data.train.images[2], expected)
    # augmentation (crop with padding, flip) works at any size
    images, labels = next(iter(data.client_loader(0, seed=1)))
    assert images.shape[1:] == (3, 16, 16) and labels.dtype == torch.int64


def test_image_folder_default_size_is_the_models_own(folder: Path) -> None:
    data = load_task_data(image_config(folder))
    assert data.train.images.shape[1:] == (32, 32, 3)  # the CIFAR ResNet's 32 pixels
    assert data.held_out.images.shape == (2, 32, 32, 3)


def _empty(root: Path) -> Path:
    root.mkdir()
    return root


def _empty_class(root: Path) -> Path:
    (root / "train" / "cat").mkdir(parents=True)
    (root / "val" / "cat").mkdir(parents=True)
    return root


def _no_classes(root: Path) -> Path:
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    return root


def _extra_class(root: Path) -> Path:
    write_images(root, {"train": {"cat": [(4, 4)]}, "test": {"cat": [(4, 4)], "zebra": [(4, 4)]}})
    return root


def _no_held_out(root: Path) -> Path:
    write_images(root, {"train": {"cat": [(4, 4)]}})
    return root


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root, "does not exist"),
        (_empty, "has no train/ folder"),
        (_no_held_out, "has neither test/ nor val/"),
        (_no_classes, "train/ has no class folders"),
        (_empty_class, "train/ holds no images"),
        (_extra_class, r"test/ has classes \['zebra'\] that train/ lacks"),
    ],
)
def test_image_folder_errors_in_preflight(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    root = make(tmp_path / "data")
    with pytest.raises(PreflightError, match=message) as err:
        preflight(image_config(root), simulation=False)
    assert "\n" not in str(err.value)


def test_more_clients_than_images_fails_in_preflight(folder: Path) -> None:
    with pytest.raises(PreflightError, match="num-clients=7 exceeds the 6 training images"):
        preflight(image_config(folder, **{"num-clients": 7}), simulation=False)
    preflight(image_config(folder), simulation=False)  # the folder itself is fine


def test_image_folder_needs_a_local_data_dir() -> None:
    with pytest.raises(ConfigError, match="task=image-classification reads an image folder"):
        RunConfig.from_mapping({"task": "image-classification", "model": "resnet18"})


# ---------------------------------------------------------------- CIFAR-100


def tiny_cifar100(path: Path, n_train: int = 200, n_test: int = 100, top: int = 100) -> Path:
    gen = np.random.default_rng(0)
    np.savez(
        path,
        x_train=gen.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(n_train) % top,
        x_test=gen.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(n_test) % 100,
    )
    return path


def test_cifar100_from_an_npz(tmp_path: Path) -> None:
    path = tiny_cifar100(tmp_path / "c100.npz")
    config = image_config(path, task="cifar100", **{"fisher-samples": 20})
    data = load_task_data(config)
    assert data.labels.num_labels == 100 and data.labels.names[:2] == ("0", "1")
    assert data.metric_task == "classification" and data.primary == "accuracy"
    np.testing.assert_array_equal(data.train.labels, np.arange(200) % 100)
    assert data.train.images.shape == (200, 32, 32, 3)
    with np.load(path) as raw:
        np.testing.assert_array_equal(data.held_out.images, raw["x_test"])
    model = build_base_model(config)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_cifar100_npz_errors_fail_in_preflight(tmp_path: Path) -> None:
    bad = tiny_cifar100(tmp_path / "bad.npz", top=101)
    with pytest.raises(PreflightError, match=r"train labels outside \[0, 100\)"):
        preflight(image_config(bad, task="cifar100"), simulation=False)
    path = tiny_cifar100(tmp_path / "c100.npz")
    with pytest.raises(PreflightError, match="num-clients=300 exceeds the 200 training images"):
        preflight(image_config(path, task="cifar100", **{"num-clients": 300}), simulation=False)
    # the same file is too many classes for CIFAR-10
    with pytest.raises(PreflightError, match=r"labels outside \[0, 10\)"):
        preflight(image_config(path, task="cifar10"), simulation=False)


# ---------------------------------------------------------------- Hugging Face image models


def test_vit_folder_gets_a_new_head_and_keeps_its_body(vit_folder: Path, folder: Path) -> None:
    from transformers import ViTForImageClassification

    config = image_config(folder, model=str(vit_folder))
    check_task(config)
    model = build_base_model(config)
    assert isinstance(model, ViTForImageClassification)
    assert model.classifier.weight.shape == (3, 32)  # 3 classes, not the saved 5
    saved = ViTForImageClassification.from_pretrained(vit_folder)
    name = "vit.embeddings.patch_embeddings.projection.weight"
    assert torch.equal(model.get_parameter(name), saved.get_parameter(name))
    again = build_base_model(config)  # the new head is seeded
    assert torch.equal(again.classifier.weight, model.classifier.weight)

    data = load_task_data(config)
    images, _ = next(iter(data.eval_loader()))
    assert images.shape == (2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        logits = forward_logits(model, images)
        assert logits.shape == (2, 3)
        assert torch.equal(logits, model(pixel_values=images).logits)


def test_auto_normalisation_follows_the_model(vit_folder: Path, folder: Path) -> None:
    vit = image_settings(image_config(folder, model=str(vit_folder)))
    assert (vit.size, vit.mean, vit.std) == (32, PROCESSOR_MEAN, PROCESSOR_STD)
    resnet = image_settings(image_config(folder))
    assert (resnet.size, resnet.mean, resnet.std) == (32, CIFAR10_MEAN, CIFAR10_STD)
    tv = image_settings(image_config(folder, model="torchvision:mobilenet_v3_small"))
    assert (tv.size, tv.mean, tv.std) == (224, IMAGENET_MEAN, IMAGENET_STD)
    named = image_settings(
        image_config(
            folder, model=str(vit_folder), **{"image-normalize": "imagenet", "image-size": 48}
        )
    )
    assert (named.size, named.mean, named.std) == (48, IMAGENET_MEAN, IMAGENET_STD)
    plain = image_settings(image_config(folder, **{"image-normalize": "none"}))
    assert (plain.mean, plain.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    # the loader normalises with the processor's statistics
    data = load_task_data(image_config(folder, model=str(vit_folder)))
    images, _ = next(iter(data.eval_loader()))
    mean = np.array(PROCESSOR_MEAN)[:, None, None]
    std = np.array(PROCESSOR_STD)[:, None, None]
    expected = (data.held_out.images[0].transpose(2, 0, 1) / 255.0 - mean) / std
    np.testing.assert_allclose(images[0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_model_kind_must_fit_the_task(vit_folder: Path, folder: Path, tmp_path: Path) -> None:
    from tests.tiny_models import tiny_bert

    with pytest.raises(ConfigError, match="task=sst2 is a text task and model=.* an image model"):
        check_task(RunConfig.from_mapping({"task": "sst2", "model": str(vit_folder)}))
    tiny_bert(num_labels=2).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="is an image task and model=.* a text encoder"):
        check_task(image_config(folder, model=str(tmp_path / "bert")))
    with pytest.raises(PreflightError, match="an image model"):
        preflight(
            RunConfig.from_mapping({"task": "sst2", "model": "torchvision:resnet18"}),
            simulation=False,
        )


def test_skeletons_on_meta_match_the_models(vit_folder: Path, folder: Path) -> None:
    from fish_fl.preflight import _skeleton

    for model in (str(vit_folder), "torchvision:mobilenet_v3_small"):
        config = image_config(folder, model=model)
        skeleton = _skeleton(config)
        real = build_task_model(config)
        assert {n: p.shape for n, p in skeleton.named_parameters()} == {
            n: p.shape for n, p in real.named_parameters()
        }
        assert all(p.is_meta for p in skeleton.parameters())


def test_one_fish_round_on_a_vit_moves_only_masked_entries(vit_folder: Path, folder: Path) -> None:
    from fish_fl.masks import build_mask
    from fish_fl.training import SparseParameters, make_optimizer, train_steps

    config = image_config(
        folder, model=str(vit_folder), optimizer="sgd", lr=0.1, **{"mask-method": "fish"}
    )
    data = load_task_data(config)
    model = build_task_model(config)
    mask = build_mask(model, config.mask_spec(), data.calibration_loader())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sparse = SparseParameters(model, mask)
    optimizer = make_optimizer(sparse, config.optimizer_config())
    stats = train_steps(
        sparse, optimizer, data.client_loader(0, seed=3), steps=2, device=torch.device("cpu")
    )
    assert stats.steps == 2
    changed = 0
    for name, p in model.named_parameters():
        keep = mask.to_bool(name)
        assert torch.equal(p.detach()[~keep], before[name][~keep]), f"{name}: frozen entry moved"
        changed += int((p.detach()[keep] != before[name][keep]).sum())
    assert changed > 0
