#!/usr/bin/env bash
# Evaluation half of the AR-AT experiment (docs/experiments/arat.md): every run of benchmarks/arat_train.sh,
# last and best-on-validation checkpoints, on the 360 digits test images with clean, PGD-20, AutoAttack
# (reference package, standard) and representation invariance (PGD-20 at ε), then the table and figure.
# Usage: bash benchmarks/arat_eval.sh OUT_DIR   (OUT_DIR as given to arat_train.sh)
set -euo pipefail
out=${1:?usage: arat_eval.sh OUT_DIR}
advtrain() { OMP_NUM_THREADS=1 python -m advtrain "$@"; }
runs=()
for seed in 0 1 2; do
  for name in pgd_at trades arat arat_symmetric arat_no_predictor arat_shared_bn; do runs+=("$out/$name-s$seed"); done
done
for which in last best; do
  [ -f "$out/compare_$which.json" ] || advtrain eval --compare "${runs[@]}" --checkpoint "$which" \
    --attacks clean,pgd,aa,invariance --out "$out/compare_$which.json" > "$out/compare_$which.txt"
done
python benchmarks/arat_report.py "$out" docs/experiments/arat
