"""Image files to uint8 C×H×W arrays: decoding (Pillow), resizing and the crops of ImageNet-style training.

No torchvision: the transforms are written here. Every random draw of one image comes from a NumPy generator
seeded with that image's own seed, so an image's augmentation does not depend on which worker process decoded
it, in what order, or how many processes share the batch. Draw order: random-resized-crop box, then the
padded crop's corner (dy, dx), then the flip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from advtrain.errors import UserError

RRC_SCALE = (0.08, 1.0)  # area fraction of the random-resized crop (the usual ImageNet one)
RRC_RATIO = (3 / 4, 4 / 3)  # its aspect-ratio range, drawn log-uniformly
RRC_TRIES = 10  # boxes drawn before falling back to the centre crop


def decode(path: Path) -> Image.Image:
    """The image at `path` in RGB; a file Pillow cannot read is a one-line UserError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot decode image {path} ({reason}): replace or delete the file") from None


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """`image` scaled (bilinear) so that its shorter side is `size`, the longer one rounded to keep the shape."""
    w, h = image.size
    if min(w, h) == size:
        return image
    if w <= h:
        return image.resize((size, max(1, round(h * size / w))), Image.Resampling.BILINEAR)
    return image.resize((max(1, round(w * size / h)), size), Image.Resampling.BILINEAR)


def centre_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred size×size square (rounded half up; beyond the image when it is
    smaller: Pillow pads that with zeros)."""
    left = math.floor((width - size) / 2 + 0.5)
    top = math.floor((height - size) / 2 + 0.5)
    return left, top, left + size, top + size


def random_resized_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop covering RRC_SCALE of the area with an aspect ratio in
    RRC_RATIO; after RRC_TRIES misses, the largest centred crop whose ratio is within RRC_RATIO."""
    area = width * height
    log_ratio = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))
    for _ in range(RRC_TRIES):
        target = area * rng.uniform(*RRC_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < RRC_RATIO[0]:
        w, h = width, round(width / RRC_RATIO[0])
    elif ratio > RRC_RATIO[1]:
        w, h = round(height * RRC_RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def to_chw(image: Image.Image) -> np.ndarray:
    """An RGB image as a contiguous uint8 3×H×W array."""
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def pad_crop(x: np.ndarray, pad: int, dy: int, dx: int) -> np.ndarray:
    """The H×W window at (dy, dx) of `x` (C×H×W) zero-padded by `pad` pixels on every side."""
    c, h, w = x.shape
    padded = np.zeros((c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    padded[:, pad:pad + h, pad:pad + w] = x
    return padded[:, dy:dy + h, dx:dx + w]


@dataclass(frozen=True)
class ImageTransform:
    """File → uint8 3×`image_size`×`image_size`.

    Evaluation (`train` False): shorter side resized to `resize`, then the centred `image_size` square.
    Training: a random-resized crop scaled to `image_size` (`random_resized_crop`), or the evaluation transform
    with `resize` = `image_size`, then a random crop of the image zero-padded by `crop_padding`; then a
    horizontal flip with p = 0.5 when `flip`.
    """

    image_size: int
    resize: int
    train: bool = False
    random_resized_crop: bool = False
    crop_padding: int = 0
    flip: bool = False

    def __call__(self, path: Path, seed: int | None = None) -> np.ndarray:
        image = decode(path)
        if not self.train:
            return self._centre(image, self.resize)
        if seed is None:
            raise ValueError("a training transform needs the image's seed")
        rng = np.random.default_rng(seed)
        size = self.image_size
        if self.random_resized_crop:
            box = random_resized_box(*image.size, rng)
            x = to_chw(image.resize((size, size), Image.Resampling.BILINEAR, box=box))
        else:
            x = self._centre(image, size)
        pad = self.crop_padding
        if pad > 0:
            dy, dx = (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
            x = pad_crop(x, pad, dy, dx)
        if self.flip and rng.integers(0, 2):
            x = x[:, :, ::-1]
        return np.ascontiguousarray(x)

    def _centre(self, image: Image.Image, resize: int) -> np.ndarray:
        image = resize_shorter(image, resize)
        return to_chw(image.crop(centre_box(*image.size, self.image_size)))
