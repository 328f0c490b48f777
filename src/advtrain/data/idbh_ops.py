"""The image ops of IDBH (``advtrain.data.idbh``), each on a whole batch with per-image parameters.

All ops take and return **uint8** batches N×C×H×W with C = 1 (grey, PIL mode "L") or 3 (RGB) and values
0..255; intermediate arithmetic is float32, float64 or integer as noted per op, so that the results match
what PIL computes for the same parameters (the tests check this pixel for pixel against Pillow).
"""

from __future__ import annotations

import torch

MAX_VALUE = 255

_FIX_ONE = 65536  # PIL's 16.16 fixed point for nearest-neighbour affine transforms


# ------------------------------------------------------------------------------------------ helpers


def _per_image(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-image parameter (length N) on ``x``'s device, shaped to broadcast over N×C×H×W."""
    return t.to(x.device).view(-1, 1, 1, 1)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.blend(degenerate, image, factor)``, which every ``ImageEnhance`` class uses.

    float32 ``d + f·(x − d)``, clipped to 0..255 and truncated (PIL casts to UINT8, it does not round).
    Factor 0 gives the degenerate image, 1 the input, > 1 extrapolates away from the degenerate image.
    """
    d = degenerate.float()
    out = d + _per_image(factor.float(), x) * (x.float() - d)
    return out.clamp_(0, MAX_VALUE).trunc_().to(torch.uint8)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB → "L" conversion, N×1×H×W uint8: ITU-R 601-2 luma in 16-bit fixed point, rounded.

    ``(19595·R + 38470·G + 7471·B + 2¹⁵) >> 16`` (weights 0.299, 0.587, 0.114); a grey image is itself.
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x.int().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).to(torch.uint8).unsqueeze(1)


def _apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Map each pixel through its image's and channel's table; ``lut`` is N×C×256 integers."""
    n, c, h, w = x.shape
    out = lut.clamp(0, MAX_VALUE).to(torch.uint8).gather(2, x.reshape(n, c, h * w).long())
    return out.view(n, c, h, w)


# ------------------------------------------------------------------------------------------ flip, CropShift


def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images where ``flip`` (bool, length N) is set (torchvision RandomHorizontalFlip)."""
    return torch.where(_per_image(flip.bool(), x), x.flip(-1), x)


def crop_shift(
    x: torch.Tensor,
    crop_y: torch.Tensor,
    crop_x: torch.Tensor,
    src_y: torch.Tensor,
    src_x: torch.Tensor,
    dst_y: torch.Tensor,
    dst_x: torch.Tensor,
) -> torch.Tensor:
    """CropShift: keep an (H−crop_y)×(W−crop_x) window of each image and paste it elsewhere on a zero canvas.

    The window's top-left corner is ``(src_y, src_x)`` in the input (0..crop each) and ``(dst_y, dst_x)`` in
    the output (0..crop each); every other output pixel is 0. This is the reference ``CropShift.forward``
    restated: it crops the window at a random top (``src``), zero-pads crop_x px left and right and crop_y px
    top and bottom (back to at least H×W), then takes an H×W crop at a random top ``t`` ∈ 0..crop of the
    padded image, which puts the window at ``dst = crop − t`` (uniform on 0..crop like ``t``). Unlike a
    padded random crop, the content moves without being cut further than the first crop, and the lost
    ``crop`` px can come from either side and be split between x and y.
    """
    n, c, h, w = x.shape
    device = x.device
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    crop_y, crop_x, src_y, src_x, dst_y, dst_x = (t.to(device)[:, None] for t in (crop_y, crop_x, src_y, src_x,
                                                                                  dst_y, dst_x))
    row_ok = (rows >= dst_y) & (rows < dst_y + h - crop_y)  # N×H
    col_ok = (cols >= dst_x) & (cols < dst_x + w - crop_x)  # N×W
    in_rows = (rows - dst_y + src_y).clamp(0, h - 1)
    in_cols = (cols - dst_x + src_x).clamp(0, w - 1)
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(c, device=device)[None, :, None, None]
    gathered = x[batch, channel, in_rows[:, None, :, None], in_cols[:, None, None, :]]
    inside = row_ok[:, None, :, None] & col_ok[:, None, None, :]
    return torch.where(inside, gathered, torch.zeros((), dtype=x.dtype, device=device))


# ------------------------------------------------------------------------------------------ colour ops


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Brightness``: blend with a black image (factor 0 = black, 1 = unchanged)."""
    return _blend(torch.zeros_like(x), x, factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Contrast``: blend with a flat grey image at the image's mean luma.

    The grey level is ``int(mean(L) + 0.5)`` over the whole image, L being PIL's luma (``_luma``), the same for
    every channel; factor 0 gives that flat grey.
    """
    luma = _luma(x)
    mean = luma.flatten(1).sum(1, dtype=torch.int64).double() / luma[0].numel()
    grey = (mean + 0.5).floor()
    return _blend(_per_image(grey, x).expand_as(x), x, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Color``: blend with the image's grey version (L, repeated over the channels).

    Factor 0 gives the greyscale image; a 1-channel image is its own grey version, so it is unchanged.
    """
    return _blend(_luma(x).expand_as(x), x, factor)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageFilter.SMOOTH``: 3×3 kernel [[1,1,1],[1,5,1],[1,1,1]]/13, rounded to nearest.

    Exact in integers: ``(s + 6) // 13`` for the weighted sum ``s`` (s/13 is never a half-integer, so this is
    PIL's rounding). PIL leaves the one-pixel border as it was, and so does this.
    """
    h, w = x.shape[-2:]
    if h < 3 or w < 3:
        return x
    xi = x.int()
    s = 4 * xi[..., 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            s = s + xi[..., dy : dy + h - 2, dx : dx + w - 2]
    out = x.clone()
    out[..., 1:-1, 1:-1] = ((s + 6) // 13).to(torch.uint8)
    return out


def adjust_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Sharpness``: blend with the smoothed image (0 = smoothed, > 1 = sharpened)."""
    return _blend(smooth(x), x, factor)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.autocontrast`` (cutoff 0): stretch each channel's [min, max] to [0, 255].

    Per image and channel, v → ``int(v·scale − lo·scale)`` with ``scale = 255 / (hi − lo)`` in float64 (the
    table PIL builds); a constant channel (hi ≤ lo) is left unchanged.
    """
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    lo, hi = flat.amin(2).double()[..., None], flat.amax(2).double()[..., None]
    levels = torch.arange(MAX_VALUE + 1, device=x.device, dtype=torch.float64)
    scale = MAX_VALUE / (hi - lo).clamp(min=1)
    stretched = (levels * scale + (-lo * scale)).trunc()
    lut = torch.where(hi > lo, stretched, levels).long()
    return _apply_lut(x, lut)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize``: per-channel histogram equalisation of uint8 values.

    With the channel's histogram h, ``step = (Σh − h[last used level]) // 255`` and level i maps to
    ``(step // 2 + Σ_{j<i} h[j]) // step``, clipped to 255; a channel with one level, or with step 0, is left
    unchanged. Histograms come from sorting and ``searchsorted`` (deterministic on every device).
    """
    n, c, h, w = x.shape
    total = h * w
    flat = x.reshape(n * c, total).int().sort(1).values
    levels = torch.arange(MAX_VALUE + 2, device=x.device, dtype=torch.int32).expand(n * c, -1).contiguous()
    below = torch.searchsorted(flat, levels)  # below[:, i] = pixels with value < i, i = 0..256
    hist = below[:, 1:] - below[:, :-1]
    used = (hist > 0).sum(1, keepdim=True)
    last = hist.gather(1, flat[:, -1:].long())  # the count of the channel's highest level
    step = (total - last) // MAX_VALUE
    lut = (step // 2 + below[:, :-1]) // step.clamp(min=1)
    identity = torch.arange(MAX_VALUE + 1, device=x.device)
    lut = torch.where((used > 1) & (step > 0), lut, identity)
    return _apply_lut(x, lut.view(n, c, MAX_VALUE + 1))


# ------------------------------------------------------------------------------------------ shape ops


def affine_nearest(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.transform(size, AFFINE, matrix, NEAREST)`` with a black fill, per image.

    ``matrix`` (N×6, float64) maps output to input like PIL's: pixel (x, y) of the output samples the input
    at ``(a·x' + b·y' + c, d·x' + e·y' + f)`` with x' = x + 0.5, y' = y + 0.5 (pixel centres), truncated
    to a pixel; outside the image the output is 0. PIL does this in 16.16 fixed point for images below 32768
    px (its ``affine_fixed``), rounding each coefficient to 1/65536; this emulates that bit for bit in int64.
    """
    n, c, h, w = x.shape
    device = x.device
    m = matrix.to(device=device, dtype=torch.float64)

    def fix(v: torch.Tensor) -> torch.Tensor:
        return (v * _FIX_ONE + 0.5).floor().long()[:, None, None]

    a0, a1, a3, a4 = fix(m[:, 0]), fix(m[:, 1]), fix(m[:, 3]), fix(m[:, 4])
    a2 = fix(m[:, 2] + m[:, 0] * 0.5 + m[:, 1] * 0.5)
    a5 = fix(m[:, 5] + m[:, 3] * 0.5 + m[:, 4] * 0.5)
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    x_in = (a2 + ys * a1 + xs * a0) >> 16  # N×H×W, arithmetic shift = floor
    y_in = (a5 + ys * a4 + xs * a3) >> 16
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
    index = (y_in.clamp(0, h - 1) * w + x_in.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)
    return torch.where(inside[:, None], out, torch.zeros((), dtype=x.dtype, device=device))


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.rotate(angle, NEAREST, fillcolor=0)``: counter-clockwise about the image centre (W/2, H/2).

    The corners that come in from outside are black, as in the reference (``fill=0``). The matrix is PIL's:
    cos/sin of −angle rounded to 15 decimals, so multiples of 90° are exact (``torch.rot90`` on squares).
    """
    h, w = x.shape[-2:]
    angle = -torch.deg2rad(torch.remainder(degrees.to(x.device, torch.float64), 360.0))
    cos, sin = torch.round(torch.cos(angle), decimals=15), torch.round(torch.sin(angle), decimals=15)
    cx, cy = w / 2, h / 2
    matrix = torch.stack([
        cos, sin, cos * -cx + sin * -cy + cx,
        -sin, cos, -sin * -cx + cos * -cy + cy,
    ], 1)
    return affine_nearest(x, matrix)


def shear(x: torch.Tensor, radians: torch.Tensor, vertical: torch.Tensor) -> torch.Tensor:
    """torchvision ``F.affine(img, shear=…, NEAREST, fill=0)`` on a PIL image, about the centre (W/2, H/2).

    ``radians`` is the signed shear angle s per image. Where ``vertical`` is False (torchvision's
    ``shear=[s, 0]``) row y moves horizontally: it samples the input at x + tan(s)·(y − H/2), so a vertical line
    becomes a line of slope −tan(s). Where True (``shear=[0, s]``) columns move vertically in the same way. The
    inverse matrix follows torchvision's ``_get_inverse_affine_matrix`` with no rotation, translation or scale.
    """
    h, w = x.shape[-2:]
    s = radians.to(x.device, torch.float64)
    vertical = vertical.to(x.device).bool()
    sx, sy = torch.where(vertical, 0.0, s), torch.where(vertical, s, 0.0)
    a = torch.cos(-sy) / torch.cos(sy)
    b = -torch.cos(-sy) * torch.tan(sx) / torch.cos(sy)
    c = torch.sin(-sy) / torch.cos(sy)
    d = -torch.sin(-sy) * torch.tan(sx) / torch.cos(sy) + 1.0
    cx, cy = w / 2, h / 2
    m0, m1, m3, m4 = d, -b, -c, a
    matrix = torch.stack([m0, m1, m0 * -cx + m1 * -cy + cx, m3, m4, m3 * -cx + m4 * -cy + cy], 1)
    return affine_nearest(x, matrix)


# ------------------------------------------------------------------------------------------ erasing


def erase(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor
) -> torch.Tensor:
    """Set one rectangle per image to 0 (all channels); height or width 0 leaves the image alone.

    0 is the reference's value: torchvision ``RandomErasing`` with its default ``value=0`` on [0, 1] tensors.
    """
    h, w = x.shape[-2:]
    device = x.device
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    top, left, height, width = (t.to(device)[:, None] for t in (top, left, height, width))
    row_in = (rows >= top) & (rows < top + height)
    col_in = (cols >= left) & (cols < left + width)
    hole = row_in[:, None, :, None] & col_in[:, None, None, :]
    return x.masked_fill(hole, 0)
