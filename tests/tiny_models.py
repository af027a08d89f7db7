"""Tiny models and data for fast unit tests (no download)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TinyBlock(nn.Module):
    """A residual block with BatchNorm, in-place ReLU and a grouped convolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, groups=2)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class TinyConvNet(nn.Module):
    def __init__(self, num_classes: int = 5, ch: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, ch, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = TinyBlock(ch)
        self.drop = nn.Dropout(0.5)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


def warm_batchnorm(model: nn.Module, gen: torch.Generator, shape: tuple[int, ...]) -> None:
    """Give BatchNorm layers non-trivial running statistics."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape, generator=gen) * 2 + 0.5)


def tiny_bert(num_labels: int = 3, seed: int = 0, layers: int = 2) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        type_vocab_size=2,
        num_labels=num_labels,
        hidden_dropout_prob=0.3,
        attention_probs_dropout_prob=0.3,
    )
    return BertForSequenceClassification(cfg)


def bert_batches(
    n: int, batch: int, num_labels: int, seed: int = 0, seq: int = 9
) -> list[tuple[dict[str, Tensor], Tensor]]:
    """Sentence-pair style batches with padding (pad id 0) and repeated tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 12, (n, seq), generator=g)  # small range: repeated tokens
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    types[:, seq // 2 :] = 1
    for i in range(0, n, 3):
        cut = 4 + i % (seq - 4)
        ids[i, cut:] = 0
        mask[i, cut:] = 0
        types[i, cut:] = 0
    if num_labels == 1:
        y = torch.rand(n, generator=g) * 5
    else:
        y = torch.randint(0, num_labels, (n,), generator=g)
    return [
        (
            {
                "input_ids": ids[i : i + batch],
                "attention_mask": mask[i : i + batch],
                "token_type_ids": types[i : i + batch],
            },
            y[i : i + batch],
        )
        for i in range(0, n, batch)
    ]


def image_batches(
    n: int, batch: int, num_classes: int, seed: int = 0, size: int = 10
) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


class TinyPlainNet(nn.Module):
    """Two convolutions and a head, no BatchNorm: a model client-level DP accepts."""

    def __init__(self, num_classes: int = 10, ch: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, ch, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))
