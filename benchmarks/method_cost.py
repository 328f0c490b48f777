"""Cost of one training step of every baseline method, as a ratio to PGD-AT measured in the same run.

Each method trains the same freshly initialised model on the same fixed batch for `--steps` timed steps
(after `--warmup` untimed ones), through the same code the trainer runs: `method.loss`, backward, the
optimizer step and `after_step`. The table's ratio column is seconds per step divided by PGD-AT's.

    OMP_NUM_THREADS=1 python benchmarks/method_cost.py --model small_cnn --size 8 --channels 1 --batch 64
    python benchmarks/method_cost.py --device cuda --model preact_resnet18 --batch 128   # on a GPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from advtrain.attacks import ThreatModel
from advtrain.checkpoint import save_weights
from advtrain.config import load_config
from advtrain.methods import Batch, StepContext, build_method
from advtrain.models import build_model
from advtrain.models.spec import ModelSpec
from advtrain.train.step import train_step

# (label, --set overrides for the method section); all at the threat model given on the command line.
METHODS: list[tuple[str, list[str]]] = [
    ("standard", ["method.name=standard"]),
    ("pgd_at", ["method.name=pgd_at"]),
    ("trades", ["method.name=trades"]),
    ("mart", ["method.name=mart"]),
    ("awp(pgd_at)", ["method.name=awp", "method.warmup_epochs=0"]),
    ("awp(trades)", ["method.name=awp", "method.base.name=trades", "method.warmup_epochs=0"]),
    ("fgsm", ["method.name=fgsm"]),
    ("fgsm_rs", ["method.name=fgsm_rs"]),
    ("n_fgsm", ["method.name=n_fgsm"]),
    ("grad_align", ["method.name=grad_align", "method.lam=0.2"]),
    ("igd", ["method.name=igd"]),
    ("iseat", ["method.name=iseat"]),
    ("sat_r1", ["method.name=sat_r1"]),
    ("sat_r2", ["method.name=sat_r2"]),
    ("sat_r3", ["method.name=sat_r3"]),
    ("arat", ["method.name=arat"]),  # the teacher: a same-architecture file written by main() (cost is the same)
]


def seconds_per_step(
    overrides: list[str], args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, teacher: Path
) -> float:
    config = load_config(None, [f"threat.eps={args.eps}", f"method.teacher={teacher}", *overrides]
                         if "method.name=igd" in overrides else [f"threat.eps={args.eps}", *overrides])
    method = build_method(config.method, ThreatModel(config.threat.norm, config.threat.eps))
    torch.manual_seed(0)
    model = build_model(args.model, in_channels=x.shape[1], input_size=x.shape[-1]).to(args.device)
    model = method.prepare_model(model, x[:2])  # as the trainer does (AR-AT: split BN and predictors)
    params = [*model.parameters(), *(p for m in method.extra_modules().values() for p in m.parameters())]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    generator = torch.Generator(args.device).manual_seed(0)
    model.train()

    def step(i: int) -> None:
        train_step(method, model, optimizer, Batch(x, y), StepContext(0, i, generator))

    for i in range(args.warmup):
        step(i)
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, args.channels, args.size, args.size, generator=g).to(args.device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "teacher.safetensors"
        spec = ModelSpec(args.model, 10, args.channels, args.size)
        save_weights(teacher, spec.build().state_dict(), {"model": spec.to_dict()})
        times = {label: seconds_per_step(overrides, args, x, y, teacher) for label, overrides in METHODS}
    reference = times["pgd_at"]
    print(f"# {args.model}, batch {args.batch}×{args.channels}×{args.size}×{args.size}, ε={args.eps}, "
          f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{args.steps} timed steps after {args.warmup}")
    print("| method | ms / step | × PGD-AT |\n|---|---:|---:|")
    for label, seconds in times.items():
        print(f"| {label} | {1000 * seconds:.1f} | {seconds / reference:.2f} |")


if __name__ == "__main__":
    main()
