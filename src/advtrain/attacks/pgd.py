"""FGSM and PGD under L∞ and L2 (docs/methods.md §1).

Pure functions: they neither change the model's train/eval mode (use `bn_policy` around them) nor
touch parameter gradients (gradients are taken with `torch.autograd.grad` w.r.t. the input only, with the
parameters frozen so that a compiled model's backward computes no weight gradient either: `frozen_parameters`).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks.frozen import frozen_parameters
from advtrain.attacks.losses import AttackLoss, at_least_fp32, attack_loss
from advtrain.attacks.threat import Norm, check_attack_inputs, parse_norm

# "last": the final iterate (Madry's training attack). "first_fooling": per example, the first
# iterate (start included) that the model misclassifies, else the final one — robust accuracy then
# can only fall as steps are added, and restarts keep every success (docs/methods.md §1, "Restarts").
Keep = Literal["last", "first_fooling"]


def default_step_size(eps: float, steps: int) -> float:
    """2.5·ε/steps (Madry et al. 2018): 2/255 for PGD-10 at 8/255, enough to cross the ball."""
    return 2.5 * eps / max(steps, 1)


def _flat_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def random_start(x: Tensor, eps: float, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """A random point of the ε-ball around x, clamped to [0, 1]."""
    if parse_norm(norm) == "linf":
        # For ε >= 1 the L∞ ball already covers all of [0, 1] around any x; the cap keeps the draw inside the
        # ball and keeps uniform_ from failing on a huge ε (2ε beyond the float32 range), and changes nothing
        # for ε <= 1.
        bound = min(eps, 1.0)
        delta = torch.empty_like(x).uniform_(-bound, bound, generator=generator)
    else:
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        radius = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype)
        radius = (eps * radius).view(-1, *[1] * (x.dim() - 1))
        delta = direction / _flat_norm(direction).clamp_min(1e-12) * radius
    return (x + delta).clamp(0, 1)


def project(x_adv: Tensor, center: Tensor, eps: float, norm: Norm) -> Tensor:
    """Clip δ = x_adv − center to the ε-ball, then clamp center + δ to [0, 1]."""
    delta = x_adv - center
    if parse_norm(norm) == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (center + delta).clamp(0, 1)


def ascent_step(x_adv: Tensor, grad: Tensor, step_size: float, norm: Norm) -> Tensor:
    """One steepest-ascent step: signed gradient for L∞, normalised gradient for L2."""
    if parse_norm(norm) == "linf":
        return x_adv + step_size * grad.sign()
    return x_adv + step_size * grad / _flat_norm(grad).clamp_min(1e-12)


def input_gradient(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss: AttackLoss = "ce",
    *,
    clean_logits: Tensor | None = None,
    kappa: float = math.inf,
) -> tuple[Tensor, Tensor]:
    """∇ₓ Σᵢ loss(z(xᵢ), yᵢ) and the logits, computing no parameter gradient (not even in a compiled backward)."""
    x = x.detach().requires_grad_(True)
    with frozen_parameters(model):
        logits = model(x)
        per_example = attack_loss(logits, y, loss, clean_logits=clean_logits, kappa=kappa)
        (grad,) = torch.autograd.grad(per_example.sum(), x)
    return grad, logits.detach()


ScoreTarget = Literal["logit", "ce"]


def class_score_gradient(
    model: nn.Module, x: Tensor, y: Tensor, target: ScoreTarget = "logit", *, create_graph: bool = False
) -> Tensor:
    """∇ₓ Σᵢ score(xᵢ, yᵢ): the true-class logit z_y (saliency; IGD) or the CE loss; with `create_graph` for
    second-order training. Only the input gets a gradient; with `create_graph=False` the result is detached and
    the parameters are frozen meanwhile (no weight gradient even in a compiled backward), with `create_graph` they
    are not (the training loss differentiates the result w.r.t. them). Runs under `enable_grad`, so a caller's
    `no_grad` cannot turn it off.
    """
    with torch.enable_grad(), nullcontext() if create_graph else frozen_parameters(model):
        x = x.detach().requires_grad_(True)
        logits = at_least_fp32(model(x))
        y = y.to(logits.device)
        score = logits.gather(1, y[:, None]).sum() if target == "logit" else F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(score, x, create_graph=create_graph)
    return grad


def _pgd_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    norm: Norm,
    loss: AttackLoss,
    start: bool,
    track: bool,
    clean_logits: Tensor | None,
    kappa: float,
    generator: torch.Generator | None,
    x_init: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One PGD run. Returns the final iterate and, when tracking, the first fooling iterates + mask."""
    if x_init is not None:
        x_adv = x_init.detach().clone()
    else:
        x_adv = random_start(x, eps, norm, generator) if start else x.clone()
    first = x_adv.clone() if track else None
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device) if track else None
    for _ in range(steps):
        grad, logits = input_gradient(model, x_adv, y, loss, clean_logits=clean_logits, kappa=kappa)
        with torch.no_grad():
            if track:
                newly = (logits.argmax(1) != y) & ~fooled
                first = torch.where(newly.view(-1, *[1] * (x.dim() - 1)), x_adv, first)
                fooled = fooled | newly
            x_adv = project(ascent_step(x_adv, grad, step_size, norm), x, eps, norm)
    return x_adv.detach(), first, fooled


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    norm: Norm = "linf",
    loss: AttackLoss = "ce",
    random_start: bool = True,
    restarts: int = 1,
    keep: Keep = "first_fooling",
    clean_logits: Tensor | None = None,
    kappa: float = math.inf,
    generator: torch.Generator | None = None,
    x_init: Tensor | None = None,
) -> Tensor:
    """PGD-`steps` with `restarts` restarts; returns adversarial inputs in the ε-ball and [0, 1].

    `x` holds float images in [0, 1] and `eps`, `step_size` are in [0, 1] pixel units (8/255, not 8): other
    input is refused with the fix named. `norm` is "linf" (also "Linf", "inf") or "l2" ("L2").

    `keep="first_fooling"` (default) returns, per example, the first iterate that fools the model, as
    `advtrain eval` counts robust accuracy; `keep="last"` returns the final iterate (the training attack).
    Over restarts, each example keeps the first result that fools the model, else the one with the
    highest loss. `step_size` defaults to 2.5·ε/steps.

    `x_init`, when given, is the explicit starting point of every run (shape of x), used instead of the
    random or zero start (`random_start` is then ignored). It is used as given, neither projected nor
    clamped (TRADES starts from x + 0.001·N(0, 1) exactly so); every step's iterate is projected as usual.
    """
    norm = check_attack_inputs(x, eps, norm, step_size)
    return pgd_unchecked(
        model, x, y, eps=eps, steps=steps, step_size=step_size, norm=norm, loss=loss, random_start=random_start,
        restarts=restarts, keep=keep, clean_logits=clean_logits, kappa=kappa, generator=generator, x_init=x_init,
    )


def pgd_unchecked(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    keep: Keep,
    steps: int = 10,
    step_size: float | None = None,
    norm: Norm = "linf",
    loss: AttackLoss = "ce",
    random_start: bool = True,
    restarts: int = 1,
    clean_logits: Tensor | None = None,
    kappa: float = math.inf,
    generator: torch.Generator | None = None,
    x_init: Tensor | None = None,
) -> Tensor:
    """`pgd` without the pixel-scale checks on x, eps and step_size, for callers that checked them once:
    the training methods (every step; checking x costs a device sync) and the evaluation loops (every chunk).
    `keep` has no default: a training attack keeps "last", an evaluation "first_fooling"."""
    if steps < 0 or restarts < 1:
        raise ValueError(f"need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    if x_init is not None and x_init.shape != x.shape:
        raise ValueError(f"x_init must have the shape of x {tuple(x.shape)}, got {tuple(x_init.shape)}")
    if keep not in ("last", "first_fooling"):
        raise ValueError(f"keep must be 'last' or 'first_fooling', got {keep!r}")
    norm = parse_norm(norm)
    step_size = default_step_size(eps, steps) if step_size is None else step_size
    x = x.detach()
    track = keep == "first_fooling"
    best: Tensor | None = None
    best_fooled = best_loss = None
    shape = (-1, *[1] * (x.dim() - 1))
    for _ in range(restarts):
        final, first, fooled = _pgd_run(
            model, x, y, eps=eps, steps=steps, step_size=step_size, norm=norm, loss=loss,
            start=random_start, track=track, clean_logits=clean_logits, kappa=kappa, generator=generator,
            x_init=x_init,
        )
        if not track and restarts == 1:
            return final
        with torch.no_grad():
            logits = model(final)
            final_loss = attack_loss(logits, y, loss, clean_logits=clean_logits, kappa=kappa)
            final_fooled = logits.argmax(1) != y
            if track:
                result = torch.where(fooled.view(shape), first, final)
                fooled = fooled | final_fooled
            else:
                result, fooled = final, final_fooled
            # A fooled result is marked with +inf loss so it always wins over an unfooled one.
            score = torch.where(fooled, torch.full_like(final_loss, math.inf), final_loss)
            if best is None:
                best, best_fooled, best_loss = result, fooled, score
            else:
                take = ~best_fooled & (score > best_loss)
                best = torch.where(take.view(shape), result, best)
                best_loss = torch.where(take, score, best_loss)
                best_fooled = best_fooled | fooled
    assert best is not None
    return best


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    loss: AttackLoss = "ce",
    keep: Keep = "first_fooling",
) -> Tensor:
    """FGSM (L∞) or FGM (L2): one full-ε step from x, no random start. Inputs are checked as `pgd` checks them;
    `keep="first_fooling"` (default) returns x itself where the model already misclassifies it."""
    norm = check_attack_inputs(x, eps, norm)
    return fgsm_unchecked(model, x, y, eps=eps, norm=norm, loss=loss, keep=keep)


def fgsm_unchecked(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, keep: Keep, norm: Norm = "linf", loss: AttackLoss = "ce"
) -> Tensor:
    """`fgsm` without the pixel-scale checks, for callers that checked them once (see `pgd_unchecked`)."""
    return pgd_unchecked(
        model, x, y, eps=eps, steps=1, step_size=eps, norm=norm, loss=loss, random_start=False, keep=keep
    )
