"""A three-conv CNN for small inputs (8×8 to 32×32), cheap enough for tests and quick experiments."""

from __future__ import annotations

import torch
from torch import nn

from .normalize import NormStats, make_normalize
from .registry import check_input_size, init_weights, register_model


def _conv3x3(in_planes: int, out_planes: int) -> nn.Conv2d:
    # No bias: the BatchNorm right after it has its own shift.
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, padding=1, bias=False)


class SmallCNN(nn.Module):
    """conv-BN-ReLU ×2, max-pool, conv-BN-ReLU, global average pool, linear."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, normalize: NormStats | None = None
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.normalize = make_normalize(normalize, in_channels)
        self.conv1 = _conv3x3(in_channels, 32)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(32, 64)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = _conv3x3(64, 128)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu3 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.normalize(x)
        out = self.relu1(self.bn1(self.conv1(out)))
        out = self.pool(self.relu2(self.bn2(self.conv2(out))))
        out = self.relu3(self.bn3(self.conv3(out)))
        return self.fc(torch.flatten(self.avgpool(out), 1))


@register_model("small_cnn")
def small_cnn(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, normalize: NormStats | None = None
) -> SmallCNN:
    """Small CNN for 8×8 to 32×32 inputs with any number of channels."""
    check_input_size("small_cnn", input_size, 8, 32)
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, normalize=normalize)
