#!/usr/bin/env bash
# Issue 23's GPU benchmark (docs/benchmarks.md, "GPU"): under 8 minutes on one H200, one JSON file out.
#   1. PGD-10 AT, PreActResNet-18, batch 512: eager and graph-captured attack (one `advtrain bench` run), then
#      torch.compile (a second run); each against the reference loop `advtrain bench` measures in the same run.
#   2. PGD-10 AT, WRN-34-10, batch 256, against the reference loop.
#   3. Reference AutoAttack (standard) on the 846 test images of the CIFAR-10 subset, against a PreActResNet-18
#      this script first trains with PGD-AT on the subset's training images (so every sub-attack has work).
# Usage, from the repository root:
#   PYTHONPATH=src bash benchmarks/gpu.sh [OUT_JSON] [CIFAR_NPZ]
# OUT_JSON defaults to gpu_bench.json; CIFAR_NPZ to $ADVTRAIN_CIFAR_NPZ, else .gpu/cifar10_subset.npz (.gpu/ is
# git-ignored: copy ../shared/data/cifar10_subset.npz there, since ../shared does not travel to a GPU machine).
# TINY=1 runs every step end to end with tiny settings on the CPU (about 3 minutes): a check of the script, whose
# numbers mean nothing. PYTHON picks the interpreter (default: python).
set -euo pipefail
out=${1:-gpu_bench.json}
npz=${2:-${ADVTRAIN_CIFAR_NPZ:-.gpu/cifar10_subset.npz}}
py=${PYTHON:-python}
[ -f "$npz" ] || { echo "gpu.sh: no CIFAR-10 subset at $npz: pass its path as the second argument" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
advtrain() { "$py" -m advtrain "$@"; }

if [ "${TINY:-0}" = 1 ]; then
  # The small CNN where PreActResNet-18 would take minutes on one CPU thread (compiling it, training it), and
  # the first 320 training and 16 test images of the subset (AutoAttack on the first 8).
  export OMP_NUM_THREADS=1
  device=cpu graph=() b18=4 bwrn=2 compile_model=small_cnn aa_model=small_cnn n_aa=8
  timing=(--iterations 1 --repeats 1 --warmup 1 --attack-steps 2 --eval-steps 2)
  recipe=(--set train.epochs=1 --set data.val_size=64 --set train.val_steps=1 --set train.batch_size=64
          --set method.steps=2)
  "$py" -c 'import sys, numpy as np; d = np.load(sys.argv[1]); np.savez(sys.argv[2], x_train=d["x_train"][:320],
y_train=d["y_train"][:320], x_test=d["x_test"][:16], y_test=d["y_test"][:16])' "$npz" "$work/tiny.npz"
  npz=$work/tiny.npz
else
  device=cuda graph=(--attack-graph) b18=512 bwrn=256 compile_model=preact_resnet18 aa_model=preact_resnet18 n_aa=846
  timing=(--iterations 10 --repeats 3 --warmup 3)
  recipe=(--set train.epochs=15 --set data.val_size=500 --set train.val_steps=4 --set train.batch_size=512
          --set train.attack_graph=true)
fi
bench() { advtrain bench --device "$device" --methods pgd_at --shape 3x32x32 "$@"; }

start=$(date +%s)
bench --model preact_resnet18 --batch "$b18" "${graph[@]}" "${timing[@]}" --out "$work/preact18.json"
bench --model "$compile_model" --batch "$b18" --compile default "${timing[@]}" --out "$work/preact18_compile.json"
wrn_timing=("${timing[@]}")
[ "${TINY:-0}" = 1 ] || wrn_timing=(--iterations 5 --repeats 3 --warmup 2)
bench --model wrn34_10 --batch "$bwrn" "${wrn_timing[@]}" --out "$work/wrn34_10.json"

# PGD-AT on the subset's 4,660 training images (PGD-10, step ε/4, ε = 8/255, train-mode BN as Madry/Rice).
advtrain train --set data.name=cifar10 --set data.root="$npz" --set model.name="$aa_model" \
  --set method.name=pgd_at --set threat.eps=8/255 --set optim.lr=0.1 --set data.crop_padding=4 \
  --set data.flip=true --set "eval.attacks=[clean]" --set monitor.enabled=false --set train.device="$device" \
  "${recipe[@]}" --quiet --overwrite --out "$work/pgd_at_run"

"$py" - "$work/pgd_at_run" "$npz" "$n_aa" "$device" "$work/autoattack.json" <<'EOF'
import json, sys, time
from pathlib import Path

import numpy as np
import torch

from advtrain.attacks import autoattack
from advtrain.eval.checkpoints import checkpoint_path, load_checkpoint_model

run, npz, n, device, out = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), torch.device(sys.argv[4]), sys.argv[5]
data = np.load(npz)
x = torch.from_numpy(data["x_test"][:n]).float().div(255).to(device)
y = torch.from_numpy(data["y_test"][:n]).long().to(device)
model = load_checkpoint_model(checkpoint_path(run, "best")).model.to(device).eval()
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
stages = []
sync()
begin = time.perf_counter()
x_adv = autoattack(model, x, y, eps=8 / 255, version="standard", batch_size=1000,
                   on_stage=lambda name: stages.append([name, time.perf_counter() - begin]))
sync()
seconds = time.perf_counter() - begin
with torch.no_grad():
    clean, robust = ((model(t).argmax(1) == y).float().mean().item() for t in (x, x_adv))
json.dump({"images": n, "seconds": seconds, "images_per_s": n / seconds, "clean_acc": clean, "robust_acc": robust,
           "stage_start_s": stages, "projected_10k_images_s": seconds * 10_000 / n,
           "note": "AutoAttack's cost grows with the points still robust; the 10k projection assumes the same "
                   "clean and robust accuracy"}, open(out, "w"), indent=1)
EOF

"$py" - "$work" "$out" "$(( $(date +%s) - start ))" "${TINY:-0}" <<'EOF'
import json, sys
from pathlib import Path

work, out, seconds, tiny = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
parts = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json"))}
result = {"tiny": tiny, "script_seconds": seconds, **parts}
Path(out).write_text(json.dumps(result, indent=1) + "\n")
for name in ("preact18", "preact18_compile", "wrn34_10"):
    r = parts[name]
    for row in r["train"]:
        print(f"{name} {r['settings']['model']} batch {r['settings']['batch']} compile {r['settings']['compile']}: "
              f"{row['method']} {row['images_per_s']:.1f} img/s, {row['ratio']:.2f}x the reference")
aa = parts["autoattack"]
print(f"AutoAttack standard: {aa['images']} images in {aa['seconds']:.1f} s (clean {aa['clean_acc']:.3f}, robust "
      f"{aa['robust_acc']:.3f}); 10k images ~{aa['projected_10k_images_s']:.0f} s. Wrote {out} in {seconds} s.")
EOF
