"""Markdown tables of one `benchmarks/gpu_evidence.sh` output folder, made from that folder alone.

    python benchmarks/gpu_evidence_report.py OUT_DIR

Reads environment.json and steps.tsv (what ran where, and each step's wall seconds), each method's run directory
(metrics.jsonl, checkpoints/best.json) and the compare_*.json files. Prints the setting, the main table (per
method: best epoch, clean, PGD-20 and AutoAttack apgd-preset accuracy of the best checkpoint, clean and PGD-20 of
the last, training seconds and images/s) and the three side tables against PGD-AT: IGD (saliency Gini, inductive
noise), ISEAT (per-example adversarial vulnerability) and AR-AT (representation invariance). A file a failed step
never wrote leaves its numbers out, with a line naming it.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from advtrain.report.run_report import read_metrics
from advtrain.report.tables import fmt_acc, fmt_eps, markdown_table

METHODS = ("standard", "pgd_at", "trades", "igd", "iseat", "arat", "fgsm_rs", "sat_r1", "sat_r2")
INDUCTIVE_RHOS = ("0.002", "0.01", "0.02")  # three of the ten noise fractions inductive_noise measures
VULNERABILITY_KEYS = ("mean", "std", "cv", "gini", "top10_share", "clean_loss", "adv_loss")
INVARIANCE_KEYS = ("mean", "mean_correct", "std", "min", "median")


def read_json(path: Path) -> Any:
    """The parsed file, or None when it does not exist (the step that writes it failed or did not run)."""
    return json.loads(path.read_text()) if path.is_file() else None


def read_steps(out: Path) -> dict[str, tuple[float, str]]:
    """steps.tsv as {step: (wall seconds, "ok" or "failed")}; a step run again by a later invocation of the script
    counts with its latest run."""
    path = out / "steps.tsv"
    if not path.is_file():
        return {}
    steps = {}
    for line in path.read_text().splitlines():
        name, seconds, status = line.split("\t")
        steps[name] = (float(seconds), status)
    return steps


def accuracy(compare: Mapping[str, Any] | None, method: str, attack: str) -> float | None:
    """One attack's accuracy for one method in a compare JSON, or None when either is not there."""
    entry = (compare or {}).get("models", {}).get(method)
    if entry is None:
        return None
    return next((r["accuracy"] for r in entry["results"] if r["attack"] == attack), None)


def training_summary(run_dir: Path) -> dict[str, Any] | None:
    """Epochs run, best epoch and the metric that chose it, seconds (training and validation, summed over epochs)
    and the median over epochs of the training images/s (validation excluded); None for a run that did not finish
    (no eval.json: a stopped or failed run's metrics are not reported)."""
    if not (run_dir / "eval.json").is_file():
        return None
    rows = read_metrics(run_dir)
    best = read_json(run_dir / "checkpoints" / "best.json") or {}
    return {"epochs": rows[-1]["epoch"], "best_epoch": best.get("epoch"), "metric": best.get("metric"),
            "seconds": sum(r["seconds"] for r in rows),
            "images_per_s": statistics.median(r["images_per_s"] for r in rows)}


def setting_lines(out: Path, steps: Mapping[str, tuple[float, str]]) -> list[str]:
    env = read_json(out / "environment.json")
    if env is None:
        return [f"No environment.json in {out}: the script did not start there."]
    lines = [f"- Device: {env['device']}; torch {env['torch_version']}, CUDA {env['cuda_version'] or '–'}, "
             f"Python {env['python_version']}; commit {env['commit'] or 'unknown'}.",
             f"- Model {env['model']}, {env['epochs']} epochs, one seed (0)."
             + (" **TINY run: a check of the script on the CPU, its numbers mean nothing.**" if env["tiny"] else "")]
    done = {name: seconds for name, (seconds, _) in steps.items() if name != "script"}
    if done:
        lines.append(f"- Wall seconds: {sum(done.values()):.0f} over the {len(done)} steps recorded (training "
                     f"{sum(v for n, v in done.items() if n.startswith('train_')):.0f}, evaluation "
                     f"{sum(v for n, v in done.items() if n.startswith('compare_')):.0f})"
                     + (f"; the script's last invocation took {steps['script'][0]:.0f}." if "script" in steps else "."))
    failed = [name for name, (_, status) in steps.items() if status == "failed" and name != "script"]
    if failed:
        lines.append(f"- **Failed in their latest run:** {', '.join(failed)} (their logs: logs/STEP.log).")
    return lines


def main_table(out: Path, steps: Mapping[str, tuple[float, str]]) -> str:
    best, last = read_json(out / "compare_best.json"), read_json(out / "compare_last.json")
    rows = []
    for method in METHODS:
        run = training_summary(out / method)
        if run is None:
            rows.append([method, "did not finish", *[None] * 9])
            continue
        rows.append([method, f"{run['best_epoch']} / {run['epochs']}", run["metric"],
                     *(fmt_acc(accuracy(best, method, a)) for a in ("clean", "pgd", "autoattack")),
                     *(fmt_acc(accuracy(last, method, a)) for a in ("clean", "pgd")),
                     f"{run['seconds']:.0f}", f"{run['images_per_s']:.0f}", steps.get(f"train_{method}", (None,))[0]])
    n = (best or last or {}).get("n")
    notes = [f"Test images: {n}." if n else "No compare_best.json or compare_last.json: no test accuracies."]
    if best is None and last is not None:
        notes.append("compare_best.json is missing: the best checkpoints were not evaluated.")
    headers = ["method", "best epoch / epochs", "selected on", "best: clean %", "best: PGD-20 %",
               "best: AA (apgd-ce + apgd-t) %", "last: clean %", "last: PGD-20 %", "train + val s", "train img/s",
               "step wall s"]
    return " ".join(notes) + "\n\n" + markdown_table(headers, rows)


def igd_table(compare: Mapping[str, Any]) -> str:
    inequality = compare["inequality"]
    rows = []
    for model, gini in inequality["gini"].items():
        noise = inequality["inductive_noise"][model]
        rows.append([model, fmt_acc(accuracy(compare, model, "clean")),
                     *(gini[k] for k in ("global_all", "global_correct", "regional_duan_all", "regional_igd_all")),
                     *(fmt_acc(noise[mode][rho]) for mode in ("add", "replace") for rho in INDUCTIVE_RHOS)])
    headers = ["model", "clean %", "Gini global (all)", "Gini global (correct)", "Gini regional, Duan (all)",
               "Gini regional, IGD (all)",
               *(f"INA {mode} ρ={100 * float(rho):g}% error %" for mode in ("add", "replace")
                 for rho in INDUCTIVE_RHOS)]
    return (f"Saliency Gini on the {inequality['n']} test images; inductive noise error over the "
            f"{inequality['n_common_correct']} images both models classify correctly.\n\n"
            + markdown_table(headers, rows))


def iseat_table(compare: Mapping[str, Any]) -> str:
    vulnerability = compare["vulnerability"]
    rows = [[model, *(stats[k] for k in VULNERABILITY_KEYS)] for model, stats in vulnerability["models"].items()]
    lines = [f"AV = CE(x') − CE(x) on the first {vulnerability['n']} {vulnerability['split']} images "
             f"(PGD-{vulnerability['steps']}, ε {fmt_eps(vulnerability['eps'])}); Gini and top-10% share of "
             "max(AV, 0).", "", markdown_table(["model", "mean AV", "std", "cv", "Gini", "top-10% share",
                                               "clean CE", "adv CE"], rows)]
    first = next(iter(vulnerability["models"]))
    for model, change in vulnerability["compared_to_first"].items():
        lines.append(f"{model} against {first}: AV rose for {fmt_acc(change['sacrificed_share'])}% of the images; "
                     f"mean adversarial CE changed by {change['adv_loss_change']:+.4f}.")
    return "\n".join(lines) + "\n"


def arat_table(compare: Mapping[str, Any]) -> str:
    invariance = compare["invariance"]
    rows = [[model, fmt_acc(accuracy(compare, model, "clean")), *(stats[k] for k in INVARIANCE_KEYS)]
            for model, stats in invariance["models"].items()]
    return (f"cos(f(x), f(x')) of the penultimate features on the first {invariance['n']} test images (x' = "
            f"PGD-{invariance['steps']}, ε {fmt_eps(invariance['eps'])}, last iterate).\n\n"
            + markdown_table(["model", "clean %", "mean cos", "mean cos (clean-correct)", "std", "min", "median"],
                             rows))


SIDE_TABLES = (("IGD against PGD-AT", "compare_igd.json", igd_table),
               ("ISEAT against PGD-AT", "compare_iseat.json", iseat_table),
               ("AR-AT against PGD-AT", "compare_arat.json", arat_table))


def report(out: Path) -> str:
    steps = read_steps(out)
    parts = ["# GPU evidence: nine methods on the CIFAR-10 subset", "", *setting_lines(out, steps), "",
             "## Robustness of each method", "", main_table(out, steps)]
    for title, name, table in SIDE_TABLES:
        compare = read_json(out / name)
        parts += [f"## {title}", "", table(compare) if compare else f"No {name}: that comparison did not run.\n"]
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python benchmarks/gpu_evidence_report.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    if not out.is_dir():
        print(f"gpu_evidence_report.py: {out} is not a folder: pass the OUT_DIR gpu_evidence.sh wrote", file=sys.stderr)
        return 2
    print(report(out), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
