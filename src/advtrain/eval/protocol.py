"""A run's eval.json is never silently replaced by an evaluation under another protocol.

`advtrain eval RUN_DIR` writes RUN_DIR/eval.json (and rewrites report.md from it) only when that file is absent
or holds an evaluation of the same protocol: the same data, images, checkpoint, seed, precision and attacks
(with ε, norm, steps, restarts, step size). Otherwise it refuses before any attack runs, naming `--out`. An
evaluation with analyses (gini, vulnerability, ...) always needs `--out` then: their options are not all
recorded in the JSON, so "the same protocol" could not be shown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from advtrain.data import Dataset
from advtrain.errors import UserError
from advtrain.eval.robustness import attack_fields, attack_specs
from advtrain.eval.settings import EvalSettings
from advtrain.runtime import autocast_dtype, resolve_device

FIELDS = ("data", "n", "checkpoint", "seed", "precision")


def recorded_protocol(report: Mapping[str, Any]) -> dict[str, Any]:
    """The protocol an eval JSON was measured under: its fields but the measurements."""
    results = report.get("results")
    return {key: report.get(key) for key in FIELDS} | {
        "attacks": [attack_fields(row) for row in results if isinstance(row, dict)]
        if isinstance(results, list) else None,
    }


def planned_protocol(settings: EvalSettings, data: Dataset, checkpoint: str | None) -> dict[str, Any]:
    """The protocol `evaluate_loaded(..., settings, checkpoint=checkpoint)` on `data` will record."""
    st = settings
    specs = attack_specs(st.attacks, st.eps, norm=st.norm, steps=st.steps, restarts=st.restarts,
                         step_size=st.step_size)
    amp = autocast_dtype(st.precision, resolve_device(st.device))
    return {
        "data": data.name, "n": len(data.y_test[: st.n]), "checkpoint": checkpoint, "seed": st.seed,
        "precision": "bf16" if amp is not None else "fp32",
        # Through JSON, as the file holds them (tuples become lists).
        "attacks": json.loads(json.dumps([spec.describe() for spec in specs])),
    }


def check_run_eval_kept(path: Path, settings: EvalSettings, data: Dataset, checkpoint: str | None) -> None:
    """Refuse (one-line UserError naming --out) to replace the run's eval.json at `path` with an evaluation
    under another protocol; nothing happens when `path` is absent or holds the same protocol."""
    if not path.is_file():
        return
    fix = f"pass --out FILE.json to write this evaluation to its own file, or --out {path} to replace it"
    if settings.inequality:
        raise UserError(f"{path} holds this run's evaluation and the analyses {', '.join(settings.inequality)} "
                        f"would replace it: {fix} (nothing was run)")
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} is not the JSON advtrain writes, so it is not replaced: {fix} (nothing was run)"
                        ) from None
    old = recorded_protocol(done) if isinstance(done, dict) else {}
    new = planned_protocol(settings, data, checkpoint)
    changed = [key for key in new if old.get(key) != new[key]]
    if changed:
        what = ", ".join("other attacks or attack settings" if key == "attacks" else
                         f"{key} {old.get(key)} there, {new[key]} now" for key in changed)
        raise UserError(f"{path} holds this run's evaluation under another protocol ({what}): {fix} "
                        "(nothing was run)")
