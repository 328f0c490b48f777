"""Learning-rate schedules as functions of fractional epoch t (the LR is set every step)."""

from __future__ import annotations

import bisect
import math
from typing import Any

import torch

from advtrain.config import OptimConfig, ScheduleConfig


def build_optimizer(params: list[torch.nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    """SGD or Adam with the multi-tensor (foreach) update, or the fused one when `config.fused`.

    The fused CPU kernel of torch 2.13 assumes every .grad and state tensor has its parameter's strides: a
    contiguous gradient or momentum buffer on a channels_last weight is applied wrongly, silently. Backward makes
    gradients in their parameter's layout; `match_state_layout` does it for a loaded optimizer state.
    """
    kernel = {"fused": True} if config.fused else {"foreach": True}
    if config.name == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
            nesterov=config.nesterov, **kernel,
        )
    beta1, beta2 = config.betas
    return torch.optim.Adam(params, lr=config.lr, betas=(beta1, beta2), weight_decay=config.weight_decay,
                            **kernel)


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (momentum, Adam moments) its parameter's memory layout, as a fresh
    optimizer has it; a loaded state comes back contiguous (see build_optimizer)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


class LRSchedule:
    """lr(t) for t ∈ [0, epochs]; `plateau` also keeps state updated once per epoch."""

    def __init__(self, config: ScheduleConfig, base_lr: float, epochs: int) -> None:
        self.config = config
        self.base_lr = base_lr
        self.epochs = epochs
        self.milestones = sorted(config.milestones)
        # ReduceLROnPlateau(mode=min, threshold_mode=rel, cooldown=0) state.
        self.best = math.inf
        self.bad_epochs = 0
        self.reductions = 0

    def lr_at(self, t: float) -> float:
        c, lr = self.config, self.base_lr
        if c.name == "multistep":
            return lr * c.gamma ** bisect.bisect_right(self.milestones, t)
        if c.name == "cosine":
            return lr * 0.5 * (1 + math.cos(math.pi * min(t, self.epochs) / self.epochs))
        if c.name == "cyclic":
            peak = c.peak_epoch_fraction * self.epochs
            if t <= peak:
                return lr * t / peak
            return lr * max(self.epochs - t, 0.0) / (self.epochs - peak)
        if c.name == "plateau":
            return lr * c.factor**self.reductions
        return lr

    def end_epoch(self, monitored: float) -> None:
        """Feed the epoch's monitored value (training loss) to the plateau rule; no-op otherwise."""
        if self.config.name != "plateau":
            return
        if monitored < self.best * (1 - self.config.threshold):
            self.best, self.bad_epochs = monitored, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.config.patience:
            self.reductions += 1
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "reductions": self.reductions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs, self.reductions = state["best"], state["bad_epochs"], state["reductions"]
