"""`advtrain compare --config GRID.yaml` and `advtrain report`: one protocol for every cell, a resumable grid, and
one-line refusals of a bad grid before anything is trained or written."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advtrain.cli import main
from advtrain.compare import load_grid

GRID = """
name: tiny digits grid
set:
  train.epochs: 2
  train.batch_size: 256
  train.val_steps: 2
  train.progress: quiet
  train.threads: 1
  data.val_size: 200
  threat.eps: 0.2
  monitor.enabled: false
methods:
  - standard
  - pgd_at: {steps: 2}
seeds: [0, 1]
eval: {attacks: [clean, pgd, gini], eps: [0.1, 0.2], steps: 3, n: 120}
"""


def _write(tmp_path: Path, text: str = GRID) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("grid")
    grid = _write(folder)
    assert main(["compare", "--config", str(grid), "--out", str(folder / "out")]) == 0
    return grid, folder / "out"


def test_every_cell_is_trained_and_evaluated_under_one_protocol(finished_grid):
    _, out = finished_grid
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert cells == ["pgd_at_steps-2-seed0", "pgd_at_steps-2-seed1", "standard-seed0", "standard-seed1"]
    for cell in cells:
        for which in ("last", "best"):
            ev = json.loads((out / "cells" / cell / f"eval-{which}.json").read_text())
            assert ev["checkpoint"] == which and ev["n"] == 120 and ev["seed"] == 0  # one protocol, one eval seed
            assert [(r["attack"], r["eps"]) for r in ev["results"]] == [("clean", 0.0), ("pgd", 0.1), ("pgd", 0.2)]
            assert not (out / "cells" / cell / f"eval-{which}.json.parts").exists()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 * 2 * 3  # cells × checkpoints × attacks
    table = (out / "table.md").read_text()
    assert "| standard " in table and "| pgd_at " in table and "±" in table  # a method alone: its name
    html = (out / "report.html").read_text()
    assert "tiny digits grid" in html and "<table" in html
    # The analyses of the protocol ran on the best checkpoints and their figures reached the report.
    assert all((out / "cells" / cell / "figures/saliency.png").is_file() for cell in cells)
    assert html.count("data:image/png;base64,") >= 3 + len(cells)  # scatter, ε curves, training curves, saliency


def test_a_finished_grid_is_skipped_and_a_missing_evaluation_is_redone_alone(finished_grid, capsys):
    grid, out = finished_grid
    cell = out / "cells" / "standard-seed1"
    before = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}
    (cell / "eval-best.json").unlink()
    capsys.readouterr()
    assert main(["compare", "--config", str(grid), "--out", str(out)]) == 0
    logged = capsys.readouterr().out
    assert logged.count("wrote ") >= 1 and f"wrote {cell / 'eval-best.json'}" in logged
    after = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}
    changed = {p for p in after if after[p] != before.get(p)}
    # No run retrained, no other evaluation redone (the best checkpoint's figures are drawn again with it).
    assert changed == {cell / "eval-best.json", cell / "figures/saliency.png"}
    assert (cell / "eval-best.json").is_file()

    # A changed protocol evaluates every cell again and keeps their training.
    grid.write_text(GRID.replace("eps: [0.1, 0.2]", "eps: [0.2]"))
    assert main(["compare", "--config", str(grid), "--out", str(out)]) == 0
    again = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}
    redone = {p.name for p in again if again[p] != after.get(p)}
    assert redone == {"eval-last.json", "eval-best.json", "saliency.png"}
    evals = [json.loads(p.read_text()) for p in (out / "cells").glob("*/eval-*.json")]
    assert len(evals) == 8 and all([r["eps"] for r in ev["results"]] == [0.0, 0.2] for ev in evals)


def test_an_interrupted_grid_continues_where_it_stopped(tmp_path):
    grid = _write(tmp_path, GRID.replace("train.epochs: 2", "train.epochs: 4"))
    out = tmp_path / "out"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "advtrain", "compare", "--config", str(grid), "--out", str(out)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = out / "cells" / "standard-seed1"
    deadline = time.time() + 240
    while not (second / "metrics.jsonl").is_file() and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=240)
    assert run.returncode == 130, err[-2000:]
    assert f"advtrain compare --config {grid} --out {out}" in err.strip().splitlines()[-1]
    first = out / "cells" / "standard-seed0"
    kept = (first / "eval-best.json").stat().st_mtime_ns
    resumed = subprocess.run([sys.executable, "-m", "advtrain", "compare", "--config", str(grid), "--out", str(out)],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {second}" in resumed.stdout
    assert (first / "eval-best.json").stat().st_mtime_ns == kept  # the finished cell was skipped
    epochs = [json.loads(line)["epoch"] for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


def test_report_builds_the_same_table_from_existing_runs(finished_grid, tmp_path):
    _, out = finished_grid
    runs = sorted(str(p) for p in (out / "cells").iterdir())
    assert main(["report", *runs, "--out", str(tmp_path / "rep"), "--title", "from runs"]) == 0
    rows = list(csv.DictReader((tmp_path / "rep/results.csv").open()))
    evaluated = [json.loads(p.read_text()) for p in (out / "cells").glob("*/eval-*.json")]
    assert len(evaluated) == 8 and len(rows) == sum(len(ev["results"]) for ev in evaluated)
    assert (tmp_path / "rep/report.html").read_text().count("from runs") >= 1


@pytest.mark.parametrize(("text", "message"), [
    (GRID + "sedes: [1]\n", "unknown key 'sedes': did you mean 'seeds'?"),
    (GRID.replace("seeds: [0, 1]", "seeds: [0, 0]"), "seeds must be a list of distinct integers"),
    (GRID.replace("- standard", "- standrd"), "standrd"),
    (GRID.replace("attacks: [clean, pgd,", "attacks: [clean, pgdd,"), "unknown attack 'pgdd'"),
    (GRID.replace("steps: 3,", "steps: 0,"), "--steps"),
    (GRID.replace("- standard", "- igd: {teacher: '@pgd_at'}"), "names no earlier row"),
    (GRID.replace("- standard\n", "- standard\n  - standard\n"), "appears twice"),
])
def test_a_bad_grid_is_one_line_exit_2_and_nothing_is_written(tmp_path, capsys, text, message):
    grid = _write(tmp_path, text)
    assert main(["compare", "--config", str(grid), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_rows_of_a_sweep_and_references_to_earlier_rows(tmp_path):
    grid = load_grid(_write(tmp_path, GRID.replace("- pgd_at: {steps: 2}", "- igd: {teacher: '@standard'}")
                            + "sweep: {train.epochs: [1, 2]}\n"))
    assert [r.label for r in grid.rows] == [
        "standard train.epochs=1", "standard train.epochs=2", "igd train.epochs=1", "igd train.epochs=2",
    ]
    assert grid.rows[3].key == "igd teacher=@standard train.epochs=2"  # the cell folders name every setting
    twice = load_grid(_write(tmp_path, GRID.replace("- standard", "- pgd_at: {steps: 5}")))
    assert [r.label for r in twice.rows] == ["pgd_at steps=5", "pgd_at steps=2"]  # what tells them apart
    # The teacher of each igd cell is the cell of standard with the same seed and the same sweep values.
    from advtrain.compare import cell_config
    from advtrain.errors import UserError

    (tmp_path / "out/cells/standard_train.epochs-2-seed1").mkdir(parents=True)
    with pytest.raises(UserError, match=re.escape("standard_train.epochs-2-seed1")):
        cell_config(grid, grid.rows[3], 1, tmp_path / "out")  # an empty folder is not a teacher yet
