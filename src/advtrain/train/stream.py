"""Training data streamed from image files (a `FolderDataset`): decoded and augmented in DataLoader workers.

Batch k of an epoch holds `order[k·B:(k+1)·B]`, where `order` is the seeded permutation the on-device batcher
uses (`epoch_order`), and the image at position j of epoch e is augmented with its own seed
`derive_seed(seed, e, j, "image augment")`. So every batch is a pure function of (seed, epoch, batch): the same
whatever the number of workers, their scheduling, the number of processes, or the batch a resumed run starts at.
Each process decodes only its shard of a batch (DistributedSampler semantics). Memory holds the file lists and
the batches in flight (workers × 2 prefetched), whatever the dataset's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from advtrain.config import RunConfig
from advtrain.data import FolderDataset, to_float
from advtrain.data.batcher import check_epoch_start, epoch_order
from advtrain.data.folders import FileList, Key, decoded_batches, load_images
from advtrain.data.images import ImageTransform
from advtrain.distributed import Processes
from advtrain.errors import UserError
from advtrain.runtime import derive_seed
from advtrain.train.sources import ONE_PROCESS, run_split

SEED_RANGE = 2**62  # per-image seeds drawn from a method's generator (sample, shuffled_batches)


class StreamSource:
    """A `TrainSource` over image files: `transform` augments training batches, `plain` (the evaluation
    transform) gives `first`'s unaugmented images."""

    def __init__(self, files: FileList, transform: ImageTransform, plain: ImageTransform, *, batch_size: int,
                 seed: int, device: torch.device, workers: int, procs: Processes = ONE_PROCESS) -> None:
        if len(files) == 0:
            raise UserError("no training images are left after the validation split: give a smaller data.val_size")
        self.files, self.transform, self.plain = files, transform, plain
        self.batch_size, self.seed, self.device, self.workers, self.procs = batch_size, seed, device, workers, procs

    def __len__(self) -> int:
        return -(-len(self.files) // self.batch_size)

    @property
    def smallest_batch(self) -> int:
        return len(self.files) - (len(self) - 1) * self.batch_size

    def batch_length(self, index: int) -> int:
        return min(self.batch_size, len(self.files) - index * self.batch_size)

    def _keys(self, epoch: int, start_batch: int) -> Iterator[list[Key]]:
        """This process's (file, seed) keys of batches `start_batch..` of `epoch`."""
        order = epoch_order(len(self.files), self.seed, epoch)
        for index in range(start_batch, len(self)):
            first, length = index * self.batch_size, self.batch_length(index)
            files = order[first:first + length].tolist()
            yield [(files[j], derive_seed(self.seed, epoch, first + j, "image augment"))
                   for j in range(length)[self.procs.shard(length)]]

    def _on_device(self, batches: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in batches:
            yield to_float(x.to(self.device, non_blocking=True), 255), y.to(self.device, non_blocking=True)

    def _decoded(self, keys: Iterable[list[Key]], transform: ImageTransform) -> Iterator[tuple[Tensor, Tensor]]:
        return self._on_device(decoded_batches(self.files, transform, keys, self.workers, self.device.type == "cuda"))

    def epoch(self, epoch: int, start_batch: int) -> Iterator[tuple[Tensor, Tensor, int]]:
        check_epoch_start(epoch, start_batch, len(self))
        batches = self._decoded(self._keys(epoch, start_batch), self.transform)
        return ((x, y, self.batch_length(i)) for i, (x, y) in enumerate(batches, start=start_batch))

    def _draw(self, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """`count` random files without repetition and a seed for each, drawn from `generator` (on its device)."""
        idx = torch.randperm(len(self.files), generator=generator, device=generator.device)[:count]
        seeds = torch.randint(0, SEED_RANGE, (len(idx),), generator=generator, device=generator.device)
        return idx.cpu(), seeds.cpu()

    def _key_batches(self, idx: Tensor, seeds: Tensor) -> Iterator[list[Key]]:
        b = self.batch_size
        for i in range(0, len(idx), b):
            yield list(zip(idx[i:i + b].tolist(), seeds[i:i + b].tolist(), strict=True))

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        idx, seeds = self._draw(n, generator)
        x, y = load_images(self.files, self.transform, list(zip(idx.tolist(), seeds.tolist(), strict=True)),
                           self.workers)
        return next(self._on_device([(x, y)]))

    def shuffled_batches(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        while True:  # a pass's order and seeds are drawn when it starts, so prefetching draws nothing early
            yield from self._decoded(self._key_batches(*self._draw(len(self.files), generator)), self.transform)

    def first(self, n: int) -> tuple[Tensor, Tensor]:
        x, y = load_images(self.files, self.plain, [(i, None) for i in range(min(n, len(self.files)))], self.workers)
        return next(self._on_device([(x, y)]))


def folder_training_data(config: RunConfig, data: FolderDataset, device: torch.device, procs: Processes
                         ) -> tuple[StreamSource, int, Tensor, Tensor]:
    """The streamed training source, its number of images, and the validation split (images on `device`) of a
    folder dataset. The split
    is carved from the training files, as for an in-memory dataset, and decoded once (at most train.val_max)."""
    d, t = config.data, config.train
    if d.idbh != "none":
        raise UserError(f"data.idbh is not supported with {data.name} (images streamed from files): set data.idbh: "
                        "none and augment with data.flip and data.options.random_resized_crop")
    if d.crop_padding and data.random_resized_crop:
        raise UserError("data.crop_padding and data.options.random_resized_crop are two crops: set one of them")
    train_idx, val_idx = run_split(data.y_train, d.val_size, t.val_max, config.seed)
    x_val, y_val = load_images(data.train, data.eval_transform, [(i, None) for i in val_idx.tolist()], data.workers)
    source = StreamSource(data.train.subset(train_idx), data.train_transform(d.crop_padding, d.flip),
                          data.eval_transform, batch_size=t.batch_size, seed=config.seed, device=device,
                          workers=data.workers, procs=procs)
    return source, len(train_idx), to_float(x_val, data.pixel_max).to(device), y_val.to(device)
