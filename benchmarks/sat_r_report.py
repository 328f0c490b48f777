"""Tables of docs/experiments/single_step_regularizers.md from the run directories of sat_r_compare.sh.

    python benchmarks/sat_r_report.py OUT_DIR

Reads OUT_DIR/compare_{last,best}.json (runs labelled METHOD-sSEED) and each run's metrics.jsonl. Prints, per
checkpoint, mean ± std over seeds of clean, FGSM, PGD-50 (10 restarts) and AutoAttack accuracy and of the FGSM − PGD
gap, with how many seeds end below 10% AutoAttack; then the catastrophic-overfitting monitor's verdicts during
training and SAT-R3's hinge penalty per epoch (mean over seeds), the number the review asked to be logged.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from evidence_tables import accuracy, autoattack_label, by_method, mean_std, read

from advtrain.report.run_report import read_metrics
from advtrain.report.tables import markdown_table

ORDER = ["fgsm", "sat_r1", "sat_r2", "sat_r3", "sat_r3_per_sample", "fgsm_rs", "pgd_at"]
NAMES = {"fgsm": "FGSM-AT", "sat_r1": "SAT-R1", "sat_r2": "SAT-R2", "sat_r3": "SAT-R3",
         "sat_r3_per_sample": "SAT-R3, per-example hinge", "fgsm_rs": "FGSM-RS", "pgd_at": "PGD-AT"}
PENALTY_EPOCHS = (1, 2, 3, 4, 5, 6, 10, 15, 20, 25, 30)


def accuracy_table(compare: dict) -> str:
    aa = autoattack_label(compare)
    runs = by_method(compare)
    rows = []
    for method in ORDER:
        entries = [runs[method][s] for s in sorted(runs[method])]
        cols = {k: [accuracy(e, k) for e in entries] for k in ("clean", "fgsm", "pgd", "autoattack")}
        gap = [f - p for f, p in zip(cols["fgsm"], cols["pgd"], strict=True)]
        epochs = sorted(e["epoch"] for e in entries)
        rows.append([NAMES[method], ", ".join(map(str, epochs)), *(mean_std(cols[k]) for k in cols), mean_std(gap),
                     f"{sum(a < 10 for a in cols['autoattack'])} of {len(entries)}"])
    return markdown_table(["method", "epochs", "clean %", "FGSM %", "PGD-50-10 %", f"{aa} %", "FGSM − PGD (points)",
                     "seeds < 10% AA"], rows)


def monitor_table(out: Path, seeds: list[int]) -> str:
    rows = []
    for method in ORDER:
        cells = []
        for seed in seeds:
            epochs = read_metrics(out / f"{method}-s{seed}")
            flagged = [e["epoch"] for e in epochs if e.get("co_collapse")]
            cells.append(f"epochs {', '.join(map(str, flagged))}" if flagged else "never")
        largest = max(e.get("co_gap", 0.0) for seed in seeds for e in read_metrics(out / f"{method}-s{seed}"))
        rows.append([NAMES[method], *cells, f"{largest:.3f}"])
    return markdown_table(["method", *(f"seed {s}: collapse flagged" for s in seeds), "largest val FGSM − PGD gap"],
                          rows)


def penalty_table(out: Path, seeds: list[int]) -> str:
    rows = []
    for method in ("sat_r3", "sat_r3_per_sample"):
        by_epoch = {e["epoch"]: [] for e in read_metrics(out / f"{method}-s{seeds[0]}")}
        for seed in seeds:
            for e in read_metrics(out / f"{method}-s{seed}"):
                by_epoch[e["epoch"]].append(e["train_penalty"])
        zero = [sum(p == 0 for p in by_epoch[ep]) for ep in sorted(by_epoch)]
        rows.append([NAMES[method], *(f"{statistics.mean(by_epoch[ep]):.4f}" for ep in PENALTY_EPOCHS),
                     f"{sum(z == len(seeds) for z in zero)} of {len(zero)}"])
    return markdown_table(["method", *(f"epoch {ep}" for ep in PENALTY_EPOCHS),
                           "epochs with penalty 0 on every seed"], rows)


def main() -> None:
    out = Path(sys.argv[1])
    seeds: list[int] = []
    for which in ("last", "best"):
        compare = read(out / f"compare_{which}.json")
        seeds = sorted(by_method(compare)["pgd_at"])
        print(f"\n### {which} checkpoint, {compare['n']} test images\n")
        print(accuracy_table(compare))
    print("\n### Catastrophic-overfitting monitor during training (validation FGSM vs PGD)\n")
    print(monitor_table(out, seeds))
    print("\n### SAT-R3's hinge penalty max(0, L_lo − τ·L_hi), epoch mean of the training steps, mean over seeds\n")
    print(penalty_table(out, seeds))


if __name__ == "__main__":
    main()
