"""Gradient-masking checks that read the input gradient: the loss along the FGSM direction, GradAlign's gradient
cosine, and the share of all-zero gradients.

Thresholds and why (also in each `Check.rule`):
- fgsm_direction_loss, ratio < 0.95: ratio = (L(ε) − L(0)) / (max_t L(t) − L(0)) of the mean CE along the
  FGSM direction. CE is convex in the logits, so a model that is linear over the ε-ball gives a convex
  curve with a positive slope at t = 0: increasing, ratio exactly 1. Masking bends the curve (the loss falls
  back after a peak, as after catastrophic overfitting) or flattens it (no rise at all: ratio 0). 5% of
  the rise is allowed for the curvature of an unmasked network.
- gradalign_cosine: report only. It measures local linearity, which also separates standard from robust
  training: a standard model is unmasked yet less aligned, so no model-independent level marks masking;
  what marks catastrophic overfitting is a sharp fall of this cosine during one training run.
- zero_gradients > 0.1: in fp32 an input gradient is exactly zero only behind a non-differentiable or
  saturating operation (rounding, thresholding, a saturated softmax); isolated examples can saturate, more
  than one in ten is a systematic mechanism.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import bn_policy, gradient_cosine, input_gradient, uniform_noise, zero_gradient_fraction
from advtrain.eval.diagnose.probe import INFO, Check, Probe, threshold_check
from advtrain.runtime import make_generator

FGSM_DIRECTION_POINTS = 11
FGSM_DIRECTION_RATIO = 0.95
ZERO_GRADIENT_SHARE = 0.1


def loss_along_fgsm(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, points: int = FGSM_DIRECTION_POINTS, batch_size: int = 256
) -> tuple[list[float], list[float]]:
    """(t, mean CE) along the FGSM direction: CE(clamp(x + t·sign ∇ₓCE(x), 0, 1)) for t ∈ linspace(0, ε, points).

    Eval mode, fp32 losses, mean over all images.
    """
    ts = torch.linspace(0.0, float(eps), points).tolist()
    sums = torch.zeros(points, dtype=torch.float64)
    with bn_policy(model, "eval"):
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            grad, _ = input_gradient(model, xb, yb)
            direction = grad.sign()
            with torch.no_grad():
                for j, t in enumerate(ts):
                    logits = model((xb + t * direction).clamp(0, 1)).float()
                    sums[j] += F.cross_entropy(logits, yb, reduction="sum").double().cpu()
    return ts, (sums / len(y)).tolist()


def gradient_alignment(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, seed: int = 0, batch_size: int = 256
) -> tuple[float, int]:
    """GradAlign's metric: the mean over examples of cos(∇ₓCE(x), ∇ₓCE(x + η)), η ~ U(−ε, ε), and how many
    examples it averages.

    As in the GradAlign code (and `advtrain.methods.grad_align`), x + η is not clamped to [0, 1] and examples
    where either gradient is all zero are left out; with none left the mean is NaN. Eval mode.
    """
    total, count = 0.0, 0
    with bn_policy(model, "eval"):
        for i, (xb, yb) in enumerate(zip(x.split(batch_size), y.split(batch_size), strict=True)):
            generator = make_generator(xb.device, seed, "gradalign", i)
            g1, _ = input_gradient(model, xb, yb)
            g2, _ = input_gradient(model, xb + uniform_noise(xb, eps, generator), yb)
            cos, valid = gradient_cosine(g1.double(), g2.double())
            total += float(cos.sum())  # 0 where either gradient is all zero
            count += int(valid.sum())
    return (total / count if count else math.nan), count


def zero_gradient_share(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 256) -> float:
    """Share of examples whose input gradient ∇ₓCE(x) is exactly zero everywhere (eval mode)."""
    zero = 0
    with bn_policy(model, "eval"):
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            grad, _ = input_gradient(model, xb, yb)
            zero += round(float(zero_gradient_fraction(grad)) * len(yb))
    return zero / len(y)


def check_fgsm_direction_loss(
    probe: Probe, eps: float, *, points: int = FGSM_DIRECTION_POINTS, threshold: float = FGSM_DIRECTION_RATIO
) -> Check:
    """Mean CE along the FGSM direction for t ∈ linspace(0, ε, points); the value is the share of the largest
    rise still held at t = ε, (L(ε) − L(0)) / (max_t L(t) − L(0)) (0 when the loss never rises); WARN if below
    `threshold`."""
    ts, losses = loss_along_fgsm(probe.model, probe.x, probe.y, eps=eps, points=points,
                                 batch_size=probe.batch_size)
    start, peak, end = losses[0], max(losses), losses[-1]
    rises = peak - start > 1e-7 * max(1.0, abs(start))
    ratio: float | None = None
    if all(math.isfinite(v) for v in losses):
        ratio = (end - start) / (peak - start) if rises else 0.0  # no rise at all: nothing of it is held
    warn = ratio is None or ratio < threshold
    if ratio is None:
        meaning = "the loss along the FGSM direction is not finite"
    elif not rises:
        meaning = ("the loss does not rise along the FGSM direction: the gradient carries no information "
                   "(masking)")
    elif warn:
        meaning = "the loss falls back along the FGSM direction before ε: the loss surface is bent (masking)"
    else:
        meaning = "the loss rises steadily along the FGSM direction: the model is locally linear enough"
    return threshold_check("fgsm_direction_loss", ratio, threshold,
                           f"WARN if (L(ε) − L(0)) / (max L − L(0)) < {threshold:g}", warn, meaning,
                           {"t": ts, "loss": losses}, ">=")


def check_gradalign_cosine(probe: Probe, eps: float) -> Check:
    """GradAlign's cos(∇ₓCE(x), ∇ₓCE(x + η)), η ~ U(−ε, ε): report only (INFO)."""
    cosine, count = gradient_alignment(probe.model, probe.x, probe.y, eps=eps, seed=probe.seed,
                                       batch_size=probe.batch_size)
    if count == 0:
        meaning = "undefined: no example has two non-zero gradients (see zero_gradients)"
    else:
        meaning = ("local linearity: ≈ 1 for a model linear over the ε-ball; a sharp fall during training "
                   "marks catastrophic overfitting")
    return Check("gradalign_cosine", None if count == 0 else cosine, None, "report only", INFO, meaning,
                 {"examples": count, "eps": eps}, None)


def check_zero_gradients(probe: Probe, *, threshold: float = ZERO_GRADIENT_SHARE) -> Check:
    """Share of examples with an all-zero input gradient ∇ₓCE(x); WARN if above `threshold`."""
    share = zero_gradient_share(probe.model, probe.x, probe.y, batch_size=probe.batch_size)
    warn = share > threshold
    meaning = ("many input gradients are exactly zero: a non-differentiable or saturated layer hides the loss "
               "from gradient attacks" if warn else "input gradients are non-zero: gradient attacks can see the loss")
    return threshold_check("zero_gradients", share, threshold, f"WARN if > {threshold:g}", warn, meaning, {})
