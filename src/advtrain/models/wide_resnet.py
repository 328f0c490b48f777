"""WideResNets with the parameter names of the TRADES / RobustBench code, so their checkpoints load as is."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from advtrain.errors import UserError

from .normalize import NormStats, make_normalize
from .registry import check_input_size, init_weights, register_model


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3×3, BN-ReLU-(dropout)-conv3×3, plus shortcut.

    When the widths differ (``equalInOut`` False) the 1×1 ``convShortcut`` and the first conv both read the
    first pre-activation; otherwise the shortcut is the raw input. This mirrors the reference exactly.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.droprate = drop_rate
        self.equalInOut = in_planes == out_planes
        self.convShortcut: nn.Conv2d | None = None
        if not self.equalInOut:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(pre)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return out + shortcut


class NetworkBlock(nn.Module):
    """``nb_layers`` blocks in ``self.layer``; only the first changes width and stride."""

    def __init__(
        self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate
                )
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k: 3×3 stem to 16 planes, three stages of 16k, 32k, 64k planes, BN-ReLU, pool, fc."""

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        normalize: NormStats | None = None,
        drop_rate: float = 0.0,
        sub_block1: bool = False,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise UserError(f"WideResNet depth must be 6n+4 with n >= 1 (e.g. 16, 28, 34); got {depth}")
        if widen_factor < 1:
            raise UserError(f"WideResNet widen_factor must be a positive integer; got {widen_factor}")
        if not 0.0 <= drop_rate < 1.0:
            raise UserError(f"WideResNet drop_rate must be in [0, 1); got {drop_rate}")
        self.num_classes = num_classes
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = make_normalize(normalize, in_channels)
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        if sub_block1:
            # Never used in forward; the original TRADES checkpoints carry its weights, so strict loading of
            # them needs the parameters to exist.
            self.sub_block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        # The reference uses avg_pool2d(out, 8) (32×32 only); adaptive pooling is the same there.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def wide_resnet(
    depth: int,
    widen_factor: int,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    normalize: NormStats | None = None,
    drop_rate: float = 0.0,
    sub_block1: bool = False,
) -> WideResNet:
    """Build a WRN-``depth``-``widen_factor`` (depth = 6n + 4)."""
    check_input_size(f"wrn{depth}_{widen_factor}", input_size, 8)
    return WideResNet(
        depth,
        widen_factor,
        num_classes=num_classes,
        in_channels=in_channels,
        normalize=normalize,
        drop_rate=drop_rate,
        sub_block1=sub_block1,
    )


# The two WideResNets of the robustness literature (TRADES, RobustBench, ISEAT, AR-AT): WRN-34-10 has
# 46.2M parameters at 10 classes, WRN-28-10 36.5M. Only depth and width differ, so they share one builder.
wrn34_10 = register_model("wrn34_10")(functools.partial(wide_resnet, 34, 10))
wrn28_10 = register_model("wrn28_10")(functools.partial(wide_resnet, 28, 10))
