"""Read a run directory (config.yaml, metrics.jsonl, eval.json, checkpoint sidecars) and write report.md."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from advtrain.errors import UserError
from advtrain.fileio import atomic_write_text
from advtrain.methods.registry import list_methods, method_class
from advtrain.report.figures import save_figure, training_curves
from advtrain.report.tables import (
    MISSING,
    eval_rows,
    fmt_acc,
    fmt_eps,
    fmt_float,
    markdown_table,
    tradeoff_line,
)
from advtrain.rundir import read_config, run_dir_path

FIGURE_NAME = "training_curves.png"


def _read_json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}); fix or delete the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_metrics(run_dir: Path | str) -> list[dict[str, Any]]:
    """Per-epoch metrics from RUN_DIR/metrics.jsonl, in file order; blank lines are skipped.

    A line that is not a JSON object raises UserError naming the file and the 1-based line number.
    """
    path = run_dir_path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path} not found: has the run finished at least one epoch?")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}, line {lineno}: malformed JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def read_eval(run_dir: Path | str) -> dict[str, Any] | None:
    """RUN_DIR/eval.json as a dict, or None when the run has not been evaluated."""
    path = run_dir_path(run_dir) / "eval.json"
    return _read_json_file(path) if path.is_file() else None


def read_checkpoint_info(run_dir: Path | str, which: str) -> dict[str, Any] | None:
    """The sidecar RUN_DIR/checkpoints/<which>.json (e.g. "best", "last"), or None when absent."""
    path = run_dir_path(run_dir) / "checkpoints" / f"{which}.json"
    return _read_json_file(path) if path.is_file() else None


def _get(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _fmt_metric_value(metric: str, value: object) -> str:
    return f"{fmt_acc(value)} %" if metric.endswith("acc") else fmt_float(value)


def _fixed(value: object, spec: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, spec)
    return MISSING if value is None else str(value)


def train_acc_inputs(config: Mapping[str, Any]) -> str | None:
    """What the run's train_acc was measured on, "adversarial" or "clean" (its method's `train_acc_inputs`); None
    for a method this process does not know."""
    name = _get(config, "method.name")
    return method_class(name).train_acc_inputs if name in list_methods() else None


def _metrics_table(metrics: Sequence[Mapping[str, Any]], best_epoch: object, inputs: str | None) -> str:
    headers = [
        "epoch",
        "lr",
        "train loss",
        f"train acc, {inputs} (%)" if inputs is not None else "train acc (%)",
        "val clean (%)",
        "val PGD (%)",
        "s/epoch",
        "img/s",
    ]
    rows = []
    for m in metrics:
        epoch = m.get("epoch")
        epoch_cell = f"{epoch} (best)" if best_epoch is not None and epoch == best_epoch else epoch
        rows.append(
            [
                epoch_cell,
                fmt_float(m.get("lr"), 3),
                _fixed(m.get("train_loss"), ".4f"),
                fmt_acc(m.get("train_acc")),
                fmt_acc(m.get("val_clean_acc")),
                fmt_acc(m.get("val_pgd_acc")),
                _fixed(m.get("seconds"), ".1f"),
                _fixed(m.get("images_per_s"), ".0f"),
            ]
        )
    return markdown_table(headers, rows)


def _settings(config: Mapping[str, Any], n_epochs_done: int) -> list[str]:
    items = [
        ("method", "method.name"),
        ("model", "model.name"),
        ("data", "data.name"),
        ("ε (perturbation budget)", "threat.eps"),
        ("threat norm", "threat.norm"),
        ("batch size", "train.batch_size"),
        ("optimizer", "optim.name"),
        ("learning rate", "optim.lr"),
        ("weight decay", "optim.weight_decay"),
        ("LR schedule", "schedule.name"),
        ("seed", "seed"),
    ]
    lines = []
    for label, key in items:
        value = _get(config, key)
        if value is None:
            continue
        if isinstance(value, Mapping):  # e.g. an optimizer section: show its name if it has one
            value = value.get("name", "…")
        lines.append(f"- {label}: {fmt_eps(value) if key == 'threat.eps' else value}")
    method = _get(config, "method")
    # every method option, as recorded (docs/methods.md, introduction)
    if isinstance(method, Mapping) and len(method) > 1:
        options = ", ".join(f"{k}={v}" for k, v in method.items() if k != "name")
        lines.append(f"- method options: {options}")
    epochs = _get(config, "train.epochs")
    lines.append(f"- epochs: {n_epochs_done} completed of {epochs if epochs is not None else '?'} planned")
    return lines


def _checkpoint_section(best: Mapping[str, Any] | None, last: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Checkpoint selection", ""]
    if best is None:
        lines.append("No best-checkpoint record (checkpoints/best.json) was found.")
    else:
        metric = str(best.get("metric", "?"))
        value = _fmt_metric_value(metric, best.get("value"))
        lines.append(
            f"The best checkpoint is from epoch {best.get('epoch', '?')}, "
            f"selected on the validation metric `{metric}` (value {value})."
        )
    if last is not None:
        lines.append(f"The last checkpoint is from epoch {last.get('epoch', '?')}.")
    lines += [
        "",
        "Checkpoint selection used the validation split only; the test set was never used to choose a checkpoint.",
    ]
    return lines


def _eval_section(
    ev: Mapping[str, Any] | None, best: Mapping[str, Any] | None, last: Mapping[str, Any] | None
) -> list[str]:
    lines = ["## Evaluation", ""]
    if ev is None:
        return [*lines, "No evaluation results (eval.json) in this run directory yet."]
    ckpt = ev.get("checkpoint", "?")
    sidecar = {"best": best, "last": last}.get(str(ckpt))
    ckpt_text = f"`{ckpt}` checkpoint"
    if sidecar is not None and sidecar.get("epoch") is not None:
        ckpt_text += f" (epoch {sidecar['epoch']})"
    where = f"on {ev['data']}" if ev.get("data") else "on the test data"
    n = f" ({ev['n']} examples)" if ev.get("n") is not None else ""
    model = f" of model {ev['model']}" if ev.get("model") else ""
    lines += [f"Evaluated the {ckpt_text}{model} {where}{n}.", ""]
    rows = eval_rows(ev)
    if rows:
        lines.append(markdown_table(["attack", "ε", "accuracy (%)"], rows).rstrip("\n"))
        tradeoff = tradeoff_line(ev)
        if tradeoff is not None:
            lines += ["", tradeoff[0].upper() + tradeoff[1:] + "."]
    else:
        lines.append("eval.json lists no results.")
    invariance = ev.get("invariance")
    if isinstance(invariance, Mapping):
        lines += ["", *_invariance_section(invariance)]
    return lines


def _invariance_section(result: Mapping[str, Any]) -> list[str]:
    """The "invariance" part of an eval.json (docs/methods.md §7.6) as a sentence and a table."""
    lines = [
        "### Representation invariance",
        "",
        f"Cosine similarity of the penultimate features (the input of the last linear layer) of x and x' on the "
        f"first {result.get('n', '?')} test images; x' = PGD-{result.get('steps', '?')} on CE, random start, "
        f"last iterate, ε = {fmt_eps(result.get('eps'))} ({result.get('norm', '?')}), step "
        f"{fmt_float(result.get('step_size'))}, eval mode.",
        "",
    ]
    models = result.get("models")
    rows = [
        [label, fmt_float(s.get("mean")), fmt_float(s.get("mean_correct")), fmt_float(s.get("std")),
         fmt_float(s.get("min")), fmt_acc(s.get("clean_accuracy"))]
        for label, s in (models.items() if isinstance(models, Mapping) else ())
        if isinstance(s, Mapping)
    ]
    headers = ["model", "mean cos", "mean cos (clean-correct)", "std", "min", "clean acc (%)"]
    lines.append(markdown_table(headers, rows).rstrip("\n") if rows else "No model results.")
    return lines


def render_run_report(
    config: Mapping[str, Any],
    metrics: Sequence[Mapping[str, Any]],
    ev: Mapping[str, Any] | None,
    best: Mapping[str, Any] | None,
    last: Mapping[str, Any] | None,
    figure_rel: str = f"figures/{FIGURE_NAME}",
) -> str:
    """The markdown text of a run report from already-loaded parts (no file access)."""
    method = _get(config, "method.name", "?")
    model = _get(config, "model.name", "?")
    data = _get(config, "data.name", "?")
    eps = fmt_eps(_get(config, "threat.eps"))
    lines = [f"# {method} · {model} on {data} · ε = {eps}", "", "## Settings", ""]
    lines += _settings(config, len(metrics))
    lines += ["", "## Training", ""]
    if metrics:
        best_epoch = best.get("epoch") if best is not None else None
        lines.append(_metrics_table(metrics, best_epoch, train_acc_inputs(config)).rstrip("\n"))
        total = sum(float(m["seconds"]) for m in metrics if isinstance(m.get("seconds"), int | float))
        lines += ["", f"Total training time: {total / 60:.1f} min."]
    else:
        lines.append("metrics.jsonl has no epochs yet.")
    lines += ["", *_checkpoint_section(best, last), "", *_eval_section(ev, best, last)]
    lines += ["", "## Training curves", "", f"![Training curves]({figure_rel})", ""]
    return "\n".join(lines)


def write_run_report(run_dir: Path | str) -> Path:
    """Write RUN_DIR/figures/training_curves.png and RUN_DIR/report.md; return the report's path."""
    run_dir = run_dir_path(run_dir)
    config = read_config(run_dir)
    metrics = read_metrics(run_dir)
    ev = read_eval(run_dir)
    best = read_checkpoint_info(run_dir, "best")
    last = read_checkpoint_info(run_dir, "last")

    save_figure(training_curves(metrics, train_acc_inputs(config)), run_dir / "figures" / FIGURE_NAME)
    text = render_run_report(config, metrics, ev, best, last)
    report = run_dir / "report.md"
    atomic_write_text(report, text)
    return report
