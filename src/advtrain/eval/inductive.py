"""Inductive attacks (IGD, docs/methods.md §7.3): noise and occlusion aimed at the most salient inputs.

An l∞-adversarially trained model leans on a few input elements; perturbing exactly those (ranked by the
signed saliency ∇ₓ z_y) breaks it far more than perturbing as many random elements. Error rates are taken
over images that every compared model classifies correctly when clean (`commonly_correct`); callers pass
only those. Every function runs the model in eval mode (running BN statistics) and restores its mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from advtrain.attacks import bn_policy
from advtrain.eval.saliency import saliency

NoiseMode = Literal["add", "replace"]
NOISE_MODES: tuple[str, ...] = get_args(NoiseMode)

# ρ ∈ {0.2%, 0.4%, …, 2%} for inductive noise, {2%, 4%, …, 20%} for the random-noise control.
INDUCTIVE_RHOS: tuple[float, ...] = tuple(round(0.002 * i, 4) for i in range(1, 11))
RANDOM_RHOS: tuple[float, ...] = tuple(round(0.02 * i, 4) for i in range(1, 11))
OCCLUSION_COLORS: tuple[float, ...] = (0.5, 1.0)  # grey, white


def num_elements(rho: float, numel: int) -> int:
    """k = int(ρ·numel), truncated as IGD's evaluation code does (24.576 → 24 for ρ = 0.8% of 3·32·32)."""
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must lie in [0, 1], got {rho}")
    return min(numel, int(numel * rho))


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Bool mask of the k largest scores of each example (over all dims but the first), shape of scores.

    Largest signed values, not largest magnitudes: the elements that raise z_y most. Ties are broken by
    `torch.topk`.
    """
    flat = scores.flatten(1)
    if not 0 <= k <= flat.shape[1]:
        raise ValueError(f"k must lie in [0, {flat.shape[1]}], got {k}")
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=scores.device)
    if k:
        mask.scatter_(1, flat.topk(k, dim=1).indices, True)
    return mask.view(scores.shape)


def _check_mode(mode: str) -> None:
    if mode not in NOISE_MODES:
        raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")


def apply_noise(x: Tensor, mask: Tensor, mode: NoiseMode, generator: torch.Generator | None) -> Tensor:
    """x with n ~ N(0, 1) added to (`add`) or written over (`replace`) the masked elements, clamped to [0, 1].

    n is drawn for every element of x (shape of x), then masked: the noise at a position depends on the
    generator alone, not on which positions are chosen, so two models see the same noise values.
    """
    _check_mode(mode)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    perturbed = x + noise if mode == "add" else noise
    return torch.where(mask, perturbed, x).clamp(0, 1)


def inductive_noise(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    rho: float,
    mode: NoiseMode = "add",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Inductive noise: N(0, 1) noise on the top k = int(ρ·C·H·W) elements of the signed saliency ∇ₓ z_y.

    Per example; `add` gives x_j + n_j, `replace` gives n_j, then clamp to [0, 1]. Eval mode, mode restored.
    """
    _check_mode(mode)
    x = x.detach()
    k = num_elements(rho, x[0].numel() if len(x) else 0)
    with bn_policy(model, "eval"):
        scores = saliency(model, x, y)
    return apply_noise(x, top_k_mask(scores, k), mode, generator)


def random_mask(
    shape: Sequence[int], k: int, generator: torch.Generator | None, device: torch.device | str | None = None
) -> Tensor:
    """Bool mask with k elements per example (dims after the first) chosen uniformly at random."""
    keys = torch.rand(tuple(shape), generator=generator, device=device)
    return top_k_mask(keys, k)


def random_noise(
    x: Tensor, rho: float, mode: NoiseMode = "add", generator: torch.Generator | None = None
) -> Tensor:
    """The random-noise control: the same N(0, 1) noise on k = int(ρ·C·H·W) uniformly chosen elements.

    The positions are drawn first (one uniform key per element, the k largest), then the noise values.
    """
    _check_mode(mode)
    x = x.detach()
    k = num_elements(rho, x[0].numel() if len(x) else 0)
    return apply_noise(x, random_mask(x.shape, k, generator, x.device), mode, generator)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """Predicted classes in eval mode, in batches, on x's device; the model's mode is restored."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with bn_policy(model, "eval"):
        parts = [model(xb).argmax(1) for xb in x.split(batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=x.device)


def error_rate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Share of x misclassified (eval mode); NaN for an empty set."""
    if len(x) == 0:
        return math.nan
    return float((predict(model, x, batch_size) != y.to(x.device)).double().mean())


def commonly_correct(models: Sequence[nn.Module], x: Tensor, y: Tensor, batch_size: int = 256) -> Tensor:
    """CPU bool mask of the images that every model classifies correctly when clean (eval mode)."""
    keep = torch.ones(len(x), dtype=torch.bool)
    for model in models:
        keep &= (predict(model, x, batch_size) == y.to(x.device)).cpu()
    return keep


def _noise_sweep(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    rhos: Sequence[float],
    mode: NoiseMode,
    seed: int,
    batch_size: int,
    inductive: bool,
) -> dict[float, float]:
    _check_mode(mode)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x = x.detach()
    y = y.to(x.device)
    numel = x[0].numel() if len(x) else 0
    results: dict[float, float] = {}
    with bn_policy(model, "eval"):
        batches = list(zip(x.split(batch_size), y.split(batch_size), strict=True))
        # The saliency does not depend on ρ: compute it once per batch.
        scores = [saliency(model, xb, yb) for xb, yb in batches] if inductive else []
        for rho in rhos:
            k = num_elements(rho, numel)
            # A fresh generator per ρ: each number depends on (seed, ρ) only, not on the other ρ swept.
            generator = torch.Generator(device=x.device).manual_seed(seed)
            wrong = 0
            for i, (xb, yb) in enumerate(batches):
                mask = top_k_mask(scores[i], k) if inductive else random_mask(xb.shape, k, generator, xb.device)
                perturbed = apply_noise(xb, mask, mode, generator)
                with torch.no_grad():
                    wrong += int((model(perturbed).argmax(1) != yb).sum())
            results[rho] = wrong / len(x) if len(x) else math.nan
    return results


def inductive_noise_sweep(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    rhos: Sequence[float] = INDUCTIVE_RHOS,
    mode: NoiseMode = "add",
    seed: int = 0,
    batch_size: int = 256,
) -> dict[float, float]:
    """{ρ: error rate} under inductive noise on the given images (pass the commonly correct ones).

    Same (seed, batch_size) → same numbers; each ρ restarts the generator from `seed`, and the draws
    follow the batches in order, so a different batch_size gives different (equally valid) noise.
    """
    return _noise_sweep(model, x, y, rhos, mode, seed, batch_size, inductive=True)


def random_noise_sweep(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    rhos: Sequence[float] = RANDOM_RHOS,
    mode: NoiseMode = "add",
    seed: int = 0,
    batch_size: int = 256,
) -> dict[float, float]:
    """{ρ: error rate} under the random-noise control (uniformly chosen elements), as inductive_noise_sweep."""
    return _noise_sweep(model, x, y, rhos, mode, seed, batch_size, inductive=False)


def occlusion_centres(scores: Tensor, n: int) -> Tensor:
    """(B, n, 2) long (row, col) of the n pixels with the largest channel-mean signed saliency, descending.

    `scores` is (B, C, H, W) (or (B, H, W), already one channel).
    """
    mean = scores.mean(1) if scores.dim() == 4 else scores
    b, h, w = mean.shape
    if not 0 <= n <= h * w:
        raise ValueError(f"n must lie in [0, {h * w}], got {n}")
    index = mean.reshape(b, h * w).topk(n, dim=1, sorted=True).indices
    return torch.stack((index // w, index % w), dim=-1)


def occlusion_mask(centres: Tensor, r: int, height: int, width: int) -> Tensor:
    """(B, H, W) bool: the union over centres (i, j) of the squares [i−r, i+r) × [j−r, j+r), clipped.

    `centres` is (B, n, 2) (row, col); a 2r-sided square, one pixel more above/left of the centre than
    below/right, as in Duan et al.'s code (`x-r:x+r`).
    """
    if r < 0:
        raise ValueError(f"r must be >= 0, got {r}")
    rows = torch.arange(height, device=centres.device)
    cols = torch.arange(width, device=centres.device)
    ci = centres[..., 0:1]  # (B, n, 1)
    cj = centres[..., 1:2]
    in_rows = (rows >= ci - r) & (rows < ci + r)  # (B, n, H)
    in_cols = (cols >= cj - r) & (cols < cj + r)  # (B, n, W)
    return (in_rows[..., :, None] & in_cols[..., None, :]).any(1)


@torch.no_grad()
def _occlude_batch(model: nn.Module, x: Tensor, y: Tensor, centres: Tensor, color: float, r_top: int) -> Tensor:
    """Bool per image: broken by some (n, r) of the search, tried in order on the still-unbroken images."""
    _, _, h, w = x.shape
    done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for n in range(1, centres.shape[1] + 1):
        for r in range(1, r_top + 1):
            active = (~done).nonzero().squeeze(1)
            if len(active) == 0:
                return done
            mask = occlusion_mask(centres[active, :n], r, h, w)[:, None]  # (b, 1, H, W): every channel
            xa = x[active]
            occluded = torch.where(mask, torch.full_like(xa, color), xa)
            done[active[model(occluded).argmax(1) != y[active]]] = True
    return done


def inductive_occlusion(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    colors: Sequence[float] = OCCLUSION_COLORS,
    n_max: int = 10,
    r_max: int = 20,
    batch_size: int = 256,
) -> dict[float, Tensor]:
    """Inductive occlusion: {colour: CPU bool per image, broken}.

    Centres = the top-`n_max` pixels of the channel-mean signed saliency (descending). For n = 1..n_max
    (outer) and r = 1..r_max (inner), the union of squares around the first n centres is painted with the
    colour on every channel; an image is broken at its first misclassification. All still-unbroken
    images of a batch are tried at once per (n, r), and a batch stops once all of it is broken. A radius
    r ≥ max(H, W) already paints the whole image, so larger r (same image, same verdict) are skipped.
    """
    if n_max < 1 or r_max < 1:
        raise ValueError(f"need n_max >= 1 and r_max >= 1, got n_max={n_max}, r_max={r_max}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x = x.detach()
    y = y.to(x.device)
    _, _, h, w = x.shape
    n_top = min(n_max, h * w)
    r_top = min(r_max, max(h, w))
    broken: dict[float, list[Tensor]] = {float(c): [] for c in colors}
    with bn_policy(model, "eval"):
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            centres = occlusion_centres(saliency(model, xb, yb), n_top)
            for color in broken:
                broken[color].append(_occlude_batch(model, xb, yb, centres, color, r_top).cpu())
    return {
        color: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool) for color, parts in broken.items()
    }
