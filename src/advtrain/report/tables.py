"""Plain tables for reports: GitHub markdown and fixed-width terminal text.

Cells are formatted here so that every report renders numbers the same way: accuracies as percentages
with two decimals, perturbation budgets as ``k/255`` when they are one, and missing values as a dash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

MISSING = "–"

# The AutoAttack preset that runs only the two APGD attacks (advtrain.attacks.autoattack).
_APGD_ONLY_VERSION = "apgd"


def _is_number(x: object) -> TypeGuard[int | float]:
    return isinstance(x, int | float) and not isinstance(x, bool)


def fmt_acc(x: object) -> str:
    """Format an accuracy fraction in [0, 1] as a percentage with two decimals: ``0.98333 -> "98.33"``."""
    if x is None:
        return MISSING
    if not _is_number(x):
        return str(x)
    value = float(x)
    if math.isnan(value):
        return "NaN"
    return f"{100.0 * value:.2f}"


def fmt_float(x: object, digits: int = 4) -> str:
    """Format a generic number compactly (``digits`` significant digits); None becomes a dash."""
    if x is None:
        return MISSING
    if not _is_number(x):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "NaN"
    return f"{x:.{digits}g}"


def fmt_eps(eps: object) -> str:
    """Format a perturbation budget: ``8/255`` when it is k/255 for an integer k, else a short decimal.

    Budgets that are already short decimals (0.1, 0.2, 0.3, 0.5, ...) stay decimals even when they happen
    to equal k/255 (0.2 == 51/255), because that is how such budgets are written for MNIST-like data.
    """
    if eps is None:
        return MISSING
    if not _is_number(eps):
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


def _cell(x: object) -> str:
    text = fmt_float(x) if _is_number(x) or x is None else str(x)
    return text.replace("\r", " ").replace("\n", " ").replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render a GitHub markdown table; strings are used as given, numbers via `fmt_float`, None as a dash.

    Raises ValueError when a row does not have one cell per header.
    """
    if not headers:
        raise ValueError("markdown_table needs at least one header")
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells but there are {len(headers)} headers")
    lines = [
        "| " + " | ".join(_cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render a fixed-width plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]]
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells but there are {len(headers)} headers")
        cells.append([fmt_float(c) if _is_number(c) or c is None else str(c) for c in row])
    widths = [max(len(r[j]) for r in cells) for j in range(len(headers))]

    def line(r: list[str]) -> str:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out) + "\n"


def _norm_name(name: object) -> str:
    return str(name).strip().lower().replace("_", "-").replace(" ", "-")


def attack_label(result: Mapping[str, object]) -> str:
    """A human-readable label for one eval.json result, e.g. ``PGD-20 ×1 (step 0.0250)``."""
    raw = result.get("attack", "?")
    name = _norm_name(raw)
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
        if _is_number(step_size):
            label += f" (step {float(step_size):.4f})"
        return label
    if name == "cw":
        return f"CW-PGD-{steps}" if steps is not None else "CW-PGD"
    if name == "autoattack":
        version = result.get("version")
        if version is None:
            return "AutoAttack"
        if _norm_name(version) == _APGD_ONLY_VERSION:
            return f"AutoAttack ({version}: APGD-CE + APGD-T only)"
        return f"AutoAttack ({version})"
    return str(raw)


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


def _comparison_grid(
    evals: Mapping[str, Mapping[str, object]], tradeoff: bool = False
) -> tuple[list[str], list[list[str]]]:
    columns: list[str] = []
    per_run: list[tuple[str, dict[str, str]]] = []
    for run_name, ev in evals.items():
        values: dict[str, str] = {}
        for label, eps, acc in eval_rows(ev):
            key = label if label == "clean" else f"{label} @ {eps}"
            if key in values:  # the same attack twice in one file: keep the first
                continue
            values[key] = acc
            if key not in columns:
                columns.append(key)
        per_run.append((str(run_name), values))
    rows = [[name] + [values.get(c, MISSING) for c in columns] for name, values in per_run]
    scores = tradeoff_scores(evals) if tradeoff else None
    if scores is not None:
        columns.append(scores["score_name"])
        points = scores["points"]
        for row, (name, _) in zip(rows, per_run, strict=True):
            row.append(fmt_acc(points[name]["score"]) if name in points else MISSING)
    return ["model", *columns], rows


def comparison_table(evals: Mapping[str, Mapping[str, object]], *, tradeoff: bool = False) -> str:
    """Several runs' eval.json side by side as markdown: one row per run, one column per attack@ε (%).

    With `tradeoff`, a last column holds the trade-off score of `tradeoff_scores` (the "sum" = clean + AutoAttack
    when AutoAttack ran; otherwise clean + the strongest attack, labelled as not being the sum).
    """
    headers, rows = _comparison_grid(evals, tradeoff)
    return markdown_table(headers, rows)


def comparison_text(evals: Mapping[str, Mapping[str, object]], *, tradeoff: bool = False) -> str:
    """The same comparison as `comparison_table`, as fixed-width text for a terminal."""
    headers, rows = _comparison_grid(evals, tradeoff)
    return text_table(headers, rows)


# --------------------------------------------------------------------------- robustness–accuracy trade-off


def _accuracy(result: Mapping[str, object]) -> float | None:
    value = result.get("accuracy")
    return float(value) if _is_number(value) and math.isfinite(value) else None


def tradeoff_scores(evals: Mapping[str, Mapping[str, object]]) -> dict[str, Any] | None:
    """The robustness–accuracy trade-off of one or more evaluations (METHODS.md §6, §7.6); JSON-ready.

    `evals` is {label: an eval.json, or any mapping with its "results" list}. Clean accuracy is the `clean`
    result. The robust accuracy is taken at the first ε the results list (the eval's first `--eps`), from:

    1. AutoAttack there (the `standard` version before the `apgd` preset): then the score is the paper's
       "sum" = clean + AA accuracy, and "autoattack" is True;
    2. else the strongest other attack there (the lowest mean accuracy over the runs), and the score is
       clean + that accuracy, named as such and flagged "autoattack": False: it is *not* the AA sum.

    An attack is one `attack_label` at one ε; the one chosen is the one present in the most runs. Returns
    {"attack": its label, "eps", "autoattack", "robust_label": "<label> @ <ε>", "score_name",
     "points": {label: {"clean", "robust", "score"}}} (fractions, e.g. score 1.2534 is 125.34 points) for the
    runs that have both accuracies, or None when no run has a clean and a robust accuracy.
    """
    runs: dict[str, tuple[float, dict[tuple[str, float], float]]] = {}
    order: list[tuple[str, float]] = []
    kinds: dict[tuple[str, float], tuple[str, str]] = {}  # key → (attack, version)
    for name, ev in evals.items():
        results = ev.get("results") or []
        if not isinstance(results, Sequence):
            continue
        clean: float | None = None
        robust: dict[tuple[str, float], float] = {}
        for r in results:
            if not isinstance(r, Mapping) or (acc := _accuracy(r)) is None:
                continue
            attack = _norm_name(r.get("attack", "?"))
            if attack == "clean":
                clean = acc if clean is None else clean
                continue
            eps = r.get("eps")
            if not _is_number(eps):
                continue
            key = (attack_label(r), float(eps))
            robust.setdefault(key, acc)
            if key not in kinds:
                order.append(key)
                kinds[key] = (attack, _norm_name(r.get("version") or ""))
        if clean is not None and robust:
            runs[str(name)] = (clean, robust)
    keys = [k for k in order if any(k in robust for _, robust in runs.values())]
    if not keys:
        return None
    eps = keys[0][1]
    at_eps = [k for k in keys if k[1] == eps]

    def coverage(key: tuple[str, float]) -> int:
        return sum(key in robust for _, robust in runs.values())

    def mean_accuracy(key: tuple[str, float]) -> float:
        values = [robust[key] for _, robust in runs.values() if key in robust]
        return sum(values) / len(values)

    aa = [k for k in at_eps if kinds[k][0] == "autoattack"]
    if aa:
        rank = {k: (-coverage(k), kinds[k][1] != "standard", i) for i, k in enumerate(aa)}
        chosen = min(aa, key=rank.__getitem__)
    else:
        rank = {k: (-coverage(k), mean_accuracy(k), i) for i, k in enumerate(at_eps)}
        chosen = min(at_eps, key=rank.__getitem__)
    label = chosen[0]
    robust_label = f"{label} @ {fmt_eps(eps)}"
    autoattack = bool(aa)
    score_name = (f"sum = clean + {robust_label}" if autoattack
                  else f"clean + {robust_label} (no AutoAttack: not the sum)")
    points = {
        name: {"clean": clean, "robust": robust[chosen], "score": clean + robust[chosen]}
        for name, (clean, robust) in runs.items() if chosen in robust
    }
    return {"attack": label, "eps": eps, "autoattack": autoattack, "robust_label": robust_label,
            "score_name": score_name, "points": points}


def tradeoff_line(ev: Mapping[str, object]) -> str | None:
    """One sentence stating the trade-off score of one evaluation (see `tradeoff_scores`), or None without a
    clean and a robust accuracy; e.g. ``trade-off (METHODS.md §7.6): sum = clean + AutoAttack (standard) @ 8/255
    = 81.23 + 44.11 = 125.34``. Without AutoAttack it says that there is no AA sum."""
    scores = tradeoff_scores({"model": ev})
    if scores is None:
        return None
    (point,) = scores["points"].values()
    numbers = f"{fmt_acc(point['clean'])} + {fmt_acc(point['robust'])} = {fmt_acc(point['score'])}"
    if scores["autoattack"]:
        return f"trade-off (METHODS.md §7.6): sum = clean + {scores['robust_label']} = {numbers}"
    return (f"trade-off (METHODS.md §7.6): AutoAttack was not run, so there is no clean + AA sum; "
            f"clean + {scores['robust_label']} = {numbers}")
