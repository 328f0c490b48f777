"""IDBH ("improved diversity and balanced hardness") augmentation, batched on the batch's device.

Li & Spratling, "Data augmentation alone can improve adversarial training", ICLR 2023; reference code
TreeLLi/DA-Alone-Improves-AT (``src/data/idbh.py``), which the ISEAT recipe uses for its best run
(docs/methods.md §4.4). The reference works image by image on PIL images (torchvision transforms); here every op
works on a whole batch at once, with per-image parameters drawn from one ``torch.Generator``:

    flip (p = 0.5) → CropShift (0–10 px) → one colour/shape op of eight → random erasing (p 0.5 / 1.0)

The ops themselves (uint8 in, uint8 out) are in ``idbh_ops``; this module draws their parameters and chains
them. Draw order is fixed and every draw is made for every image whatever the variant or the chosen op, so a
batch's augmentation is a pure function of the generator state (the batcher seeds one generator per batch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from advtrain.data.idbh_ops import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_sharpness,
    autocontrast,
    crop_shift,
    equalize,
    erase,
    hflip,
    rotate,
    shear,
)
from advtrain.errors import UserError

Variant = Literal["weak", "strong"]

# The colour/shape ops, each drawn with probability 1/8 (the reference's "color-biased" space).
OPS = ("saturation", "brightness", "contrast", "sharpness", "autocontrast", "equalize", "shear", "rotate")
# Enhancement factor ~ U[lower, upper) per op. The lower bound is 0.1 for saturation ("color") and sharpness,
# 0.5 for brightness and contrast, as in the reference's ColorBiased table; override with ``factor_ranges``.
FACTOR_RANGES: dict[str, tuple[float, float]] = {
    "saturation": (0.1, 1.9),
    "brightness": (0.5, 1.9),
    "contrast": (0.5, 1.9),
    "sharpness": (0.1, 1.9),
}
SHEAR_RADIANS = (0.05, 0.15)  # magnitude ~ U[0.05, 0.15) rad, random sign, random axis
ROTATE_DEGREES = (1, 10)  # whole degrees, uniform on 1..10 inclusive, random sign
MAX_CROP = 10  # CropShift total crop ~ U{0..10} px
ERASE_P: dict[str, float] = {"weak": 0.5, "strong": 1.0}
ERASE_SCALE = (0.02, 0.33)  # torchvision RandomErasing defaults, which IDBH keeps (value 0)
ERASE_RATIO = (0.3, 3.3)
ERASE_ATTEMPTS = 10


# ------------------------------------------------------------------------------------------ helpers


def _check_batch(x: torch.Tensor) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise UserError(
            f"IDBH needs uint8 images N×C×H×W with 1 or 3 channels, got {x.dtype} {tuple(x.shape)}"
        )


def _randint_below(bound: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image integers uniform on ``0..bound-1`` (``bound`` ≥ 1, a tensor on the generator's device)."""
    u = torch.rand(bound.shape, generator=generator, device=generator.device)
    return (u * bound).floor().long().minimum(bound - 1)




@dataclass(frozen=True)
class Erasing:
    """Per-image erasing rectangles; height = width = 0 where nothing is erased."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor


def draw_erasing(
    n: int,
    size: tuple[int, int],
    p: float,
    generator: torch.Generator,
    scale: tuple[float, float] = ERASE_SCALE,
    ratio: tuple[float, float] = ERASE_RATIO,
) -> Erasing:
    """torchvision ``RandomErasing.get_params``, batched: erase with probability ``p``.

    Up to 10 attempts: area ~ U[scale]·H·W, aspect ~ exp(U[log ratio]), h = round(√(area·aspect)),
    w = round(√(area/aspect)); the first attempt with h < H and w < W is used (none: nothing erased). The
    corner is uniform over the positions that keep the rectangle inside the image. All 10 attempts are drawn
    for every image, so the draws do not depend on the outcome.
    """
    device = generator.device
    img_h, img_w = size
    apply = torch.rand(n, generator=generator, device=device) < p
    area = img_h * img_w * (scale[0] + (scale[1] - scale[0]) * torch.rand(
        n, ERASE_ATTEMPTS, generator=generator, device=device, dtype=torch.float64))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(
        n, ERASE_ATTEMPTS, generator=generator, device=device, dtype=torch.float64))
    heights = torch.sqrt(area * aspect).round().long()  # round half to even, like Python's round
    widths = torch.sqrt(area / aspect).round().long()
    fits = (heights < img_h) & (widths < img_w)
    first = fits.int().argmax(1, keepdim=True)  # argmax returns the first maximal index
    apply = apply & fits.any(1)
    height = torch.where(apply, heights.gather(1, first).squeeze(1), 0)
    width = torch.where(apply, widths.gather(1, first).squeeze(1), 0)
    top = _randint_below(img_h - height + 1, generator)
    left = _randint_below(img_w - width + 1, generator)
    return Erasing(top, left, height, width)


# ------------------------------------------------------------------------------------------ the pipeline


@dataclass(frozen=True)
class IdbhParams:
    """Every per-image draw of one IDBH batch (tensors of length N on the generator's device).

    ``op`` indexes ``OPS``; ``factor`` is used by the four enhancement ops, ``shear``/``vertical`` by shear,
    ``degrees`` by rotate; all are drawn for every image whichever op it gets.
    """

    flip: torch.Tensor
    crop_y: torch.Tensor
    crop_x: torch.Tensor
    src_y: torch.Tensor
    src_x: torch.Tensor
    dst_y: torch.Tensor
    dst_x: torch.Tensor
    op: torch.Tensor
    factor: torch.Tensor
    shear: torch.Tensor
    vertical: torch.Tensor
    degrees: torch.Tensor
    erasing: Erasing


def _check_variant(variant: str) -> None:
    if variant not in ERASE_P:
        raise UserError(f"IDBH variant must be 'weak' or 'strong', got {variant!r}")


def _factor_ranges(overrides: Mapping[str, tuple[float, float]] | None) -> dict[str, tuple[float, float]]:
    ranges = dict(FACTOR_RANGES)
    for name, bounds in (overrides or {}).items():
        if name not in FACTOR_RANGES:
            raise UserError(f"factor_ranges: unknown op {name!r}: choose from {', '.join(FACTOR_RANGES)}")
        lo, hi = bounds
        if not 0 <= lo <= hi:
            raise UserError(f"factor_ranges[{name!r}] must be (lower, upper) with 0 <= lower <= upper, got {bounds}")
        ranges[name] = (float(lo), float(hi))
    return ranges


def draw_idbh_params(
    shape: torch.Size | tuple[int, ...],
    variant: Variant,
    generator: torch.Generator,
    *,
    factor_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> IdbhParams:
    """Draw one batch's IDBH parameters on the generator's device, in this fixed order.

    flip; CropShift strength, its x share, source corner, destination corner; op, magnitude, sign, shear axis;
    erasing. ``factor_ranges`` overrides ``FACTOR_RANGES`` per op, e.g. ``{"sharpness": (0.5, 1.9)}``.
    """
    _check_variant(variant)
    ranges = _factor_ranges(factor_ranges)
    n, _, h, w = shape
    if min(h, w) <= MAX_CROP:
        raise UserError(f"IDBH crops up to {MAX_CROP} px: images must be larger than that, got {h}×{w}")
    device = generator.device

    def uniform() -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device)

    def coin() -> torch.Tensor:
        return torch.randint(0, 2, (n,), generator=generator, device=device).bool()

    flip = coin()
    strength = torch.randint(0, MAX_CROP + 1, (n,), generator=generator, device=device)
    crop_x = _randint_below(strength + 1, generator)
    crop_y = strength - crop_x
    src_y, src_x = _randint_below(crop_y + 1, generator), _randint_below(crop_x + 1, generator)
    dst_y, dst_x = _randint_below(crop_y + 1, generator), _randint_below(crop_x + 1, generator)

    op = torch.randint(0, len(OPS), (n,), generator=generator, device=device)
    magnitude = uniform()
    sign = torch.where(coin(), -1.0, 1.0)
    vertical = coin()
    lower = torch.tensor([ranges.get(name, (0.0, 0.0))[0] for name in OPS], device=device)
    upper = torch.tensor([ranges.get(name, (0.0, 0.0))[1] for name in OPS], device=device)
    factor = magnitude * (upper[op] - lower[op]) + lower[op]  # float32, like the reference's tc.rand draw
    shear_lo, shear_hi = SHEAR_RADIANS
    shear = sign.double() * (shear_lo + (shear_hi - shear_lo) * magnitude.double())
    rot_lo, rot_hi = ROTATE_DEGREES
    degrees = sign * (rot_lo + (magnitude * (rot_hi - rot_lo + 1)).floor().clamp(max=rot_hi - rot_lo))

    erasing = draw_erasing(n, (h, w), ERASE_P[variant], generator)
    return IdbhParams(flip, crop_y, crop_x, src_y, src_x, dst_y, dst_x, op, factor, shear, vertical, degrees,
                      erasing)


def apply_op(x: torch.Tensor, params: IdbhParams) -> torch.Tensor:
    """Apply to each image the colour/shape op it drew; one batched call per op, on that op's images only."""
    out = x.clone()
    op = params.op.to(x.device)
    for k, name in enumerate(OPS):
        idx = (op == k).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        xs = x[idx]
        at = idx.to(params.factor.device)
        if name == "saturation":
            ys = adjust_saturation(xs, params.factor[at])
        elif name == "brightness":
            ys = adjust_brightness(xs, params.factor[at])
        elif name == "contrast":
            ys = adjust_contrast(xs, params.factor[at])
        elif name == "sharpness":
            ys = adjust_sharpness(xs, params.factor[at])
        elif name == "autocontrast":
            ys = autocontrast(xs)
        elif name == "equalize":
            ys = equalize(xs)
        elif name == "shear":
            ys = shear(xs, params.shear[at], params.vertical[at])
        else:
            ys = rotate(xs, params.degrees[at])
        out[idx] = ys
    return out


def apply_idbh(x: torch.Tensor, params: IdbhParams) -> torch.Tensor:
    """flip → CropShift → one colour/shape op → erasing, with the given parameters (uint8 in, uint8 out)."""
    _check_batch(x)
    p = params
    x = hflip(x, p.flip)
    x = crop_shift(x, p.crop_y, p.crop_x, p.src_y, p.src_x, p.dst_y, p.dst_x)
    x = apply_op(x, p)
    e = p.erasing
    return erase(x, e.top, e.left, e.height, e.width)


def idbh_batch(
    x_uint8: torch.Tensor,
    variant: Variant,
    generator: torch.Generator,
    *,
    factor_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> torch.Tensor:
    """IDBH-``variant`` augmentation of a uint8 batch N×C×H×W (C = 1 or 3); returns a new uint8 batch.

    ``weak`` erases with p = 0.5, ``strong`` with p = 1; everything else is shared (the reference's
    ``cifar10-weak`` / ``cifar10-strong``). The result is a pure function of the batch and the generator state;
    the generator should live on the batch's device (parameters drawn elsewhere are moved there).
    """
    _check_batch(x_uint8)
    params = draw_idbh_params(x_uint8.shape, variant, generator, factor_ranges=factor_ranges)
    return apply_idbh(x_uint8, params)
