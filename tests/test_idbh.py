"""Tests for advtrain.data.idbh and idbh_ops: each op on known images (closed forms), Pillow parity, draws, the
pipeline and its wiring into Augment / the device batcher."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from advtrain.config import config_from_dict
from advtrain.data import Augment, DeviceBatcher, augment_batch, idbh_ops
from advtrain.data import idbh as I
from advtrain.errors import UserError

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _images(n: int, seed: int, shape: tuple[int, ...] = (3, 32, 32), low: int = 0, high: int = 256) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(low, high, size=(n, *shape), dtype=np.uint8))


def _full(n: int, value: int, shape: tuple[int, ...] = (3, 32, 32)) -> torch.Tensor:
    return torch.full((n, *shape), value, dtype=torch.uint8)


def _gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _luma601(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma in floating point, N×H×W."""
    r, g, b = x.double().unbind(1)
    return 0.299 * r + 0.587 * g + 0.114 * b


# ------------------------------------------------------------------------------------------ flip, CropShift


def test_hflip_mirrors_exactly_the_flagged_images() -> None:
    x = _images(4, 0)
    out = idbh_ops.hflip(x, torch.tensor([True, False, True, False]))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[2], x[2].flip(-1))
    assert torch.equal(out[1], x[1]) and torch.equal(out[3], x[3])


def test_crop_shift_moves_the_window_and_zero_fills() -> None:
    x = _images(2, 1, (3, 16, 16), low=1)  # no zeros, so every 0 in the output came from padding
    t = torch.tensor
    # Image 0: a 13×14 window from (1, 2) pasted at (2, 0). Image 1: no crop, the identity.
    out = idbh_ops.crop_shift(x, t([3, 0]), t([2, 0]), t([1, 0]), t([2, 0]), t([2, 0]), t([0, 0]))
    expected = torch.zeros_like(x[0])
    expected[:, 2:15, 0:14] = x[0, :, 1:14, 2:16]
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out[0], expected) and torch.equal(out[1], x[1])
    assert int((out[0] == 0).sum()) == 3 * (16 * 16 - 13 * 14)


def _reference_crop_shift(img: torch.Tensor, crop_y: int, crop_x: int, top_y: int, top_x: int,
                          top2_y: int, top2_x: int) -> torch.Tensor:
    """The reference's steps on one C×H×W image: crop at (top_y, top_x), zero-pad crop_x px left/right and
    crop_y px top/bottom, crop H×W at (top2_y, top2_x) of the padded image."""
    _, h, w = img.shape
    window = img[:, top_y : top_y + h - crop_y, top_x : top_x + w - crop_x]
    padded = torch.nn.functional.pad(window, (crop_x, crop_x, crop_y, crop_y))
    return padded[:, top2_y : top2_y + h, top2_x : top2_x + w]


def test_crop_shift_equals_the_reference_crop_pad_crop() -> None:
    x = _images(64, 2, (3, 14, 13))
    p = I.draw_idbh_params(x.shape, "weak", _gen(3))
    out = idbh_ops.crop_shift(x, p.crop_y, p.crop_x, p.src_y, p.src_x, p.dst_y, p.dst_x)
    for i in range(len(x)):
        cy, cx = int(p.crop_y[i]), int(p.crop_x[i])
        # The reference's second crop corner t puts the window at dst = crop - t.
        ref = _reference_crop_shift(x[i], cy, cx, int(p.src_y[i]), int(p.src_x[i]),
                                    cy - int(p.dst_y[i]), cx - int(p.dst_x[i]))
        assert torch.equal(out[i], ref), i


def test_draws_cover_their_ranges() -> None:
    n = 2000
    p = I.draw_idbh_params((n, 3, 32, 32), "weak", _gen(4))
    strength = p.crop_y + p.crop_x
    assert set(strength.tolist()) == set(range(11))
    assert set(p.crop_x.tolist()) == set(range(11)) == set(p.crop_y.tolist())
    for src, dst, crop in ((p.src_y, p.dst_y, p.crop_y), (p.src_x, p.dst_x, p.crop_x)):
        assert bool(((src >= 0) & (src <= crop) & (dst >= 0) & (dst <= crop)).all())
        for c in (2, 3):  # uniform corners: every position 0..crop occurs
            assert set(src[crop == c].tolist()) == set(range(c + 1)) == set(dst[crop == c].tolist())
    assert 0.45 < p.flip.float().mean() < 0.55
    counts = torch.bincount(p.op, minlength=8)  # 1/8 each: 250 ± 15 (one sd)
    assert len(counts) == 8 and bool((counts - n / 8).abs().lt(70).all())
    for k, name in enumerate(I.OPS[:4]):
        lo, hi = I.FACTOR_RANGES[name]
        f = p.factor[p.op == k]
        assert lo <= float(f.min()) < lo + 0.05 and hi - 0.05 < float(f.max()) < hi
    assert I.FACTOR_RANGES["sharpness"][0] == 0.1 and I.FACTOR_RANGES["brightness"][0] == 0.5
    assert set(p.degrees.abs().tolist()) == set(map(float, range(1, 11))) and bool((p.degrees < 0).any())
    magnitude = p.shear.abs()
    assert float(magnitude.min()) >= 0.05 and float(magnitude.max()) < 0.15 and bool((p.shear < 0).any())
    assert 0.45 < p.vertical.float().mean() < 0.55


def test_factor_ranges_can_be_overridden() -> None:
    p = I.draw_idbh_params((500, 3, 16, 16), "weak", _gen(5), factor_ranges={"sharpness": (0.5, 1.9)})
    sharp = p.factor[p.op == I.OPS.index("sharpness")]
    assert len(sharp) > 20 and float(sharp.min()) >= 0.5
    with pytest.raises(UserError, match="unknown op"):
        I.draw_idbh_params((2, 3, 16, 16), "weak", _gen(0), factor_ranges={"blur": (0.1, 1.9)})


# ------------------------------------------------------------------------------------------ colour ops


def test_brightness_scales_a_constant_image() -> None:
    x = _full(4, 200)
    out = idbh_ops.adjust_brightness(x, torch.tensor([0.0, 0.5, 1.25, 1.5]))
    assert out.dtype == torch.uint8
    assert [int(v) for v in out[:, 0, 0, 0]] == [0, 100, 250, 255]  # f·200, clipped at 255
    assert all(bool((img == img.flatten()[0]).all()) for img in out)
    # PIL truncates, it does not round: 0.3·7 = 2.1 → 2, 0.7·3 = 2.1 → 2, 0.9·5 = 4.5 → 4.
    small = idbh_ops.adjust_brightness(torch.tensor([7, 3, 5], dtype=torch.uint8).view(3, 1, 1, 1),
                                torch.tensor([0.3, 0.7, 0.9]))
    assert small.flatten().tolist() == [2, 2, 4]
    y = _images(2, 6)
    assert torch.equal(idbh_ops.adjust_brightness(y, torch.ones(2)), y)


def test_contrast_zero_is_the_mean_grey() -> None:
    x = _images(3, 7)
    out = idbh_ops.adjust_contrast(x, torch.zeros(3))
    for img, src in zip(out, x, strict=True):
        grey = int(img[0, 0, 0])
        assert bool((img == grey).all())  # one flat grey for all channels
        # PIL's mean grey: int(mean(L) + 0.5) with L = (19595 R + 38470 G + 7471 B + 2^15) >> 16.
        r, g, b = src.long().unbind(0)
        luma = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16
        assert grey == int(luma.double().mean() + 0.5)
        assert abs(grey - float(_luma601(src[None]).mean())) < 1
    assert torch.equal(idbh_ops.adjust_contrast(x, torch.ones(3)), x)
    # Factor 2 doubles every distance from the grey level (then clips and truncates).
    doubled = idbh_ops.adjust_contrast(x, torch.full((3,), 2.0)).long()
    grey = out[:, :1, :1, :1].long()
    assert torch.equal(doubled, (grey + 2 * (x.long() - grey)).clamp(0, 255))


def test_saturation_zero_is_grayscale_with_601_weights() -> None:
    # Pure red, green, blue, white and black pixels: luma 0.299·255, 0.587·255, 0.114·255, 255, 0, rounded.
    colours = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]], dtype=torch.uint8)
    x = colours.T.reshape(1, 3, 1, 5)
    out = idbh_ops.adjust_saturation(x, torch.zeros(1))
    assert out[0, 0, 0].tolist() == [76, 150, 29, 255, 0]
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 1], out[0, 2])
    y = _images(3, 8)
    grey = idbh_ops.adjust_saturation(y, torch.zeros(3))
    assert bool((grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all())
    assert float((grey[:, 0].double() - _luma601(y)).abs().max()) <= 0.51
    assert torch.equal(idbh_ops.adjust_saturation(y, torch.ones(3)), y)
    g = _images(2, 9, (1, 16, 16))  # a grey image is its own greyscale: unchanged at any factor
    assert torch.equal(idbh_ops.adjust_saturation(g, torch.tensor([0.1, 1.9])), g)


def test_sharpness_blends_with_the_smooth_filter() -> None:
    x = _full(1, 0, (3, 10, 10))
    x[0, :, 5, 5] = 130
    x[0, :, 0, 0] = 200  # on the border, which PIL's filter leaves alone
    smooth = idbh_ops.adjust_sharpness(x, torch.zeros(1))[0, 0]
    expected = torch.zeros(10, 10, dtype=torch.uint8)
    expected[4:7, 4:7] = 10  # 130·1/13
    expected[5, 5] = 50  # 130·5/13
    expected[0, 0] = 200
    expected[1, 1] = round(200 / 13)  # the border pixel still feeds its inner neighbour
    assert torch.equal(smooth, expected)
    sharp = idbh_ops.adjust_sharpness(x, torch.full((1,), 2.0))[0, 0]  # 2·x − smooth, clipped
    assert int(sharp[5, 5]) == 210 and int(sharp[4, 4]) == 0 and int(sharp[0, 0]) == 200
    assert torch.equal(idbh_ops.adjust_sharpness(x, torch.ones(1)), x)
    flat = _full(2, 77, (3, 8, 8))
    assert torch.equal(idbh_ops.adjust_sharpness(flat, torch.tensor([0.3, 1.7])), flat)


def test_autocontrast_stretches_each_channel_to_0_255() -> None:
    x = torch.empty(1, 3, 16, 16, dtype=torch.uint8)
    x[0, 0] = _images(1, 10, (16, 16), 0, 86)[0]  # range 0..85: v → 3v
    x[0, 1] = _images(1, 11, (16, 16), 10, 62)[0]  # range 10..61: v → 5(v − 10)
    x[0, 2] = 77  # constant: unchanged
    x[0, 0, 0, :2] = torch.tensor([0, 85], dtype=torch.uint8)
    x[0, 1, 0, :2] = torch.tensor([10, 61], dtype=torch.uint8)
    out = idbh_ops.autocontrast(x)
    assert out.dtype == torch.uint8
    assert torch.equal(out[0, 0].long(), 3 * x[0, 0].long())
    assert torch.equal(out[0, 1].long(), 5 * (x[0, 1].long() - 10))
    assert torch.equal(out[0, 2], x[0, 2])
    assert [int(out[0, c].min()) for c in (0, 1)] == [0, 0] and [int(out[0, c].max()) for c in (0, 1)] == [255, 255]


def test_equalize_spreads_k_levels_over_0_255() -> None:
    levels = torch.tensor([10, 20, 30, 40], dtype=torch.uint8).repeat_interleave(256)  # 4 levels × 256 px
    x = torch.stack([levels[torch.randperm(1024, generator=_gen(c))] for c in range(3)]).view(1, 3, 32, 32)
    out = idbh_ops.equalize(x)
    # step = (1024 − 256) // 255 = 3; level i → (1 + pixels below i) // 3, clipped: 0, 85, 171, 256 → 255.
    lut = {10: 0, 20: 85, 30: 171, 40: 255}
    assert torch.equal(out, x.clone().apply_(lut.__getitem__))
    flat = _full(2, 123)
    assert torch.equal(idbh_ops.equalize(flat), flat)
    two = x.clone()
    two[0, 0] = torch.where(x[0, 0] < 25, 100, 101)  # two levels, half each: 100 → 0, 101 → 255
    assert sorted(torch.unique(idbh_ops.equalize(two)[0, 0]).tolist()) == [0, 255]
    y = idbh_ops.equalize(_images(4, 12, low=40, high=120))
    assert int(y.amin()) <= 2 and int(y.amax()) == 255


# ------------------------------------------------------------------------------------------ shape ops


@pytest.mark.parametrize("size", [32, 33])
def test_rotate_by_multiples_of_90_is_rot90(size: int) -> None:
    x = _images(2, 13, (3, size, size))
    for degrees, k in ((90, 1), (-90, -1), (180, 2), (270, 3), (360, 0), (0, 0)):
        out = idbh_ops.rotate(x, torch.full((2,), float(degrees)))
        assert torch.equal(out, torch.rot90(x, k, dims=(-2, -1))), degrees


def test_rotate_small_angles_fill_corners_and_keep_a_disc() -> None:
    white = _full(2, 255)
    out = idbh_ops.rotate(white, torch.tensor([10.0, -10.0]))
    assert out.dtype == torch.uint8 and out.shape == white.shape
    for img in out:  # black corners (fill 0), untouched centre
        assert int(img[:, 0, 0].max()) == 0 and int(img[:, -1, -1].max()) == 0
        assert bool((img[:, 8:24, 8:24] == 255).all())
    assert torch.equal(out[0], out[1].flip(-1))  # mirror symmetry: +10° mirrored is −10°
    ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    disc = (((ys - 16) ** 2 + (xs - 16) ** 2) <= 10**2).to(torch.uint8).mul(200).expand(1, 3, 32, 32)
    for degrees in range(1, 11):
        turned = idbh_ops.rotate(disc, torch.tensor([float(degrees)]))
        radius = torch.sqrt((ys - 16) ** 2 + (xs - 16) ** 2)[(turned != disc)[0, 0]]
        assert bool(((radius - 10).abs() < 1.5).all()), degrees  # only pixels at the disc's edge may change


def test_shear_shifts_rows_of_a_vertical_line_linearly() -> None:
    x = _full(2, 0, (1, 32, 32))
    x[:, 0, :, 16] = 255  # a vertical line at column 16
    angles = torch.tensor([0.1, -0.15], dtype=torch.float64)
    out = idbh_ops.shear(x, angles, torch.tensor([False, False]))
    for img, s in zip(out, angles.tolist(), strict=True):
        t = math.tan(s)
        cols = [row.nonzero().flatten().tolist() for row in img[0]]
        # Row y samples the input at x + 0.5 + tan(s)·(y + 0.5 − 16): the line lands at ceil(15.5 − tan(s)·(y − 15.5)).
        assert cols == [[math.ceil(15.5 - t * (y - 15.5))] for y in range(32)]
        assert abs((cols[-1][0] - cols[0][0]) + t * 31) <= 1  # total shift over the height is −tan(s)·31
    horizontal = _full(1, 0, (1, 32, 32))
    horizontal[0, 0, 16, :] = 255
    sheared = idbh_ops.shear(horizontal, torch.tensor([0.1], dtype=torch.float64), torch.tensor([True]))
    t = math.tan(0.1)
    assert [col.nonzero().flatten().tolist() for col in sheared[0, 0].T] == [
        [math.ceil(15.5 - t * (x - 15.5))] for x in range(32)]


# ------------------------------------------------------------------------------------------ erasing


def test_erase_zeroes_exactly_the_rectangle() -> None:
    x = _full(2, 255)
    t = torch.tensor
    out = idbh_ops.erase(x, t([3, 7]), t([5, 2]), t([4, 0]), t([6, 9]))  # image 1 has height 0: untouched
    expected = x[0].clone()
    expected[:, 3:7, 5:11] = 0
    assert torch.equal(out[0], expected) and torch.equal(out[1], x[1])


def test_erasing_draws_one_rectangle_within_scale_and_ratio() -> None:
    n, size = 2000, (32, 32)
    strong = I.draw_erasing(n, size, 1.0, _gen(14))
    h, w = strong.height.double(), strong.width.double()
    assert bool((h > 0).all())  # p = 1: every image (some of the 10 attempts always fit at 32×32)
    assert bool(((strong.top + strong.height <= 32) & (strong.left + strong.width <= 32)).all())
    # h and w are rounded from the drawn area and aspect: the unrounded area/aspect lie within ±0.5 px of them.
    area = 32 * 32
    assert bool(((h + 0.5) * (w + 0.5) >= 0.02 * area).all() and ((h - 0.5) * (w - 0.5) <= 0.33 * area).all())
    assert bool(((h + 0.5) / (w - 0.5) >= 0.3).all() and ((h - 0.5) / (w + 0.5) <= 3.3).all())
    assert 0.1 < float((h * w).mean()) / area < 0.2  # mean of U[0.02, 0.33] is 0.175
    weak = I.draw_erasing(n, size, 0.5, _gen(15))
    assert 0.45 < float((weak.height > 0).double().mean()) < 0.55
    # Applied to a white batch: the zeros are exactly one height×width rectangle per image.
    x = idbh_ops.erase(
        _full(50, 255, (3, 32, 32)), strong.top[:50], strong.left[:50], strong.height[:50], strong.width[:50]
    )
    for img, eh, ew in zip(x, strong.height[:50].tolist(), strong.width[:50].tolist(), strict=True):
        rows, cols = (img[0] == 0).nonzero().unbind(1)
        assert len(rows) == eh * ew
        assert int(rows.max() - rows.min() + 1) == eh and int(cols.max() - cols.min() + 1) == ew


# ------------------------------------------------------------------------------------------ the pipeline


def _reference_pipeline(x: torch.Tensor, p: I.IdbhParams) -> torch.Tensor:
    """flip → CropShift → op → erase, the op applied image by image (so the batched op dispatch is checked)."""
    y = idbh_ops.crop_shift(idbh_ops.hflip(x, p.flip), p.crop_y, p.crop_x, p.src_y, p.src_x, p.dst_y, p.dst_x)
    out = []
    for i in range(len(y)):
        img, name, sl = y[i : i + 1], I.OPS[int(p.op[i])], slice(i, i + 1)
        if name in I.FACTOR_RANGES:
            img = getattr(I, f"adjust_{name}")(img, p.factor[sl])
        elif name == "shear":
            img = idbh_ops.shear(img, p.shear[sl], p.vertical[sl])
        elif name == "rotate":
            img = idbh_ops.rotate(img, p.degrees[sl])
        else:
            img = getattr(I, name)(img)
        out.append(img)
    e = p.erasing
    return idbh_ops.erase(torch.cat(out), e.top, e.left, e.height, e.width)


@pytest.mark.parametrize("variant", ["weak", "strong"])
def test_idbh_batch_is_the_composition_and_a_function_of_the_seed(variant: str) -> None:
    x = _images(48, 16)
    before = x.clone()
    out = I.idbh_batch(x, variant, _gen(17))
    assert out.dtype == torch.uint8 and out.shape == x.shape and torch.equal(x, before)
    assert torch.equal(out, _reference_pipeline(x, I.draw_idbh_params(x.shape, variant, _gen(17))))
    assert torch.equal(out, I.idbh_batch(x, variant, _gen(17)))
    assert not torch.equal(out, I.idbh_batch(x, variant, _gen(18)))
    assert (out != x).flatten(1).any(1).float().mean() > 0.9


def test_weak_and_strong_share_every_draw_but_the_erasing_probability() -> None:
    x = _images(64, 19)
    weak, strong = I.idbh_batch(x, "weak", _gen(20)), I.idbh_batch(x, "strong", _gen(20))
    erased = I.draw_idbh_params(x.shape, "weak", _gen(20)).erasing.height > 0
    assert 20 < int(erased.sum()) < 44
    assert torch.equal(weak[erased], strong[erased])
    assert bool(((weak[~erased] != strong[~erased]).flatten(1).any(1)).all())


def test_idbh_rejects_bad_input() -> None:
    with pytest.raises(UserError, match="uint8"):
        I.idbh_batch(_images(2, 0).float(), "weak", _gen(0))
    with pytest.raises(UserError, match="1 or 3 channels"):
        I.idbh_batch(_images(2, 0, (2, 32, 32)), "weak", _gen(0))
    with pytest.raises(UserError, match="larger than"):
        I.idbh_batch(_images(2, 0, (1, 8, 8)), "weak", _gen(0))
    with pytest.raises(UserError, match="'weak' or 'strong'"):
        I.idbh_batch(_images(2, 0), "medium", _gen(0))  # type: ignore[arg-type]


def test_ops_match_pillow() -> None:
    """Pixel-for-pixel parity with the PIL ops the reference calls (Pillow is installed with matplotlib)."""
    image_mod = pytest.importorskip("PIL.Image")
    enhance = pytest.importorskip("PIL.ImageEnhance")
    ops = pytest.importorskip("PIL.ImageOps")
    x = torch.cat([_images(6, 21), _images(4, 22, low=60, high=124)])  # full-range and low-contrast images
    n = len(x)
    f = torch.rand(n, generator=_gen(23)) * 1.8 + 0.1
    degrees = torch.tensor([1.0, -2, 3, -4, 5, -6, 7, -8, 9, -10])
    shear = (0.05 + 0.1 * torch.rand(n, generator=_gen(24), dtype=torch.float64)) * torch.tensor([1, -1] * 5)
    vertical = torch.arange(n) % 3 == 0

    def pil(i: int) -> object:
        return image_mod.fromarray(x[i].permute(1, 2, 0).numpy())

    def pil_shear(i: int) -> object:
        t, c = math.tan(float(shear[i])), 16.0
        matrix = (1, 0, 0, t, 1, -t * c) if vertical[i] else (1, t, -t * c, 0, 1, 0)
        return pil(i).transform((32, 32), image_mod.AFFINE, matrix, image_mod.NEAREST, fillcolor=0)

    cases = {
        "saturation": (idbh_ops.adjust_saturation(x, f), lambda i: enhance.Color(pil(i)).enhance(float(f[i]))),
        "brightness": (idbh_ops.adjust_brightness(x, f), lambda i: enhance.Brightness(pil(i)).enhance(float(f[i]))),
        "contrast": (idbh_ops.adjust_contrast(x, f), lambda i: enhance.Contrast(pil(i)).enhance(float(f[i]))),
        "sharpness": (idbh_ops.adjust_sharpness(x, f), lambda i: enhance.Sharpness(pil(i)).enhance(float(f[i]))),
        "autocontrast": (idbh_ops.autocontrast(x), lambda i: ops.autocontrast(pil(i))),
        "equalize": (idbh_ops.equalize(x), lambda i: ops.equalize(pil(i))),
        "rotate": (idbh_ops.rotate(x, degrees),
                   lambda i: pil(i).rotate(float(degrees[i]), resample=image_mod.NEAREST, fillcolor=0)),
        "shear": (idbh_ops.shear(x, shear, vertical), pil_shear),
    }
    for name, (ours, reference) in cases.items():
        expected = torch.stack([torch.from_numpy(np.array(reference(i))).permute(2, 0, 1) for i in range(n)])
        assert torch.equal(ours, expected), name


# ------------------------------------------------------------------------------------------ wiring


def test_augment_idbh_field_validation_and_dispatch() -> None:
    assert Augment(idbh="weak").active and not Augment().active
    for bad in ({"flip": True}, {"crop_padding": 4}):
        with pytest.raises(UserError) as excinfo:
            Augment(idbh="strong", **bad)
        assert str(excinfo.value) == "data.idbh replaces data.crop_padding/data.flip: unset them"
    with pytest.raises(UserError, match="idbh"):
        Augment(idbh="medium")  # type: ignore[arg-type]
    x = _images(8, 25)
    assert torch.equal(augment_batch(x, Augment(idbh="strong"), _gen(26)), I.idbh_batch(x, "strong", _gen(26)))


def test_config_data_idbh_field() -> None:
    assert config_from_dict({}).data.idbh == "none"
    assert config_from_dict({"data": {"idbh": "weak"}}).data.idbh == "weak"
    with pytest.raises(UserError, match=r"data\.idbh"):
        config_from_dict({"data": {"idbh": "medium"}})


def _batcher(device: str = "cpu", **kwargs: object) -> DeviceBatcher:
    x = _images(37, 27)
    options: dict = {"batch_size": 8, "pixel_max": 255, "device": device, "seed": 5} | kwargs
    return DeviceBatcher(x, torch.arange(37), **options)


def _assert_resume_identical(batcher: DeviceBatcher, epoch: int) -> None:
    full = list(batcher.epoch(epoch))
    for start in (1, 3, len(batcher) - 1):
        resumed = list(batcher.epoch(epoch, start_batch=start))
        assert len(resumed) == len(full) - start
        for (xa, ya), (xb, yb) in zip(full[start:], resumed, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batcher_with_idbh_yields_float_batches_and_resumes_identically() -> None:
    batcher = _batcher(augment=Augment(idbh="weak"))
    batches = list(batcher.epoch(1))
    assert len(batches) == 5 and [len(y) for _, y in batches] == [8, 8, 8, 8, 5]
    for xb, yb in batches:
        assert xb.dtype == torch.float32 and xb.shape == (len(yb), 3, 32, 32)
        assert float(xb.min()) >= 0 and float(xb.max()) <= 1
        assert torch.equal(xb, (xb * 255).round() / 255)  # still 8-bit values
    plain = torch.cat([xb for xb, _ in _batcher().epoch(1)])
    assert not torch.equal(torch.cat([xb for xb, _ in batches]), plain)
    _assert_resume_identical(batcher, epoch=1)


def test_batcher_refuses_idbh_on_non_8bit_data() -> None:
    x = _images(4, 28, high=17)
    with pytest.raises(UserError, match="pixel_max 255"):
        DeviceBatcher(
            x, torch.arange(4), batch_size=2, pixel_max=16, device="cpu", seed=0, augment=Augment(idbh="weak")
        )


# ------------------------------------------------------------------------------------------ CUDA


@CUDA
def test_idbh_on_cuda_matches_cpu_and_is_seeded() -> None:
    x = _images(64, 29)
    params = I.draw_idbh_params(x.shape, "strong", _gen(30))
    on_cuda = I.apply_idbh(x.cuda(), params)  # CPU-drawn parameters move to the batch's device
    assert on_cuda.is_cuda and torch.equal(on_cuda.cpu(), I.apply_idbh(x, params))
    a = I.idbh_batch(x.cuda(), "weak", _gen(31, "cuda"))
    assert a.is_cuda and a.dtype == torch.uint8 and torch.equal(a, I.idbh_batch(x.cuda(), "weak", _gen(31, "cuda")))


@CUDA
def test_batcher_with_idbh_on_cuda_resumes_identically() -> None:
    batcher = _batcher(device="cuda", augment=Augment(idbh="strong"))
    xb, yb = next(iter(batcher.epoch(0)))
    assert xb.is_cuda and yb.is_cuda and xb.dtype == torch.float32
    _assert_resume_identical(batcher, epoch=0)


def test_idbh_with_crop_or_flip_is_refused_when_the_config_loads():
    from advtrain.config import load_config
    from advtrain.errors import UserError

    with pytest.raises(UserError, match=r"replaces data\.crop_padding"):
        load_config(None, ["data.idbh=weak", "data.flip=true"])
    assert load_config(None, ["data.idbh=strong"]).data.idbh == "strong"
