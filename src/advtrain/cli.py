"""`advtrain train | eval | diagnose | bench | compare | report | quickstart`: parse arguments, call one function,
turn bad input into exit 2."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from advtrain.errors import TrainingStopped, UserError

if TYPE_CHECKING:  # the CLI imports its subcommands' modules lazily, to start fast
    from advtrain.eval import EvalSettings


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the message names the problem, --help shows the rest.
        # Stray arguments are echoed as typed; escape line breaks so the message stays one line.
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _eps_list(text: str) -> list[float]:
    from advtrain.config import parse_number

    try:
        values = [parse_number(part, "value") for part in text.split(",") if part.strip()]
    except UserError as e:  # argparse turns this into its one-line usage error, exit 2
        raise argparse.ArgumentTypeError(str(e)) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected numbers such as 8/255 or 0.03,0.06, got {text!r}")
    return values


def _number(text: str) -> float:
    values = _eps_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one number such as 2/255, got {text!r}")
    return values[0]


def _norm(text: str) -> str:
    from advtrain.attacks.threat import parse_norm

    try:
        return parse_norm(text)
    except ValueError as e:  # argparse turns this into its one-line usage error, exit 2
        raise argparse.ArgumentTypeError(str(e)) from None


def _batch_size(text: str) -> int | str:
    """An integer or "auto"; the integer's range is checked with the other settings, naming --batch-size."""
    if text.strip() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="advtrain", description="Adversarial training and robustness evaluation.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    # --debug is accepted before or after the command; SUPPRESS keeps a subcommand from resetting it.
    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    p = sub.add_parser("train", parents=[debug],
                       help="train a model from a YAML config, then evaluate it and write a report")
    p.add_argument("--config", type=Path, help="YAML config (see configs/); omitted: built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=10 --set threat.eps=8/255")
    p.add_argument("--out", type=Path, help="new run directory")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue a stopped run from its newest intact checkpoint (bit-identical on CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--deterministic", action="store_true", help="use deterministic kernels only")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no evaluation progress: one line per epoch")

    p = sub.add_parser("eval", parents=[debug], help="evaluate a run directory or a weights file under attacks")
    p.add_argument("run_dir", nargs="?", type=Path, help="a run directory made by `advtrain train`")
    p.add_argument("--model", help="model name, for --weights files without a sidecar (e.g. resnet18)")
    p.add_argument("--weights", type=Path, help=".safetensors (with its .json sidecar) or a plain .pt state_dict")
    p.add_argument("--normalize", choices=["none", "dataset"], default="none",
                   help="with --model: normalise inputs with the dataset's mean/std inside the model")
    p.add_argument("--data", help="dataset name (digits, cifar10, cifar100, svhn, npz, synthetic)")
    p.add_argument("--data-root", help="dataset folder or file")
    p.add_argument("--attacks", help="comma-separated robustness attacks clean,fgsm,pgd,cw,aa,apgd and/or inequality "
                   "evaluations gini,inductive_noise,random_noise,inductive_occlusion,corruptions and/or "
                   "vulnerability (per-example AV = CE(x') - CE(x)) and/or invariance (cosine of the penultimate "
                   "features of x and PGD x', at the first --eps with --steps) (default: the run's, or clean,pgd)")
    p.add_argument("--split", choices=["train", "test"],
                   help="the images `vulnerability` runs on: the first --n of this split (default: train)")
    p.add_argument("--compare", nargs="+", type=Path, metavar="RUN_DIR",
                   help="evaluate several run directories side by side (noise and occlusion on the images all "
                   "of them classify correctly), with a clean-vs-robust scatter (tradeoff.png); needs --out "
                   "FILE.json; unset --eps/--steps/... follow the "
                   "first run's config")
    p.add_argument("--attribution", choices=["saliency", "integrated_gradients", "input_x_gradient", "smoothgrad"],
                   default="saliency", help="the attribution map `gini` measures (default: saliency, ∇ₓ z_y)")
    p.add_argument("--corruption-constants", choices=["cifar10", "imagenet"], default="cifar10",
                   help="severity constants of the generated noise corruptions: CIFAR-10-C or ImageNet-C")
    p.add_argument("--corruptions-root", type=Path, metavar="DIR",
                   help="a released CIFAR-10-C folder (gaussian_noise.npy, ..., labels.npy): `corruptions` reads "
                   "its images instead of generating them")
    p.add_argument("--eps", type=_eps_list, help="comma-separated ε list, fractions allowed: 8/255,16/255")
    p.add_argument("--norm", type=_norm, help="threat model norm: linf (also Linf, inf) or l2 (also L2) (default: "
                   "the run's, or linf)")
    p.add_argument("--steps", type=int, help="PGD/CW steps (default 20)")
    p.add_argument("--restarts", type=int, help="PGD/CW restarts (default 1)")
    p.add_argument("--step-size", type=_number, help="PGD/CW step size (default 2.5·ε/steps)")
    # --num-images: under torchrun, whose own parser takes --n for an abbreviation of its options.
    p.add_argument("--n", "--num-images", dest="n", type=int,
                   help="evaluate the first N test images (default: all; under torchrun write --num-images N)")
    p.add_argument("--checkpoint", choices=["best", "last", "ema", "swa"], default="best",
                   help="which checkpoint of a run (ema/swa: its weight averages, when the run kept them)")
    p.add_argument("--batch-size", type=_batch_size, default="auto",
                   help="images per attack batch, or auto: as many as fit the GPU's free memory, 256 on CPU "
                   "(default auto; the batch size that ran is recorded in the eval JSON)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar or lines while the attacks run")
    p.add_argument("--out", type=Path, help="eval JSON path (default: RUN_DIR/eval.json, refused when it holds an "
                   "evaluation under another protocol; none for --weights; required with --compare); figures go to "
                   "RUN_DIR/figures with RUN_DIR/eval.json, else to OUT_STEM-figures next to it")

    p = sub.add_parser("diagnose", parents=[debug],
                       help="check a run or a weights file for gradient masking (METHODS.md §7.7)")
    p.add_argument("run_dir", nargs="?", type=Path, help="a run directory made by `advtrain train`")
    p.add_argument("--model", help="model name, for --weights files without a sidecar (e.g. resnet18)")
    p.add_argument("--weights", type=Path, help=".safetensors (with its .json sidecar) or a plain .pt state_dict")
    p.add_argument("--data", help="dataset name (digits, cifar10, cifar100, svhn, npz, synthetic)")
    p.add_argument("--data-root", help="dataset folder or file")
    p.add_argument("--n", type=int, default=500, help="diagnose on the first N test images (default 500)")
    p.add_argument("--eps", type=_number, help="L∞ ε (default: the run's threat ε, else 8/255)")
    p.add_argument("--surrogate", type=Path, metavar="RUN_DIR",
                   help="a run to craft transfer attacks on (ideally standard-trained); without it the transfer "
                   "check is skipped")
    p.add_argument("--checkpoint", choices=["best", "last", "ema", "swa"], default="best",
                   help="which checkpoint of the run (and of --surrogate)")
    p.add_argument("--batch-size", type=_batch_size, default=256,
                   help="images per attack batch, or auto: as many as fit the GPU's free memory, 256 on CPU "
                   "(default 256)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar or lines while the checks run")
    p.add_argument("--out", type=Path, help="diagnose JSON path (default: RUN_DIR/diagnose.json; none for --weights); "
                   "figures go to RUN_DIR/figures or to OUT_STEM-figures next to it")

    p = sub.add_parser("bench", parents=[debug],
                       help="images/s of each method's training step and of PGD evaluation, against a reference "
                       "loop written like the papers' code, measured in the same run")
    p.add_argument("--model", default="small_cnn", help="registered model name (default small_cnn)")
    p.add_argument("--methods", default="pgd_at", help="comma-separated methods (default pgd_at)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--shape", default="3x32x32", help="input C×H×W, e.g. 1x8x8 (default 3x32x32)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on CPU (the reference loop is always fp32)")
    p.add_argument("--eps", type=_number, default=8 / 255)
    p.add_argument("--attack-steps", type=int, default=10, help="PGD-k of the training attack (default 10)")
    p.add_argument("--eval-steps", type=int, default=20, help="PGD-k of the evaluation attack (default 20)")
    p.add_argument("--iterations", type=int, default=5, help="timed steps per repeat (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats; the median is reported (default 3)")
    p.add_argument("--compile", default="eager",
                   help="torch.compile mode: eager (none), default, reduce-overhead (CUDA graphs) or max-autotune; "
                   "checked against eager gradients as train.compile is")
    p.add_argument("--out", type=Path, help="write the results as JSON here")

    p = sub.add_parser("compare", parents=[debug],
                       help="train and evaluate methods × seeds × sweeps under one protocol; write a paper-style "
                       "table, a CSV and an HTML report (resumable: rerun to continue)")
    p.add_argument("--config", type=Path, required=True, help="the grid's YAML file (see docs/experiments/compare.md)")
    p.add_argument("--out", type=Path, required=True, help="folder for the cells (OUT/cells/...) and the report")

    p = sub.add_parser("report", parents=[debug],
                       help="the table, CSV and HTML report of `compare` from existing run directories (rows: runs "
                       "that differ only by seed)")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, required=True, help="folder for report.html, table.md and results.csv")
    p.add_argument("--title", default="advtrain report", help="the report's title")

    p = sub.add_parser("quickstart", parents=[debug],
                       help="train standard and PGD-AT CNNs on digits and compare them (about 2 min)")
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="folder for the two run directories")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per run (default 15, half of configs/digits.yaml's; the LR decays at the same "
                   "fractions)")
    return parser


def _train(args: argparse.Namespace) -> None:
    from advtrain.config import load_config
    from advtrain.workflow import resume_and_evaluate, train_and_evaluate

    if args.resume is not None:
        given = [flag for flag, value in (("--config", args.config), ("--set", args.overrides), ("--out", args.out),
                                          ("--overwrite", args.overwrite), ("--deterministic", args.deterministic))
                 if value]
        if given:
            raise UserError(f"--resume continues a run with its own config.yaml: drop {', '.join(given)}")
        report = resume_and_evaluate(args.resume, quiet=args.quiet)
        out = args.resume
    else:
        if args.out is None:
            raise UserError("train needs --out NEW_RUN_DIR (or --resume RUN_DIR to continue a run)")
        flags = [("train.progress=quiet", args.quiet), ("train.deterministic=true", args.deterministic)]
        config = load_config(args.config, [*args.overrides, *(o for o, on in flags if on)])
        report = train_and_evaluate(config, args.out, overwrite=args.overwrite, progress=not args.quiet)
        out = args.out
    if report is not None:  # None: a torchrun process other than rank 0, which wrote nothing
        print(f"done: {out}/report.md, {out}/eval.json")


def _eval_out(args: argparse.Namespace) -> Path | None:
    """The eval JSON path, after the checks on the flags that choose what to evaluate (before any work)."""
    if args.compare is not None:
        given = [flag for flag, value in (("RUN_DIR", args.run_dir), ("--weights", args.weights),
                                          ("--model", args.model)) if value is not None]
        if given:
            raise UserError(f"--compare takes every run directory to evaluate: drop {', '.join(given)} "
                            "(list all runs after --compare)")
        if args.out is None:
            raise UserError("--compare writes one JSON for the whole group: pass --out FILE.json")
    out = args.out or (args.run_dir / "eval.json" if args.run_dir is not None else None)
    if out is not None and (out.is_dir() or not out.name):
        # Checked before the attacks run: a long evaluation must not be lost to an unwritable --out.
        raise UserError(f"--out {str(out) or repr('')} is a folder: give a file name such as eval.json")
    return out


def _eval_settings(args: argparse.Namespace, names: tuple[list[str], list[str]] | None) -> EvalSettings:
    """What evaluate_loaded / compare_runs run. Unset options fall back to the (first) run's own eval/threat
    settings, then to the defaults."""
    from advtrain.config import EvalConfig
    from advtrain.eval import EvalSettings, split_attack_names
    from advtrain.eval.inequality import InequalityOptions
    from advtrain.rundir import read_config

    run_dir = args.compare[0] if args.compare else args.run_dir
    run = read_config(run_dir) if run_dir is not None else {}
    defaults = EvalConfig()
    run_eval, threat = run.get("eval") or {}, run.get("threat") or {}
    attacks, inequality = names or split_attack_names(run_eval.get("attacks", defaults.attacks))
    return EvalSettings(
        attacks=attacks, inequality=inequality,
        eps=args.eps or run_eval.get("eps") or [threat.get("eps", 8 / 255)],
        norm=args.norm or threat.get("norm", "linf"),
        steps=args.steps if args.steps is not None else run_eval.get("steps", defaults.steps),
        restarts=args.restarts if args.restarts is not None else run_eval.get("restarts", defaults.restarts),
        step_size=args.step_size, n=args.n, batch_size=args.batch_size, device=args.device,
        precision=args.precision, seed=args.seed,
        inequality_options=InequalityOptions(args.attribution, args.corruption_constants, args.corruptions_root),
        vulnerability_split=args.split or "train",
    )


def _eval(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from advtrain.distributed import local_device, processes
    from advtrain.eval import (
        compare_runs,
        evaluate_loaded,
        inequality_saliency,
        load_for_eval,
        load_group,
        split_attack_names,
    )
    from advtrain.eval.parts import EvalParts
    from advtrain.eval.protocol import check_run_eval_kept
    from advtrain.eval.robustness import AttackResult, write_per_example
    from advtrain.fileio import atomic_write_text
    from advtrain.progress_display import shown_progress
    from advtrain.report import write_run_report
    from advtrain.report.analysis_tables import inequality_text, invariance_text, vulnerability_text
    from advtrain.report.inequality_figures import write_inequality_figures
    from advtrain.report.tables import comparison_text, eval_rows, text_table, tradeoff_line
    from advtrain.report.tradeoff_figures import write_tradeoff_figure
    from advtrain.report.vulnerability_figures import write_vulnerability_figure
    from advtrain.runtime import resolve_device

    out = _eval_out(args)
    # Names given on the command line are checked before any model is loaded.
    names = split_attack_names(args.attacks.split(",")) if args.attacks else None
    if args.split is not None and "vulnerability" not in (names[1] if names else ()):
        raise UserError("--split chooses the images of the vulnerability evaluation: add vulnerability to "
                        "--attacks or drop --split")
    if args.corruptions_root is not None:  # a bad folder fails now, not after the attacks have run
        from advtrain.eval.corruptions import load_cifar10_c

        load_cifar10_c(args.corruptions_root, "gaussian_noise", 1)
    load = {"data_name": args.data, "data_root": args.data_root, "checkpoint": args.checkpoint,
            "normalize": args.normalize}
    if args.compare is not None:
        models, data = load_group(args.compare, **load)
    else:
        loaded, data = load_for_eval(run_dir=args.run_dir, weights=args.weights, model_name=args.model, **load)
        # Labels the inequality results: the run directory's name, or the weights file's.
        models = {args.run_dir.resolve().name if args.run_dir is not None else args.weights.stem: loaded}
    settings = _eval_settings(args, names)
    checkpoint = None if args.weights is not None else args.checkpoint
    # Finished parts go next to the JSON, so rerunning a killed evaluation resumes it (advtrain.eval.parts).
    parts = EvalParts(out.with_name(f"{out.name}.parts")) if out is not None else None
    settings = replace(settings, device=local_device(settings.device))
    if args.out is None and args.run_dir is not None:  # the run's own eval.json: never silently replaced
        check_run_eval_kept(out, settings, data, checkpoint)
    intact = (f"the finished parts in {parts.folder} are intact: rerun the same command to resume"
              if parts is not None else "pass --out FILE.json to keep finished parts for a rerun")
    per_example: dict[str, list[AttackResult]] = {}

    def progress(label: str, result: AttackResult) -> None:
        per_example.setdefault(label, []).append(result)
        print(f"{label}:{result.summary()}" if args.compare is not None else result.summary(), file=sys.stderr)

    with processes(resolve_device(settings.device), "evaluation", intact) as procs, \
            shown_progress(procs.main and not args.quiet) as shown:
        # Under torchrun every process attacks its part of the images; rank 0 alone prints and writes.
        on_result = progress if procs.main else None
        if args.compare is not None:
            report = compare_runs(models, data, settings, checkpoint=checkpoint, procs=procs, parts=parts,
                                  on_result=on_result, progress=shown)
        else:
            (label,) = models
            report, _ = evaluate_loaded(loaded, data, settings, checkpoint=checkpoint, label=label, procs=procs,
                                        parts=parts, progress=shown,
                                        on_result=None if on_result is None else lambda r: progress(label, r))
    if not procs.main:
        return
    if settings.attacks:
        if args.compare is not None:
            print(comparison_text(report["models"], tradeoff=True))
        else:
            print(text_table(["attack", "eps", "accuracy %"], eval_rows(report)))
            if (line := tradeoff_line(report)) is not None:
                print(line)
    entries = report["models"].values() if args.compare is not None else [report]
    if parts is not None and (reused := sum(e.get("parts", {}).get("reused", 0) for e in entries)):
        print(f"resumed: {reused} finished part(s) read back from {parts.folder}")
    if "inequality" in report:
        print(inequality_text(report["inequality"]))
    if "vulnerability" in report:
        print(vulnerability_text(report["vulnerability"]))
    if "invariance" in report:
        print(invariance_text(report["invariance"]))
    if out is not None:
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
        if per_example:
            print(f"wrote {write_per_example(out.with_name(f'{out.stem}.examples.npz'), per_example)}")
        if parts is not None:
            parts.remove()
    # The run's figures belong to its eval.json: another evaluation's go next to its own JSON.
    run_eval = args.run_dir is not None and out == args.run_dir / "eval.json"
    figures = args.run_dir / "figures" if run_eval else (
        out.with_name(f"{out.stem}-figures") if out is not None else None)
    if figures is not None and "inequality" in report:
        saliency = inequality_saliency(models, data, report["inequality"], n=args.n, device=args.device,
                                       batch_size=report["batch_size"])
        for path in write_inequality_figures(report["inequality"], figures, saliency):
            print(f"wrote {path}")
    if figures is not None and "vulnerability" in report:
        print(f"wrote {write_vulnerability_figure(report['vulnerability'], figures)}")
    if figures is not None and args.compare is not None and "tradeoff" in report:
        print(f"wrote {write_tradeoff_figure(report['tradeoff'], figures)}")
    if run_eval:
        write_run_report(args.run_dir)


def _diagnose(args: argparse.Namespace) -> None:
    from advtrain.attacks.threat import check_radius, parse_norm
    from advtrain.bounds import Ge, Lt
    from advtrain.eval.api import check_fits, eval_images, load_for_eval
    from advtrain.eval.batching import check_batch_setting, resolve_eval_batch
    from advtrain.eval.checkpoints import checkpoint_path, load_checkpoint_model
    from advtrain.eval.diagnose import CHECK_NAMES, Check, diagnose
    from advtrain.eval.progress import TaskProgress
    from advtrain.fileio import atomic_write_text
    from advtrain.progress_display import shown_progress
    from advtrain.report.analysis_tables import diagnose_text
    from advtrain.report.diagnose_figures import write_diagnose_figures
    from advtrain.rundir import read_config
    from advtrain.runtime import SEED_LIMIT, resolve_device

    # Every check on the flags, the model and the surrogate comes before the first attack: nothing is written
    # unless all of them pass.
    out = args.out or (args.run_dir / "diagnose.json" if args.run_dir is not None else None)
    if out is not None and (out.is_dir() or not out.name):
        raise UserError(f"--out {str(out) or repr('')} is a folder: give a file name such as diagnose.json")
    for value, bounds, flag in ((args.n, (Ge(1), Lt(2**63)), "--n"), (args.seed, (Ge(0), Lt(SEED_LIMIT)), "--seed")):
        for bound in bounds:
            bound.check(value, flag)
    check_batch_setting(args.batch_size, "--batch-size")
    if args.eps is not None:
        check_radius(args.eps, "linf", "--eps")  # names the fix for 0..255 units (--eps 8)
    if args.surrogate is not None and not args.surrogate.is_dir():
        raise UserError(f"--surrogate {args.surrogate} is not a run directory: pass one made by `advtrain train`")
    device = resolve_device(args.device)
    loaded, data = load_for_eval(run_dir=args.run_dir, weights=args.weights, model_name=args.model,
                                 data_name=args.data, data_root=args.data_root, checkpoint=args.checkpoint)
    eps = args.eps
    if eps is None:
        threat = read_config(args.run_dir).get("threat") if args.run_dir is not None else None
        threat = threat if isinstance(threat, dict) else {}
        if parse_norm(threat.get("norm", "linf"), "the run's threat.norm") != "linf":
            raise UserError(f"the run's threat model is {threat.get('norm')} but diagnose checks L∞: pass --eps")
        eps = threat.get("eps", 8 / 255)
        try:
            check_radius(eps, "linf", "the run's threat.eps")
        except UserError as e:
            raise UserError(f"{e}; or pass --eps") from None
    surrogate = None
    if args.surrogate is not None:
        surrogate = load_checkpoint_model(checkpoint_path(args.surrogate, args.checkpoint))
        check_fits(surrogate, data, f"pass a --surrogate trained on {data.name}")

    x, y = eval_images(data, args.n, device)
    model = loaded.model.to(device)
    surrogate_model = None if surrogate is None else surrogate.model.to(device)
    # Diagnose runs in fp32; transfer attacks are crafted on the surrogate with the same batch size.
    batch = min(resolve_eval_batch(m, x, y, len(y), args.batch_size, None)
                for m in (model, surrogate_model) if m is not None)
    with shown_progress(not args.quiet) as progress:
        checks = TaskProgress(progress, "diagnose", len(CHECK_NAMES), "checks")

        def on_check(check: Check) -> None:
            print(f"  {check.name:<20} {check.verdict}", file=sys.stderr)
            checks.advance()

        report = diagnose(model, x, y, eps=float(eps), seed=args.seed, batch_size=batch, surrogate=surrogate_model,
                          on_check=on_check)
    report = {
        "model": loaded.spec.name, "data": data.name, "source": str(loaded.source),
        "checkpoint": None if args.weights is not None else args.checkpoint, "epoch": loaded.metadata.get("epoch"),
        "surrogate": None if surrogate is None else str(surrogate.source), "device": str(device),
        "batch_size": batch,
    } | report
    print(diagnose_text(report))
    if out is not None:
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    figures = args.run_dir / "figures" if args.run_dir is not None else (
        out.with_name(f"{out.stem}-figures") if out is not None else None)
    if figures is not None:
        for path in write_diagnose_figures(report, figures):
            print(f"wrote {path}")


def _bench(args: argparse.Namespace) -> None:
    from advtrain.bench import BenchSettings, bench_text, parse_shape, run_bench
    from advtrain.fileio import atomic_write_text

    settings = BenchSettings(
        model=args.model, methods=[m.strip() for m in args.methods.split(",") if m.strip()], batch=args.batch,
        shape=parse_shape(args.shape), device=args.device, eps=args.eps, attack_steps=args.attack_steps,
        eval_steps=args.eval_steps, iterations=args.iterations, warmup=args.warmup, repeats=args.repeats,
        precision=args.precision, compile=args.compile,
    )
    if args.out is not None and args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder: give a file path such as bench.json")
    result = run_bench(settings, log=lambda line: print(line, file=sys.stderr))
    print(bench_text(result))
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


def _compare(args: argparse.Namespace) -> None:
    from advtrain.compare import load_grid, run_grid, write_grid_report
    from advtrain.report.grid import read_groups

    grid = load_grid(args.config)  # every cell's config and the protocol are checked before any training
    _check_report_folder(args.out)
    groups = read_groups(run_grid(grid, args.out))
    for path in write_grid_report(groups, args.out, title=grid.name):
        print(f"wrote {path}")
    print((args.out / "table.md").read_text(encoding="utf-8"))


def _report(args: argparse.Namespace) -> None:
    from advtrain.compare import write_grid_report
    from advtrain.report.grid import group_cells, read_cell

    _check_report_folder(args.out)
    groups = group_cells([read_cell(run) for run in args.run_dirs])
    for path in write_grid_report(groups, args.out, title=args.title):
        print(f"wrote {path}")


def _check_report_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the report")


def _quickstart(args: argparse.Namespace) -> None:
    from advtrain.quickstart import quickstart

    quickstart(args.out, epochs=args.epochs)


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 internal error (a bug: rerun with --debug), 2 bad input, 3 training diverged,
    128+N stopped by signal N (a checkpoint was saved)."""
    args = build_parser().parse_args(argv)
    # Each line reaches a log or pipe as it is printed, not when a block buffer fills minutes later.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        commands = {"train": _train, "eval": _eval, "diagnose": _diagnose, "bench": _bench, "compare": _compare,
                    "report": _report, "quickstart": _quickstart}
        if args.command not in ("train", "eval") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError(f"{args.command} runs in one process; only train and eval run under torchrun: run "
                            f"advtrain {args.command} without torchrun")
        commands[args.command](args)
    except (UserError, TrainingStopped) as e:
        if args.debug:
            raise
        prefix = "error: " if isinstance(e, UserError) else ""
        print(f"advtrain: {prefix}{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("advtrain: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # Disk full, read-only folder, permission denied: the user's environment, not a bug.
        if args.debug:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"advtrain: error: cannot access{where}: {e.strerror or e}; free space or fix the path", file=sys.stderr)
        return 2
    except Exception as e:
        if args.debug:
            raise
        print(f"advtrain: internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]} "
              "(rerun with --debug for the traceback and please report it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
