"""All gradient-masking checks on one set of images: the JSON report `advtrain diagnose` writes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from advtrain.attacks import check_radius
from advtrain.eval.diagnose.attack_checks import (
    PGD_STEPS,
    RESTART_STEPS,
    RESTARTS,
    check_fgsm_pgd_gap,
    check_pgd_eps,
    check_pgd_steps,
    check_restarts,
    check_transfer,
)
from advtrain.eval.diagnose.gradient_checks import (
    check_fgsm_direction_loss,
    check_gradalign_cosine,
    check_zero_gradients,
)
from advtrain.eval.diagnose.probe import Check, Probe, clean_accuracy

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
    """Every check of docs/methods.md §7.7 on the images x, y (on the model's device); the JSON-ready report:

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
