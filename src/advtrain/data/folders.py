"""Datasets that stay on disk as image files: file lists in memory, images decoded when a batch needs them.

A `FolderDataset` offers what evaluation reads from an in-memory `Dataset` (`x_test[:n]` decodes those n images
only, with the evaluation transform; `y_test`, `shape`, `num_classes`, `mean`/`std`), and what training needs to
stream (its file lists and transforms; advtrain.train.stream). Decoding runs in `DataLoader` worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from advtrain.data.dataset import channel_moments
from advtrain.data.images import ImageTransform
from advtrain.errors import UserError

MOMENT_SAMPLE = 1000  # training images (a fixed seeded sample) behind `model.normalize: dataset`
LOAD_BATCH = 64  # images per worker task when decoding a fixed list (validation, evaluation, samples)

Key = tuple[int, int | None]  # (index into a FileList, the image's augmentation seed; None: evaluation transform)


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value
class FileList:
    """Image files under `root` with their labels. Paths are one NumPy bytes array (a few dozen bytes per file,
    no Python object each), so a million-file list is small and worker processes share it unchanged."""

    root: Path
    paths: np.ndarray  # relative paths, os.fsencode'd, dtype S
    labels: np.ndarray  # int64

    @classmethod
    def of(cls, root: Path, paths: Sequence[str], labels: Sequence[int]) -> FileList:
        encoded = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_) if paths else np.array([], "S1")
        return cls(root, encoded, np.asarray(labels, dtype=np.int64).reshape(-1))

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.paths[i])

    def subset(self, idx: torch.Tensor | np.ndarray) -> FileList:
        idx = np.asarray(idx, dtype=np.int64)
        return FileList(self.root, self.paths[idx], self.labels[idx])


class _Decoder(torch.utils.data.Dataset):
    """Key → (uint8 image, label), or the one-line message of a file that failed: an exception raised in a worker
    reaches the main process wrapped in a multi-line traceback, so failures travel as values."""

    def __init__(self, files: FileList, transform: ImageTransform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: Key) -> tuple[np.ndarray, int] | str:
        i, seed = key
        try:
            return self.transform(self.files.path(i), seed), int(self.files.labels[i])
        except UserError as e:
            return str(e)


def _collate(items: list[tuple[np.ndarray, int] | str]) -> tuple[torch.Tensor, torch.Tensor] | str:
    for item in items:
        if isinstance(item, str):
            return item
    images = np.stack([item[0] for item in items])  # type: ignore[index]
    labels = np.array([item[1] for item in items], dtype=np.int64)  # type: ignore[index]
    return torch.from_numpy(images), torch.from_numpy(labels)


def decoded_batches(
    files: FileList, transform: ImageTransform, batches: Iterable[list[Key]], workers: int, pin: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of keys decoded in `workers` DataLoader processes (0: in this one), in order: uint8 N×C×H×W
    images and int64 labels on the CPU (pinned when `pin`). A file that cannot be decoded is a UserError."""
    loader = DataLoader(_Decoder(files, transform), batch_sampler=batches, num_workers=workers,  # type: ignore[arg-type]
                        collate_fn=_collate, pin_memory=pin)
    for batch in loader:
        if isinstance(batch, str):
            raise UserError(batch)
        yield batch


def load_images(
    files: FileList, transform: ImageTransform, keys: Sequence[Key], workers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of `keys` decoded (in at most `workers` processes, fewer for a short list) as one uint8 tensor
    N×3×S×S with their int64 labels."""
    chunks = [list(keys[i:i + LOAD_BATCH]) for i in range(0, len(keys), LOAD_BATCH)]
    size = transform.image_size
    x = torch.empty((len(keys), 3, size, size), dtype=torch.uint8)  # filled in place: no second copy to concatenate
    y = torch.empty(len(keys), dtype=torch.int64)
    workers = min(workers, len(chunks)) if len(chunks) > 1 else 0  # one batch: no process start-up
    for start, (xb, yb) in zip(range(0, len(keys), LOAD_BATCH), decoded_batches(files, transform, chunks, workers),
                               strict=True):
        x[start:start + len(yb)], y[start:start + len(yb)] = xb, yb
    return x, y


class LazyImages:
    """The images of a FileList, decoded with an evaluation transform when indexed: `x[:n]` reads n files."""

    def __init__(self, files: FileList, transform: ImageTransform, workers: int) -> None:
        self.files, self.transform, self.workers = files, transform, workers

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.transform.image_size, self.transform.image_size)

    def __getitem__(self, index: int | slice | torch.Tensor) -> torch.Tensor:
        picked = torch.arange(len(self))[index]
        x, _ = load_images(self.files, self.transform, [(i, None) for i in picked.reshape(-1).tolist()],
                           self.workers)
        return x.reshape(*picked.shape, *x.shape[1:])


@dataclass(frozen=True, eq=False)
class FolderDataset:
    """A dataset of image files: a training and a test split (the layout's val/), read on demand.

    Evaluation images are the shorter side resized to `resize`, then the centred `image_size` square
    (`eval_transform`); training images come from `train_transform`.
    """

    name: str
    train: FileList
    test: FileList
    class_names: tuple[str, ...]
    image_size: int
    resize: int
    random_resized_crop: bool = False
    workers: int = 4
    pixel_max = 255  # every decoded image is 8-bit RGB

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def eval_transform(self) -> ImageTransform:
        return ImageTransform(self.image_size, self.resize)

    def train_transform(self, crop_padding: int, flip: bool) -> ImageTransform:
        """The training transform with the run's crop padding (used without a random-resized crop) and flip."""
        return ImageTransform(self.image_size, self.resize, train=True, random_resized_crop=self.random_resized_crop,
                              crop_padding=crop_padding, flip=flip)

    @property
    def x_train(self) -> LazyImages:
        return LazyImages(self.train, self.eval_transform, self.workers)

    @property
    def y_train(self) -> torch.Tensor:
        return torch.from_numpy(self.train.labels)

    @property
    def x_test(self) -> LazyImages:
        return LazyImages(self.test, self.eval_transform, self.workers)

    @property
    def y_test(self) -> torch.Tensor:
        return torch.from_numpy(self.test.labels)

    @cached_property
    def _moments(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        # A fixed sample (seed 0, not the run's seed): every run on this data gets the same normalisation.
        sample = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(0))[:MOMENT_SAMPLE]
        return channel_moments(self.x_train[torch.sort(sample).values], self.pixel_max)

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean in [0, 1] of a fixed sample of MOMENT_SAMPLE training images (evaluation transform)."""
        return self._moments[0]

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel population standard deviation of the same sample."""
        return self._moments[1]
