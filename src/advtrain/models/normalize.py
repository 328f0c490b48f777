"""Per-channel input normalisation applied as a model's first layer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from advtrain.errors import UserError

#: ``(mean, std)``, one value per input channel, for inputs in [0, 1].
NormStats = tuple[Sequence[float], Sequence[float]]


class Normalize(nn.Module):
    """Compute ``(x - mean) / std`` per channel on N×C×H×W inputs.

    mean and std are non-persistent buffers: they follow ``.to()``/``.double()`` but never appear in
    the state_dict, so a checkpoint's keys do not depend on whether normalisation is on.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_list, std_list = [float(m) for m in mean], [float(s) for s in std]
        if not mean_list or len(mean_list) != len(std_list):
            raise UserError(
                f"normalize needs one mean and one std per channel; got {len(mean_list)} mean and "
                f"{len(std_list)} std values"
            )
        if not all(math.isfinite(s) and s > 0 for s in std_list) or not all(
            math.isfinite(m) for m in mean_list
        ):
            raise UserError(
                f"normalize std must be positive and all values finite; got mean={mean_list} std={std_list}"
            )
        self.register_buffer("mean", torch.tensor(mean_list).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std_list).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def make_normalize(normalize: NormStats | None, in_channels: int) -> nn.Module:
    """Return the first layer for a model: :class:`Normalize`, or ``nn.Identity`` (no state) for None."""
    if normalize is None:
        return nn.Identity()
    mean, std = normalize
    layer = Normalize(mean, std)
    if layer.mean.numel() != in_channels:
        raise UserError(
            f"normalize has {layer.mean.numel()} values per statistic but the model takes "
            f"{in_channels} input channels; give one mean and std per channel"
        )
    return layer
