#!/usr/bin/env bash
# Training half of the AR-AT experiment of docs/experiments/arat.md: PGD-AT, TRADES, AR-AT and its three
# ablations (symmetric = no stop-gradient, no predictor, shared BN) on digits with the quick-start recipe
# (small CNN, ε = 0.2, 30 epochs, LR ×0.1 at epochs 20 and 25; fp32 NCHW in every run), seeds 0..2. The
# evaluation half is benchmarks/arat_eval.sh. Usage: bash benchmarks/arat_train.sh OUT_DIR   (one at a time, one thread)
set -euo pipefail
out=${1:?usage: arat_train.sh OUT_DIR}
advtrain() { OMP_NUM_THREADS=1 python -m advtrain "$@"; }
declare -A variants=(
  [pgd_at]="method.name=pgd_at"
  [trades]="method.name=trades"
  [arat]="method.name=arat"
  [arat_symmetric]="method.name=arat method.stop_gradient=false"
  [arat_no_predictor]="method.name=arat method.predictor=false"
  [arat_shared_bn]="method.name=arat method.split_bn=false"
)
for seed in 0 1 2; do
  for name in pgd_at trades arat arat_symmetric arat_no_predictor arat_shared_bn; do
    dir="$out/$name-s$seed"
    [ -f "$dir/eval.json" ] && continue
    sets=(--set "seed=$seed" --set "eval.attacks=[clean]" --set train.channels_last=false)
    for s in ${variants[$name]}; do sets+=(--set "$s"); done
    advtrain train --config configs/digits.yaml "${sets[@]}" --quiet --overwrite --out "$dir"
  done
done
