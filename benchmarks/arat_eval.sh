#!/usr/bin/env bash
# Evaluation half of the AR-AT experiment (docs/experiments/arat.md): every run of benchmarks/arat_train.sh,
# last checkpoint (what the paper reports) with clean, PGD-20, AutoAttack (reference package, standard) and
# representation invariance (PGD-20 at ε), and the best-on-validation checkpoint with the `apgd` preset
# (APGD-CE + APGD-T, labelled so), on the 360 digits test images; then the tables and figures.
# The two comparisons run in parallel (one thread each).
# Usage: bash benchmarks/arat_eval.sh OUT_DIR   (OUT_DIR as given to arat_train.sh)
set -euo pipefail
out=${1:?usage: arat_eval.sh OUT_DIR}
advtrain() { OMP_NUM_THREADS=1 python -m advtrain "$@"; }
runs=()
for seed in 0 1 2; do
  for name in pgd_at trades arat arat_official_noise; do runs+=("$out/$name-s$seed"); done
done
compare() {  # CHECKPOINT AUTOATTACK
  [ -f "$out/compare_$1.json" ] || advtrain eval --compare "${runs[@]}" --checkpoint "$1" \
    --attacks "clean,pgd,$2,invariance" --out "$out/compare_$1.json" > "$out/compare_$1.txt"
}
compare last aa &
compare best apgd &
wait
python benchmarks/arat_report.py "$out" docs/experiments/arat
