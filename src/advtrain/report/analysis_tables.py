"""The analyses of `advtrain eval` and `advtrain diagnose` as fixed-width terminal text: one function per
JSON result that `advtrain.eval` computes (diagnose, inequality, vulnerability, invariance)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from advtrain.eval.inequality import CORRUPTION_PROTOCOLS, severity_tables
from advtrain.eval.vulnerability import DISPERSION_KEYS
from advtrain.report.tables import fmt_acc, fmt_eps, fmt_float, text_table


def _fmt(value: Any) -> str:
    return fmt_float(value, 3)


def diagnose_text(report: Mapping[str, Any]) -> str:
    """The verdict table of a `diagnose` report: one row per check (value, threshold, verdict, meaning)."""
    model = f"{report['model']} on {report.get('data')}, " if report.get("model") else ""
    head = (f"gradient-masking diagnostics ({model}{report.get('n')} images, ε {_fmt(report.get('eps'))} "
            f"L∞): clean accuracy {_fmt(report.get('clean_accuracy'))}")
    rows = [["check", "value", "pass if", "verdict", "meaning"]]
    for name, c in report.get("checks", {}).items():
        threshold = _fmt(c.get("threshold"))
        if c.get("threshold") is not None and c.get("pass_if") in ("<=", ">="):
            threshold = f"{'≤' if c['pass_if'] == '<=' else '≥'} {threshold}"
        rows.append([name, _fmt(c.get("value")), threshold, str(c.get("verdict")), str(c.get("meaning"))])
    widths = [max(len(r[j]) for r in rows) for j in range(4)]
    lines = [head]
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].rjust(widths[2]), r[3].ljust(widths[3]), r[4]]
        lines.append("  ".join(cells).rstrip())
    warnings = list(report.get("warnings", []))
    lines.append(f"{len(warnings)} warning(s): {', '.join(warnings)}" if warnings else
                 "no warning: no sign of gradient masking")
    return "\n".join(lines)


def inequality_text(result: Mapping[str, Any]) -> str:
    """The "inequality" results of `evaluate_inequality` as fixed-width text tables, one per evaluation:
    mean Gini per model; error rate (%) at each ρ per model and noise mode; occlusion error (%) per colour;
    corruption error (%) averaged over the severities, per corruption, under each protocol."""
    parts = [f"commonly correct: {result.get('n_common_correct')} of {result.get('n')} images "
             "(inductive/random noise, occlusion and IGD-protocol corruption error rates are over these)\n"]
    if "gini" in result:
        keys = list(dict.fromkeys(k for per in result["gini"].values() for k in per))
        rows = [[label, *(per.get(k) for k in keys)] for label, per in result["gini"].items()]
        parts.append("Gini of the saliency |∇ₓ z_y| (mean over all images / over each model's correct ones)\n"
                     + text_table(["model", *(k.replace("_", " ") for k in keys)], rows))
    for name in ("inductive_noise", "random_noise"):
        if name not in result:
            continue
        rhos = list(dict.fromkeys(r for per in result[name].values() for sweep in per.values() for r in sweep))
        rows = [[f"{label} ({mode})", *(fmt_acc(sweep.get(r)) for r in rhos)]
                for label, per in result[name].items() for mode, sweep in per.items()]
        headers = ["model (mode)", *(f"ρ={100 * float(r):g}%" for r in rhos)]
        parts.append(f"{name.replace('_', ' ')}: error rate %\n" + text_table(headers, rows))
    if "inductive_occlusion" in result:
        occlusion = result["inductive_occlusion"]
        colours = list(dict.fromkeys(c for per in occlusion.values() for c in per))
        rows = [[label, *(fmt_acc(per.get(c)) for c in colours)] for label, per in occlusion.items()]
        parts.append("inductive occlusion: error rate %\n" + text_table(["model", *colours], rows))
    for protocol, over in CORRUPTION_PROTOCOLS.items() if "corruptions" in result else ():
        tables = {label: severity_tables(per, protocol) for label, per in result["corruptions"].items()}
        names = list(dict.fromkeys(c for per in tables.values() for c in per))
        rows = [[label, *(fmt_acc(_mean(per.get(c, {}).values())) for c in names)] for label, per in tables.items()]
        parts.append(f"noise corruptions: error rate % {over.format_map(result)}, mean over severities\n"
                     + text_table(["model", *names], rows))
    return "\n".join(parts)


def _mean(values: Any) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else math.nan


def vulnerability_text(result: Mapping[str, Any]) -> str:
    """An `evaluate_vulnerability` result as a fixed-width text table (one row per model), plus one line per
    model compared with the first."""
    keys = ("mean", *DISPERSION_KEYS, "q10", "q50", "q90", "n_negative", "clean_loss", "adv_loss")
    headers = ["model", "mean AV", "std", "cv", "Gini", "top-10%", "q10", "q50", "q90", "AV<0", "clean CE",
               "adv CE"]
    rows = [[label, *(stats.get(k) for k in keys)] for label, stats in result.get("models", {}).items()]
    parts = [
        f"adversarial vulnerability AV = CE(x') − CE(x) on the first {result.get('n')} {result.get('split')} "
        f"images (PGD-{result.get('steps')}, ε {fmt_float(result.get('eps'))}, {result.get('norm')}; Gini and "
        "top-10% share of max(AV, 0))\n" + text_table(headers, rows)
    ]
    for label, change in result.get("compared_to_first", {}).items():
        parts.append(
            f"{label} vs {next(iter(result['models']))}: AV rose for {fmt_acc(change['sacrificed_share'])}% of "
            f"the images; mean adversarial CE change {fmt_float(change['adv_loss_change'])}"
        )
    return "\n".join(parts)


def invariance_text(result: Mapping[str, Any]) -> str:
    """An `evaluate_invariance` result as a fixed-width text table (one row per model), with its settings."""
    headers = ["model", "mean cos", "mean cos (clean-correct)", "std", "min", "median", "clean acc %"]
    rows = [
        [label, s.get("mean"), s.get("mean_correct"), s.get("std"), s.get("min"), s.get("median"),
         fmt_acc(s.get("clean_accuracy"))]
        for label, s in result.get("models", {}).items()
    ]
    return f"{invariance_heading(result)}\n" + text_table(headers, rows)


def invariance_heading(result: Mapping[str, Any]) -> str:
    """One line stating what an `evaluate_invariance` result measured: images, attack, ε, steps, step size."""
    return (
        f"representation invariance cos(f(x), f(x')) of the penultimate features on the first {result.get('n')} "
        f"test images (x' = PGD-{result.get('steps')} on CE, random start, last iterate, "
        f"ε {fmt_eps(result.get('eps'))}, {result.get('norm')}, step {fmt_float(result.get('step_size'))})"
    )
