#!/usr/bin/env bash
# The 3-seed check of docs/experiments/iseat.md: PGD-AT and ISEAT with the recipe of iseat_compare.sh (digits, 40
# epochs, LR ×0.1 at epochs 20 and 30, per-example vulnerability of 500 training images every 2 epochs), seeds
# 0..2, two trainings at a time; then the dispersion table (benchmarks/iseat_seeds_report.py).
# Usage: bash benchmarks/iseat_seeds.sh OUT_DIR
set -euo pipefail
out=${1:?usage: iseat_seeds.sh OUT_DIR}
EVAL_ATTACKS="clean, pgd" source "$(dirname "$0")/iseat_recipe.sh"
for seed in 0 1 2; do
  run "$out/pgd_at-s$seed" --set seed="$seed" --set method.name=pgd_at &
  run "$out/iseat-s$seed" --set seed="$seed" --set method.name=iseat &
  wait
done
python benchmarks/iseat_seeds_report.py "$out"
