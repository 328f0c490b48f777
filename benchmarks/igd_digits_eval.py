"""Evaluation half of the digits IGD experiment (docs/experiments/igd.md; benchmarks/igd_digits.sh trains).

    python benchmarks/igd_digits_eval.py OUT_DIR {best,last} [--seeds "0 1 2"] [--autoattack aa|apgd]

For each seed, the group standard / PGD-AT / IGD λ ∈ {0.1, 0.3, 1} of that seed is compared on the 360 digits test
images with `advtrain.eval.api.compare_runs`: clean, PGD-20, AutoAttack (the reference package), saliency Gini,
inductive and random noise, inductive occlusion and the noise corruptions, the last three over the images all five
models classify correctly (IGD's protocol). The noise grids and the occlusion budget are scaled to 8×8 inputs (see
GRID below). Writes OUT_DIR/compare_{checkpoint}_s{seed}.json; a finished file is kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from advtrain.eval.api import compare_runs, load_group
from advtrain.eval.inequality import InequalityOptions
from advtrain.eval.settings import EvalSettings
from advtrain.fileio import atomic_write_text

RUNS = ("standard", "pgd_at", "igd_lam0.1", "igd_lam0.3", "igd_lam1")
# k = int(ρ·64) = 1, 3, 6, 12 perturbed values, for inductive and random noise alike (the paper's ρ ≤ 2% of 3,072
# CIFAR values would perturb at most one digits pixel); occlusion: up to 2 squares of side ≤ 4 (a quarter of the
# image each), where the paper's n ≤ 10, r ≤ 20 would cover every 8×8 image.
GRID = InequalityOptions(inductive_rhos=(0.02, 0.05, 0.1, 0.2), random_rhos=(0.02, 0.05, 0.1, 0.2),
                         occlusion_n=2, occlusion_r=2)
INEQUALITY = ["gini", "inductive_noise", "random_noise", "inductive_occlusion", "corruptions"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("checkpoint", choices=("best", "last"))
    parser.add_argument("--seeds", default="0 1 2")
    parser.add_argument("--autoattack", choices=("aa", "apgd"), default="aa")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for seed in args.seeds.split():
        path = args.out / f"compare_{args.checkpoint}_s{seed}.json"
        if path.exists():
            continue
        models, data = load_group([args.out / f"{run}-s{seed}" for run in RUNS], data_name=None, data_root=None,
                                  checkpoint=args.checkpoint)
        settings = EvalSettings(attacks=["clean", "pgd", args.autoattack], eps=[0.2], steps=20, device="cpu",
                                inequality=INEQUALITY, inequality_options=GRID)
        result = compare_runs(models, data, settings, checkpoint=args.checkpoint)
        result["grid"] = {"inductive_rhos": GRID.inductive_rhos, "random_rhos": GRID.random_rhos,
                          "occlusion_n": GRID.occlusion_n, "occlusion_r": GRID.occlusion_r}
        atomic_write_text(path, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
