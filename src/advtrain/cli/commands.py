"""What each `advtrain` command does with its parsed arguments: check them, call the library, print the results."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from advtrain.cli.audit_command import audit_command
from advtrain.errors import UserError

if TYPE_CHECKING:  # the CLI imports its commands' modules lazily, to start fast
    from advtrain.eval import EvalSettings


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
    from advtrain.eval import EvalSettings, split_attack_names
    from advtrain.eval.inequality import InequalityOptions
    from advtrain.eval.settings import cli_flag, eval_settings
    from advtrain.rundir import read_config

    run_dir = args.compare[0] if args.compare else args.run_dir
    run = read_config(run_dir) if run_dir is not None else {}
    defaults = EvalSettings()
    run_eval, threat = run.get("eval") or {}, run.get("threat") or {}
    attacks, inequality = names or split_attack_names(run_eval.get("attacks", defaults.attacks))
    return eval_settings(
        cli_flag, attacks=attacks, inequality=inequality,
        eps=args.eps or run_eval.get("eps") or [threat.get("eps", 8 / 255)],
        norm=args.norm or threat.get("norm", "linf"),
        steps=args.steps if args.steps is not None else run_eval.get("steps", defaults.steps),
        restarts=args.restarts if args.restarts is not None else run_eval.get("restarts", defaults.restarts),
        step_size=args.step_size, n=args.n, batch_size=args.batch_size, device=args.device,
        checkpoint=args.checkpoint, precision=args.precision, seed=args.seed,
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
    from advtrain.eval.inequality import check_corruptions_root
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
    from advtrain.runtime import resolve_device, torch_settings

    out = _eval_out(args)
    # Names given on the command line are checked before any model is loaded.
    names = split_attack_names(args.attacks.split(",")) if args.attacks else None
    if args.split is not None and "vulnerability" not in (names[1] if names else ()):
        raise UserError("--split chooses the images of the vulnerability evaluation: add vulnerability to "
                        "--attacks or drop --split")
    load = {"data_name": args.data, "data_root": args.data_root, "checkpoint": args.checkpoint,
            "normalize": args.normalize}
    if args.compare is not None:
        models, data = load_group(args.compare, **load)
    else:
        loaded, data = load_for_eval(run_dir=args.run_dir, weights=args.weights, model_name=args.model, **load)
        # Labels the inequality results: the run directory's name, or the weights file's.
        models = {args.run_dir.resolve().name if args.run_dir is not None else args.weights.stem: loaded}
    if args.corruptions_root is not None:  # a bad folder fails now, not after the attacks have run
        check_corruptions_root(args.corruptions_root, data)
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

    # The accuracies are printed once, in the table at the end (the progress lines show that attacks run); each
    # result is kept here for the per-example file.
    def keep(label: str, result: AttackResult) -> None:
        per_example.setdefault(label, []).append(result)

    with torch_settings(), processes(resolve_device(settings.device), "evaluation", intact) as procs, \
            shown_progress(procs.main and not args.quiet) as shown:
        # Under torchrun every process attacks its part of the images; rank 0 alone prints and writes.
        on_result = keep if procs.main else None
        if args.compare is not None:
            report = compare_runs(models, data, settings, checkpoint=checkpoint, procs=procs, parts=parts,
                                  on_result=on_result, progress=shown)
        else:
            (label,) = models
            report, _ = evaluate_loaded(loaded, data, settings, checkpoint=checkpoint, label=label, procs=procs,
                                        parts=parts, progress=shown,
                                        on_result=None if on_result is None else lambda r: keep(label, r))
    if not procs.main:
        return
    if settings.attacks:
        print(f"{report['n']} images, {report['precision']} on {report['device']}")
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
        precision=args.precision, compile=args.compile, attack_graph=args.attack_graph,
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


def _configs(args: argparse.Namespace) -> None:
    from advtrain.configfile import bundled_configs, config_description

    configs = bundled_configs()
    width = max(map(len, configs))
    for name, path in configs.items():
        print(f"{name:<{width}}  {config_description(path)}")


COMMANDS = {"train": _train, "eval": _eval, "diagnose": _diagnose, "bench": _bench, "compare": _compare,
            "report": _report, "quickstart": _quickstart, "configs": _configs,
            "audit": audit_command}
