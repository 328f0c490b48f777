"""Aggregation of a comparison's cells over seeds (one evaluation protocol per table), and its outputs: the
markdown table and a tidy CSV."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advtrain.errors import UserError
from advtrain.fileio import atomic_write_text
from advtrain.report.grid.cells import Cell
from advtrain.report.tables import attack_label, fmt_acc, fmt_eps, markdown_table


@dataclass(frozen=True)
class ResultKey:
    """One attack at one budget, as an eval JSON lists it: its `attack_label`, ε and norm."""

    attack: str  # the eval JSON's name: clean, pgd, fgsm, cw, ifgsm, autoattack
    label: str  # `attack_label`: e.g. "PGD-20 ×1 (step 0.0039)"
    eps: float
    norm: str | None

    @property
    def name(self) -> str:
        return "clean" if self.attack == "clean" else f"{self.label} ε={fmt_eps(self.eps)}"


@dataclass(frozen=True)
class Column:
    checkpoint: str
    result: ResultKey

    @property
    def header(self) -> str:
        return f"{self.result.name} ({self.checkpoint})"


@dataclass(frozen=True)
class Protocol:
    """What an evaluation measured; one table holds one protocol."""

    data: str
    n: int
    checkpoints: tuple[str, ...]
    results: tuple[ResultKey, ...]

    @property
    def attacks(self) -> list[str]:
        """The distinct attacks, without their budgets: e.g. ["clean", "PGD-20 ×1"]."""
        return list(dict.fromkeys(family(r) for r in self.results))

    @property
    def eps(self) -> list[float]:
        return sorted({r.eps for r in self.results if r.attack != "clean"})


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1; None with one seed) of an accuracy over seeds."""

    mean: float
    std: float | None
    seeds: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def __str__(self) -> str:
        """"77.00 ± 1.20 (n=3)" in percent; "77.00 (n=1)" for one seed, which has no spread to show."""
        spread = f" ± {fmt_acc(self.std)}" if self.std is not None else ""
        return f"{fmt_acc(self.mean)}{spread} (n={self.seeds})"


@dataclass(frozen=True)
class Cost:
    """Training cost of a group: means over its cells (each cell's own mean over epochs), peak memory the max."""

    seconds_per_epoch: float | None
    images_per_s: float | None
    peak_memory_mb: float | None  # metrics.jsonl's peak_memory_mb where recorded
    epochs: float  # epochs completed, mean over cells
    train_seconds: float | None  # total per run, mean over cells


@dataclass(frozen=True)
class GroupSummary:
    label: str
    seeds: tuple[Any, ...]
    accuracy: dict[Column, Stat]
    cost: Cost


@dataclass(frozen=True)
class Summary:
    protocol: Protocol
    columns: tuple[Column, ...]
    groups: tuple[GroupSummary, ...]
    attack_seeds: tuple[int, ...]  # the evaluations' random-start seeds (compare: one; plain runs: their own)


def family(result: ResultKey) -> str:
    """An attack without its budget-dependent step size: what an accuracy-vs-ε curve follows, e.g. "PGD-20 ×1"."""
    return result.label.split(" (step ")[0]


def _result_key(result: Mapping[str, Any]) -> ResultKey:
    eps = result.get("eps")
    return ResultKey(str(result.get("attack", "?")), attack_label(result),
                     float(eps) if isinstance(eps, int | float) else 0.0, result.get("norm"))


def accuracies(cell: Cell, checkpoint: str) -> dict[ResultKey, float]:
    """{result: accuracy (fraction)} of one of a cell's evaluations; the first entry wins when an attack is listed
    twice. One-line UserError for a result without an accuracy."""
    out: dict[ResultKey, float] = {}
    for r in cell.evals[checkpoint].get("results") or []:
        accuracy = r.get("accuracy")
        if not isinstance(accuracy, int | float) or isinstance(accuracy, bool):
            raise UserError(f"{cell.run_dir}: the {checkpoint} evaluation lists {attack_label(r)} without an "
                            "accuracy: evaluate the run again")
        out.setdefault(_result_key(r), float(accuracy))
    return out


def _protocol(cell: Cell, checkpoint: str) -> Protocol:
    ev = cell.evals[checkpoint]
    return Protocol(str(ev.get("data")), ev.get("n"), tuple(cell.evals),
                    tuple(accuracies(cell, checkpoint)))


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(r.name if isinstance(r, ResultKey) else str(r) for r in value) + "]"
    return str(value)


_FIELD_NAMES = {"data": "dataset", "results": "attacks and ε", "checkpoints": "checkpoints evaluated"}


def _difference(a: Protocol, b: Protocol) -> str:
    field = next(f.name for f in dataclasses.fields(Protocol) if getattr(a, f.name) != getattr(b, f.name))
    return f"{_FIELD_NAMES.get(field, field)} {_show(getattr(a, field))} vs {_show(getattr(b, field))}"


def common_protocol(cells: Sequence[Cell]) -> Protocol:
    """The one evaluation protocol of all cells and checkpoints; one-line UserError naming the first run and
    setting that differ (dataset, n, checkpoints evaluated, or attacks and ε). The attack seed may differ: a plain
    `advtrain train` run evaluates with its own seed; `attack_seeds` lists them for the report."""
    first: tuple[Protocol, Cell] | None = None
    for cell in cells:
        if not cell.evals:
            raise UserError(f"{cell.run_dir} has no eval-last.json, eval-best.json or eval.json: evaluate the run "
                            "first (advtrain eval RUN_DIR)")
        for checkpoint in cell.evals:
            protocol = _protocol(cell, checkpoint)
            if first is None:
                first = (protocol, cell)
            elif protocol != first[0]:
                raise UserError(
                    f"{cell.run_dir} ({checkpoint}) was evaluated with {_difference(protocol, first[0])} in "
                    f"{first[1].run_dir}: one table holds one evaluation protocol (same attacks, ε and n); "
                    "re-evaluate the runs with the same settings or report them separately"
                )
    if first is None:
        raise UserError("nothing to summarize: pass at least one run directory")
    return first[0]


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _finite(value: object) -> float | None:
    """A metric as a float; None for a missing, non-numeric or non-finite value (e.g. no validation split)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _numbers(cell: Cell, key: str) -> list[float]:
    return [v for row in cell.metrics if (v := _finite(row.get(key))) is not None]


def _cost(cells: Sequence[Cell]) -> Cost:
    def per_cell(reduce: Callable[[list[float]], float], key: str) -> float | None:
        return _mean([reduce(v) for cell in cells if (v := _numbers(cell, key))])

    # metrics.jsonl's "seconds" is the wall time of that epoch (training and validation).
    memory = [m for cell in cells for m in _numbers(cell, "peak_memory_mb")]
    return Cost(
        seconds_per_epoch=per_cell(statistics.fmean, "seconds"),
        images_per_s=per_cell(statistics.fmean, "images_per_s"),
        peak_memory_mb=max(memory) if memory else None,
        epochs=statistics.fmean(len(cell.metrics) for cell in cells),
        train_seconds=per_cell(sum, "seconds"),
    )


def validation_robust_key(cell: Cell) -> str | None:
    """The metrics.jsonl key of the run's robust validation accuracy, e.g. "val_pgd_acc" (SAT-R validates against
    I-FGSM: "val_ifgsm_acc"); None when no epoch recorded one."""
    keys = (re.fullmatch(r"val_([a-z]+)_acc", key) for row in cell.metrics for key in row)
    return next((m.group(0) for m in keys if m is not None and m.group(1) != "clean"), None)


def mean_curve(cells: Sequence[Cell], key_of: Callable[[Cell], str | None]) -> tuple[list[float], list[float]]:
    """(epochs, mean over cells) of one per-epoch metric, `key_of(cell)` naming it in each cell; an epoch's mean
    is over the cells that recorded a finite value for it."""
    per_epoch: dict[float, list[float]] = {}
    for cell in cells:
        key = key_of(cell)
        for i, row in enumerate(cell.metrics):
            if key is not None and (value := _finite(row.get(key))) is not None:
                per_epoch.setdefault(float(row.get("epoch", i + 1)), []).append(value)
    epochs = sorted(per_epoch)
    return epochs, [statistics.fmean(per_epoch[e]) for e in epochs]


def summarize(groups: Mapping[str, Sequence[Cell]]) -> Summary:
    """Mean ± sample std over seeds of every accuracy (per checkpoint and attack at ε), and the cost, per group.

    All cells must share one evaluation protocol (`common_protocol`); one-line UserError otherwise.
    """
    for label, cells in groups.items():
        if not cells:
            raise UserError(f"group {label!r} has no run directory: give each group at least one run")
    protocol = common_protocol([cell for cells in groups.values() for cell in cells])
    columns = tuple(Column(c, r) for c in protocol.checkpoints for r in protocol.results)
    summaries = []
    for label, cells in groups.items():
        per_cell = [{c: accuracies(cell, c) for c in protocol.checkpoints} for cell in cells]
        stats = {col: Stat.of([acc[col.checkpoint][col.result] for acc in per_cell]) for col in columns}
        summaries.append(GroupSummary(label, tuple(cell.seed for cell in cells), stats, _cost(cells)))
    seeds = sorted({ev.get("seed") for cells in groups.values() for cell in cells for ev in cell.evals.values()},
                   key=str)
    return Summary(protocol, columns, tuple(summaries), tuple(seeds))


def strongest_attack(summary: Summary) -> ResultKey | None:
    """The robust accuracy a clean-vs-robust comparison plots: AutoAttack at the largest ε when it ran, else the
    attack with the lowest mean accuracy there (over groups and checkpoints); None without a robust attack."""
    robust = [r for r in summary.protocol.results if r.attack != "clean"]
    if not robust:
        return None
    at_top = [r for r in robust if r.eps == max(r.eps for r in robust)]
    autoattack = [r for r in at_top if r.attack == "autoattack"]
    if autoattack:
        return autoattack[0]

    def mean_accuracy(result: ResultKey) -> float:
        return statistics.fmean(g.accuracy[c].mean for g in summary.groups for c in summary.columns
                                if c.result == result)

    return min(at_top, key=mean_accuracy)


# --------------------------------------------------------------------------------------------------- output


def summary_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the comparison table: one row per group, "mean ± std" accuracy (%) per column."""
    headers = ["method", "seeds", *(c.header for c in summary.columns)]
    rows = [[g.label, str(len(g.seeds)), *(str(g.accuracy[c]) for c in summary.columns)] for g in summary.groups]
    return headers, rows


def summary_markdown(summary: Summary) -> str:
    """The comparison as a markdown table: test accuracy (%), mean ± sample std over n seeds ("(n=1)" alone for
    one seed)."""
    return markdown_table(*summary_rows(summary))


CSV_COLUMNS = ("label", "run_dir", "seed", "checkpoint", "epoch", "attack", "eps", "norm", "accuracy", "correct",
               "total")


def _counts(cell: Cell, checkpoint: str) -> dict[ResultKey, tuple[int, int]]:
    """{result: (correct, total)} where the evaluation recorded the counts its accuracy is the ratio of (older
    eval JSONs hold the accuracy alone); the first entry wins, as in `accuracies`."""
    out: dict[ResultKey, tuple[int, int]] = {}
    for r in cell.evals[checkpoint].get("results") or []:
        counts = (r.get("correct"), r.get("total"))
        if all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            out.setdefault(_result_key(r), counts)
    return out


def write_csv(groups: Mapping[str, Sequence[Cell]], path: Path) -> Path:
    """One tidy row per cell × checkpoint × attack (CSV_COLUMNS; accuracy a fraction, exactly correct / total;
    the counts empty for an evaluation that did not record them); written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for label, cells in groups.items():
        for cell in cells:
            for checkpoint, ev in cell.evals.items():
                counts = _counts(cell, checkpoint)
                for key, accuracy in accuracies(cell, checkpoint).items():
                    writer.writerow([label, cell.run_dir, cell.seed, checkpoint, ev.get("epoch"), key.label,
                                     key.eps, key.norm or "", accuracy, *counts.get(key, ("", ""))])
    atomic_write_text(Path(path), buffer.getvalue())
    return Path(path)
