"""One signed-gradient step from a (possibly random) start: FGSM, FGSM-RS, N-FGSM (docs/methods.md §1, §2).

Like `pgd.py`, pure functions: they neither change the model's mode (use `bn_policy` around them) nor
touch parameter gradients. The loss whose input gradient is taken is computed in fp32 from the (possibly
bf16) logits by `attack_loss`, and every step returns its input gradient so a caller can report
`zero_gradient_fraction`: a sign step of an all-zero gradient is no step at all, and must never pass
silently (e.g. under bf16 autocast with a confident model).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from advtrain.attacks.losses import AttackLoss
from advtrain.attacks.pgd import ascent_step, input_gradient, project
from advtrain.attacks.threat import Norm, check_distance, check_images, parse_norm


class SingleStep(NamedTuple):
    x_adv: Tensor  # detached, in [0, 1]
    grad: Tensor  # ∇ₓ Σᵢ loss at the start point (detached), for diagnostics


def uniform_noise(x: Tensor, radius: float, generator: torch.Generator | None) -> Tensor:
    """δ ~ U(−radius, radius), elementwise, with x's shape, dtype and device."""
    return torch.empty_like(x).uniform_(-radius, radius, generator=generator)


def zero_gradient_fraction(grad: Tensor) -> Tensor:
    """Fraction of examples whose input gradient is entirely zero (a detached 0-dim tensor, no sync)."""
    return (grad.detach().flatten(1) == 0).all(1).float().mean()


def single_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    step_size: float,
    eps: float | None,
    noise: Tensor | None = None,
    norm: Norm = "linf",
    loss: AttackLoss = "ce",
) -> SingleStep:
    """x' = clamp(x + Π(δ₀ + step_size·sign ∇ₓ loss(x + δ₀)), 0, 1).

    δ₀ = `noise` (zero if None), first clamped so that x + δ₀ lies in [0, 1], as both released codes do
    (locuslab/fast_adversarial CIFAR10/train_fgsm.py and pdejorge/N-FGSM train.py clamp the initial δ to
    [0 − x, 1 − x] before taking the gradient there). Π clips δ to the `eps`-ball (FGSM, FGSM-RS);
    `eps=None` skips it (N-FGSM: only the [0, 1] clamp). For `norm="l2"` the step is the normalised gradient.
    `x` holds float images in [0, 1], `eps` and `step_size` are in [0, 1] pixel units: other input is refused.
    """
    norm = parse_norm(norm)
    if eps is not None:
        check_distance(eps, norm)
    check_distance(step_size, norm, "step_size")
    check_images(x)
    return single_step_unchecked(model, x, y, step_size=step_size, eps=eps, noise=noise, norm=norm, loss=loss)


def single_step_unchecked(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    step_size: float,
    eps: float | None,
    noise: Tensor | None = None,
    norm: Norm = "linf",
    loss: AttackLoss = "ce",
) -> SingleStep:
    """`single_step` without the pixel-scale checks on x, eps and step_size, for the training methods that call
    it every step (checking x costs a device sync; the trainer checked its data when it was loaded)."""
    x = x.detach()
    start = x if noise is None else (x + noise).clamp(0, 1)
    grad, _ = input_gradient(model, start, y, loss)
    with torch.no_grad():
        stepped = ascent_step(start, grad, step_size, norm)
        x_adv = stepped.clamp(0, 1) if eps is None else project(stepped, x, eps, norm)
    return SingleStep(x_adv.detach(), grad)


def gradient_cosine(g1: Tensor, g2: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example cos(g1ᵢ, g2ᵢ) on flattened gradients, and the mask of examples where both are non-zero.

    Masked-out entries are 0; the square root only ever sees positive values, so double backprop through
    it never meets 0·∞ (NaN) on an all-zero gradient.
    """
    a, b = g1.flatten(1), g2.flatten(1)
    sq_a, sq_b = (a * a).sum(1), (b * b).sum(1)
    mask = (sq_a != 0) & (sq_b != 0)
    one = torch.ones_like(sq_a)
    norm_a = torch.where(mask, sq_a, one).sqrt()
    norm_b = torch.where(mask, sq_b, one).sqrt()
    cos = (a / norm_a[:, None] * (b / norm_b[:, None])).sum(1)
    return torch.where(mask, cos, torch.zeros_like(cos)), mask
