#!/usr/bin/env bash
# The digits IGD experiment of docs/experiments/igd.md: per seed (0..2) a standard-trained teacher, PGD-AT and IGD
# with λ ∈ {0.1, 0.3, 1}, all with configs/digits.yaml (small CNN, ε = 0.2, 30 epochs); PGD-AT and IGD's base attack
# craft x' in eval mode, the IGD paper's setting. Then benchmarks/igd_digits_eval.py evaluates the best and the last
# checkpoints (the standard AutoAttack on the best ones, its APGD-CE + APGD-T preset on the last ones) and
# benchmarks/igd_digits_report.py prints the tables and draws the figures.
# Usage: bash benchmarks/igd_digits.sh OUT_DIR [SEEDS]   (one training at a time, one thread; SEEDS "0 1 2")
set -euo pipefail
out=${1:?usage: igd_digits.sh OUT_DIR [SEEDS]}
seeds=${2:-0 1 2}
advtrain() { OMP_NUM_THREADS=1 python -m advtrain "$@"; }
run() {  # DIR SETTINGS...: a finished run (its eval.json exists) is kept, so the script can be rerun after a stop
  local dir=$1; shift
  [ -f "$dir/eval.json" ] || advtrain train --config configs/digits.yaml --set "eval.attacks=[clean]" "$@" \
    --quiet --overwrite --out "$dir"
}
for seed in $seeds; do
  run "$out/standard-s$seed" --set seed="$seed" --set method.name=standard
  run "$out/pgd_at-s$seed" --set seed="$seed" --set method.name=pgd_at --set method.bn_mode=eval
  for lam in 0.1 0.3 1; do
    run "$out/igd_lam$lam-s$seed" --set seed="$seed" --set method.name=igd --set method.lam="$lam" \
      --set method.teacher="$out/standard-s$seed"
  done
done
eval_seeds() {  # CHECKPOINT AUTOATTACK: one process per seed, one thread each
  for seed in $seeds; do
    OMP_NUM_THREADS=1 python benchmarks/igd_digits_eval.py "$out" "$1" --seeds "$seed" --autoattack "$2" &
  done
  wait
}
eval_seeds best aa     # the standard AutoAttack on the checkpoints model selection picks
eval_seeds last apgd   # the APGD-CE + APGD-T preset, for time
python benchmarks/igd_digits_report.py "$out" docs/experiments/igd
