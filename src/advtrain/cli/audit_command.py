"""`advtrain audit`: load a model and its dataset as `advtrain eval` does, audit it (`advtrain.audit`), print the
verdicts and write OUT/audit.json and OUT/audit.html."""

from __future__ import annotations

import argparse
from pathlib import Path

from advtrain.errors import UserError


def audit_command(args: argparse.Namespace) -> None:
    from advtrain.attacks.threat import check_distance
    from advtrain.bounds import Ge, Lt
    from advtrain.eval.api import eval_images, load_for_eval
    from advtrain.eval.audit import get_budget
    from advtrain.model_audit import audit
    from advtrain.progress_display import shown_progress
    from advtrain.rundir import read_config
    from advtrain.runtime import SEED_LIMIT, resolve_device

    # Every flag is checked before the model is loaded, and the model and data before the first attack.
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file: give a folder for audit.json and audit.html")
    budget = get_budget(args.budget)
    threat = read_config(args.run_dir).get("threat") if args.run_dir is not None else None
    threat = threat if isinstance(threat, dict) else {}
    eps = args.eps if args.eps is not None else threat.get("eps", 8 / 255)
    norm = args.norm or threat.get("norm", "linf")
    check_distance(eps, norm, "--eps")
    for value, bounds, flag in ((args.batch_size, (Ge(1),), "--batch-size"), (args.seed, (Ge(0), Lt(SEED_LIMIT)),
                                                                                "--seed")):
        for bound in bounds:
            bound.check(value, flag)
    device = resolve_device(args.device)
    loaded, data = load_for_eval(run_dir=args.run_dir, weights=args.weights, model_name=args.model,
                                 data_name=args.data, data_root=args.data_root, checkpoint=args.checkpoint,
                                 normalize=args.normalize)
    largest = max(budget.n, budget.diagnose_n, budget.saliency_n, budget.vulnerability_n, budget.invariance_n)
    x, y = eval_images(data, largest, device)
    with shown_progress(not args.quiet) as progress:
        result = audit(loaded.model, x, y, eps=float(eps), norm=norm, budget=budget, out=args.out, seed=args.seed,
                       batch_size=args.batch_size, device=str(device), progress=progress,
                       describe={"model": loaded.spec.name, "data": data.name, "source": str(loaded.source)})
    for mode, verdict in result.verdicts.items():
        print(f"{mode:<14} {verdict['verdict']}")
    print(f"wrote {args.out / 'audit.json'} and {args.out / 'audit.html'}")


def add_audit_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser], device_help: str,
                     seed_help: str, number: type) -> None:
    """The `advtrain audit` subcommand and its flags."""
    p = sub.add_parser("audit", parents=parents,
                       help="audit a model for gradient masking, unequal saliency, uneven vulnerability and "
                       "invariance, within a budget; write a report card (audit.html) and audit.json (resumable)")
    p.add_argument("run_dir", nargs="?", type=Path,
                   help="a run directory made by `advtrain train`")
    p.add_argument("--model", help="model name, for --weights files without a sidecar (e.g. resnet18)")
    p.add_argument("--weights", type=Path,
                   help=".safetensors (with its .json sidecar) or a plain .pt state_dict")
    p.add_argument("--normalize", choices=["none", "dataset"], default="none",
                   help="with --model: normalise inputs with the dataset's mean/std inside the model")
    p.add_argument("--data", help="dataset name (digits, cifar10, cifar100, svhn, npz, synthetic)")
    p.add_argument("--data-root", help="dataset folder or file")
    p.add_argument("--checkpoint", choices=["best", "last", "ema", "swa"], default="best",
                   help="which checkpoint of a run")
    p.add_argument("--eps", type=number, help="attack radius, fractions allowed (default: the run's threat ε, "
                   "else 8/255)")
    p.add_argument("--norm", choices=["linf", "l2"], help="threat norm (default: the run's, else linf)")
    p.add_argument("--budget", choices=["quick", "standard"], default="quick",
                   help="quick: 100 images, PGD-10, AutoAttack's APGD-CE + APGD-T; standard: 1000 images, PGD-50, "
                   "the standard AutoAttack (the card states every size; default quick)")
    p.add_argument("--batch-size", type=int, default=256, help="images per attack batch (default 256)")
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--quiet", action="store_true", help="no progress bar or lines")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for audit.json and audit.html (an interrupted audit rerun with the same --out resumes)")
