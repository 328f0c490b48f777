"""Tables and the trade-off figure of docs/experiments/arat.md from the two comparisons of arat_eval.sh.

    python benchmarks/arat_report.py OUT_DIR FIGURE_DIR

Reads OUT_DIR/compare_{last,best}.json (runs labelled METHOD-sSEED), prints one markdown table per checkpoint
(mean ± std over seeds of clean, PGD-20, AutoAttack (standard, or the apgd preset as labelled), the sum
clean + AutoAttack and the mean cosine of the penultimate features of x and x'), the paired per-seed
differences of the sum against PGD-AT, and writes FIGURE_DIR/tradeoff_{last,best}.png (clean vs AutoAttack:
each seed and each method's mean).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ORDER = ["pgd_at", "trades", "arat", "arat_symmetric", "arat_no_predictor", "arat_shared_bn"]
NAMES = {"pgd_at": "PGD-AT", "trades": "TRADES", "arat": "AR-AT", "arat_symmetric": "AR-AT, no stop-gradient",
         "arat_no_predictor": "AR-AT, no predictor", "arat_shared_bn": "AR-AT, shared BN"}


def accuracy(results: list[dict], attack: str) -> float:
    (row,) = [r for r in results if r["attack"] == attack]
    return 100 * row["accuracy"]


def autoattack_version(compare: dict) -> str:
    """'standard' or 'apgd' (APGD-CE + APGD-T), as the comparison ran it."""
    (version,) = {r.get("version") for e in compare["models"].values() for r in e["results"]
                  if r["attack"] == "autoattack"}
    return version


def per_run(compare: dict) -> dict[str, dict[int, dict[str, float]]]:
    """method → seed → {clean, pgd, aa, sum, cos}."""
    table: dict[str, dict[int, dict[str, float]]] = {}
    for label, entry in compare["models"].items():
        method, seed = label.rsplit("-s", 1)
        res = entry["results"]
        clean, aa = accuracy(res, "clean"), accuracy(res, "autoattack")
        table.setdefault(method, {})[int(seed)] = {
            "clean": clean, "pgd": accuracy(res, "pgd"), "aa": aa, "sum": clean + aa,
            "cos": compare["invariance"]["models"][label]["mean"], "epoch": entry["epoch"],
        }
    return table


def mean_std(values: list[float], digits: int = 1) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def markdown(table: dict[str, dict[int, dict[str, float]]], aa: str) -> str:
    lines = [f"| method | clean % | PGD-20 % | {aa} % | sum (clean + AA) | feature cos |",
             "|---|---:|---:|---:|---:|---:|"]
    for method in ORDER:
        seeds = table[method].values()
        cols = [mean_std([s[k] for s in seeds]) for k in ("clean", "pgd", "aa", "sum")]
        lines.append(f"| {NAMES[method]} | {' | '.join(cols)} | {mean_std([s['cos'] for s in seeds], 3)} |")
    lines += ["", "Sum minus PGD-AT's sum on the same seed (paired), per seed:", "",
              "| method | " + " | ".join(f"seed {s}" for s in sorted(table["pgd_at"])) + " | mean |",
              "|---|" + "---:|" * (len(table["pgd_at"]) + 1)]
    for method in ORDER[1:]:
        diffs = [table[method][s]["sum"] - table["pgd_at"][s]["sum"] for s in sorted(table["pgd_at"])]
        lines.append(f"| {NAMES[method]} | " + " | ".join(f"{d:+.1f}" for d in diffs)
                     + f" | {statistics.mean(diffs):+.1f} |")
    return "\n".join(lines)


def figure(table: dict[str, dict[int, dict[str, float]]], path: Path, title: str, aa: str) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, method in zip(colours, ORDER, strict=False):
        seeds = list(table[method].values())
        ax.scatter([s["clean"] for s in seeds], [s["aa"] for s in seeds], color=colour, alpha=0.35, s=18)
        ax.scatter(statistics.mean(s["clean"] for s in seeds), statistics.mean(s["aa"] for s in seeds),
                   color=colour, s=70, marker="D", edgecolor="black", label=NAMES[method])
    lo, hi = ax.get_xlim()
    for total in range(150, 180, 5):  # iso-sum lines: clean + AA = constant
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
        compare = json.loads((out / f"compare_{which}.json").read_text())
        table = per_run(compare)
        aa = "AutoAttack" if autoattack_version(compare) == "standard" else "AutoAttack (apgd preset)"
        epochs = sorted({s["epoch"] for m in table.values() for s in m.values()})
        print(f"\n### {which} checkpoint (epochs {epochs[0]}–{epochs[-1]})\n" if len(epochs) > 1
              else f"\n### {which} checkpoint (epoch {epochs[0]})\n")
        print(markdown(table, aa))
        figure(table, figures / f"tradeoff_{which}.png", f"digits, {which} checkpoint, 3 seeds (diamond: mean)", aa)


if __name__ == "__main__":
    main()
