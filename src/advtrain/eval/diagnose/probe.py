"""What the gradient-masking checks share: the `Check` they return, the `Probe` that memoises their attacks, the
verdicts and the attack specs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from advtrain.attacks import default_step_size
from advtrain.eval.robustness import AttackResult, AttackSpec, evaluate_attacks

PASS, WARN, INFO, SKIP = "PASS", "WARN", "INFO", "SKIP"

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
    """L∞ PGD on CE, random start, step 2.5·ε/steps (the `advtrain eval` default), at most 1: a step is in [0, 1]
    pixel units, and for ε ≤ 0.5 any sign step ≥ 2ε lands on the same corner of the ε-ball once projected, so
    capping 2.5·ε (PGD-1 above ε = 0.4) at 1 changes no result there."""
    return AttackSpec("pgd", float(eps), "linf", steps, restarts, min(default_step_size(float(eps), steps), 1.0))


def fgsm_spec(eps: float) -> AttackSpec:
    return AttackSpec("fgsm", float(eps), "linf", steps=1, step_size=float(eps))


def clean_accuracy(probe: Probe) -> float:
    return probe.accuracy(AttackSpec("clean"))


def threshold_check(name: str, value: float | None, threshold: float | None, rule: str, warn: bool, meaning: str,
                    details: dict[str, Any], pass_if: str = "<=") -> Check:
    """A check with a threshold: WARN when `warn`, else PASS."""
    return Check(name, value, threshold, rule, WARN if warn else PASS, meaning, details, pass_if)


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
