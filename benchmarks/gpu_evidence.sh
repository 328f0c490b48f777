#!/usr/bin/env bash
# Issue 24's GPU evidence: nine training methods on the real CIFAR-10 subset with one H200, under 9 minutes.
# ResNet-18 (CIFAR stem), one seed, ε = 8/255 L∞, crop + flip, each method's CIFAR defaults and the shape of its
# paper's LR schedule shortened to 16 epochs; then `advtrain eval --compare` of the nine best checkpoints (clean,
# PGD-20, the reference AutoAttack's APGD-CE + APGD-T preset) on the 846 test images, the last checkpoints (clean,
# PGD-20), and three side comparisons against PGD-AT: IGD (Gini of the saliency, inductive noise), ISEAT
# (per-example adversarial vulnerability on 1,000 training images), AR-AT (representation invariance).
# benchmarks/gpu_evidence_report.py turns OUT_DIR into markdown tables (the script ends by writing
# OUT_DIR/report.md with it).
#
# Usage, from the repository root:
#   PYTHONPATH=src bash benchmarks/gpu_evidence.sh OUT_DIR [CIFAR_NPZ]
# CIFAR_NPZ defaults to $ADVTRAIN_CIFAR_NPZ, else .gpu/cifar10_subset.npz. A run or comparison already finished in
# OUT_DIR is kept, so a rerun does only what is missing. A step that fails is reported (its log is
# OUT_DIR/logs/STEP.log) and the others still run; the script then exits 1 naming every failed step.
# TINY=1 runs every step on the CPU with tiny settings (small CNN, 64 training, 32 validation and 24 test images,
# one epoch; about 2 minutes): a check of the script, whose numbers mean nothing. PYTHON picks the interpreter.
#
# Launching it on the device machine (the `run` tool), from the checkout the session sends:
#   1. mkdir -p .gpu && cp ../shared/data/cifar10_subset.npz .gpu/     (../shared does not travel; .gpu/ is ignored)
#   2. python -m pip download --no-deps pyautoattack==0.2.0 -d .gpu   (where the venv's copy came from: PyPI, a
#      pure-Python wheel; the device image lacks the package). Check that it holds IGD's teacher:
#      unzip -l .gpu/pyautoattack-0.2.0-py3-none-any.whl | grep examples/model_test.pt
#   3. run with carry [".gpu"], timeout_s 600, kind nvidia-h200, command:
#      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site
#      .gpu/pyautoattack-0.2.0-py3-none-any.whl && PYTHON=python3 PYTHONPATH=src:/tmp/site bash
#      benchmarks/gpu_evidence.sh /tmp/ev; rc=$?; tar czf $OUT/gpu_evidence.tgz --exclude='*.safetensors' -C /tmp
#      ev; cp /tmp/ev/report.md $OUT/; exit $rc
#   The tree that travels is about 62 MB of the 64 MiB allowed (wheel 42 MB, npz 16 MB, tracked files 5 MB): leave
#   nothing else untracked in the checkout. The tarball (no weights) is all the report script needs:
#   tar xzf gpu_evidence.tgz && python benchmarks/gpu_evidence_report.py ev
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: gpu_evidence.sh OUT_DIR [CIFAR_NPZ]" >&2; exit 2; }
out=$1
npz=${2:-${ADVTRAIN_CIFAR_NPZ:-.gpu/cifar10_subset.npz}}
py=${PYTHON:-python}
[ -f "$npz" ] ||
  { echo "gpu_evidence.sh: no CIFAR-10 subset at $npz: pass its path as the second argument" >&2; exit 2; }
# IGD's teacher: the standard-trained CIFAR ResNet-18 the reference AutoAttack package ships as its example.
teacher=$("$py" -c 'import pathlib, pyautoattack
print(pathlib.Path(pyautoattack.__file__).parent / "examples" / "model_test.pt")' 2> /dev/null) ||
  { echo "gpu_evidence.sh: $py cannot import pyautoattack: install its wheel (this script's header)" >&2; exit 2; }
[ -f "$teacher" ] ||
  { echo "gpu_evidence.sh: IGD's teacher $teacher is missing: install pyautoattack 0.2.0's PyPI wheel" >&2; exit 2; }
mkdir -p "$out/logs"
advtrain() { "$py" -m advtrain "$@"; }

# Budget (full mode), in PGD-10-AT image steps at a conservative 3,000 img/s for ResNet-18 (bf16 autocast and
# channels_last, the CUDA defaults of train.precision=auto and train.channels_last): per epoch 4,160 training
# images × (standard 0.15 + pgd_at 1 + trades 1.1 + igd 2 + iseat 1.2 + arat 1.2 + fgsm_rs, sat_r1, sat_r2 0.3
# each = 7.55) ≈ 31,400, plus validation PGD-10 on 500 images for each run ≈ 4,000: 11.8 s an epoch, 189 s for 16
# epochs. Evaluation (fp32): PGD-20 ≈ 1,550 and APGD-CE + APGD-T (100 iterations, 9 targets on the points still
# robust) ≈ 34,000 per robust model, ≈ 100 s for nine; last checkpoints and side comparisons ≈ 15 s. About 8 s of
# start-up (imports, CUDA context, loading, checkpoint writes) for each of the 14 processes: ≈ 110 s.
# Total ≈ 410 s, under 7 minutes.
if [ "${TINY:-0}" = 1 ]; then
  export OMP_NUM_THREADS=1
  tiny=$out/tiny.npz
  [ -f "$tiny" ] || "$py" -c 'import sys, numpy as np; d = np.load(sys.argv[1]); np.savez(sys.argv[2],
x_train=d["x_train"][:96], y_train=d["y_train"][:96], x_test=d["x_test"][:24], y_test=d["y_test"][:24])' "$npz" "$tiny"
  npz=$tiny device=cpu model=small_cnn epochs=1 val_size=32 batch=32 vulnerability_n=32 eval_batch=256
else
  # eval_batch: all 846 test images (and the 1,000 training images of `vulnerability`) in one batch, a few GiB
  # for ResNet-18 in fp32, set rather than sized by `--batch-size auto`, whose CUDA path no GPU has run yet.
  device=cuda model=resnet18 epochs=16 val_size=500 batch=128 vulnerability_n=1000 eval_batch=1024
fi
# The papers' schedules scaled from their lengths to 16 epochs (0-based milestones: the first epoch at the lower
# LR; TINY's one epoch reaches none). Rice et al.'s PGD-AT (200 epochs, ×0.1 at 100 and 150) also serves ISEAT
# (the same schedule) and IGD, whose recipe's ReduceLROnPlateau has no shorter equivalent: IGD and its PGD-AT
# comparator then share one schedule.
rice=(--set "schedule.milestones=[8, 12]")
arat_decay=(--set "schedule.milestones=[12, 14]")  # AR-AT: 100 epochs, ×0.1 at 75 and 90
trades_decay=(--set "schedule.milestones=[15]")    # TRADES: 76 epochs, ×0.1 at 74
sat_decay=(--set "schedule.milestones=[4, 8, 12]" --set schedule.gamma=0.2)  # SAT-R: ÷5 at 25, 50, 75%
common=(--set seed=0 --set data.name=cifar10 --set data.root="$npz" --set data.val_size="$val_size"
        --set data.crop_padding=4 --set data.flip=true --set model.name="$model" --set threat.norm=linf
        --set threat.eps=8/255 --set optim.name=sgd --set optim.lr=0.1 --set optim.momentum=0.9
        --set optim.weight_decay=5e-4 --set schedule.name=multistep --set train.epochs="$epochs"
        --set train.batch_size="$batch" --set train.device="$device" --set monitor.enabled=false
        --set "eval.attacks=[clean]" --quiet --overwrite)
declare -A recipe=(
  [standard]="method.name=standard"
  [pgd_at]="method.name=pgd_at method.steps=10 method.step_size=2/255 method.bn_mode=train"
  [trades]="method.name=trades method.beta=6 method.steps=10 method.step_size=2/255 method.bn_mode=eval"
  [igd]="method.name=igd method.lam=1 method.base.steps=10 method.base.step_size=2/255 method.teacher_model=resnet18"
  [iseat]="method.name=iseat method.gamma=0.007 method.lam=0.1 method.lam_before_decay=0 method.steps=10"
  # AR-AT with PGD noise within ε (official_noise=false), so every method trains at the same radius.
  [arat]="method.name=arat method.gamma=30 method.steps=10 method.step_size=2/255 method.official_noise=false"
  # Wong et al.'s cyclic LR 0 → 0.2 → 0 is FGSM-RS's own schedule (15 epochs in the paper).
  [fgsm_rs]="method.name=fgsm_rs method.alpha_factor=1.25 optim.lr=0.2 schedule.name=cyclic"
  [sat_r1]="method.name=sat_r1 method.lam=0.2 method.iter_steps=3"
  [sat_r2]="method.name=sat_r2 method.lam=25 method.alpha=2/255"
)
methods=(standard pgd_at trades igd iseat arat fgsm_rs sat_r1 sat_r2)
failed=()

# step NAME COMMAND...: runs COMMAND with its output also in logs/NAME.log and appends NAME, its wall seconds and
# ok or failed to steps.tsv; a failure is recorded in `failed` instead of stopping the script.
step() {
  local name=$1 begin status=ok
  shift
  begin=$(date +%s)
  if ! "$@" 2>&1 | tee "$out/logs/$name.log"; then
    status=failed
    echo "gpu_evidence.sh: step $name failed; its log: $out/logs/$name.log" >&2
    failed+=("$name")
  fi
  printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - begin ))" "$status" >> "$out/steps.tsv"
}

train() {
  local m=$1 sets=()
  for s in ${recipe[$m]}; do sets+=(--set "$s"); done
  case $m in
    standard | pgd_at | igd | iseat) sets+=("${rice[@]}") ;;
    arat) sets+=("${arat_decay[@]}") ;;
    trades) sets+=("${trades_decay[@]}") ;;
    sat_r1 | sat_r2) sets+=("${sat_decay[@]}") ;;
  esac
  [ "$m" = igd ] && sets+=(--set method.teacher="$teacher")
  advtrain train "${common[@]}" "${sets[@]}" --out "$out/$m"
}

# compare NAME ATTACKS CHECKPOINT RUN... [-- EXTRA OPTIONS]: one `eval --compare` into compare_NAME.json of the
# runs that finished. An earlier file is kept only when every run named finished before it was written.
compare() {
  local name=$1 attacks=$2 checkpoint=$3 json=$out/compare_$1.json runs=() fresh=1
  shift 3
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    if [ -f "$out/$1/eval.json" ]; then runs+=("$out/$1"); [ "$json" -nt "$out/$1/eval.json" ] || fresh=0
    else fresh=0; fi
    shift
  done
  [ $# -gt 0 ] && shift
  if [ "$fresh" = 1 ]; then echo "compare_$name: kept from an earlier run"; return; fi
  rm -f "$json"  # a failed evaluation must not leave an older file to be reported
  if [ "${#runs[@]}" -lt 2 ]; then
    echo "gpu_evidence.sh: compare_$name needs two finished runs, has ${#runs[@]}" >&2; failed+=("compare_$name")
  else
    step "compare_$name" advtrain eval --compare "${runs[@]}" --checkpoint "$checkpoint" --attacks "$attacks" \
      --eps 8/255 --steps 20 --device "$device" --batch-size "$eval_batch" --quiet --out "$json" "$@"
  fi
}

start=$(date +%s)
"$py" - "$out/environment.json" "$device" "${TINY:-0}" "$epochs" "$model" <<'EOF'
import json, platform, subprocess, sys

import torch

out, device, tiny, epochs, model = sys.argv[1:6]
cuda = device == "cuda" and torch.cuda.is_available()
try:  # the device machine's copy of the tree may come without .git, or without git
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
except OSError:
    commit = None
json.dump({"device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
           "torch_version": torch.__version__, "cuda_version": torch.version.cuda if cuda else None,
           "python_version": platform.python_version(), "commit": commit, "tiny": tiny == "1",
           "epochs": int(epochs), "model": model}, open(out, "w"), indent=1)
EOF
for m in "${methods[@]}"; do
  if [ -f "$out/$m/eval.json" ]; then echo "$m: kept from an earlier run"; else step "train_$m" train "$m"; fi
done
compare best clean,pgd,apgd best "${methods[@]}"
compare last clean,pgd last "${methods[@]}"
compare igd clean,gini,inductive_noise best pgd_at igd
compare iseat vulnerability best pgd_at iseat -- --split train --n "$vulnerability_n"
compare arat clean,invariance best pgd_at arat
printf 'script\t%s\t%s\n' "$(( $(date +%s) - start ))" "$([ "${#failed[@]}" = 0 ] && echo ok || echo failed)" \
  >> "$out/steps.tsv"
"$py" benchmarks/gpu_evidence_report.py "$out" > "$out/report.md" || failed+=("report")
cat "$out/report.md"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "gpu_evidence.sh: failed steps: ${failed[*]} (rerun to retry them; finished runs are kept)" >&2
  exit 1
fi
