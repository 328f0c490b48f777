"""Markdown tables for docs/experiments/igd.md from the two JSON files `benchmarks/igd_compare.sh` writes.

    python benchmarks/igd_tables.py OUT_DIR/compare.json OUT_DIR/compare_apgd.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean

from advtrain.report.tables import fmt_acc, markdown_table


def accuracy(entry: dict, attack: str) -> float | None:
    return next((r["accuracy"] for r in entry["results"] if r["attack"] == attack), None)


def main(compare_path: str, apgd_path: str) -> None:
    compare, apgd = json.loads(Path(compare_path).read_text()), json.loads(Path(apgd_path).read_text())
    inequality = compare["inequality"]
    labels = list(compare["models"])
    print(f"Test images: {compare['n']} (robustness, Gini, corruptions); AutoAttack on the first {apgd['n']}; "
          f"commonly correct: {inequality['n_common_correct']} (noise and occlusion).\n")
    rows = []
    for label in labels:
        g = inequality["gini"][label]
        rows.append([label, fmt_acc(accuracy(compare["models"][label], "clean")),
                     fmt_acc(accuracy(compare["models"][label], "pgd")),
                     fmt_acc(accuracy(apgd["models"][label], "autoattack")),
                     *(f"{g[k]:.3f}" for k in ("global_all", "global_correct", "regional_duan_all",
                                               "regional_igd_all"))])
    print(markdown_table(["model", "clean %", "PGD-20 %", "AA (apgd-ce + apgd-t) %", "Gini global (all)",
                          "Gini global (correct)", "Gini regional Duan 4×4 (all)", "Gini regional IGD 16×16 (all)"],
                         rows))
    print()
    rhos_inductive, rhos_random = ("0.002", "0.01", "0.02"), ("0.02", "0.1", "0.2")
    rows = []
    for label in labels:
        ina, rn = inequality["inductive_noise"][label], inequality["random_noise"][label]
        occlusion = inequality["inductive_occlusion"][label]
        rows.append([label, *(fmt_acc(ina["add"][r]) for r in rhos_inductive),
                     *(fmt_acc(ina["replace"][r]) for r in rhos_inductive),
                     *(fmt_acc(rn["add"][r]) for r in rhos_random), *(fmt_acc(v) for v in occlusion.values())])
    colours = list(inequality["inductive_occlusion"][labels[0]])
    print(markdown_table(["model", *(f"INA add ρ={100 * float(r):g}%" for r in rhos_inductive),
                          *(f"INA replace ρ={100 * float(r):g}%" for r in rhos_inductive),
                          *(f"RN add ρ={100 * float(r):g}%" for r in rhos_random),
                          *(f"occlusion {c}" for c in colours)], rows))
    print()
    first = inequality["corruptions"][labels[0]]
    names = [n for n, table in first.items() if isinstance(table, dict)]
    rows = [[label, *(fmt_acc(mean(inequality["corruptions"][label][n].values())) for n in names),
             *(fmt_acc(inequality["corruptions"][label][n]["5"]) for n in names)] for label in labels]
    print(markdown_table(["model", *(f"{n} (mean 1–5)" for n in names), *(f"{n} (s=5)" for n in names)], rows))


if __name__ == "__main__":
    main(*sys.argv[1:3])
