"""Progress of long jobs: the eval hook (chunks, AutoAttack sub-attacks, analysis stages), its display (bar or
plain lines with a heartbeat), and the commands' progress lines arriving through a pipe while they still run."""

import io
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from advtrain.attacks.reference_autoattack import autoattack
from advtrain.cli import main
from advtrain.errors import UserError
from advtrain.eval.progress import ProgressEvent, TaskProgress, labelled
from advtrain.eval.robustness import AttackSpec, evaluate_attacks
from advtrain.progress_display import INTERVAL_ENV, ProgressDisplay, progress_interval, progress_line
from tests.test_autoattack import EPS_MIXED, tiny_model

COUNTS = re.compile(r"^progress  (?P<task>.+?)(?: \[(?P<stage>[^\]]+)\])?: (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+)")


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    model = tiny_model()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, model(x).argmax(1)


def test_evaluate_attacks_reports_every_chunk_and_autoattack_sub_attacks():
    x, y = _images(10)
    events: list[ProgressEvent] = []
    specs = [AttackSpec("clean"), AttackSpec("pgd", 0.1, "linf", 3, 1, 0.05),
             AttackSpec("autoattack", EPS_MIXED, "linf", version="apgd")]
    with_hook = evaluate_attacks(tiny_model(), x, y, specs, batch_size=4, progress=events.append)
    without = evaluate_attacks(tiny_model(), x, y, specs, batch_size=4)
    assert [torch.equal(a.correct, b.correct) for a, b in zip(with_hook, without, strict=True)] == [True] * 3
    by_task = {task: [e for e in events if e.task == task] for task in ("clean", "pgd eps 0.1000",
                                                                        "autoattack (apgd) eps 0.1000")}
    assert [e.done for e in by_task["clean"]] == [0, 4, 8, 10] == [e.done for e in by_task["pgd eps 0.1000"]]
    assert {e.total for e in events} == {10} and events[-1].finished
    aa = by_task["autoattack (apgd) eps 0.1000"]
    # Each of the 3 chunks runs APGD-CE then APGD-T (while points survive), each reported as it starts.
    starts = [(e.done, e.stage) for e in aa if e.stage and not e.finished]
    assert starts[:2] == [(0, "apgd-ce"), (0, "apgd-t")] and {s for _, s in starts} == {"apgd-ce", "apgd-t"}
    assert [e.done for e in aa][-1] == 10 and len(events) == sum(map(len, by_task.values()))


def test_autoattack_stage_callback_leaves_its_logger_as_it_was():
    x, y = _images(6)
    logger = logging.getLogger("auto-attack")
    before = (logger.level, logger.propagate, list(logger.handlers))
    stages: list[str] = []
    expected = autoattack(tiny_model(), x, y, eps=EPS_MIXED, version="apgd")
    ours = autoattack(tiny_model(), x, y, eps=EPS_MIXED, version="apgd", on_stage=stages.append)
    assert torch.equal(ours, expected)  # reporting changes nothing in the attack
    assert stages[0] == "apgd-ce" and set(stages) <= {"apgd-ce", "apgd-t"}
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


def test_task_progress_counts_and_labels():
    events: list[ProgressEvent] = []
    task = TaskProgress(labelled(events.append, "run-a"), "inequality", 2, "stages")
    task.start_stage("gini (run-a)")
    task.advance()
    task.advance()
    assert [(e.task, e.done, e.stage) for e in events] == [
        ("run-a: inequality", 0, ""), ("run-a: inequality", 0, "gini (run-a)"),
        ("run-a: inequality", 1, "gini (run-a)"), ("run-a: inequality", 2, "gini (run-a)")]
    assert events[-1].finished and not events[-2].finished
    assert labelled(None, "x") is None
    TaskProgress(None, "quiet", 3).advance(3)  # no hook: nothing to report, nothing raised


def test_progress_line_carries_counts_rate_and_eta():
    line = progress_line(ProgressEvent("pgd eps 0.0314", 128, 512, stage="x"), elapsed=4.0)
    assert line == "progress  pgd eps 0.0314 [x]: 128/512 images (25%), 32.0 images/s, ETA 12 s, elapsed 4 s"
    assert progress_line(ProgressEvent("inequality", 1, 4, "stages"), elapsed=200.0) == (
        "progress  inequality: 1/4 stages (25%), elapsed 3 min 20 s")  # no rate or ETA for uneven stages


def test_plain_lines_are_throttled_but_each_stage_start_is_shown():
    stream = io.StringIO()
    with ProgressDisplay(stream, interval=100, bar=False) as show:
        for done in (0, 2, 4):
            show(ProgressEvent("pgd", done, 4))
        show(ProgressEvent("aa", 0, 4, stage="apgd-ce"))
        show(ProgressEvent("aa", 0, 4, stage="apgd-ce"))
        show(ProgressEvent("aa", 4, 4, stage="apgd-t"))
    assert [m["stage"] for m in map(COUNTS.match, stream.getvalue().splitlines())] == ["apgd-ce", "apgd-t"]
    stream = io.StringIO()
    with ProgressDisplay(stream, interval=0, bar=False) as show:
        for done in (0, 2, 4):
            show(ProgressEvent("pgd", done, 4))
    assert [m["done"] for m in map(COUNTS.match, stream.getvalue().splitlines())] == ["2", "4"]


def test_heartbeat_repeats_the_running_task_and_stops_when_it_ends():
    stream = io.StringIO()
    with ProgressDisplay(stream, interval=1, bar=False) as show:
        show(ProgressEvent("autoattack eps 0.0314", 0, 8))
        time.sleep(2.5)
        show(ProgressEvent("autoattack eps 0.0314", 8, 8))
        lines = stream.getvalue().splitlines()
        time.sleep(1.5)
    beats = [line for line in lines if COUNTS.match(line)["done"] == "0"]
    assert 1 <= len(beats) <= 3
    assert stream.getvalue().splitlines() == lines  # the task has finished: no more heartbeats


def test_bar_on_a_terminal_shows_counts():
    stream = io.StringIO()
    with ProgressDisplay(stream, interval=10, bar=True) as show:
        show(ProgressEvent("pgd eps 0.0314", 0, 8))
        show(ProgressEvent("pgd eps 0.0314", 4, 8, stage="chunk"))
        show(ProgressEvent("pgd eps 0.0314", 8, 8))
    assert "pgd eps 0.0314" in stream.getvalue() and "4/8" in stream.getvalue()


def test_interval_setting(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert progress_interval() == 10
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert progress_interval() == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(UserError, match=INTERVAL_ENV):
            progress_interval()


# --- the commands, through a pipe -------------------------------------------------------------------------------

FAST = ["--set", "train.epochs=1", "--set", "train.batch_size=128", "--set", "train.val_steps=1",
        "--set", "method.steps=2", "--set", "eval.attacks=[clean,pgd]", "--set", "eval.steps=3",
        "--set", "eval.n=48", "--set", "eval.batch_size=16", "--set", "threat.eps=0.2"]


def _stream(args: list[str], cwd: Path, watch: Path) -> list[tuple[str, bool]]:
    """Run `advtrain ARGS` with stdout and stderr into one pipe; each line as it arrives, with whether `watch`
    (a file the command writes once its evaluation is over) existed when the line was read."""
    # Without PYTHONUNBUFFERED: the command itself must flush its lines into the pipe.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"OMP_NUM_THREADS": "1", INTERVAL_ENV: "0"}
    run = subprocess.Popen([sys.executable, "-m", "advtrain", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    assert run.stdout is not None
    lines = [(line.rstrip("\n"), watch.exists()) for line in run.stdout]
    assert run.wait(timeout=300) == 0, "\n".join(line for line, _ in lines[-20:])
    return lines


def _progress(lines: list[tuple[str, bool]]) -> list[tuple[re.Match, bool]]:
    return [(m, written) for line, written in lines if (m := COUNTS.match(line))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("progress")
    lines = _stream(["train", *FAST, "--out", "run"], folder, folder / "run" / "eval.json")
    return folder / "run", lines


def test_train_shows_evaluation_progress_while_it_evaluates(trained):
    _, lines = trained
    progress = _progress(lines)
    text = [line for line, _ in lines]
    assert progress and not any(written for _, written in progress)  # all before eval.json was written
    pgd = [int(m["done"]) for m, _ in progress if m["task"] == "pgd eps 0.2000"]
    # A line per chunk (and a heartbeat repeating one whenever a chunk takes over a second on a busy machine).
    assert sorted(set(pgd)) == [16, 32, 48] and pgd == sorted(pgd) and {m["total"] for m, _ in progress} == {"48"}
    assert text.index(progress[0][0].string) < text.index(next(t for t in text if t.startswith("done: ")))


def test_eval_shows_attack_chunks_autoattack_stages_and_analyses_before_the_table(trained, tmp_path):
    run_dir, _ = trained
    out = tmp_path / "e.json"
    lines = _stream(["eval", str(run_dir), "--attacks", "clean,apgd,gini,vulnerability", "--n", "16",
                     "--batch-size", "8", "--out", str(out)], tmp_path, out)
    progress = _progress(lines)
    text = [line for line, _ in lines]
    table = text.index(next(t for t in text if t.startswith("attack ")))
    assert all(text.index(m.string) < table for m, _ in progress) and not any(w for _, w in progress)
    aa = [m for m, _ in progress if m["task"] == "autoattack (apgd) eps 0.2000"]
    assert list(dict.fromkeys(m["stage"] for m in aa)) == ["apgd-ce", "apgd-t"]  # as each starts, in order
    assert aa[-1]["done"] == aa[-1]["total"] == "16"
    assert {m["task"] for m, _ in progress} >= {"clean", "inequality", "vulnerability"}


def test_quiet_eval_and_diagnose_show_no_progress(trained, tmp_path, capsys, monkeypatch):
    run_dir, _ = trained
    monkeypatch.setenv(INTERVAL_ENV, "0")
    assert main(["eval", str(run_dir), "--attacks", "clean,pgd", "--steps", "2", "--n", "16", "--batch-size", "8",
                 "--out", str(tmp_path / "e.json"), "--quiet"]) == 0
    assert main(["diagnose", str(run_dir), "--n", "8", "--out", str(tmp_path / "d.json"), "--quiet"]) == 0
    quiet = capsys.readouterr()
    # The accuracies are printed once: in the table on stdout, never also as per-attack lines on stderr.
    assert "progress  " not in quiet.err + quiet.out and "accuracy" not in quiet.err
    assert quiet.out.count("accuracy %") == 1 and quiet.out.count("\nclean ") == 1
    assert main(["eval", str(run_dir), "--attacks", "clean", "--n", "16", "--batch-size", "8",
                 "--out", str(tmp_path / "e.json")]) == 0
    assert main(["diagnose", str(run_dir), "--n", "8", "--out", str(tmp_path / "d.json")]) == 0
    shown = capsys.readouterr().err
    assert "progress  clean: 16/16 images" in shown and "progress  diagnose: 8/8 checks" in shown


def test_a_bad_interval_is_one_line_and_exit_2(trained, tmp_path):
    run_dir, _ = trained
    env = os.environ | {"OMP_NUM_THREADS": "1", INTERVAL_ENV: "often"}
    result = subprocess.run([sys.executable, "-m", "advtrain", "eval", str(run_dir), "--attacks", "clean", "--n", "8",
                             "--out", str(tmp_path / "e.json")], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and INTERVAL_ENV in result.stderr


def test_diagnose_shows_each_check_through_a_pipe_before_it_writes_its_report(trained, tmp_path):
    run_dir, _ = trained
    out = tmp_path / "d.json"
    lines = _stream(["diagnose", str(run_dir), "--n", "8", "--out", str(out)], tmp_path, out)
    progress = [m for m, written in _progress(lines) if m["task"] == "diagnose" and not written]
    done = [int(m["done"]) for m in progress]
    assert done and done == sorted(done) and done[-1] == int(progress[-1]["total"])
    assert len(set(done)) > 1  # a line as each check finishes, not one at the end
