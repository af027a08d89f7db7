"""The CIFAR ResNet: torchvision's ResNet with a 3x3 stem (see :func:`fish_fl.models.build_resnet_cifar`).

Its own module so that importing :mod:`fish_fl.models` does not import
torchvision: a text run's processes never load it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["CifarResNet"]


class CifarResNet(ResNet):
    """A torchvision :class:`~torchvision.models.ResNet` for 32x32 images.

    The ImageNet stem (7x7 stride-2 convolution and 3x3 max-pool) is replaced
    by a 3x3 stride-1 convolution and no pooling, so the four stages see 32,
    16, 8 and 4 pixels. ``width`` scales every stage: the stages have
    ``width``, ``2 * width``, ``4 * width`` and ``8 * width`` channels
    (torchvision's ResNets use ``width=64``).

    Parameters
    ----------
    layers : sequence of int
        Basic blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-34.
    num_classes : int, default 10
        Size of the ``fc`` head.
    width : int, default 64
        Channels of the first stage.
    """

    def __init__(self, layers: Sequence[int], num_classes: int = 10, width: int = 64) -> None:
        self._width = width
        super().__init__(BasicBlock, list(layers), num_classes=num_classes)
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.Identity()  # type: ignore[assignment]
        self.fc = nn.Linear(8 * width * BasicBlock.expansion, num_classes)
        # The same initialisation torchvision gives its own stem.
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(
        self,
        block: type[BasicBlock | Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        # torchvision calls this with planes = 64, 128, 256, 512 in order and
        # starts from 64 input channels; scale both to the requested width.
        if planes == 64:
            self.inplanes = self._width
        return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)
