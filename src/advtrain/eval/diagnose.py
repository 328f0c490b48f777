"""Gradient-masking diagnostics (METHODS.md §7.7): is a model's robust accuracy real, or do the attacks fail?

Every check measures one symptom with the project's own attacks (`advtrain.attacks.pgd` / `fgsm` through
`evaluate`, all in eval mode, seeded) on one set of images, and returns a `Check`: the measured value, the
threshold (None for a report-only reading) and on which side of it a value passes (`pass_if`), PASS / WARN /
INFO / SKIP, and one sentence of meaning.

    probe = Probe(model, x, y, seed=0)             # memoises attack results shared between checks
    check_fgsm_pgd_gap(probe, eps)                 # FGSM − PGD-20 accuracy          WARN if > 0.3
    check_pgd_steps(probe, eps)                    # PGD at 1, 3, 10, 20, 50, 100 steps: must not rise
    check_pgd_eps(probe, eps)                      # PGD-20 up to ε = 1: must reach ≈ 0
    check_restarts(probe, eps)                     # PGD-50 with 10 restarts vs 1
    check_transfer(probe, surrogate, eps)          # black-box from a surrogate vs white-box PGD-20
    check_fgsm_direction_loss(probe, eps)          # CE along x + t·sign ∇ₓCE, t ∈ [0, ε]: must rise
    check_gradalign_cosine(probe, eps)             # cos(∇ₓCE(x), ∇ₓCE(x + η)), report only
    check_zero_gradients(probe)                    # share of all-zero input gradients  WARN if > 0.1
    diagnose(model, x, y, eps=...)                 # all of them: the JSON `advtrain diagnose` writes

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

All attacks are L∞ (§7.7 is about L∞ single-step AT). Nothing here changes the models' train/eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import (
    Keep,
    bn_policy,
    check_images,
    check_radius,
    default_step_size,
    fgsm_unchecked,
    gradient_cosine,
    input_gradient,
    pgd_unchecked,
    uniform_noise,
    zero_gradient_fraction,
)
from advtrain.eval.robustness import AttackResult, AttackSpec, evaluate_attacks
from advtrain.runtime import make_generator

PASS, WARN, INFO, SKIP = "PASS", "WARN", "INFO", "SKIP"

CHECK_NAMES = (
    "fgsm_pgd_gap",
    "pgd_steps",
    "pgd_eps",
    "restarts",
    "transfer",
    "fgsm_direction_loss",
    "gradalign_cosine",
    "zero_gradients",
)

FGSM_PGD_GAP = 0.3
PGD_STEPS = (1, 3, 10, 20, 50, 100)
STEPS_TOLERANCE = 0.02
EPS_FLOOR = 0.1
RESTARTS = 10
RESTART_STEPS = 50
RESTARTS_TOLERANCE = 0.05
TRANSFER_TOLERANCE = 0.02
FGSM_DIRECTION_POINTS = 11
FGSM_DIRECTION_RATIO = 0.95
ZERO_GRADIENT_SHARE = 0.1
WHITE_BOX_STEPS = 20


@dataclass(frozen=True)
class Check:
    """One diagnostic: the measured value against its threshold, the verdict and what it means."""

    name: str
    value: float | None  # None: undefined (e.g. no example with a non-zero gradient) or not measured
    threshold: float | None  # None: report only
    rule: str  # when it warns, e.g. "WARN if > 0.3"
    verdict: str  # PASS | WARN | INFO (report only) | SKIP (not measured)
    meaning: str  # one sentence
    details: dict[str, Any] = field(default_factory=dict)  # the curves and numbers behind the value
    pass_if: str | None = "<="  # how a passing value compares with the threshold: "<=" or ">="; None: no threshold

    @property
    def warns(self) -> bool:
        return self.verdict == WARN

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": _json_number(self.value), "threshold": _json_number(self.threshold),
                "pass_if": self.pass_if, "rule": self.rule, "verdict": self.verdict, "meaning": self.meaning,
                "details": _json_ready(self.details)}


class Probe:
    """The model and images under diagnosis, with a memo of attack results so checks share their attacks.

    Every attack runs through `evaluate` (eval mode, PGD seeded with `seed` + batch index, an example counts as
    broken as soon as any iterate fools the model), so equal specs give equal results across checks.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, *, seed: int = 0, batch_size: int = 256) -> None:
        if len(x) != len(y) or len(y) == 0:
            raise ValueError(f"need as many labels as images and at least one, got {len(x)} images, {len(y)} labels")
        self.model, self.x, self.y = model, x.detach(), y
        self.seed, self.batch_size = seed, batch_size
        self._results: dict[AttackSpec, AttackResult] = {}

    @property
    def n(self) -> int:
        return len(self.y)

    def result(self, spec: AttackSpec) -> AttackResult:
        if spec not in self._results:
            (self._results[spec],) = evaluate_attacks(self.model, self.x, self.y, [spec], batch_size=self.batch_size,
                                              seed=self.seed)
        return self._results[spec]

    def accuracy(self, spec: AttackSpec) -> float:
        """Correct count / n in double precision, so a difference of k examples is exactly k / n."""
        correct = self.result(spec).correct
        return int(correct.sum()) / len(correct)


# ------------------------------------------------------------------------------------------ attack specs


def pgd_spec(eps: float, steps: int = WHITE_BOX_STEPS, restarts: int = 1) -> AttackSpec:
    """L∞ PGD on CE, random start, step 2.5·ε/steps (the `advtrain eval` default)."""
    return AttackSpec("pgd", float(eps), "linf", steps, restarts, default_step_size(float(eps), steps))


def fgsm_spec(eps: float) -> AttackSpec:
    return AttackSpec("fgsm", float(eps), "linf", steps=1, step_size=float(eps))


def eps_schedule(eps: float) -> list[float]:
    """ε, 2ε, 4ε, ..., 32ε capped at 1, plus 0.5 and 1 (when above ε): sorted, without repeats, ending at 1."""
    values = {min(1.0, m * eps) for m in (1, 2, 4, 8, 16, 32)} | {v for v in (0.5, 1.0) if v > eps}
    out: list[float] = []
    for v in sorted(values):
        if not out or v - out[-1] > 1e-9:
            out.append(float(v))
    return out


# ------------------------------------------------------------------------------------------ measurements


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


def grey_baseline(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, int]:
    """(share of the labels equal to the model's class for a uniform grey 0.5 image, that class)."""
    with bn_policy(model, "eval"), torch.no_grad():
        predicted = int(model(torch.full_like(x[:1], 0.5)).argmax(1).item())
    return float((y == predicted).float().mean()), predicted


def clean_accuracy(probe: Probe) -> float:
    return probe.accuracy(AttackSpec("clean"))


# ------------------------------------------------------------------------------------------------ checks


def _check(name: str, value: float | None, threshold: float | None, rule: str, warn: bool, meaning: str,
           details: dict[str, Any], pass_if: str = "<=") -> Check:
    return Check(name, value, threshold, rule, WARN if warn else PASS, meaning, details, pass_if)


def check_fgsm_pgd_gap(probe: Probe, eps: float, *, threshold: float = FGSM_PGD_GAP) -> Check:
    """FGSM accuracy − PGD-20 accuracy at ε; WARN if above `threshold` (METHODS.md §7.7)."""
    fgsm_acc, pgd_acc = probe.accuracy(fgsm_spec(eps)), probe.accuracy(pgd_spec(eps))
    gap = fgsm_acc - pgd_acc
    warn = gap > threshold
    meaning = ("one signed-gradient step misses what PGD finds: the gradient at x is uninformative (masking)"
               if warn else "FGSM and PGD-20 agree within the allowed gap: the gradient at x points to the worst case")
    return _check("fgsm_pgd_gap", gap, threshold, f"WARN if > {threshold:g}", warn, meaning,
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
    return _check("pgd_steps", rise, tolerance, f"WARN if any later accuracy > an earlier one + {tolerance:g}",
                  warn, meaning, {"steps": steps, "accuracy": acc, "eps": eps})


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
    return _check("pgd_eps", acc[-1], threshold, f"WARN if accuracy at ε = {schedule[-1]:g} > max({floor:g}, "
                  "grey-image baseline)", warn, meaning,
                  {"eps": list(schedule), "accuracy": acc, "grey_baseline": baseline, "grey_class": grey_class,
                   "steps": WHITE_BOX_STEPS})


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
    return _check("restarts", drop, tolerance, f"WARN if PGD-{steps}-{restarts} accuracy < PGD-{steps}-1 − "
                  f"{tolerance:g}", warn, meaning,
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
    return _check("transfer", transfer, white - tolerance, rule, warn, meaning,
                  {"transfer_accuracy": transfer, "white_box_accuracy": white, "steps": WHITE_BOX_STEPS}, ">=")


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
    return _check("fgsm_direction_loss", ratio, threshold, f"WARN if (L(ε) − L(0)) / (max L − L(0)) < {threshold:g}",
                  warn, meaning, {"t": ts, "loss": losses}, ">=")


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
    return _check("zero_gradients", share, threshold, f"WARN if > {threshold:g}", warn, meaning, {})


# ---------------------------------------------------------------------------------------------- together


def diagnose(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    surrogate: nn.Module | None = None,
    seed: int = 0,
    batch_size: int = 256,
    steps: Sequence[int] = PGD_STEPS,
    restarts: int = RESTARTS,
    restart_steps: int = RESTART_STEPS,
    on_check: Callable[[Check], None] | None = None,
) -> dict[str, Any]:
    """Every check of METHODS.md §7.7 on the images x, y (on the model's device); the JSON-ready report:

    {"n", "eps", "norm", "seed", "clean_accuracy", "checks": {name: Check.as_dict()}, "warnings": [names that
    WARN]}. `steps` (the pgd_steps curve), `restarts` and `restart_steps` (PGD-50-10 vs PGD-50-1) can be cut
    down for a quick look. `on_check` is called as each check finishes (progress). The transfer check is SKIP
    without a surrogate.
    """
    check_radius(eps, "linf")  # diagnose checks the L∞ ball
    probe = Probe(model, x, y, seed=seed, batch_size=batch_size)
    runs: list[Callable[[], Check]] = [
        lambda: check_zero_gradients(probe),
        lambda: check_fgsm_pgd_gap(probe, eps),
        lambda: check_fgsm_direction_loss(probe, eps),
        lambda: check_gradalign_cosine(probe, eps),
        lambda: check_pgd_steps(probe, eps, steps=steps),
        lambda: check_pgd_eps(probe, eps),
        lambda: check_restarts(probe, eps, steps=restart_steps, restarts=restarts),
        lambda: check_transfer(probe, surrogate, eps),
    ]
    checks: dict[str, Check] = {}
    for run in runs:
        check = run()
        checks[check.name] = check
        if on_check is not None:
            on_check(check)
    ordered = {name: checks[name] for name in CHECK_NAMES}
    return {
        "n": probe.n, "eps": float(eps), "norm": "linf", "seed": seed, "clean_accuracy": clean_accuracy(probe),
        "checks": {name: c.as_dict() for name, c in ordered.items()},
        "warnings": [name for name, c in ordered.items() if c.warns],
    }


def _json_number(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _json_ready(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _json_ready(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_ready(x) for x in v]
    return _json_number(v)


__all__ = [
    "CHECK_NAMES",
    "INFO",
    "PASS",
    "SKIP",
    "WARN",
    "Check",
    "Probe",
    "check_fgsm_direction_loss",
    "check_fgsm_pgd_gap",
    "check_gradalign_cosine",
    "check_pgd_eps",
    "check_pgd_steps",
    "check_restarts",
    "check_transfer",
    "check_zero_gradients",
    "clean_accuracy",
    "diagnose",
    "eps_schedule",
    "fgsm_spec",
    "gradient_alignment",
    "grey_baseline",
    "loss_along_fgsm",
    "pgd_spec",
    "transfer_accuracy",
    "zero_gradient_share",
]
