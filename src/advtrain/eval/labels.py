"""How an evaluation names its attacks and budgets (`attack_label`, `fmt_eps`): in the JSON it writes (the
trade-off's "robust_label", `advtrain.eval.tradeoff`) and in every table and figure that shows it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeGuard

MISSING = "–"  # a missing value, in labels and tables

# The AutoAttack preset that runs only the two APGD attacks (advtrain.attacks.reference_autoattack).
_APGD_ONLY_VERSION = "apgd"


def is_number(x: object) -> TypeGuard[int | float]:
    return isinstance(x, int | float) and not isinstance(x, bool)


def fmt_eps(eps: object) -> str:
    """Format a perturbation budget: ``8/255`` when it is k/255 for an integer k, else a short decimal.

    Budgets that are already short decimals (0.1, 0.2, 0.3, 0.5, ...) stay decimals even when they happen
    to equal k/255 (0.2 == 51/255), because that is how such budgets are written for MNIST-like data.
    """
    if eps is None:
        return MISSING
    if not is_number(eps):
        return str(eps)
    value = float(eps)
    if math.isnan(value):
        return "NaN"
    if value == 0:
        return "0"
    if abs(value - round(value, 3)) <= 1e-12:
        return f"{value:.3f}".rstrip("0").rstrip(".")
    k = round(value * 255)
    if k != 0 and abs(value - k / 255) <= 1e-9:
        return f"{k}/255"
    return f"{value:.4g}"


def attack_name(name: object) -> str:
    """An attack or version name as eval.json results are compared: lower case, "-" for "_" and spaces."""
    return str(name).strip().lower().replace("_", "-").replace(" ", "-")


def attack_label(result: Mapping[str, object]) -> str:
    """A human-readable label for one eval.json result, e.g. ``PGD-20 ×1 (step 0.0250)``."""
    raw = result.get("attack", "?")
    name = attack_name(raw)
    steps = result.get("steps")
    if name == "clean":
        return "clean"
    if name == "fgsm":
        return "FGSM"
    if name in ("pgd", "ifgsm"):
        prefix = "PGD" if name == "pgd" else "I-FGSM"  # I-FGSM: PGD from x, without a random start
        label = f"{prefix}-{steps}" if steps is not None else prefix
        restarts = result.get("restarts")
        if restarts is not None:
            label += f" ×{restarts}"
        step_size = result.get("step_size")
        if is_number(step_size):
            label += f" (step {float(step_size):.4f})"
        return label
    if name == "cw":
        return f"CW-PGD-{steps}" if steps is not None else "CW-PGD"
    if name == "autoattack":
        version = result.get("version")
        if version is None:
            return "AutoAttack"
        if attack_name(version) == _APGD_ONLY_VERSION:
            return f"AutoAttack ({version}: APGD-CE + APGD-T only)"
        return f"AutoAttack ({version})"
    return str(raw)
