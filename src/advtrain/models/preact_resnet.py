"""Pre-activation ResNet-18 for CIFAR, with the parameter names of the fast-adversarial-training code
(Wong et al. 2020) and robust-overfitting code (Rice et al. 2020), so their checkpoints load as is."""

from __future__ import annotations

import torch
from torch import nn

from .normalize import NormStats, make_normalize
from .registry import check_input_size, init_weights, register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv ×2; the 1×1 shortcut (when shapes change) taps the first pre-activation."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        # Only created when needed: the reference checkpoints have no shortcut keys otherwise.
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        # Out-of-place add keeps every intermediate intact for double backprop.
        return out + shortcut


class PreActResNet(nn.Module):
    """Stem conv (no BN), four stages of pre-activation blocks, final BN-ReLU, global pool, linear."""

    def __init__(
        self,
        num_blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        normalize: NormStats | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.normalize = make_normalize(normalize, in_channels)
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.bn = nn.BatchNorm2d(512 * PreActBlock.expansion)
        self.relu = nn.ReLU()
        # Adaptive pooling equals the reference avg_pool2d(out, 4) at 32×32 and also handles other sizes.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * PreActBlock.expansion, num_classes)
        init_weights(self)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes * PreActBlock.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.relu(self.bn(out))
        return self.linear(torch.flatten(self.avgpool(out), 1))


@register_model("preact_resnet18")
def preact_resnet18(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, normalize: NormStats | None = None
) -> PreActResNet:
    """PreAct ResNet-18 (11.2M parameters at 10 classes)."""
    check_input_size("preact_resnet18", input_size, 8)
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, normalize=normalize)
