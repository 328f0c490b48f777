#!/usr/bin/env bash
# The ISEAT experiment of docs/experiments/iseat.md: PGD-AT, AWP, TRADES and ISEAT on digits (small CNN, CPU)
# with the per-example vulnerability of a fixed 500-image training subset recorded every 2 epochs, then the
# last and best checkpoints of each evaluated with clean, PGD-20 and AutoAttack (reference package).
# Usage: bash benchmarks/iseat_compare.sh OUT_DIR   (one training at a time, one thread)
set -euo pipefail
out=${1:?usage: iseat_compare.sh OUT_DIR}
EVAL_ATTACKS="clean, pgd, aa" source "$(dirname "$0")/iseat_recipe.sh"
run "$out/pgd_at" --set method.name=pgd_at
run "$out/iseat" --set method.name=iseat
run "$out/awp" --set method.name=awp
run "$out/trades" --set method.name=trades
for m in pgd_at awp trades iseat; do
  [ -f "$out/$m/eval_last.json" ] || advtrain eval "$out/$m" --checkpoint last --attacks clean,pgd,aa \
    --out "$out/$m/eval_last.json" > /dev/null
done
python benchmarks/iseat_report.py "$out" pgd_at awp trades iseat
