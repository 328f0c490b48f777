"""The audit's report card: one self-contained HTML page (inline CSS, figures as base64 PNGs, no script), the
verdict of each failure mode in plain language, the numbers behind it and the budget it ran under.

Built like `advtrain.report.html_report` (its page style, tables and figure embedding) from the audit JSON
(`advtrain.eval.audit.AuditResult.as_dict()`), with the figures of `diagnose_figures`, `inequality_figures` and
`vulnerability_figures`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import advtrain
from advtrain.fileio import atomic_write_text
from advtrain.report.diagnose_figures import fgsm_direction_figure, pgd_eps_figure, pgd_steps_figure
from advtrain.report.html_parts import CSS, escape, figure_uri, html_figure, html_section, html_table
from advtrain.report.inequality_figures import corruption_error_curves, noise_error_curves, occlusion_error_bars
from advtrain.report.tables import fmt_float
from advtrain.report.vulnerability_figures import av_histogram_counts

_CARD_CSS = """
p.verdict { max-width: 62em; }
span.flag { background: #fde2e1; padding: 0 0.3em; }
span.ok { background: #e3f4e1; padding: 0 0.3em; }
"""
_TITLES = {"robustness": "Robust accuracy", "masking": "Gradient masking", "saliency": "Unequal saliency",
           "vulnerability": "Uneven vulnerability", "invariance": "Representation invariance and trade-off"}
_BUDGET_ROWS = {
    "n": "images for clean / PGD / AutoAttack accuracy", "pgd_steps": "PGD steps", "pgd_restarts": "PGD restarts",
    "autoattack": "AutoAttack version", "diagnose_n": "images for the masking checks",
    "diagnose_steps": "PGD-steps curve", "diagnose_restarts": "restarts check", "saliency_n": "images for saliency",
    "vulnerability_n": "images for vulnerability", "vulnerability_steps": "PGD steps (vulnerability, invariance)",
    "invariance_n": "images for invariance", "bootstrap": "bootstrap resamples (seed 0)",
}


def _pct_ci(entry: Mapping[str, Any]) -> list[object]:
    low, high = entry["ci95"]
    return [f"{100 * entry['accuracy']:.1f}" if entry["accuracy"] is not None else "—",
            f"{100 * low:.1f}–{100 * high:.1f}" if low is not None else "—"]


def _verdict_label(v: Mapping[str, Any]) -> str:
    return f'<span class="{"flag" if v["flagged"] else "ok"}">{escape(v["verdict"])}</span>'


def _header(audit: Mapping[str, Any], title: str) -> str:
    b = audit["budget"]
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = (f"{escape(audit.get('model', 'model'))} on {escape(audit.get('data', 'the given images'))}; "
            f"{escape(audit['norm'])} ε = {audit['eps']:.4g}; budget {escape(b['name'])}; "
            f"{audit['total_seconds']:.0f} s on {escape(audit['device'])} "
            f"({audit['torch_threads']} torch threads); advtrain {escape(advtrain.__version__)}, torch "
            f"{escape(audit['torch_version'])}; {when}")
    rows = [[_TITLES[mode], (v["verdict"], "warn" if v["flagged"] else "")] for mode, v in audit["verdicts"].items()]
    summary = html_table(["failure mode", "verdict"], rows, "Verdicts (shaded: a failure found).",
                     "verdicts")
    budget = html_table(["budget", "value"], [[what, str(b[key])] for key, what in _BUDGET_ROWS.items()],
                    f"What the {b['name']} budget spends (each section uses the first images of the data).")
    return f"<h1>{escape(title)}</h1>\n<p class=\"meta\">{meta}</p>\n{summary}\n{budget}"


def _paragraph(v: Mapping[str, Any]) -> str:
    return f'<p class="verdict">{_verdict_label(v)} {escape(v["paragraph"])}</p>'


def _robustness(audit: Mapping[str, Any]) -> str:
    r = audit["robustness"]
    rows = [[row["attack"] + (f" ({row['version']}) on the {row['attacked']} images PGD did not break"
                              if row.get("version") else ""), *_pct_ci(row)] for row in r["attacks"]]
    table = html_table(["attack", "accuracy %", "95% CI (Wilson)"], rows, f"Accuracy on {r['n']} images.")
    return html_section(_TITLES["robustness"], _paragraph(audit["verdicts"]["robustness"]), table)


def _masking(audit: Mapping[str, Any]) -> str:
    m = audit["masking"]
    parts = [_paragraph(audit["verdicts"]["masking"])]
    if m.get("available"):
        rows = [[c["name"], fmt_float(c["value"], 3), c["rule"], (c["verdict"], "warn" if c["verdict"] == "WARN"
                                                                  else "")] for c in m["checks"].values()]
        parts.append(html_table(["check", "value", "rule", "verdict"], rows, f"Diagnose checks on {m['n']} images."))
        checks = m["checks"]
        parts += [html_figure(figure_uri(pgd_steps_figure(checks["pgd_steps"])), "PGD accuracy against steps"),
                  html_figure(figure_uri(pgd_eps_figure(checks["pgd_eps"])), "PGD accuracy against ε"),
                  html_figure(figure_uri(fgsm_direction_figure(checks["fgsm_direction_loss"])),
                          "loss along the FGSM direction")]
    return html_section(_TITLES["masking"], *parts)


def _saliency(audit: Mapping[str, Any]) -> str:
    s = audit["saliency"]
    rows = [[key.replace("_", " "), fmt_float(g["mean"], 3),
             f"{fmt_float(g['ci95'][0], 3)}–{fmt_float(g['ci95'][1], 3)}"] for key, g in s["gini"].items()]
    table = html_table(["Gini", "mean", "95% CI (bootstrap)"], rows, f"Saliency Gini over {s['n']} images.")
    curves = [{label: {float(rho): e for rho, e in per.get("add", {}).items()} for label, per in s[name].items()}
              for name in ("inductive_noise", "random_noise")]
    corruptions = {label: {name: {int(sev): e for sev, e in by_sev.items()} for name, by_sev in
                           per["commonly_correct"].items()} for label, per in s["corruptions"].items()}
    figures = [
        html_figure(figure_uri(noise_error_curves(*curves)), "error under noise on the most salient / random pixels"),
        html_figure(figure_uri(occlusion_error_bars(s["inductive_occlusion"])), "error under inductive occlusion"),
        html_figure(figure_uri(corruption_error_curves(corruptions)),
                f"noise corruptions, error over the {s['n_common_correct']} correctly classified images"),
    ]
    return html_section(_TITLES["saliency"], _paragraph(audit["verdicts"]["saliency"]), table, *figures)


def _vulnerability(audit: Mapping[str, Any]) -> str:
    v = audit["vulnerability"]
    fig = av_histogram_counts(v["histogram"]["edges"], v["histogram"]["counts"], legend_title=None,
                              title=f"Adversarial vulnerability (n = {v['n']})")
    return html_section(_TITLES["vulnerability"], _paragraph(audit["verdicts"]["vulnerability"]),
                    html_figure(figure_uri(fig), "histogram of CE(x') − CE(x) per image"))


def _invariance(audit: Mapping[str, Any]) -> str:
    inv = audit["invariance"]
    parts = [_paragraph(audit["verdicts"]["invariance"])]
    if inv.get("available"):
        s = inv["summary"]
        rows = [[key, fmt_float(s.get(key), 3)] for key in ("mean", "std", "min", "median", "mean_correct")]
        parts.append(html_table(["cosine", "value"], rows, f"cos(f(x), f(x')) over {inv['n']} images."))
    return html_section(_TITLES["invariance"], *parts)


def render_audit_card(audit: Mapping[str, Any], *, title: str = "advtrain audit") -> str:
    """The card's HTML text for an audit JSON (`AuditResult.as_dict()`, optionally with "model" and "data")."""
    body = "\n".join([_header(audit, title), _robustness(audit), _masking(audit), _saliency(audit),
                      _vulnerability(audit), _invariance(audit)])
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f"<style>{CSS}{_CARD_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_audit_card(audit: Mapping[str, Any], path: Path, *, title: str = "advtrain audit") -> Path:
    """Write the card of `audit` to `path`, atomically; its path."""
    atomic_write_text(Path(path), render_audit_card(audit, title=title))
    return Path(path)
