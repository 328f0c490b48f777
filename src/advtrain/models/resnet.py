"""ResNets with the parameter names of the widely used pytorch-cifar layout, which is also the layout of the
AutoAttack example checkpoint.

Two stems (the `stem` option): `cifar`, the default, a 3×3 stride-1 conv and no max-pool; `imagenet`, the stem of He
et al. 2016 that the IGD paper uses on Tiny-ImageNet and ImageNet-100: 7×7 stride-2 conv, BN, ReLU, 3×3 stride-2
max-pool (4× smaller feature maps before the first stage). Both keep the keys conv1, bn1, layer1..4, linear.
"""

from __future__ import annotations

import torch
from torch import nn

from advtrain.errors import UserError

from .normalize import NormStats, make_normalize
from .registry import check_input_size, init_weights, register_model


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3, 1×1 expand (×4), each with BN, plus shortcut, then ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU()
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    # An empty Sequential is the identity and has no keys, matching the reference layout.
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


# The smallest input each stem is meant for: 8 px leave a 1×1 map after the CIFAR stem's three stride-2 stages,
# 32 px after the ImageNet stem's further 4× reduction.
STEMS = {"cifar": 8, "imagenet": 32}


def check_stem(name: str, stem: str) -> None:
    if not isinstance(stem, str) or stem not in STEMS:  # a YAML list or mapping is unhashable
        raise UserError(
            f"model {name!r} has no stem {stem!r}: set the stem option (model.options.stem) to cifar (3×3 conv) "
            "or imagenet (7×7 stride-2 conv and max-pool)"
        )


class ResNet(nn.Module):
    """Stem (conv-BN-ReLU, plus a max-pool for the ImageNet stem), four stages (64, 128, 256, 512 planes), global
    average pool, linear."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        in_channels: int = 3,
        normalize: NormStats | None = None,
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        check_stem(type(self).__name__, stem)
        self.num_classes = num_classes
        self.normalize = make_normalize(normalize, in_channels)
        self.in_planes = 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        # Parameter-free, so both stems have the same state_dict keys.
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        # The reference uses avg_pool2d(out, 4), which only fits 32×32 inputs; adaptive pooling gives the
        # same mean there and also works for other sizes.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, num_blocks: int, stride: int
    ) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.avgpool(out), 1))


def _build(
    name: str,
    block: type[BasicBlock | Bottleneck],
    num_blocks: tuple[int, int, int, int],
    num_classes: int,
    in_channels: int,
    input_size: int,
    normalize: NormStats | None,
    stem: str,
) -> ResNet:
    check_stem(name, stem)
    check_input_size(name, input_size, STEMS[stem])
    return ResNet(block, num_blocks, num_classes=num_classes, in_channels=in_channels, normalize=normalize, stem=stem)


@register_model("resnet18")
def resnet18(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    normalize: NormStats | None = None,
    stem: str = "cifar",
) -> ResNet:
    """ResNet-18 (11.2M parameters at 10 classes); `stem="imagenet"` gives torchvision's layer shapes (11.7M at
    1000 classes)."""
    return _build("resnet18", BasicBlock, (2, 2, 2, 2), num_classes, in_channels, input_size, normalize, stem)


@register_model("resnet34")
def resnet34(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    normalize: NormStats | None = None,
    stem: str = "cifar",
) -> ResNet:
    """ResNet-34."""
    return _build("resnet34", BasicBlock, (3, 4, 6, 3), num_classes, in_channels, input_size, normalize, stem)


@register_model("resnet50")
def resnet50(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    normalize: NormStats | None = None,
    stem: str = "cifar",
) -> ResNet:
    """ResNet-50 (bottleneck blocks)."""
    return _build("resnet50", Bottleneck, (3, 4, 6, 3), num_classes, in_channels, input_size, normalize, stem)
