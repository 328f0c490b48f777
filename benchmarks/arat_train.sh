#!/usr/bin/env bash
# Training half of the AR-AT experiment of docs/experiments/arat.md: PGD-AT, TRADES, AR-AT with standard PGD
# noise (`official_noise=false`: the random start and the projection are around x, so x' is within ε of x, as for
# PGD-AT and TRADES) and AR-AT with the released code's noise (`official_noise=true`: x' may lie up to 2ε from x),
# on digits with the quick-start recipe (small CNN, ε = 0.2, 30 epochs, LR ×0.1 at epochs 20 and 25), seeds 0..2.
# The evaluation half is benchmarks/arat_eval.sh. Usage: bash benchmarks/arat_train.sh OUT_DIR   (one thread)
set -euo pipefail
out=${1:?usage: arat_train.sh OUT_DIR}
advtrain() { OMP_NUM_THREADS=1 python -m advtrain "$@"; }
declare -A variants=(
  [pgd_at]="method.name=pgd_at"
  [trades]="method.name=trades"
  [arat]="method.name=arat method.official_noise=false"
  [arat_official_noise]="method.name=arat method.official_noise=true"
)
for seed in 0 1 2; do
  for name in pgd_at trades arat arat_official_noise; do
    dir="$out/$name-s$seed"
    [ -f "$dir/eval.json" ] && continue  # a finished run is kept, so the script can be rerun after a stop
    sets=(--set "seed=$seed" --set "eval.attacks=[clean]")
    for s in ${variants[$name]}; do sets+=(--set "$s"); done
    advtrain train --config configs/digits.yaml "${sets[@]}" --quiet --overwrite --out "$dir"
  done
done
