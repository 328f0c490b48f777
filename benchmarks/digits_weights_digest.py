"""Digest of the weights `advtrain train` produces for every bundled digits config, to prove a refactor changes no
behaviour: run it on the commit before the change and after it, on the same machine, and compare.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/digits_weights_digest.py --out before.json   # old commit
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/digits_weights_digest.py --compare before.json

Each config trains for 2 epochs with its LR milestone moved to epoch 1 (so stage-dependent terms such as ISEAT's λ
run both stages), through the command line (the contract a refactor keeps), and its last checkpoint's tensors are
hashed (names, dtypes, shapes and bytes; not the file, whose metadata may change). IGD distils from the `standard`
run. Bit-identity holds on one CPU: another CPU's vector units may round differently, so record both sides on the
same machine. About 3 minutes on one core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "advtrain" / "configs"
SHORT = ["train.epochs=2", "schedule.milestones=[1]", "eval.attacks=[clean]", "train.progress=quiet"]


def digest(checkpoint: Path) -> str:
    tensors = load_file(str(checkpoint))
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def train(config: Path, out: Path, extra: list[str]) -> str:
    overrides = [arg for s in [*SHORT, *extra] for arg in ("--set", s)]
    subprocess.run([sys.executable, "-m", "advtrain", "train", "--config", str(config), *overrides, "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL, env=os.environ)
    return digest(out / "checkpoints" / "last.safetensors")


def digests(work: Path) -> dict[str, str]:
    runs = {"standard": train(CONFIGS / "digits.yaml", work / "standard", ["method.name=standard"])}
    for config in sorted(CONFIGS.glob("digits*.yaml")):
        extra = [f"method.teacher={work / 'standard'}"] if config.stem == "digits_igd" else []
        runs[config.stem] = train(config, work / config.stem, extra)
        print(f"{config.stem}: {runs[config.stem][:16]}", flush=True)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="write the digests to this JSON file")
    group.add_argument("--compare", type=Path, help="compare with digests recorded earlier; exit 1 on a difference")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        runs = digests(Path(work))
    if args.out:
        args.out.write_text(json.dumps(runs, indent=1) + "\n")
        return 0
    before = json.loads(args.compare.read_text())
    differ = sorted(name for name in before.keys() | runs.keys() if before.get(name) != runs.get(name))
    print(f"{len(runs) - len(differ)} of {len(runs)} configs bit-identical" + (f"; differ: {differ}" if differ else ""))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
