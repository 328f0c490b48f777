"""The robustness–accuracy trade-off score of one or more evaluations, as AR-AT scores it: clean +
AutoAttack accuracy (the paper's "sum"), or clean + the strongest attack run, flagged as not being the sum."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from advtrain.eval.labels import attack_label, attack_name, fmt_eps, is_number


def _accuracy(result: Mapping[str, object]) -> float | None:
    value = result.get("accuracy")
    return float(value) if is_number(value) and math.isfinite(value) else None


def tradeoff_scores(evals: Mapping[str, Mapping[str, object]]) -> dict[str, Any] | None:
    """The robustness–accuracy trade-off of one or more evaluations (docs/methods.md §6, §7.6); JSON-ready.

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
            attack = attack_name(r.get("attack", "?"))
            if attack == "clean":
                clean = acc if clean is None else clean
                continue
            eps = r.get("eps")
            if not is_number(eps):
                continue
            key = (attack_label(r), float(eps))
            robust.setdefault(key, acc)
            if key not in kinds:
                order.append(key)
                kinds[key] = (attack, attack_name(r.get("version") or ""))
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
