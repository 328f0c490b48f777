#!/usr/bin/env bash
# The IGD experiment of docs/experiments/igd.md: standard (the teacher), PGD-AT and IGD (λ sweep) on the
# CIFAR-10 subset of ../shared/data with the small CNN on CPU, then `advtrain eval --compare` of all of them.
# Usage: bash benchmarks/igd_compare.sh OUT_DIR [CIFAR_NPZ]   (two processes at a time, one thread each)
set -euo pipefail
out=${1:?usage: igd_compare.sh OUT_DIR [CIFAR_NPZ]}
npz=${2:-../shared/data/cifar10_subset.npz}
advtrain() { OMP_NUM_THREADS=1 python -m advtrain "$@"; }
# A run that already finished (its eval.json exists) is kept, so the script can be rerun after a stop.
run() { local dir=$1; shift; [ -f "$dir/eval.json" ] || advtrain train "${common[@]}" "$@" --out "$dir"; }
common=(--set data.name=cifar10 --set data.root="$npz" --set data.val_size=500 --set data.crop_padding=4
        --set data.flip=true --set model.name=small_cnn --set threat.eps=8/255 --set optim.lr=0.05
        --set schedule.name=multistep --set "schedule.milestones=[12]" --set train.epochs=15
        --set train.batch_size=128 --set train.val_steps=10 --set monitor.enabled=false
        --set "eval.attacks=[clean]" --quiet --overwrite)
# PGD-AT crafts x' in eval mode here, as the IGD paper's PGD-AT baseline and IGD's own attack do.
adversarial=(--set method.steps=10 --set method.step_size=2/255 --set method.bn_mode=eval)
igd=(--set method.name=igd --set method.teacher="$out/standard" --set method.base.steps=10
     --set method.base.step_size=2/255)  # IGD's base attack is PGD-10 in eval mode by default
run "$out/standard" --set method.name=standard
run "$out/pgd_at" --set method.name=pgd_at "${adversarial[@]}" &
run "$out/igd_lam1" "${igd[@]}" --set method.lam=1 &
wait
run "$out/igd_lam3" "${igd[@]}" --set method.lam=3
runs=("$out/standard" "$out/pgd_at" "$out/igd_lam1" "$out/igd_lam3")
advtrain eval --compare "${runs[@]}" --checkpoint best --eps 8/255 --steps 20 \
  --attacks clean,pgd,gini,inductive_noise,random_noise,inductive_occlusion,corruptions --out "$out/compare.json" &
# AutoAttack (the reference package, APGD-CE + APGD-T preset) on the first 300 test images.
advtrain eval --compare "${runs[@]}" --checkpoint best --eps 8/255 --attacks clean,apgd --n 300 \
  --out "$out/compare_apgd.json" &
wait
