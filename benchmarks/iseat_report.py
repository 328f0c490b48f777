"""Tables and figures of docs/experiments/iseat.md from the runs `benchmarks/iseat_compare.sh` writes.

    python benchmarks/iseat_report.py OUT_DIR pgd_at awp trades iseat
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from advtrain.report.figures import save_figure
from advtrain.report.tables import fmt_acc, markdown_table
from advtrain.report.vulnerability_figures import (
    av_histograms,
    dispersion_curves,
    read_training_vulnerability,
    sacrificed_curves,
    vulnerability_history,
)


def accuracies(path: Path) -> dict[str, float]:
    return {r["attack"]: r["accuracy"] for r in json.loads(path.read_text())["results"]}


def main(out: Path, methods: list[str]) -> None:
    rows, histories = [], {}
    for m in methods:
        run = out / m
        best, last = accuracies(run / "eval.json"), accuracies(run / "eval_last.json")
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        best_epoch = json.loads((run / "checkpoints" / "best.json").read_text())["epoch"]
        peak = max(metrics, key=lambda r: r["val_pgd_acc"])
        histories[m] = vulnerability_history(run)
        rows.append([m, fmt_acc(last["clean"]), fmt_acc(last["pgd"]), fmt_acc(last["autoattack"]),
                     f"{best_epoch}", fmt_acc(best["clean"]), fmt_acc(best["pgd"]), fmt_acc(best["autoattack"]),
                     f"{fmt_acc(peak['val_pgd_acc'])} ({peak['epoch']}) → {fmt_acc(metrics[-1]['val_pgd_acc'])}"])
        figure = av_histograms({e: a for e, a in read_training_vulnerability(run).items() if e % 8 == 0 or e == 1})
        save_figure(figure, out / "figures" / f"av_histograms_{m}.png")
    print(markdown_table(["method", "last clean %", "last PGD-20 %", "last AA %", "best epoch", "best clean %",
                          "best PGD-20 %", "best AA %", "val PGD-10: peak (epoch) → last"], rows))
    print()
    stats_rows = []
    for m, h in histories.items():
        last_epoch = h["epochs"][-1]
        s = h["stats"][last_epoch]
        shares = list(h["sacrificed_share"].values())
        stats_rows.append([m, f"{s['mean']:.3f}", f"{s['std']:.3f}", f"{s['cv']:.2f}", f"{s['gini']:.3f}",
                           f"{100 * s['top10_share']:.1f}", f"{100 * sum(shares) / len(shares):.1f}"])
    print(markdown_table(["method", "AV mean (last)", "AV std", "AV cv", "AV Gini", "top-10% share %",
                          "mean share of examples whose AV rose between readings %"], stats_rows))
    for key in ("std", "gini"):
        stats = {m: h["stats"] for m, h in histories.items()}
        save_figure(dispersion_curves(stats, key=key), out / "figures" / f"dispersion_{key}.png")
    save_figure(sacrificed_curves({m: h["sacrificed_share"] for m, h in histories.items()}),
                out / "figures" / "sacrificed.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
