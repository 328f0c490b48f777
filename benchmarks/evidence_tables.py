"""Shared pieces of the multi-seed experiment reports (arat_report.py, sat_r_report.py, igd_digits_report.py,
iseat_seeds_report.py): reading `advtrain eval --compare` JSON whose runs are labelled METHOD-sSEED, and mean ± std
cells. Tables are `advtrain.report.tables.markdown_table`, run metrics `advtrain.report.run_report.read_metrics`."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def accuracy(entry: Mapping[str, Any], attack: str) -> float:
    """Percent accuracy of one model's `attack` row in a comparison (attack as the JSON names it)."""
    (row,) = [r for r in entry["results"] if r["attack"] == attack]
    return 100 * row["accuracy"]


def autoattack_label(compare: Mapping[str, Any]) -> str:
    """'AutoAttack' (standard) or 'AutoAttack (apgd preset)', as the comparison ran it."""
    (version,) = {r.get("version") for e in compare["models"].values() for r in e["results"]
                  if r["attack"] == "autoattack"}
    return "AutoAttack" if version == "standard" else "AutoAttack (apgd preset)"


def method_seed(label: str) -> tuple[str, int]:
    method, seed = label.rsplit("-s", 1)
    return method, int(seed)


def by_method(compare: Mapping[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    """method → seed → the comparison's entry for that run."""
    table: dict[str, dict[int, dict[str, Any]]] = {}
    for label, entry in compare["models"].items():
        method, seed = method_seed(label)
        table.setdefault(method, {})[seed] = entry
    return table


def mean_std(values: Iterable[float], digits: int = 1) -> str:
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"
