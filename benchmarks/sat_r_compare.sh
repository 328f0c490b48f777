#!/usr/bin/env bash
# The experiment of docs/experiments/single_step_regularizers.md: FGSM-AT, SAT-R1/R2/R3, FGSM-RS and PGD-AT on
# digits at ε = 0.3 (the MNIST ε the SAT-R paper's MNIST settings are for), each evaluated with clean, PGD-50-10
# and AutoAttack, then `advtrain diagnose` on each best checkpoint (transfer from a standard-trained surrogate).
# Usage: bash benchmarks/sat_r_compare.sh OUT_DIR   (two trainings at a time, one thread each)
set -euo pipefail
out=${1:?usage: sat_r_compare.sh OUT_DIR}
advtrain() { OMP_NUM_THREADS=1 python -m advtrain "$@"; }
common=(--config configs/digits.yaml --set threat.eps=0.3 --set train.epochs=30 --set "schedule.milestones=[20, 25]"
        --set "eval.attacks=[clean, pgd, aa]" --set eval.steps=50 --set eval.restarts=10 --quiet --overwrite)
run() { local dir=$1; shift; [ -f "$dir/eval.json" ] || advtrain train "${common[@]}" "$@" --out "$dir"; }
run "$out/fgsm" --set method.name=fgsm &
run "$out/sat_r1" --set method.name=sat_r1 --set method.lam=0.2 --set method.iter_steps=10 &
wait
run "$out/sat_r2" --set method.name=sat_r2 --set method.lam=5 --set method.alpha=0.01 &
run "$out/sat_r3" --set method.name=sat_r3 --set method.eps_lo=0.1 --set method.eps_hi=0.3 --set method.tau=0.4 \
  --set method.alpha=0.01 &
wait
run "$out/fgsm_rs" --set method.name=fgsm_rs &
run "$out/pgd_at" --set method.name=pgd_at --set method.step_size=0.075 &
wait
# The transfer check's surrogate: a standard-trained model with the same recipe.
[ -f "$out/standard/eval.json" ] || advtrain train --config configs/digits.yaml --set method.name=standard \
  --set train.epochs=30 --set "schedule.milestones=[20, 25]" --set "eval.attacks=[clean]" --quiet --overwrite \
  --out "$out/standard"
for m in fgsm sat_r1 sat_r2 sat_r3 fgsm_rs pgd_at; do
  advtrain diagnose "$out/$m" --n 300 --surrogate "$out/standard" > "$out/$m/diagnose.txt"
done
