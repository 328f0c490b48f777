"""On-device batching and augmentation: the uint8 dataset lives on the device and batches are gathered there.

Every random draw comes from a generator seeded from ``(seed, epoch)`` for the order and from
``(seed, epoch, batch index)`` for augmentation, so batch ``k`` of epoch ``e`` is a pure function of those
numbers: a run resumed at any batch sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from advtrain.data.idbh import IdbhParams, apply_idbh, draw_idbh_params
from advtrain.errors import UserError
from advtrain.runtime import derive_seed


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation; the default does nothing."""

    crop_padding: int = 0  # random crop with zero padding of this many pixels (0 = off)
    flip: bool = False  # random horizontal flip with p = 0.5
    idbh: Literal["none", "weak", "strong"] = "none"  # IDBH (advtrain.data.idbh), replaces crop/flip when set

    def __post_init__(self) -> None:
        pad = self.crop_padding
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise UserError(f"crop_padding must be an integer >= 0 (0 turns cropping off), got {pad!r}")
        if self.idbh not in ("none", "weak", "strong"):
            raise UserError(f"idbh must be 'none', 'weak' or 'strong', got {self.idbh!r}")
        if self.idbh != "none" and (pad > 0 or self.flip):
            raise UserError("data.idbh replaces data.crop_padding/data.flip: unset them")

    @property
    def active(self) -> bool:
        """Whether this augmentation changes anything."""
        return self.idbh != "none" or self.crop_padding > 0 or bool(self.flip)


def to_float(x_uint8: torch.Tensor, pixel_max: int) -> torch.Tensor:
    """Images in [0, 1] as float32: ``x / pixel_max``."""
    if pixel_max <= 0:
        raise UserError(f"pixel_max must be positive (255 for 8-bit images), got {pixel_max}")
    return x_uint8.float() / pixel_max


def draw_augment_params(
    n: int, augment: Augment, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw per-image ``(dy, dx, flip)`` on the generator's device, in this fixed order.

    ``dy``/``dx`` are the crop's top-left corner in the padded image (0..2·crop_padding; drawn only when
    cropping is on, else zeros) and ``flip`` is a bool mask (drawn only when flipping is on, else all False).
    """
    device = generator.device
    pad = augment.crop_padding
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    else:
        dy = dx = torch.zeros(n, dtype=torch.int64, device=device)
    if augment.flip:
        flip = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    else:
        flip = torch.zeros(n, dtype=torch.bool, device=device)
    return dy, dx, flip


def apply_augment(
    x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Crop each image of ``x`` (N×C×H×W) at ``(dy, dx)`` of its zero-padded copy, then flip where ``flip``.

    One gather for the whole batch: the flip is folded into the column index grid with ``torch.where``.
    """
    n, c, h, w = x.shape
    if pad > 0:
        padded = x.new_zeros((n, c, h + 2 * pad, w + 2 * pad))
        padded[:, :, pad : pad + h, pad : pad + w] = x
    else:
        padded = x
    device = x.device
    rows = dy.to(device)[:, None] + torch.arange(h, device=device)  # N×H
    forward = torch.arange(w, device=device)
    cols = dx.to(device)[:, None] + torch.where(flip.to(device)[:, None], forward.flip(0), forward)  # N×W
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def augment_batch(
    x_uint8: torch.Tensor, augment: Augment, generator: torch.Generator, whole: tuple[int, slice] | None = None
) -> torch.Tensor:
    """Randomly crop (zero padding) and flip a batch N×C×H×W, or apply IDBH; dtype and shape are preserved.

    ``whole`` = (n, part): ``x_uint8`` is the ``part`` of a batch of n images (data-parallel training, where each
    process augments only its share): the draws are made for all n and this part's are applied, so an image gets
    the same augmentation whatever the number of processes. ``generator`` must live on the batch's device. With
    augmentation off the input is returned unchanged.
    """
    if x_uint8.dim() != 4:
        raise UserError(f"augment_batch needs an N×C×H×W batch, got shape {tuple(x_uint8.shape)}")
    if not augment.active:
        return x_uint8
    n, part = whole if whole is not None else (len(x_uint8), slice(None))
    if augment.idbh != "none":
        params = draw_idbh_params((n, *x_uint8.shape[1:]), augment.idbh, generator)
        return apply_idbh(x_uint8, _idbh_part(params, part))
    dy, dx, flip = draw_augment_params(n, augment, generator)
    return apply_augment(x_uint8, augment.crop_padding, dy[part], dx[part], flip[part])


def _idbh_part(params: IdbhParams, part: slice) -> IdbhParams:
    """The per-image IDBH draws of the images in `part` (every field holds one entry per image)."""
    erasing = dataclasses.replace(params.erasing, **{f.name: getattr(params.erasing, f.name)[part]
                                                     for f in dataclasses.fields(params.erasing)})
    return dataclasses.replace(params, erasing=erasing, **{
        f.name: getattr(params, f.name)[part] for f in dataclasses.fields(params) if f.name != "erasing"})


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled example order of `epoch` (a permutation of range(n) on the CPU, so the same on every device)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, "order")))


def check_epoch_start(epoch: int, start_batch: int, batches: int) -> None:
    """Refuse an epoch number or a start batch (of `batches` per epoch) a resumed run cannot start at."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise UserError(f"epoch must be an integer >= 0, got {epoch!r}")
    valid_int = isinstance(start_batch, int) and not isinstance(start_batch, bool)
    if not valid_int or not 0 <= start_batch <= batches:
        raise UserError(
            f"start_batch {start_batch!r} is outside 0..{batches} for {batches} batches per epoch; "
            "resume with the batch size the run started with"
        )


class DeviceBatcher:
    """Yields shuffled, augmented float batches from a uint8 dataset held on ``device`` (or a float one in [0, 1],
    with ``pixel_max`` 1).

    The data is moved to the device once, in ``__init__``; each batch is a gather on the device followed by
    augmentation in uint8 and a single conversion to float.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int,
        pixel_max: int,
        device: torch.device | str,
        seed: int,
        augment: Augment = Augment(),  # frozen, so sharing one default instance is safe
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if not (x.dtype == torch.uint8 or x.is_floating_point()) or x.dim() != 4:
            raise UserError(f"DeviceBatcher needs images N×C×H×W, uint8 (or floats with pixel_max 1), got {x.dtype} "
                            f"{tuple(x.shape)}")
        if y.dim() != 1 or len(y) != len(x):
            raise UserError(f"DeviceBatcher needs one label per image ({len(x)}), got shape {tuple(y.shape)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
        if pixel_max <= 0:
            raise UserError(f"pixel_max must be positive (255 for 8-bit images), got {pixel_max}")
        if augment.idbh != "none" and pixel_max != 255:
            raise UserError(f"data.idbh needs 8-bit images (pixel_max 255), this dataset has pixel_max {pixel_max}")
        self.x = x.to(device).contiguous()
        self.y = y.to(device=self.x.device, dtype=torch.int64)
        self.device = self.x.device  # resolved, e.g. cuda -> cuda:0, so generators match the data
        self.batch_size = batch_size
        self.pixel_max = pixel_max
        self.seed = int(seed)
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The example order of ``epoch`` (a permutation of ``range(n)`` on the device)."""
        n = len(self.x)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        return epoch_order(n, self.seed, epoch).to(self.device)

    def batch(
        self, epoch: int, index: int, order: torch.Tensor | None = None, part: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` of ``epoch``, or its ``part`` (data-parallel: this process's share; only those images
        are gathered and augmented): (float images in [0, 1], int64 labels); ``order`` skips a redraw."""
        if order is None:
            order = self.order(epoch)
        idx = order[index * self.batch_size : (index + 1) * self.batch_size]
        n = len(idx)
        idx = idx[part]
        xb = self.x[idx]
        if self.augment.active:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(derive_seed(self.seed, epoch, index, "augment"))
            xb = augment_batch(xb, self.augment, generator, (n, part))
        return to_float(xb, self.pixel_max), self.y[idx]

    def batch_length(self, index: int) -> int:
        """Images in batch ``index`` of any epoch."""
        return min(self.batch_size, len(self.x) - index * self.batch_size)

    def epoch(
        self, epoch: int, start_batch: int = 0, shard: Callable[[int], slice] | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches ``start_batch..`` of ``epoch``, identical to those of an uninterrupted epoch; ``shard(n)``
        picks the part of each n-image batch to yield (data-parallel: this process's share)."""
        check_epoch_start(epoch, start_batch, len(self))
        return self._iterate(epoch, start_batch, shard)

    def _iterate(
        self, epoch: int, start_batch: int, shard: Callable[[int], slice] | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order(epoch)
        for index in range(start_batch, len(self)):
            part = slice(None) if shard is None else shard(self.batch_length(index))
            yield self.batch(epoch, index, order, part)
