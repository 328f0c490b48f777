#!/usr/bin/env bash
# The experiment of docs/experiments/single_step_regularizers.md: FGSM-AT, SAT-R1/R2/R3 (R3 also with its
# per-example hinge), FGSM-RS and PGD-AT on digits at ε = 0.2 (configs/digits.yaml), seeds 0..2, then the last and
# the best-on-validation checkpoints of every run evaluated side by side with clean, FGSM, PGD-50 with 10 restarts
# and AutoAttack (reference package: standard on the last checkpoints, the APGD-CE + APGD-T preset on the best ones);
# then the tables (benchmarks/sat_r_report.py).
# The SAT-R settings are the paper's MNIST ones with ε_lo and ε_hi scaled from ε = 0.3 to 0.2 (ε_lo = ε/3).
# Usage: bash benchmarks/sat_r_compare.sh OUT_DIR [SEEDS]   (one training at a time, one thread; SEEDS "0 1 2")
set -euo pipefail
out=${1:?usage: sat_r_compare.sh OUT_DIR [SEEDS]}
seeds=${2:-0 1 2}
advtrain() { OMP_NUM_THREADS=1 python -m advtrain "$@"; }
declare -A variants=(
  [fgsm]="method.name=fgsm"
  [sat_r1]="method.name=sat_r1 method.lam=0.2 method.iter_steps=10"
  [sat_r2]="method.name=sat_r2 method.lam=5 method.alpha=0.01"
  [sat_r3]="method.name=sat_r3 method.lam=1 method.eps_lo=0.2/3 method.eps_hi=0.2 method.tau=0.4 method.alpha=0.01"
  [sat_r3_per_sample]="method.name=sat_r3 method.lam=1 method.eps_lo=0.2/3 method.eps_hi=0.2 method.tau=0.4
                       method.alpha=0.01 method.reduction=per_sample"
  [fgsm_rs]="method.name=fgsm_rs"
  [pgd_at]="method.name=pgd_at"
)
names=(fgsm sat_r1 sat_r2 sat_r3 sat_r3_per_sample fgsm_rs pgd_at)
runs=()
for seed in $seeds; do
  for name in "${names[@]}"; do
    dir="$out/$name-s$seed"
    runs+=("$dir")
    [ -f "$dir/eval.json" ] && continue  # a finished run is kept, so the script can be rerun after a stop
    sets=(--set "seed=$seed" --set "eval.attacks=[clean]")
    for s in ${variants[$name]}; do sets+=(--set "$s"); done
    advtrain train --config configs/digits.yaml "${sets[@]}" --quiet --overwrite --out "$dir"
  done
done
compare() {  # CHECKPOINT AUTOATTACK
  [ -f "$out/compare_$1.json" ] || advtrain eval --compare "${runs[@]}" --checkpoint "$1" \
    --attacks "clean,fgsm,pgd,$2" --steps 50 --restarts 10 --out "$out/compare_$1.json" > "$out/compare_$1.txt"
}
compare last aa &   # the standard AutoAttack: its black-box Square attack is the check against masked gradients
compare best apgd &  # the APGD-CE + APGD-T preset, for time
wait
python benchmarks/sat_r_report.py "$out"
