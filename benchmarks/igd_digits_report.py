"""Tables and figures of the digits IGD experiment (docs/experiments/igd.md) from igd_digits_eval.py's files.

    python benchmarks/igd_digits_report.py OUT_DIR FIGURE_DIR

Reads OUT_DIR/compare_{best,last}_s{seed}.json (one comparison per seed: standard, PGD-AT, IGD λ 0.1/0.3/1) and
prints, per checkpoint, mean ± std over seeds of: clean, PGD-20 and AutoAttack accuracy with saliency Gini, and the
paired per-seed AutoAttack difference to PGD-AT; the error rates under inductive noise, random noise and inductive
occlusion, and the noise-corruption error, over each seed's commonly correct images. Writes
FIGURE_DIR/digits_noise_{best,last}.png (error against the number of perturbed values, inductive vs random) and
FIGURE_DIR/digits_gini_vs_aa_{best,last}.png.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from evidence_tables import accuracy, autoattack_label, mean_std, read

from advtrain.report.tables import markdown_table

ORDER = ["standard", "pgd_at", "igd_lam0.1", "igd_lam0.3", "igd_lam1"]
NAMES = {"standard": "standard (teacher)", "pgd_at": "PGD-AT", "igd_lam0.1": "IGD λ = 0.1",
         "igd_lam0.3": "IGD λ = 0.3", "igd_lam1": "IGD λ = 1"}
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")


def seeds_of(out: Path, which: str) -> dict[int, dict]:
    files = sorted(out.glob(f"compare_{which}_s*.json"))
    return {int(f.stem.rsplit("_s", 1)[1]): read(f) for f in files}


def cell(runs: dict[int, dict], model: str, value, digits: int = 1) -> str:
    """mean ± std over seeds of value(comparison, label) for `model` (labelled MODEL-sSEED in each comparison)."""
    return mean_std((value(c, f"{model}-s{s}") for s, c in runs.items()), digits)


def robustness_table(runs: dict[int, dict]) -> str:
    aa = autoattack_label(next(iter(runs.values())))
    rows = []
    for m in ORDER:
        aa_diff = [accuracy(c["models"][f"{m}-s{s}"], "autoattack")
                   - accuracy(c["models"][f"pgd_at-s{s}"], "autoattack") for s, c in runs.items()]
        rows.append([NAMES[m], *(cell(runs, m, lambda c, label, a=a: accuracy(c["models"][label], a))
                                 for a in ("clean", "pgd", "autoattack")),
                     " / ".join(f"{d:+.1f}" for d in aa_diff),
                     *(cell(runs, m, lambda c, label, k=k: c["inequality"]["gini"][label][k], 3)
                       for k in ("global_all", "regional_igd_all"))])
    return markdown_table(["model", "clean %", "PGD-20 %", f"{aa} %", "AA − PGD-AT's, per seed (points)",
                     "saliency Gini, global", "Gini, regional 4×4 blocks"], rows)


def noise_error(kind: str, mode: str, rho: float):
    return lambda c, label: 100 * c["inequality"][kind][label][mode][f"{rho:g}"]


def noise_table(runs: dict[int, dict]) -> str:
    rhos = list(next(iter(runs.values()))["grid"]["inductive_rhos"])
    common = ", ".join(str(c["inequality"]["n_common_correct"]) for c in runs.values())
    header = ["model", *(f"{kind} add k={int(64 * r)}" for kind in ("inductive", "random") for r in rhos),
              "inductive replace k=6", "random replace k=6", "occlusion grey", "occlusion white"]
    columns = [*(noise_error(kind, "add", r) for kind in ("inductive_noise", "random_noise") for r in rhos),
               noise_error("inductive_noise", "replace", 0.1), noise_error("random_noise", "replace", 0.1),
               *(lambda c, label, col=col: 100 * c["inequality"]["inductive_occlusion"][label][col]
                 for col in ("grey (0.5)", "white (1)"))]
    rows = [[NAMES[m], *(cell(runs, m, column) for column in columns)] for m in ORDER]
    return f"Commonly correct images per seed: {common}.\n\n" + markdown_table(header, rows)


def corruption_table(runs: dict[int, dict]) -> str:
    def errors(c: dict, label: str, name: str) -> dict[str, float]:
        return c["inequality"]["corruptions"][label]["commonly_correct"][name]

    columns = [*(lambda c, label, n=n: 100 * statistics.mean(errors(c, label, n).values()) for n in CORRUPTIONS),
               *(lambda c, label, n=n: 100 * errors(c, label, n)["5"] for n in CORRUPTIONS)]
    rows = [[NAMES[m], *(cell(runs, m, column) for column in columns)] for m in ORDER]
    return markdown_table(["model", *(f"{n.split('_')[0]} (mean 1–5)" for n in CORRUPTIONS),
                     *(f"{n.split('_')[0]} (s=5)" for n in CORRUPTIONS)], rows)


def figures(runs: dict[int, dict], which: str, folder: Path) -> None:
    first = next(iter(runs.values()))
    ks = [int(64 * r) for r in first["grid"]["inductive_rhos"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, kind in zip(axes, ("inductive_noise", "random_noise"), strict=True):
        for m in ORDER:
            ys = [statistics.mean(100 * c["inequality"][kind][f"{m}-s{s}"]["add"][f"{r:g}"] for s, c in runs.items())
                  for r in first["grid"]["inductive_rhos"]]
            ax.plot(ks, ys, marker="o", label=NAMES[m])
        ax.set_title(f"{kind.replace('_', ' ')} (add N(0, 1)), {which} checkpoint")
        ax.set_xlabel("perturbed values k (of 64)")
    axes[0].set_ylabel("error % (commonly correct, seed mean)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / f"digits_noise_{which}.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for m in ORDER:
        pts = [(c["inequality"]["gini"][f"{m}-s{s}"]["global_all"], accuracy(c["models"][f"{m}-s{s}"], "autoattack"))
               for s, c in runs.items()]
        ax.scatter(*zip(*pts, strict=True), label=NAMES[m])
    ax.set_xlabel("saliency Gini (global; lower = more equal)")
    ax.set_ylabel(f"{autoattack_label(first)} accuracy %")
    ax.set_title(f"digits, {which} checkpoint, one point per seed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / f"digits_gini_vs_aa_{which}.png", dpi=110)
    plt.close(fig)


def main() -> None:
    out, folder = Path(sys.argv[1]), Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    for which in ("best", "last"):
        runs = seeds_of(out, which)
        if not runs:
            continue
        epochs = {m: sorted(c["models"][f"{m}-s{s}"]["epoch"] for s, c in runs.items()) for m in ORDER}
        print(f"\n### {which} checkpoint, seeds {sorted(runs)} (epochs: "
              + "; ".join(f"{NAMES[m]} {', '.join(map(str, e))}" for m, e in epochs.items()) + ")\n")
        print(robustness_table(runs))
        print("\nError % under inductive noise, random noise and inductive occlusion (mean ± std over seeds):\n")
        print(noise_table(runs))
        print("\nNoise corruptions (CIFAR-10-C severity constants, generated), error % over the commonly correct "
              "images:\n")
        print(corruption_table(runs))
        figures(runs, which, folder)


if __name__ == "__main__":
    main()
