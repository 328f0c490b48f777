"""Tables and the trade-off figure of docs/experiments/arat.md from the two comparisons of arat_eval.sh.

    python benchmarks/arat_report.py OUT_DIR FIGURE_DIR

Reads OUT_DIR/compare_{last,best}.json (runs labelled METHOD-sSEED), prints one markdown table per checkpoint
(mean ± std over seeds of clean, PGD-20, AutoAttack (standard, or the apgd preset as labelled), the sum
clean + AutoAttack and the mean cosine of the penultimate features of x and x'), the paired per-seed
differences of the sum against PGD-AT, and writes FIGURE_DIR/tradeoff_{last,best}.png (clean vs AutoAttack:
each seed and each method's mean).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from evidence_tables import accuracy, autoattack_label, by_method, mean_std, read

from advtrain.report.tables import markdown_table

ORDER = ["pgd_at", "trades", "arat", "arat_official_noise"]
NAMES = {"pgd_at": "PGD-AT", "trades": "TRADES", "arat": "AR-AT (noise within ε)",
         "arat_official_noise": "AR-AT, official noise (x' up to 2ε from x)"}


def per_run(compare: dict) -> dict[str, dict[int, dict[str, float]]]:
    """method → seed → {clean, pgd, aa, sum, cos, epoch}."""
    cosines = compare["invariance"]["models"]
    table: dict[str, dict[int, dict[str, float]]] = {}
    for method, seeds in by_method(compare).items():
        for seed, entry in seeds.items():
            clean, aa = accuracy(entry, "clean"), accuracy(entry, "autoattack")
            table.setdefault(method, {})[seed] = {
                "clean": clean, "pgd": accuracy(entry, "pgd"), "aa": aa, "sum": clean + aa,
                "cos": cosines[f"{method}-s{seed}"]["mean"], "epoch": entry["epoch"],
            }
    return table


def tables(table: dict[str, dict[int, dict[str, float]]], aa: str) -> str:
    rows = []
    for method in ORDER:
        seeds = table[method].values()
        rows.append([NAMES[method], *(mean_std(s[k] for s in seeds) for k in ("clean", "pgd", "aa", "sum")),
                     mean_std((s["cos"] for s in seeds), 3)])
    main = markdown_table(["method", "clean %", "PGD-20 %", f"{aa} %", "sum (clean + AA)", "feature cos"], rows)
    seeds = sorted(table["pgd_at"])
    paired = []
    for method in ORDER[1:]:
        diffs = [table[method][s]["sum"] - table["pgd_at"][s]["sum"] for s in seeds]
        paired.append([NAMES[method], *(f"{d:+.1f}" for d in diffs), f"{statistics.mean(diffs):+.1f}"])
    return (main + "\nSum minus PGD-AT's sum on the same seed (paired), per seed:\n\n"
            + markdown_table(["method", *(f"seed {s}" for s in seeds), "mean"], paired))


def figure(table: dict[str, dict[int, dict[str, float]]], path: Path, title: str, aa: str) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, method in zip(colours, ORDER, strict=False):
        seeds = list(table[method].values())
        ax.scatter([s["clean"] for s in seeds], [s["aa"] for s in seeds], color=colour, alpha=0.35, s=18)
        ax.scatter(statistics.mean(s["clean"] for s in seeds), statistics.mean(s["aa"] for s in seeds),
                   color=colour, s=70, marker="D", edgecolor="black", label=NAMES[method])
    lo, hi = ax.get_xlim()
    for total in range(140, 185, 5):  # iso-sum lines: clean + AA = constant
        ax.plot([lo, hi], [total - lo, total - hi], ls="--", lw=0.6, color="grey")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("clean accuracy %")
    ax.set_ylabel(f"{aa} accuracy % (ε = 0.2)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    out, figures = Path(sys.argv[1]), Path(sys.argv[2])
    figures.mkdir(parents=True, exist_ok=True)
    for which in ("last", "best"):
        compare = read(out / f"compare_{which}.json")
        table, aa = per_run(compare), autoattack_label(compare)
        epochs = sorted({s["epoch"] for m in table.values() for s in m.values()})
        print(f"\n### {which} checkpoint (epochs {epochs[0]}–{epochs[-1]})\n" if len(epochs) > 1
              else f"\n### {which} checkpoint (epoch {epochs[0]})\n")
        print(tables(table, aa))
        figure(table, figures / f"tradeoff_{which}.png", f"digits, {which} checkpoint, 3 seeds (diamond: mean)", aa)


if __name__ == "__main__":
    main()
