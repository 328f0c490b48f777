"""Small real models and data shared by tests (no mocks: real digits, real training)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from advtrain.data import load_dataset, to_float
from advtrain.models import build_model


@functools.cache
def digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    data = load_dataset("digits")
    return (
        to_float(data.x_train, data.pixel_max), data.y_train,
        to_float(data.x_test, data.pixel_max), data.y_test,
    )


def trained_digits_cnn(epochs: int = 6) -> torch.nn.Module:
    """A small CNN trained with plain CE by a hand-written loop (independent of advtrain's trainer).

    Shared between tests (trained once), and handed out in eval mode every time: a test that switches it to
    train mode must not change what the next test sees.
    """
    return _trained_digits_cnn(epochs).eval()


@functools.cache
def _trained_digits_cnn(epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    x, y, _, _ = digits_tensors()
    model = build_model("small_cnn", num_classes=10, in_channels=1, input_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()
