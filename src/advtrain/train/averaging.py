"""Weight averaging: an exponential moving average (EMA, every step) and stochastic weight averaging (SWA,
an equal-weight mean of the weights from epoch `swa_start`: at each epoch end, or every `swa_every_steps`
optimizer steps as in AR-AT's SWA), with BatchNorm statistics recomputed before an averaged model is
validated or saved.

An average of weights is a new network whose BN running statistics belong to none of the averaged ones
(Izmailov et al. 2018, §3.2), so they are recomputed: reset, then a cumulative average over the first `bn_batches`
augmented training batches of a shuffled pass (`shuffled_passes`: ⌈N/B⌉ batches are every training image once, the
reference code's one pass over its training loader). Which inputs is the method's choice (`Method.recalibrate_bn`):
clean images by default, PGD examples crafted against the average through the adv BN for AR-AT.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.config import AveragingConfig


class WeightAverages:
    """The averaged copies a run keeps: {"ema": ..., "swa": ...}, each only when configured."""

    def __init__(self, config: AveragingConfig, model: nn.Module) -> None:
        self.config = config
        self.models: dict[str, nn.Module] = {}
        if config.ema_decay is not None:
            self.models["ema"] = _frozen_copy(model)
        if config.swa_start is not None:
            self.models["swa"] = _frozen_copy(model)
        self.swa_count = 0  # weight snapshots averaged into the SWA weights so far

    @property
    def active(self) -> bool:
        return bool(self.models)

    def after_step(self, model: nn.Module, epoch: int, step: int) -> None:
        """EMA: θ_ema ← d·θ_ema + (1 − d)·θ for every floating-point parameter. SWA with `swa_every_steps` = N:
        average after every N-th optimizer step (`step` is the 0-based global step just taken)."""
        if "ema" in self.models:
            decay = self.config.ema_decay
            with torch.no_grad():
                for avg, p in zip(self.models["ema"].parameters(), model.parameters(), strict=True):
                    avg.lerp_(p.detach(), 1 - decay)
        every = self.config.swa_every_steps
        if every is not None and (step + 1) % every == 0:
            self._swa_update(model, epoch)

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        """SWA without `swa_every_steps`: average the weights at each epoch end."""
        if self.config.swa_every_steps is None:
            self._swa_update(model, epoch)

    def _swa_update(self, model: nn.Module, epoch: int) -> None:
        """From epoch `swa_start` (0-based) on: θ_swa ← (n·θ_swa + θ)/(n + 1)."""
        start = self.config.swa_start
        if "swa" not in self.models or start is None or epoch < start:
            return
        with torch.no_grad():
            for avg, p in zip(self.models["swa"].parameters(), model.parameters(), strict=True):
                avg.lerp_(p.detach(), 1 / (self.swa_count + 1))
        self.swa_count += 1

    def ready(self) -> dict[str, nn.Module]:
        """The averages that hold something (SWA only once it has averaged an epoch)."""
        return {n: m for n, m in self.models.items() if n != "swa" or self.swa_count > 0}

    def recalibrate(
        self,
        batches: Callable[[], Iterator[tuple[Tensor, Tensor]]],
        recalibrate_bn: Callable[[nn.Module, Iterable[tuple[Tensor, Tensor]]], None],
    ) -> None:
        """Recompute the BN statistics of every ready average with `recalibrate_bn` on the first `bn_batches`
        batches (x, y) of a fresh `batches()` stream each."""
        for model in self.ready().values():
            recalibrate_bn(model, itertools.islice(batches(), self.config.bn_batches))

    def state_dict(self) -> dict[str, Any]:
        return {"models": {n: m.state_dict() for n, m in self.models.items()}, "swa_count": self.swa_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, model in self.models.items():
            model.load_state_dict(state["models"][name])
        self.swa_count = state["swa_count"]


def shuffled_passes(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Index batches of endless passes over range(n), each pass a fresh permutation drawn by `generator` (on its
    device) whose last batch holds the n mod batch_size images left, when that is not 0."""
    while True:
        yield from torch.randperm(n, generator=generator, device=generator.device).split(batch_size)


def _frozen_copy(model: nn.Module) -> nn.Module:
    """A copy that never receives gradients (it is updated in place from the trained model's weights)."""
    average = copy.deepcopy(model)
    average.requires_grad_(False)
    return average
