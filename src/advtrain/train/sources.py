"""Where the training loop takes its images from: every source yields float batches in [0, 1] on the device.

`TensorSource` holds the whole training set on the device (`DeviceBatcher`): batch k of epoch e, and every
augmented sample a method or the BatchNorm recalibration draws, are pure functions of (seed, epoch, batch), so a
resumed run sees exactly the batches of an uninterrupted one. `LoaderSource` iterates a user's DataLoader (or any
re-iterable of (x, y) batches) as it is: its order and augmentation are the loader's own.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Protocol

import torch
from torch import Tensor

from advtrain.attacks.threat import check_images
from advtrain.data import DeviceBatcher, augment_batch, split_validation, to_float
from advtrain.distributed import Processes
from advtrain.errors import UserError
from advtrain.train.averaging import shuffled_passes

ONE_PROCESS = Processes()  # frozen, so one shared default is safe


def run_split(labels: Tensor, val_size: float, val_max: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """(training indices, validation indices) of a run: `data.val_size` (a fraction < 1 or a count) held out from the
    training set, stratified by `labels` and seeded; the run validates on at most `train.val_max` of them."""
    train_idx, val_idx = split_validation(len(labels), int(val_size) if val_size >= 1 else val_size, seed,
                                          labels=labels)
    return train_idx, val_idx[:val_max]  # None keeps all


class TrainSource(Protocol):
    """The training data of one run, as the loop and its components read it."""

    def __len__(self) -> int:
        """Batches per epoch."""
        ...

    @property
    def smallest_batch(self) -> int:
        """Images in the smallest batch of an epoch (data-parallel training needs one per process)."""
        ...

    def epoch(self, epoch: int, start_batch: int) -> Iterator[tuple[Tensor, Tensor, int]]:
        """Batches `start_batch..` of `epoch`: this process's part of each global batch (data-parallel training;
        all of it in one process) and the global batch's size."""
        ...

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """`n` augmented training examples (a method's per-epoch sample)."""
        ...

    def shuffled_batches(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """Endless augmented training batches in shuffled passes (BatchNorm recalibration of a weight average)."""
        ...

    def first(self, n: int) -> tuple[Tensor, Tensor]:
        """The first `n` training images, unaugmented: a fixed subset, index-matched across epochs."""
        ...


class TensorSource:
    """A `TrainSource` over a `DeviceBatcher` (the training set on the device)."""

    def __init__(self, batcher: DeviceBatcher, procs: Processes = ONE_PROCESS) -> None:
        self.batcher, self.procs = batcher, procs

    def __len__(self) -> int:
        return len(self.batcher)

    @property
    def smallest_batch(self) -> int:
        return len(self.batcher.y) - (len(self.batcher) - 1) * self.batcher.batch_size

    def epoch(self, epoch: int, start_batch: int) -> Iterator[tuple[Tensor, Tensor, int]]:
        # Each process gathers and augments only its share; the draws are those of the whole batch (batcher.py).
        b = self.batcher
        for index, (x, y) in enumerate(b.epoch(epoch, start_batch, self.procs.shard), start=start_batch):
            yield x, y, b.batch_length(index)

    def images(self, idx: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The training images at `idx`, augmented with `generator`'s draws."""
        b = self.batcher
        x = b.x[idx]
        if b.augment.active:
            x = augment_batch(x, b.augment, generator)
        return to_float(x, b.pixel_max), b.y[idx]

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.images(torch.randperm(len(self.batcher.y), generator=generator, device=self.batcher.device)[:n],
                           generator)

    def shuffled_batches(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        b = self.batcher
        return (self.images(i, generator) for i in shuffled_passes(len(b.y), b.batch_size, generator))

    def first(self, n: int) -> tuple[Tensor, Tensor]:
        return to_float(self.batcher.x[:n], self.batcher.pixel_max), self.batcher.y[:n]


class LoaderSource:
    """A `TrainSource` over a re-iterable of (x, y) batches, e.g. a `torch.utils.data.DataLoader`: float images in
    [0, 1] or uint8 pixels (0..255), moved to `device`. A resumed epoch skips the batches already trained on."""

    def __init__(self, batches: Iterable, device: torch.device, where: str = "train_data",
                 procs: Processes = ONE_PROCESS) -> None:
        if iter(batches) is batches:
            raise UserError(f"{where} is a one-shot iterator: pass a DataLoader or a list of (x, y) batches, which "
                            "can be iterated again every epoch")
        self.batches, self.device, self.where, self.procs = batches, device, where, procs
        try:
            self.length = len(batches)  # type: ignore[arg-type]
        except TypeError:
            self.length = sum(1 for _ in batches)  # a plain iterable: count one pass
        if self.length == 0:
            raise UserError(f"{where} yields no batches: pass a non-empty DataLoader or list of (x, y) batches")
        first = next(iter(self.batches))
        self.last_size = len(self._convert(first)[1])  # checks the first batch's form now, before training

    def __len__(self) -> int:
        return self.length

    @property
    def smallest_batch(self) -> int:
        return self.last_size if self.length == 1 else 1  # a loader's last batch may be any size

    def _convert(self, batch: object) -> tuple[Tensor, Tensor]:
        if not (isinstance(batch, tuple | list) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)):
            raise UserError(f"{self.where} must yield (x, y) pairs of tensors, got {type(batch).__name__}: "
                            "use a DataLoader over a TensorDataset(x, y)")
        x, y = batch
        if x.dtype == torch.uint8:
            x = x.float() / 255
        check_images(x, f"{self.where} images")
        if x.dim() != 4 or y.dim() != 1 or len(y) != len(x) or y.is_floating_point():
            raise UserError(f"{self.where} batches must be images N×C×H×W with N integer labels, got x "
                            f"{tuple(x.shape)} and y {tuple(y.shape)} {str(y.dtype).removeprefix('torch.')}")
        return x.to(self.device), y.to(self.device, torch.int64)

    def epoch(self, epoch: int, start_batch: int) -> Iterator[tuple[Tensor, Tensor, int]]:
        for batch in itertools.islice(self.batches, start_batch, None):
            x, y = self._convert(batch)
            part = self.procs.shard(len(y))
            yield x[part], y[part], len(y)

    def shuffled_batches(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        while True:  # the loader shuffles (or not) on its own
            yield from (self._convert(b) for b in self.batches)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return _take(self.shuffled_batches(generator), n)

    def first(self, n: int) -> tuple[Tensor, Tensor]:
        return _take((self._convert(b) for b in self.batches), n)


def _take(batches: Iterator[tuple[Tensor, Tensor]], n: int) -> tuple[Tensor, Tensor]:
    """The first `n` examples of `batches` (fewer if they run out)."""
    xs, ys, have = [], [], 0
    for x, y in batches:
        xs.append(x[: n - have])
        ys.append(y[: n - have])
        have += len(ys[-1])
        if have >= n:
            break
    return torch.cat(xs), torch.cat(ys)
