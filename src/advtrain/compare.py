"""`advtrain compare --config GRID.yaml`: methods × seeds × sweeps under one protocol, like a paper's table.

Every cell of the grid is one `advtrain train` run in OUT/cells/NAME. Each is trained (or resumed, if a run
was interrupted, or skipped, if it finished), then its last checkpoint and its best one (selected on the
validation split carved from the training set, never on the test set) are evaluated on the test split with
the one protocol of the grid's `eval` section, into eval-last.json and eval-best.json. The table (mean ± std
over seeds, last and best), a CSV and a self-contained HTML report are then written to OUT.

A grid file:

    name: digits, four methods          # the report's title
    base: ../configs/digits.yaml        # a run config (relative to the grid file); default: the defaults
    set: {train.epochs: 10}             # dotted overrides for every cell
    methods:                            # the rows: a method name, or a name with its options
      - standard
      - pgd_at
      - trades: {beta: 6.0}
      - igd: {teacher: "@standard"}     # @ROW: the same seed's cell of an earlier row (its run directory)
    seeds: [0, 1, 2]
    sweep: {method.steps: [5, 10]}      # optional: every combination multiplies the rows
    eval: {attacks: [clean, pgd, aa], eps: [0.1, 0.2], n: 500}

A bad grid fails with one line before anything is trained or written.
"""

from __future__ import annotations

import difflib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from advtrain.config import RunConfig, config_from_dict
from advtrain.configfile import apply_overrides, read_yaml
from advtrain.data import Dataset
from advtrain.errors import TrainingStopped, UserError
from advtrain.eval import (
    EvalSettings,
    attack_specs,
    evaluate_loaded,
    inequality_saliency,
    split_attack_names,
)
from advtrain.eval.checkpoints import checkpoint_path, load_checkpoint_model
from advtrain.eval.inequality import INEQUALITY_EVALS
from advtrain.eval.parts import EvalParts
from advtrain.eval.robustness import attack_fields
from advtrain.eval.settings import cli_flag, eval_settings
from advtrain.fileio import atomic_write_text
from advtrain.progress_display import shown_progress
from advtrain.report.grid import Cell, summarize, summary_markdown, write_csv
from advtrain.report.html_report import write_html_report
from advtrain.report.inequality_figures import write_inequality_figures
from advtrain.report.vulnerability_figures import write_vulnerability_figure
from advtrain.rundir import read_config
from advtrain.runtime import SEED_LIMIT
from advtrain.train import load_run_data, train

CHECKPOINTS = ("last", "best")  # best: selected on the validation split (train.select_metric)
GRID_KEYS = ("name", "base", "set", "methods", "seeds", "sweep", "eval")
EVAL_KEYS = ("attacks", "eps", "steps", "restarts", "step_size", "n", "batch_size", "seed")
REFERENCE = "@"  # a method option "@ROW" names the same seed's cell of an earlier row


@dataclass(frozen=True)
class Row:
    """One row of the table: a method with its options and one combination of the sweep."""

    key: str  # the method with every option and sweep value: names the cell folders
    name: str  # the method
    settings: tuple[str, ...]  # its options and sweep values as dotted key=value pairs
    combo: tuple[tuple[str, Any], ...]  # the sweep's values
    overrides: tuple[str, ...]  # dotted key=value, applied after the grid's `set`
    # (dotted key, method) filled with the folder of the same seed's cell of that method, same sweep values
    references: tuple[tuple[str, str], ...] = ()
    label: str = ""  # the table's name for the row: the method and what tells it from its other rows


@dataclass(frozen=True)
class Grid:
    name: str
    base: Path | None
    common: tuple[str, ...]
    rows: tuple[Row, ...]
    seeds: tuple[int, ...]
    eval: Mapping[str, Any]  # the grid's `eval:` options as EvalSettings fields; each cell's protocol: `_protocol`
    source: Path = field(default=Path("grid.yaml"))

    def cell_name(self, row: Row, seed: int) -> str:
        slug = "".join(c if c.isalnum() or c in "._-" else "-" for c in row.key.replace(" ", "_"))
        return f"{slug}-seed{seed}"


def _pairs(value: Any, where: str) -> list[tuple[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping of dotted keys to values, e.g. {{train.epochs: 10}}")
    return [(str(k), v) for k, v in value.items()]


def _yaml_value(value: Any) -> str:
    return json.dumps(value)  # JSON is YAML: the override parser reads it back as the same value


def _method_rows(methods: Any, path: Path) -> list[tuple[str, list[tuple[str, Any]]]]:
    if not isinstance(methods, list) or not methods:
        raise UserError(f"{path}: methods must be a non-empty list of method names (or {{name: {{option: value}}}})")
    rows = []
    for entry in methods:
        if isinstance(entry, str):
            rows.append((entry, []))
        elif isinstance(entry, dict) and len(entry) == 1:
            (name, options), = entry.items()
            rows.append((str(name), _pairs(options, f"{path}: methods: {name}")))
        else:
            raise UserError(f"{path}: methods: {entry!r} is neither a method name nor {{name: {{option: value}}}}")
    return rows


def _flat(key: str, value: Any) -> list[str]:
    """`key=value` pairs, nested options as dotted keys: base.name=pgd_at base.steps=5."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _flat(f"{key}.{k}", v)]
    return [f"{key}={value}"]


def _short_labels(rows: list[Row]) -> list[Row]:
    """Each row labelled by its method and the settings that differ between that method's rows (as a paper's
    table names "TRADES β=1" and "TRADES β=6", and a method alone by its name); the full settings stay in the
    cell folders' names and configs."""
    out = []
    for row in rows:
        same = [r.settings for r in rows if r.name == row.name]
        varying = [p for p in row.settings if not all(p in other for other in same)]
        out.append(replace(row, label=" ".join([row.name, *varying])))
    return out


def load_grid(path: Path) -> Grid:
    """Read and check a grid file (see the module docstring); one-line UserError for anything wrong."""
    raw = read_yaml(path)
    for key in raw:
        if key not in GRID_KEYS:
            close = difflib.get_close_matches(str(key), GRID_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserError(f"{path}: unknown key {key!r}: {hint}a grid has {', '.join(GRID_KEYS)}")
    seeds = raw.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < SEED_LIMIT for s in seeds)):
        raise UserError(f"{path}: seeds must be a list of distinct integers in [0, {SEED_LIMIT}), e.g. [0, 1, 2]")
    base = raw.get("base")
    base_path = (path.parent / str(base)) if base is not None else None
    common = tuple(f"{k}={_yaml_value(v)}" for k, v in _pairs(raw.get("set"), f"{path}: set"))
    sweep = _pairs(raw.get("sweep"), f"{path}: sweep")
    for key, values in sweep:
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: sweep {key} must be a non-empty list of values")
    rows: list[Row] = []
    for name, options in _method_rows(raw.get("methods"), path):
        for combo in itertools.product(*[[(k, v) for v in values] for k, values in sweep]):
            overrides = [f"method.name={name}"]
            references = []
            for key, value in options:
                if isinstance(value, str) and value.startswith(REFERENCE):
                    references.append((f"method.{key}", value[len(REFERENCE):]))
                else:
                    overrides.append(f"method.{key}={_yaml_value(value)}")
            overrides += [f"{k}={_yaml_value(v)}" for k, v in combo]
            settings = tuple(pair for k, v in [*options, *combo] for pair in _flat(k, v))
            rows.append(Row(" ".join([name, *settings]), name, settings, combo, tuple(overrides), tuple(references)))
    rows = _short_labels(rows)
    for i, row in enumerate(rows):
        if row.key in [r.key for r in rows[:i]]:
            raise UserError(f"{path}: the row {row.key!r} appears twice: give each method and options once")
        for key, target in row.references:
            if len([r for r in rows if r.name == target and r.combo == row.combo]) > 1:
                raise UserError(f"{path}: {row.key}: {key}: {REFERENCE}{target} names several rows: a reference "
                                "needs a method that appears once (per sweep value)")
            if _referenced(rows[:i], target, row.combo) is None:
                earlier = ", ".join(dict.fromkeys(r.name for r in rows[:i])) or "none"
                raise UserError(f"{path}: {row.key}: {key}: {REFERENCE}{target} names no earlier row: put "
                                f"that method first (earlier: {earlier})")
    grid = Grid(str(raw.get("name") or path.stem), base_path, common, tuple(rows), tuple(seeds),
                _eval_options(raw.get("eval"), path), path)
    for row in rows:  # every config and the protocol are checked now (rows with references: once those exist)
        if not row.references:
            try:
                _protocol(grid, cell_config(grid, row, seeds[0], Path(".")))
            except UserError as e:
                raise UserError(f"{path}: {row.key}: {e}") from None
    return grid


def _eval_options(section: Any, path: Path) -> dict[str, Any]:
    values = dict(_pairs(section, f"{path}: eval"))
    for key in values:
        if key not in EVAL_KEYS:
            close = difflib.get_close_matches(key, EVAL_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserError(f"{path}: eval: unknown key {key!r}: {hint}use {', '.join(EVAL_KEYS)}")
    names = values.pop("attacks", ["clean", "pgd"])
    if not isinstance(names, list):
        raise UserError(f"{path}: eval: attacks must be a list, e.g. [clean, pgd, aa]")
    values["attacks"], values["inequality"] = split_attack_names(names)
    if values.get("eps") is not None and not isinstance(values["eps"], list):
        values["eps"] = [values["eps"]]
    return values


def _referenced(rows: Sequence[Row], method: str, combo: tuple[tuple[str, Any], ...]) -> Row | None:
    return next((r for r in rows if r.name == method and r.combo == combo), None)


def cell_config(grid: Grid, row: Row, seed: int, out: Path) -> RunConfig:
    """The run config of one cell (checked); references name the cell folders of earlier rows under `out`."""
    raw = read_yaml(grid.base) if grid.base is not None else {}
    refs = []
    for key, target in row.references:
        other = _referenced(grid.rows, target, row.combo)
        assert other is not None  # load_grid checked it
        refs.append(f"{key}={_yaml_value(str(out / 'cells' / grid.cell_name(other, seed)))}")
    return config_from_dict(apply_overrides(raw, [*grid.common, *row.overrides, *refs, f"seed={seed}"]))


def _protocol(grid: Grid, config: RunConfig) -> EvalSettings:
    """The grid's protocol for a cell (checked): the threat model's ε and norm where the grid names none."""
    options = {**grid.eval, "eps": grid.eval.get("eps") or [config.threat.eps]}
    # A bad value is named by the `advtrain eval` flag of the same setting (--steps).
    return eval_settings(cli_flag, **options, norm=config.threat.norm, device=config.train.device)


def run_grid(grid: Grid, out: Path, *, log: Callable[[str], None] = print) -> dict[str, list[Path]]:
    """Train and evaluate every cell (resuming or skipping what is there); the cell folders by row label (for
    `advtrain.report.grid.read_groups`)."""
    cells: dict[str, list[Path]] = {}
    total = len(grid.rows) * len(grid.seeds)
    done = 0
    for row in grid.rows:
        for seed in grid.seeds:
            done += 1
            run_dir = out / "cells" / grid.cell_name(row, seed)
            cells.setdefault(row.label, []).append(run_dir)
            config = cell_config(grid, row, seed, out)
            prefix = f"[{done}/{total}] {row.label}, seed {seed}"
            data = load_run_data(config)  # once per cell: for its training and both evaluations
            _train_cell(config, data, run_dir, prefix, grid, out, log)
            for which in CHECKPOINTS:
                _evaluate_cell(data, run_dir, which, _protocol(grid, config), prefix, log)
    return cells


def _train_cell(config: RunConfig, data: Dataset, run_dir: Path, prefix: str, grid: Grid, out: Path,
                log: Callable[[str], None]) -> None:
    started = (run_dir / "config.yaml").is_file()
    if started and config_from_dict(read_config(run_dir)).digest() != config.digest():
        raise UserError(f"{run_dir} was trained with another config than {grid.source} now gives: delete that "
                        "folder to train it again, or restore the grid")
    log(f"{prefix}: {'resuming' if started else 'training'} {run_dir}")
    try:
        train(config, run_dir, data=data, log=lambda line: log(f"  {line}"), resume=started)
    except TrainingStopped as e:
        raise TrainingStopped(f"{e}; to continue the whole grid: advtrain compare --config {grid.source} "
                              f"--out {out}", e.exit_code) from None


def _evaluate_cell(data: Dataset, run_dir: Path, which: str, settings: EvalSettings, prefix: str,
                   log: Callable[[str], None]) -> None:
    out = run_dir / f"eval-{which}.json"
    if _evaluated_with(out, settings, data):
        return
    if out.is_file():
        log(f"{prefix}: {out} was evaluated with another protocol than the grid's now: evaluating again")
    loaded = load_checkpoint_model(checkpoint_path(run_dir, which))
    parts = EvalParts(out.with_name(f"{out.name}.parts"))
    with shown_progress() as shown:
        report, _ = evaluate_loaded(loaded, data, settings, checkpoint=which, label=run_dir.name, parts=parts,
                                    on_result=lambda r: log(f"  {which}{r.summary()}"), progress=shown)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    parts.remove()
    # The figures of the analyses (saliency grid, noise, vulnerability histogram) for the report: best only.
    if "inequality" in report and which == "best":
        saliency = inequality_saliency({run_dir.name: loaded}, data, report["inequality"], n=settings.n,
                                       device=settings.device, batch_size=report["batch_size"])
        write_inequality_figures(report["inequality"], run_dir / "figures", saliency)
    if "vulnerability" in report and which == "best":
        write_vulnerability_figure(report["vulnerability"], run_dir / "figures")
    log(f"{prefix}: wrote {out}")


def _evaluated_with(path: Path, settings: EvalSettings, data: Dataset) -> bool:
    """Whether `path` holds an evaluation under `settings`: the same attacks (with ε, steps, ...), images, seed and
    analyses. A grid whose protocol changed evaluates its cells again; their training is kept."""
    if not path.is_file():
        return False
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    specs = attack_specs(settings.attacks, settings.eps, norm=settings.norm, steps=settings.steps,
                         restarts=settings.restarts, step_size=settings.step_size)
    analyses = {"inequality": settings.inequality and any(e in INEQUALITY_EVALS for e in settings.inequality),
                "vulnerability": settings.vulnerability, "invariance": settings.invariance}
    return (
        isinstance(done, dict)
        and [attack_fields(r) for r in done.get("results", [])]
        == [json.loads(json.dumps(s.describe())) for s in specs]
        and done.get("n") == len(data.y_test[: settings.n])
        and done.get("seed") == settings.seed
        and all((key in done) == bool(wanted) for key, wanted in analyses.items())
    )


def write_grid_report(cells: Mapping[str, Sequence[Cell]], out: Path, *, title: str,
                      notes: Sequence[str] = ()) -> list[Path]:
    """table.md, results.csv and report.html in `out` for cells grouped by row label; the paths written."""
    table = out / "table.md"
    atomic_write_text(table, f"# {title}\n\n{summary_markdown(summarize(cells))}\n")
    csv = write_csv(cells, out / "results.csv")
    html = write_html_report(cells, out / "report.html", title=title, notes=notes)
    return [table, csv, html]
