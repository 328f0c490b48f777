"""Plain tables for reports: GitHub markdown and fixed-width terminal text.

Cells are formatted here so that every report renders numbers the same way: accuracies as percentages
with two decimals, perturbation budgets as ``k/255`` when they are one, and missing values as a dash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# The cell formats and the plain-text table live in eval.labels, so that `advtrain.evaluate`'s result prints the
# table `advtrain eval` prints without eval importing report.
from advtrain.eval.labels import MISSING, is_number
from advtrain.eval.labels import attack_label as attack_label
from advtrain.eval.labels import eval_rows as eval_rows
from advtrain.eval.labels import fmt_acc as fmt_acc
from advtrain.eval.labels import fmt_eps as fmt_eps
from advtrain.eval.labels import fmt_float as fmt_float
from advtrain.eval.labels import text_table as text_table
from advtrain.eval.tradeoff import tradeoff_scores


def _cell(x: object) -> str:
    text = fmt_float(x) if is_number(x) or x is None else str(x)
    return text.replace("\r", " ").replace("\n", " ").replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render a GitHub markdown table; strings are used as given, numbers via `fmt_float`, None as a dash.

    Raises ValueError when a row does not have one cell per header.
    """
    if not headers:
        raise ValueError("markdown_table needs at least one header")
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells but there are {len(headers)} headers")
    lines = [
        "| " + " | ".join(_cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _comparison_grid(
    evals: Mapping[str, Mapping[str, object]], tradeoff: bool = False
) -> tuple[list[str], list[list[str]]]:
    columns: list[str] = []
    per_run: list[tuple[str, dict[str, str]]] = []
    for run_name, ev in evals.items():
        values: dict[str, str] = {}
        for label, eps, acc in eval_rows(ev):
            key = label if label == "clean" else f"{label} @ {eps}"
            if key in values:  # the same attack twice in one file: keep the first
                continue
            values[key] = acc
            if key not in columns:
                columns.append(key)
        per_run.append((str(run_name), values))
    rows = [[name] + [values.get(c, MISSING) for c in columns] for name, values in per_run]
    scores = tradeoff_scores(evals) if tradeoff else None
    if scores is not None:
        columns.append(scores["score_name"])
        points = scores["points"]
        for row, (name, _) in zip(rows, per_run, strict=True):
            row.append(fmt_acc(points[name]["score"]) if name in points else MISSING)
    return ["model", *columns], rows


def comparison_table(evals: Mapping[str, Mapping[str, object]], *, tradeoff: bool = False) -> str:
    """Several runs' eval.json side by side as markdown: one row per run, one column per attack@ε (%).

    With `tradeoff`, a last column holds the trade-off score of `tradeoff_scores` (the "sum" = clean + AutoAttack
    when AutoAttack ran; otherwise clean + the strongest attack, labelled as not being the sum).
    """
    headers, rows = _comparison_grid(evals, tradeoff)
    return markdown_table(headers, rows)


def comparison_text(evals: Mapping[str, Mapping[str, object]], *, tradeoff: bool = False) -> str:
    """The same comparison as `comparison_table`, as fixed-width text for a terminal."""
    headers, rows = _comparison_grid(evals, tradeoff)
    return text_table(headers, rows)


# --------------------------------------------------------------------------- robustness–accuracy trade-off


def tradeoff_line(ev: Mapping[str, object]) -> str | None:
    """One sentence stating the paper's trade-off sum of one evaluation, clean + AutoAttack accuracy (see
    `tradeoff_scores`), e.g. ``trade-off (docs/methods.md §7.6): sum = clean + AutoAttack (standard) @ 8/255
    = 81.23 + 44.11 = 125.34``. None without AutoAttack or clean accuracy: there is no such sum then, and
    clean + another attack only ranks models, as `comparison_table` does (flagged as not the sum)."""
    scores = tradeoff_scores({"model": ev})
    if scores is None or not scores["autoattack"]:
        return None
    (point,) = scores["points"].values()
    numbers = f"{fmt_acc(point['clean'])} + {fmt_acc(point['robust'])} = {fmt_acc(point['score'])}"
    return f"trade-off (docs/methods.md §7.6): sum = clean + {scores['robust_label']} = {numbers}"
