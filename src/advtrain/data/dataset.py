"""The dataset type every source returns: uint8 images N×C×H×W and int64 labels on the CPU.

Images stay uint8 until a batch is drawn (see ``batcher.py``) so that a whole dataset fits on the device cheaply
and the [0, 1] scaling happens in exactly one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property

import torch

from advtrain.errors import UserError


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value, so compare datasets by identity
class Dataset:
    """An image classification dataset held as uint8 tensors on the CPU.

    ``x / pixel_max`` is the image in [0, 1]; ``pixel_max`` is 255 for 8-bit images and 16 for sklearn digits.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    pixel_max: int
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise UserError(
                    f"{self.name}: x_{split} must be a uint8 N×C×H×W tensor, got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
                raise UserError(
                    f"{self.name}: y_{split} must be int64 with one label per image ({len(x)}), "
                    f"got {y.dtype} {tuple(y.shape)}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise UserError(
                f"{self.name}: train images are {tuple(self.x_train.shape[1:])} but test images are "
                f"{tuple(self.x_test.shape[1:])}; both splits need the same C×H×W"
            )
        if not 1 <= self.pixel_max <= 255:
            raise UserError(f"{self.name}: pixel_max must be in 1..255, got {self.pixel_max}")
        if not self.class_names:  # default names are the class indices
            object.__setattr__(self, "class_names", tuple(str(i) for i in range(self.num_classes)))
        elif len(self.class_names) != self.num_classes:
            raise UserError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes; "
                "give one name per class or none"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape (C, H, W)."""
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))

    @cached_property
    def _moments(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return channel_moments(self.x_train, self.pixel_max)

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the training images in [0, 1]."""
        return self._moments[0]

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel population standard deviation of the training images in [0, 1]."""
        return self._moments[1]


def channel_moments(x: torch.Tensor, pixel_max: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population standard deviation of uint8 images N×C×H×W, in [0, 1] (x / pixel_max)."""
    # Integer sums are exact, so mean/std do not depend on chunking or summation order.
    sums = torch.zeros(x.shape[1], dtype=torch.int64)
    squares = torch.zeros(x.shape[1], dtype=torch.int64)
    for start in range(0, len(x), 1024):  # chunks bound the int64 temporary to ~25 MB for 32×32×3
        chunk = x[start : start + 1024].to(torch.int64)
        sums += chunk.sum(dim=(0, 2, 3))
        squares += (chunk * chunk).sum(dim=(0, 2, 3))
    count = len(x) * x.shape[2] * x.shape[3]
    means, stds = [], []
    for s, q in zip(sums.tolist(), squares.tolist(), strict=True):
        means.append(float(Fraction(s, count * pixel_max)))
        var = Fraction(count * q - s * s, count * count * pixel_max**2)
        stds.append(math.sqrt(var))
    return tuple(means), tuple(stds)
