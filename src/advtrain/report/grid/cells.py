"""The cells of a comparison, read from their run directories, and their grouping by everything but the seed."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advtrain.errors import UserError
from advtrain.report.run_report import _read_json_file, read_metrics
from advtrain.report.tables import MISSING, fmt_eps
from advtrain.rundir import read_config, run_dir_path

# Checkpoints in the order the table shows them; others (e.g. an "ema" evaluation) follow alphabetically.
CHECKPOINT_ORDER = ("last", "best")

# Config keys that never make two runs different methods. `seed` is what a group averages over; the others
# change where or how a run is shown or stored, not what is trained. The `eval` section is the train
# command's own evaluation: the protocol that counts is the one recorded in the eval JSONs, checked by
# `summarize`.
IGNORED_KEYS = ("seed", "train.progress", "train.device", "train.threads", "train.checkpoint_every",
                "train.tensorboard", "data.root")
IGNORED_SECTIONS = ("eval",)


@dataclass(frozen=True)
class Cell:
    """One run directory, read once: its config, per-epoch metrics, evaluations and gradient-masking check."""

    run_dir: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    evals: dict[str, dict[str, Any]]  # checkpoint name ("last", "best", ...) -> eval JSON
    diagnose: dict[str, Any] | None  # RUN_DIR/diagnose.json (`advtrain diagnose`)

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def method(self) -> str:
        method = self.config.get("method")
        return str(method.get("name", "?")) if isinstance(method, Mapping) else "?"


def _checkpoint_rank(name: str) -> tuple[int, str]:
    return (CHECKPOINT_ORDER.index(name), "") if name in CHECKPOINT_ORDER else (len(CHECKPOINT_ORDER), name)


def _read_evals(run_dir: Path) -> dict[str, dict[str, Any]]:
    """eval-<checkpoint>.json files (written by `compare`), plus eval.json under the checkpoint it names (a plain
    `advtrain train` run); an eval-<checkpoint>.json wins over an eval.json of the same checkpoint."""
    evals = {path.stem.removeprefix("eval-"): _read_json_file(path) for path in run_dir.glob("eval-*.json")}
    plain = run_dir / "eval.json"
    if plain.is_file():
        ev = _read_json_file(plain)
        evals.setdefault(str(ev.get("checkpoint") or "unknown"), ev)
    return {name: evals[name] for name in sorted(evals, key=_checkpoint_rank)}


def read_cell(run_dir: Path | str) -> Cell:
    """Read one run directory; one-line UserError naming the path and the fix when it is not a training run."""
    path = run_dir_path(run_dir)
    config = read_config(path)  # UserError when config.yaml is missing: not a run directory
    metrics = read_metrics(path)  # UserError when metrics.jsonl is missing: no epoch finished
    diagnose_path = path / "diagnose.json"
    diagnose = _read_json_file(diagnose_path) if diagnose_path.is_file() else None
    return Cell(path, config, metrics, _read_evals(path), diagnose)


def read_groups(groups: Mapping[str, Sequence[Path | str]]) -> dict[str, list[Cell]]:
    """{label: cells} from {label: run directories}, for callers that label the groups themselves."""
    out: dict[str, list[Cell]] = {}
    for label, runs in groups.items():
        if not runs:
            raise UserError(f"group {label!r} has no run directory: give each group at least one run")
        out[label] = [read_cell(run) for run in runs]
    return out


# --------------------------------------------------------------------------------------------------- grouping


def _flatten(node: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{dotted}.")
        else:
            yield dotted, value


def _setting_keys(config: Mapping[str, Any]) -> dict[str, str]:
    """{dotted key: value as JSON} of the settings that define a method, i.e. all but the ignored ones."""
    return {
        key: json.dumps(value, sort_keys=True)
        for key, value in _flatten(config)
        if key not in IGNORED_KEYS and key.split(".")[0] not in IGNORED_SECTIONS
    }


def _fmt_setting(key: str, value_json: str | None) -> str:
    if value_json is None:
        return f"{key}={MISSING}"
    value = json.loads(value_json)
    if key.endswith("eps"):
        return f"{key}={fmt_eps(value)}"
    return f"{key}={value}" if isinstance(value, str) else f"{key}={value_json}"


def _labels(settings: list[dict[str, str]], methods: list[str]) -> list[str]:
    """Method name plus the settings that tell the groups apart. A method's options (method.*) are compared only
    with other groups of the same method: another method's options differ by definition, and its name says so."""
    keys = sorted({k for s in settings for k in s} - {"method.name"})

    def varies(key: str, method: str) -> bool:
        peers = [s for s, m in zip(settings, methods, strict=True) if m == method or not key.startswith("method.")]
        return len({s.get(key) for s in peers}) > 1

    labels = [" ".join([method, *(_fmt_setting(k, own.get(k)) for k in keys if varies(k, method))])
              for own, method in zip(settings, methods, strict=True)]
    # Two groups differ in some key, and that key is shown for both (or their method names differ).
    assert len(set(labels)) == len(labels), labels
    return labels


def group_cells(cells: Sequence[Cell]) -> dict[str, list[Cell]]:
    """{label: cells}: the cells whose configs are equal except for the seed (and the IGNORED_KEYS), in first-seen
    order. The label is the method name plus the dotted settings that differ between groups, e.g.
    ``trades method.beta=6.0``."""
    keyed: dict[tuple[tuple[str, str], ...], list[Cell]] = {}
    for cell in cells:
        keyed.setdefault(tuple(sorted(_setting_keys(cell.config).items())), []).append(cell)
    settings = [dict(key) for key in keyed]
    methods = [members[0].method for members in keyed.values()]
    return dict(zip(_labels(settings, methods), keyed.values(), strict=True))
