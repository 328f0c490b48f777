"""How an evaluation names its attacks and budgets (`attack_label`, `fmt_eps`): in the JSON it writes (the
trade-off's "robust_label", `advtrain.eval.tradeoff`) and in every table and figure that shows it; and the
plain-text results table (`text_table` of `eval_rows`) that `advtrain eval` prints and `advtrain.evaluate`'s
result is."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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


def fmt_acc(x: object) -> str:
    """Format an accuracy fraction in [0, 1] as a percentage with two decimals: ``0.98333 -> "98.33"``."""
    if x is None:
        return MISSING
    if not is_number(x):
        return str(x)
    value = float(x)
    if math.isnan(value):
        return "NaN"
    return f"{100.0 * value:.2f}"


def fmt_float(x: object, digits: int = 4) -> str:
    """Format a generic number compactly (``digits`` significant digits); None becomes a dash."""
    if x is None:
        return MISSING
    if not is_number(x):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "NaN"
    return f"{x:.{digits}g}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render a fixed-width plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]]
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells but there are {len(headers)} headers")
        cells.append([fmt_float(c) if is_number(c) or c is None else str(c) for c in row])
    widths = [max(len(r[j]) for r in cells) for j in range(len(headers))]

    def line(r: list[str]) -> str:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out) + "\n"


def eval_rows(eval_json: Mapping[str, object]) -> list[tuple[str, str, str]]:
    """One ``(attack label, ε, accuracy %)`` row per entry of an eval.json ``results`` list."""
    results = eval_json.get("results") or []
    if not isinstance(results, Sequence):
        return []
    rows: list[tuple[str, str, str]] = []
    for r in results:
        if not isinstance(r, Mapping):
            continue
        rows.append((attack_label(r), fmt_eps(r.get("eps")), fmt_acc(r.get("accuracy"))))
    return rows
