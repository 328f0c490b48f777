"""The 3-seed dispersion table of docs/experiments/iseat.md from the runs of benchmarks/iseat_seeds.sh.

    python benchmarks/iseat_seeds_report.py OUT_DIR

Runs are OUT_DIR/{pgd_at,iseat}-sSEED. For each: best-checkpoint clean and PGD-20 accuracy (eval.json) and the
per-example vulnerability AV = CE(x') − CE(x) of the 500 tracked training images at the reading before ISEAT's
λ switches on (the last reading at or before epoch 20, the LR decay) and at the last one (epoch 40): mean, std,
Gini; then mean ± std over seeds and ISEAT − PGD-AT per seed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from evidence_tables import mean_std

from advtrain.eval.vulnerability import vulnerability_history
from advtrain.report.tables import markdown_table

METHODS = ("pgd_at", "iseat")
NAMES = {"pgd_at": "PGD-AT", "iseat": "ISEAT"}
SWITCH = 20  # ISEAT's λ goes from 0 to 0.1 with the first LR decay


def run_row(run: Path) -> dict[str, float]:
    results = {r["attack"]: 100 * r["accuracy"] for r in json.loads((run / "eval.json").read_text())["results"]}
    history = vulnerability_history(run)
    before = max(e for e in history["epochs"] if e <= SWITCH)
    before, last = history["stats"][before], history["stats"][history["epochs"][-1]]
    return {"clean": results["clean"], "pgd": results["pgd"], "mean": last["mean"], "std_before": before["std"],
            "std": last["std"], "gini": last["gini"]}


def main(out: Path) -> None:
    seeds = sorted(int(p.name.rsplit("-s", 1)[1]) for p in out.glob("pgd_at-s*"))
    table = {m: {s: run_row(out / f"{m}-s{s}") for s in seeds} for m in METHODS}
    keys = ("clean", "pgd", "mean", "std_before", "std", "gini")
    digits = {"clean": 1, "pgd": 1}
    rows = [[NAMES[m], *(mean_std((table[m][s][k] for s in seeds), digits.get(k, 3)) for k in keys)]
            for m in METHODS]
    print(markdown_table(["method", "best clean %", "best PGD-20 %", "AV mean (epoch 40)",
                    f"AV std (last reading ≤ epoch {SWITCH})", "AV std (epoch 40)", "AV Gini (epoch 40)"], rows))
    print("\nISEAT minus PGD-AT on the same seed:\n")
    paired = [[k, *(f"{table['iseat'][s][k] - table['pgd_at'][s][k]:+.3f}" for s in seeds)]
              for k in ("std_before", "std", "gini", "mean")]
    print(markdown_table(["quantity", *(f"seed {s}" for s in seeds)], paired))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
