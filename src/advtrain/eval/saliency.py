"""Attributions and their inequality: global and regional Gini (docs/methods.md §7.2, IGD / Duan et al.).

Attribution functions are pure: they take gradients with `torch.autograd.grad` w.r.t. the input only
(no parameter `.grad` is ever written) and do not change the model's train/eval mode. Evaluations want
running BatchNorm statistics, so callers wrap them in `bn_policy(model, "eval")`; `gini_report` does so
itself and restores every submodule's mode afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import bn_policy, class_score_gradient


def _out_dtype(t: Tensor) -> torch.dtype:
    # fp32 at least (an fp16/bf16 input gives fp32 maps), fp64 kept for exact tests.
    return torch.promote_types(t.dtype, torch.float32)


def saliency(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Signed ∇ₓ z_y(x) — the gradient of the true-class logit (Σ over the batch), shape of x, detached.

    The logit rather than the CE loss, as IGD and Duan et al. use: it is what the model's class score
    depends on. Returns fp32 (fp64 for an fp64 x). Leaves the model's mode alone: wrap in
    `bn_policy(model, "eval")` for evaluation.
    """
    return class_score_gradient(model, x, y, "logit").to(_out_dtype(x))


def integrated_gradients(model: nn.Module, x: Tensor, y: Tensor, steps: int = 50) -> Tensor:
    """Integrated gradients (Sundararajan et al. 2017) from the zero (black) baseline, `steps` steps.

    x · ∫₀¹ ∇ z_y(αx) dα, the integral by the midpoint Riemann sum over αₖ = (k − ½)/steps: second-order
    accurate like the trapezoid rule, `steps` gradient evaluations, none at the baseline itself.
    Completeness (Σ IG = z_y(x) − z_y(0)) holds exactly for a linear model, approximately otherwise.
    """
    if steps < 1:
        raise ValueError(f"integrated_gradients needs steps >= 1, got {steps}")
    x = x.detach()
    total = torch.zeros(x.shape, dtype=_out_dtype(x), device=x.device)
    for k in range(steps):
        alpha = (k + 0.5) / steps
        total += saliency(model, alpha * x, y)
    return x * total / steps


def input_x_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """x ⊙ ∇ₓ z_y (Shrikumar et al. 2016): the first-order contribution of each input element."""
    return x.detach() * saliency(model, x, y)


# SmoothGrad defaults (Smilkov et al. 2017, §3 and Fig. 3): noise level σ/(x_max − x_min) of 10–20%
# "tends to be optimal", 15% the value used for their figures; the estimate gets visibly smoother up to
# n ≈ 50 samples and gains little beyond, so 50 is the customary default.
SMOOTHGRAD_SAMPLES = 50
SMOOTHGRAD_SIGMA = 0.15


def smoothgrad(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    samples: int = SMOOTHGRAD_SAMPLES,
    sigma: float = SMOOTHGRAD_SIGMA,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SmoothGrad: the mean of ∇ₓ z_y(x + η) over `samples` draws of η ~ N(0, s²).

    s = sigma · (max x − min x) per example, the paper's noise level relative to the image's own range
    (≈ sigma for a [0, 1] image using its whole range; a constant image gets no noise). The noisy input
    is not clamped, as in the paper. Same generator state → same map.
    """
    if samples < 1 or sigma < 0:
        raise ValueError(f"smoothgrad needs samples >= 1 and sigma >= 0, got samples={samples}, sigma={sigma}")
    x = x.detach()
    flat = x.flatten(1)
    scale = (sigma * (flat.amax(1) - flat.amin(1))).view(-1, *[1] * (x.dim() - 1))
    total = torch.zeros(x.shape, dtype=_out_dtype(x), device=x.device)
    for _ in range(samples):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        total += saliency(model, x + scale * noise, y)
    return total / samples


ATTRIBUTIONS: dict[str, Callable[..., Tensor]] = {
    "saliency": saliency,
    "integrated_gradients": integrated_gradients,
    "input_x_gradient": input_x_gradient,
    "smoothgrad": smoothgrad,
}


def gini_index(a: Tensor, dim: int = -1) -> Tensor:
    """Gini of non-negative values along `dim`: G = 2 Σᵢ i·a₍ᵢ₎ / (M Σa) − (M+1)/M, a sorted ascending.

    0 = all equal, (M−1)/M = all mass on one element. Exactly 0 (with a zero, finite gradient) where
    Σa = 0. Differentiable (through the sort) and batched over the other dimensions; fp16/bf16 are
    computed in fp32. Negative values raise ValueError rather than giving a meaningless number:
    callers pass |A| (a magnitude), never a signed map.
    """
    if a.dim() == 0 or a.shape[dim] == 0:
        raise ValueError(f"gini_index needs at least one value along dim {dim}, got shape {tuple(a.shape)}")
    if bool((a < 0).any()):
        raise ValueError("gini_index needs non-negative values: pass |attribution|")
    a = a.to(_out_dtype(a)).movedim(dim, -1)
    m = a.shape[-1]
    ranks = torch.arange(1, m + 1, dtype=a.dtype, device=a.device)
    ordered, _ = torch.sort(a, dim=-1)
    total = a.sum(-1)
    nonzero = total > 0
    # The guarded denominator keeps the unused branch of `where` finite, so no NaN reaches the gradient.
    safe = torch.where(nonzero, total, torch.ones_like(total))
    g = 2 * (ordered * ranks).sum(-1) / (m * safe) - (m + 1) / m
    return torch.where(nonzero, g, torch.zeros_like(g))


def global_gini(attr: Tensor) -> Tensor:
    """Per-example Gini over all C·H·W values of |attr| (shape (B, ...) → (B,))."""
    return gini_index(attr.abs().flatten(1), dim=1)


RegionalConvention = Literal["duan", "igd"]
REGIONAL_CONVENTIONS: tuple[str, ...] = get_args(RegionalConvention)

# IGD's evaluation code: |A| reflect-padded at the bottom and right only, up to the next multiple of 16,
# then average-pooled over non-overlapping 16×16 windows (kernel = stride = 16) on each channel, and the
# Gini taken over all (channel, window) values. CIFAR (32), Tiny-ImageNet (64) and ImageNet (224) sizes
# need no padding; e.g. 20×20 does (12 reflected rows below, 12 columns to the right).
IGD_BLOCK = 16


def default_block(convention: RegionalConvention, height: int, width: int) -> int:
    """The block side n of a convention for an H×W map.

    Duan et al. use n = 4 on CIFAR (32×32) and n = 16 on ImageNet (224×224); we take 4 below 128 pixels
    on the shorter side (CIFAR, Tiny-ImageNet, digits) and 16 from there on. IGD always uses 16.
    """
    if convention == "igd":
        return IGD_BLOCK
    if convention == "duan":
        return 4 if min(height, width) < 128 else 16
    raise ValueError(f"regional convention must be one of {REGIONAL_CONVENTIONS}, got {convention!r}")


def _blocks(t: Tensor, n: int) -> Tensor:
    """(B, C, H, W) with H, W multiples of n → (B, C, H/n, n, W/n, n): exact block sums, no pooling kernel."""
    b, c, h, w = t.shape
    return t.reshape(b, c, h // n, n, w // n, n)


def regional_gini(attr: Tensor, convention: RegionalConvention = "duan", block: int | None = None) -> Tensor:
    """Per-example Gini over n×n regions of |attr| (shape (B, C, H, W) → (B,)).

    - "duan" (Duan et al. 2023): |A| summed over each n×n block and over all channels, one value per
      block (their code sums the block across channels too). When H or W is not a multiple of n, the
      last row/column of blocks is partial (smaller) and still counted, so every pixel is in exactly one
      region; their code instead left those pixels as single-pixel "regions".
    - "igd" (IGD): each channel separately, the mean of |A| over non-overlapping n×n windows after
      reflect padding at the bottom/right to a multiple of n (see IGD_BLOCK), one value per (channel, window).

    `block` defaults to `default_block(convention, H, W)`. Sum and mean over equal-sized blocks give the
    same Gini (it is scale-invariant); the conventions differ in channels and in the edge blocks.
    """
    if attr.dim() != 4:
        raise ValueError(f"regional_gini needs a (B, C, H, W) map, got shape {tuple(attr.shape)}")
    _, _, h, w = attr.shape
    n = default_block(convention, h, w) if block is None else block
    if n < 1:
        raise ValueError(f"regional_gini needs block >= 1, got {n}")
    mag = attr.abs().to(_out_dtype(attr))
    if convention == "duan":
        # Zero padding to a multiple of n: partial edge blocks sum exactly the pixels they cover.
        pad_h, pad_w = -h % n, -w % n
        summed = F.pad(mag.sum(1, keepdim=True), (0, pad_w, 0, pad_h))
        regions = _blocks(summed, n).sum((-3, -1))
    elif convention == "igd":
        pad_h, pad_w = -h % n, -w % n
        if pad_h or pad_w:
            if pad_h >= h or pad_w >= w:  # reflection cannot pad more than the side less one pixel
                raise ValueError(
                    f"igd regional Gini: a {h}×{w} map is too small to reflect-pad to a multiple of {n}; "
                    "pass a smaller block"
                )
            mag = F.pad(mag, (0, pad_w, 0, pad_h), mode="reflect")
        regions = _blocks(mag, n).mean((-3, -1))
    else:
        raise ValueError(f"regional convention must be one of {REGIONAL_CONVENTIONS}, got {convention!r}")
    return gini_index(regions.flatten(1), dim=1)


def gini_report(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attribution: str = "saliency",
    batch_size: int = 256,
    *,
    blocks: Mapping[str, int] | None = None,
    attribution_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Tensor]:
    """Per-example global and regional Gini of an attribution, and which examples are classified right.

    Returns CPU tensors of length len(x): "global", "regional_duan", "regional_igd" (float) and
    "correct" (bool, clean prediction == y), so a caller can average over all examples or over the
    correct ones (state which, docs/methods.md §7.2). The model runs in eval mode (running BN statistics);
    its mode is restored afterwards. `blocks` overrides the block side per convention, e.g.
    {"igd": 4} for 8×8 inputs; `attribution_kwargs` go to the attribution (steps, samples, generator...).
    """
    if attribution not in ATTRIBUTIONS:
        raise ValueError(f"attribution must be one of {tuple(ATTRIBUTIONS)}, got {attribution!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    attribute = ATTRIBUTIONS[attribution]
    kwargs = dict(attribution_kwargs or {})
    blocks = dict(blocks or {})
    out: dict[str, list[Tensor]] = {"global": [], "correct": []}
    for convention in REGIONAL_CONVENTIONS:
        out[f"regional_{convention}"] = []
    with bn_policy(model, "eval"):
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            attr = attribute(model, xb, yb, **kwargs)
            with torch.no_grad():
                out["correct"].append((model(xb).argmax(1) == yb).cpu())
                out["global"].append(global_gini(attr).cpu())
                for convention in REGIONAL_CONVENTIONS:
                    value = regional_gini(attr, convention, blocks.get(convention))  # type: ignore[arg-type]
                    out[f"regional_{convention}"].append(value.cpu())
    empty = {"correct": torch.zeros(0, dtype=torch.bool)}
    return {
        key: torch.cat(parts) if parts else empty.get(key, torch.zeros(0)) for key, parts in out.items()
    }


def mean_over(values: Tensor, mask: Tensor | None = None) -> float:
    """Mean of per-example values over all examples or over a bool mask (e.g. "correct"); NaN if none."""
    chosen = values if mask is None else values[mask]
    return float(chosen.double().mean()) if chosen.numel() else math.nan
