"""Gradient-masking checks that compare attacks: FGSM against PGD, PGD over steps, ε and restarts, and a black-box
transfer attack against the white-box one.

Thresholds and why (also in each `Check.rule`):
- fgsm_pgd_gap > 0.3: the catastrophic-overfitting rule of §7.7 (and of the training monitor). FGSM is a
  weaker attack than PGD, so a small positive gap is normal; a 30-point gap means one signed-gradient step
  says almost nothing about the worst case, i.e. the gradient at x is uninformative.
- pgd_steps, rise > 0.02: the runs share images and random starts (same seed), so extra steps can only
  cost the model accuracy on a loss surface that gradient ascent can climb; 2 points (10 of 500 images)
  covers the path differences the changing step size 2.5ε/steps brings.
- pgd_eps > max(0.1, grey baseline): at ε ≥ 0.5 the L∞ ball around every [0, 1] image holds the uniform
  grey image, at ε = 1 it holds every image, so a working attack drives accuracy to ≈ 0 (only a constant
  classifier survives). The blind attack "replace the image by grey" already reaches the share of labels
  the model gives the grey image; PGD doing worse than that is a failed gradient. The 0.1 floor allows for a
  20-step budget on a small sample; it is also chance level for 10 classes.
- restarts, drop > 0.05: restart 1 of PGD-50-10 is PGD-50-1 exactly (same seed), so the drop counts only
  examples that nine more random starts break. On a surface gradient ascent can climb, PGD reaches similar
  loss values from any start (Madry et al. 2018 found them tightly concentrated), so restarts add a few
  points at most; a larger gain means the result depends on the start: a rugged, masked surface.
- transfer < white-box − 0.02: a white-box attacker could use the surrogate's examples too, so black-box
  accuracy must not be below white-box accuracy; 2 points of paired sampling slack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advtrain.attacks import Keep, bn_policy, check_images, fgsm_unchecked, pgd_unchecked
from advtrain.eval.diagnose.probe import SKIP, WHITE_BOX_STEPS, Check, Probe, fgsm_spec, pgd_spec, threshold_check
from advtrain.eval.robustness import AttackSpec

FGSM_PGD_GAP = 0.3
PGD_STEPS = (1, 3, 10, 20, 50, 100)
STEPS_TOLERANCE = 0.02
EPS_FLOOR = 0.1
RESTARTS = 10
RESTART_STEPS = 50
RESTARTS_TOLERANCE = 0.05
TRANSFER_TOLERANCE = 0.02


def eps_schedule(eps: float) -> list[float]:
    """ε, 2ε, 4ε, ..., 32ε capped at 1, plus 0.5 and 1 (when above ε): sorted, without repeats, ending at 1."""
    values = {min(1.0, m * eps) for m in (1, 2, 4, 8, 16, 32)} | {v for v in (0.5, 1.0) if v > eps}
    out: list[float] = []
    for v in sorted(values):
        if not out or v - out[-1] > 1e-9:
            out.append(float(v))
    return out


def transfer_accuracy(
    target: nn.Module,
    surrogate: nn.Module,
    x: Tensor,
    y: Tensor,
    spec: AttackSpec,
    *,
    seed: int = 0,
    batch_size: int = 256,
    keep: Keep = "last",
) -> float:
    """Accuracy of `target` on adversarial examples crafted against `surrogate` (a black-box transfer attack).

    `spec` is a FGSM, PGD or CW spec; both models run in eval mode. The random starts follow `evaluate`'s
    seeding (`seed` + batch index), so with `keep="first_fooling"` and `surrogate is target` the result equals
    white-box `evaluate_attacks(target, x, y, [spec], seed=seed)`. The default `keep="last"` transfers the final
    iterate: the first iterate that fools the surrogate sits just across its boundary and transfers worse.
    """
    if spec.attack not in ("fgsm", "pgd", "cw"):
        raise ValueError(f"transfer attacks craft with fgsm, pgd or cw, got {spec.attack!r}")
    check_images(x)  # once here; the spec checked its ε and norm when it was made
    correct = total = 0
    with bn_policy(surrogate, "eval"), bn_policy(target, "eval"):
        for i, (xb, yb) in enumerate(zip(x.split(batch_size), y.split(batch_size), strict=True)):
            if spec.attack == "fgsm":
                x_adv = fgsm_unchecked(surrogate, xb, yb, eps=spec.eps, norm=spec.norm, keep=keep)
            else:
                generator = torch.Generator(device=xb.device).manual_seed(seed + i)
                x_adv = pgd_unchecked(surrogate, xb, yb, eps=spec.eps, steps=spec.steps, step_size=spec.step_size,
                                      norm=spec.norm, loss="ce" if spec.attack == "pgd" else "cw",
                                      restarts=spec.restarts, keep=keep, generator=generator)
            with torch.no_grad():
                correct += int((target(x_adv).argmax(1) == yb).sum())
            total += len(yb)
    return correct / total if total else math.nan


def grey_baseline(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, int]:
    """(share of the labels equal to the model's class for a uniform grey 0.5 image, that class)."""
    with bn_policy(model, "eval"), torch.no_grad():
        predicted = int(model(torch.full_like(x[:1], 0.5)).argmax(1).item())
    return int((y == predicted).sum()) / len(y), predicted


def check_fgsm_pgd_gap(probe: Probe, eps: float, *, threshold: float = FGSM_PGD_GAP) -> Check:
    """FGSM accuracy − PGD-20 accuracy at ε; WARN if above `threshold` (docs/methods.md §7.7)."""
    fgsm_acc, pgd_acc = probe.accuracy(fgsm_spec(eps)), probe.accuracy(pgd_spec(eps))
    gap = fgsm_acc - pgd_acc
    warn = gap > threshold
    meaning = ("one signed-gradient step misses what PGD finds: the gradient at x is uninformative (masking)"
               if warn else "FGSM and PGD-20 agree within the allowed gap: the gradient at x points to the worst case")
    return threshold_check("fgsm_pgd_gap", gap, threshold, f"WARN if > {threshold:g}", warn, meaning,
                           {"fgsm_accuracy": fgsm_acc, "pgd_accuracy": pgd_acc, "pgd_steps": WHITE_BOX_STEPS})


def check_pgd_steps(
    probe: Probe, eps: float, *, steps: Sequence[int] = PGD_STEPS, tolerance: float = STEPS_TOLERANCE
) -> Check:
    """PGD accuracy at each number of steps (step 2.5ε/steps, random start, one restart); WARN if a later
    (more steps) accuracy exceeds an earlier one by more than `tolerance`. The value is the largest such rise."""
    steps = sorted(set(steps))
    acc = [probe.accuracy(pgd_spec(eps, s)) for s in steps]
    rise = max([0.0] + [acc[j] - acc[i] for i in range(len(acc)) for j in range(i + 1, len(acc))])
    warn = rise > tolerance
    meaning = ("more PGD steps raise the accuracy: the attack gets stuck with small steps (masked loss surface)"
               if warn else "more PGD steps never help the model: the attack converges as it should")
    return threshold_check("pgd_steps", rise, tolerance,
                           f"WARN if any later accuracy > an earlier one + {tolerance:g}", warn, meaning,
                           {"steps": steps, "accuracy": acc, "eps": eps})


def check_pgd_eps(
    probe: Probe, eps: float, *, schedule: Sequence[float] | None = None, floor: float = EPS_FLOOR
) -> Check:
    """PGD-20 accuracy over growing ε (`eps_schedule`); WARN if the accuracy at the largest ε is above
    max(`floor`, the grey-image baseline): at ε = 1 every image is reachable, so only attack failure leaves
    examples correct, and replacing each image by grey already breaks all but the baseline's share."""
    schedule = sorted(eps_schedule(eps) if schedule is None else schedule)
    acc = [probe.accuracy(pgd_spec(e)) for e in schedule]
    baseline, grey_class = grey_baseline(probe.model, probe.x, probe.y)
    threshold = max(floor, baseline)
    warn = acc[-1] > threshold
    meaning = (f"PGD leaves examples correct at ε = {schedule[-1]:g}, where a grey image already does better: "
               "the gradient leads the attack away (masking)" if warn else
               f"accuracy falls to ≈ 0 by ε = {schedule[-1]:g}: the attack can break every example given room")
    return threshold_check("pgd_eps", acc[-1], threshold,
                           f"WARN if accuracy at ε = {schedule[-1]:g} > max({floor:g}, grey-image baseline)", warn,
                           meaning, {"eps": list(schedule), "accuracy": acc, "grey_baseline": baseline,
                                     "grey_class": grey_class, "steps": WHITE_BOX_STEPS})


def check_restarts(
    probe: Probe, eps: float, *, steps: int = RESTART_STEPS, restarts: int = RESTARTS,
    tolerance: float = RESTARTS_TOLERANCE,
) -> Check:
    """PGD-`steps` with `restarts` random restarts vs one; WARN if the restarts lower accuracy by more than
    `tolerance`. The value is (1-restart − many-restart) accuracy."""
    one, many = probe.accuracy(pgd_spec(eps, steps, 1)), probe.accuracy(pgd_spec(eps, steps, restarts))
    drop = one - many
    warn = drop > tolerance
    meaning = ("random restarts break many more examples: PGD's result depends on where it starts "
               "(a rugged, masked loss surface)" if warn else
               "random restarts add few successes: PGD finds the same optimum from any start")
    return threshold_check("restarts", drop, tolerance,
                           f"WARN if PGD-{steps}-{restarts} accuracy < PGD-{steps}-1 − {tolerance:g}", warn, meaning,
                           {"steps": steps, "restarts": restarts, "accuracy_1": one, f"accuracy_{restarts}": many})


def check_transfer(
    probe: Probe, surrogate: nn.Module | None, eps: float, *, tolerance: float = TRANSFER_TOLERANCE
) -> Check:
    """PGD-20 crafted on `surrogate` (final iterate), evaluated on the model, vs white-box PGD-20; WARN if the
    transfer accuracy is below the white-box accuracy − `tolerance`. SKIP without a surrogate."""
    rule = f"WARN if transfer accuracy < white-box PGD-{WHITE_BOX_STEPS} accuracy − {tolerance:g}"
    if surrogate is None:
        return Check("transfer", None, None, rule, SKIP,
                     "not measured: pass a surrogate (--surrogate RUN_DIR, ideally a standard-trained model)",
                     pass_if=">=")
    spec = pgd_spec(eps)
    transfer = transfer_accuracy(probe.model, surrogate, probe.x, probe.y, spec, seed=probe.seed,
                                 batch_size=probe.batch_size)
    white = probe.accuracy(spec)
    warn = transfer < white - tolerance
    meaning = ("examples crafted on another model break this one more often than its own gradients do "
               "(masking)" if warn else "the black-box transfer attack is no stronger than the white-box attack")
    return threshold_check("transfer", transfer, white - tolerance, rule, warn, meaning,
                           {"transfer_accuracy": transfer, "white_box_accuracy": white, "steps": WHITE_BOX_STEPS}, ">=")
