"""The single-step experiment of docs/experiments/single_step.md: FGSM-AT against FGSM-RS, N-FGSM, GradAlign
and PGD-AT at one large ε on digits, with the catastrophic-overfitting monitor on.

Each run is `advtrain train` on configs/digits.yaml with only the method and ε changed (30 epochs, SGD
0.05, ×0.1 at epochs 20 and 25), then `advtrain eval` of its last and best checkpoints on the test split.
It prints the monitor's readings per epoch and one markdown table.

    OMP_NUM_THREADS=1 python benchmarks/single_step_collapse.py --out runs/single_step --eps 0.3 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS: dict[str, list[str]] = {
    "fgsm": ["method.name=fgsm"],
    "fgsm_rs": ["method.name=fgsm_rs"],
    "n_fgsm": ["method.name=n_fgsm"],
    "grad_align": ["method.name=grad_align", "method.lam=1.0"],  # digits: see configs/digits_grad_align.yaml
    "pgd_at": ["method.name=pgd_at"],  # step ε/4, set below
}


def advtrain(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "advtrain", *args], check=True, stdout=subprocess.DEVNULL)


def accuracies(run: Path, checkpoint: str, eps: str) -> dict[str, float]:
    out = run / f"eval-{checkpoint}.json"
    advtrain("eval", str(run), "--checkpoint", checkpoint, "--attacks", "clean,fgsm,pgd", "--eps", eps,
             "--steps", "50", "--restarts", "5", "--out", str(out))
    return {r["attack"]: r["accuracy"] for r in json.loads(out.read_text())["results"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--eps", default="0.3")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    eps = float(args.eps)
    print("| method | seed | flagged epochs (CO monitor) | monitor PGD-10 / FGSM, last epoch | peak monitor PGD-10 "
          "(epoch) | test clean / FGSM / PGD-50-5, last | test clean / FGSM / PGD-50-5, best (epoch) |")
    print("|---|---:|---|---|---|---|---|")
    for name in args.methods:
        for seed in args.seeds:
            run = args.out / f"{name}-eps{args.eps}-seed{seed}"
            overrides = [*METHODS[name], f"threat.eps={args.eps}", f"seed={seed}", f"train.epochs={args.epochs}",
                         "eval.attacks=[clean]", "train.progress=quiet"]
            if name == "pgd_at":
                overrides.append(f"method.step_size={eps / 4}")
            advtrain("train", "--config", str(ROOT / "configs" / "digits.yaml"), "--out", str(run), "--overwrite",
                     *[a for o in overrides for a in ("--set", o)])
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            flagged = [r["epoch"] for r in rows if r["co_collapse"]]
            peak = max(rows, key=lambda r: r["co_pgd_acc"])
            best_epoch = json.loads((run / "checkpoints" / "best.json").read_text())["epoch"]
            last, best = accuracies(run, "last", args.eps), accuracies(run, "best", args.eps)

            def cells(a: dict[str, float]) -> str:
                return f"{100 * a['clean']:.1f} / {100 * a['fgsm']:.1f} / {100 * a['pgd']:.1f}"

            span = f"{flagged[0]}–{flagged[-1]} ({len(flagged)} of {len(rows)})" if flagged else "none"
            print(f"| {name} | {seed} | {span} | {100 * rows[-1]['co_pgd_acc']:.1f} / "
                  f"{100 * rows[-1]['co_fgsm_acc']:.1f} | {100 * peak['co_pgd_acc']:.1f} ({peak['epoch']}) | "
                  f"{cells(last)} | {cells(best)} ({best_epoch}) |", flush=True)
            print("<!-- " + name + f" seed {seed} per epoch, monitor PGD: "
                  + " ".join(f"{100 * r['co_pgd_acc']:.0f}" for r in rows)
                  + " | FGSM: " + " ".join(f"{100 * r['co_fgsm_acc']:.0f}" for r in rows) + " -->", flush=True)


if __name__ == "__main__":
    main()
