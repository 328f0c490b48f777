"""Issue 19, data loss: --overwrite checks everything first, removes only the files advtrain recorded, never treats
a folder it did not mark as a run, and replaces a run all-or-nothing; a run's eval.json is never silently
replaced; a missing sidecar is announced on resume; a full disk's message says what is true."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advtrain.checkpoint import load_weights
from advtrain.cli import main
from advtrain.config import load_config
from advtrain.train import train
from advtrain.train.state import list_states
from tests.test_reliability import needs_mount

# digits, 1237 training images in batches of 64: 20 steps per epoch, a second or two on one CPU thread.
RUN = ["seed=3", "train.epochs=2", "train.batch_size=64", "train.val_steps=2", "train.threads=1",
       "train.progress=quiet", "threat.eps=0.2", "data.val_size=200", "eval.attacks=[clean]", "eval.n=60"]
PGD = ["method.steps=3"]
RECORD = ".advtrain-run.json"  # the run's list of the files advtrain wrote (advtrain.runfiles)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def train_cli(out: Path, *extra: str, overrides: tuple[str, ...] = ()) -> int:
    return main(["train", *sets([*RUN, *(overrides or PGD)]), "--out", str(out), *extra])


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path; symbolic links are listed, never followed."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if Path(root, d).is_symlink()]:
            path = Path(root, name)
            rel = path.relative_to(folder).as_posix()
            found[rel] = f"link:{os.readlink(path)}" if path.is_symlink() else \
                hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-epoch PGD-AT run made by the CLI; tests copy it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert train_cli(run) == 0
    return run


def copy_run(finished: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished, run, symlinks=True)
    return run


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --- point 4: everything that can fail is checked before anything is removed ----------------------------


def test_a_bad_teacher_fails_before_the_old_run_or_a_new_folder_is_touched(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    teacher = tmp_path / "teacher.pt"
    torch.save(load_weights(finished / "checkpoints" / "best.safetensors")[0], teacher)
    pickled = tmp_path / "pickled.pt"
    torch.save({"weights": load_weights(finished / "checkpoints" / "best.safetensors")[0], "extra": object()},
               pickled)

    def igd(path: Path, model: str) -> tuple[str, ...]:
        return ("method.name=igd", f"method.teacher={path}", f"method.teacher_model={model}", "method.base.steps=3")

    before = snapshot(run)
    for path, model, fragment in [(teacher, "resnet1888", "unknown model 'resnet1888'"),
                                  (pickled, "small_cnn", "contains Python objects")]:
        assert train_cli(run, "--overwrite", overrides=igd(path, model)) == 2
        assert fragment in one_error_line(capsys)
        assert snapshot(run) == before, "the old run changed"
    # A new --out is not even created, so the corrected command is not refused as "not empty".
    new = tmp_path / "new"
    assert train_cli(new, overrides=igd(teacher, "resnet1888")) == 2
    assert not new.exists()
    capsys.readouterr()
    assert train_cli(new, overrides=igd(teacher, "small_cnn")) == 0
    assert train_cli(run, "--overwrite", overrides=igd(teacher, "small_cnn")) == 0
    assert "name: igd" in (run / "config.yaml").read_text()


# --- point 5: only recorded files are removed; an unmarked folder is never a run ------------------------


def test_overwrite_keeps_the_users_own_files_inside_the_run_and_its_folders(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    mine = {"checkpoints/my_model.pt": b"my weights", "figures/paper_fig1.pdf": b"%PDF my figure",
            "notes.txt": b"mine"}
    for name, data in mine.items():
        (run / name).write_bytes(data)
    assert train_cli(run, "--overwrite", overrides=(*PGD, "train.epochs=1", "seed=4")) == 0
    after = snapshot(run)
    assert {name: after.get(name) for name in mine} == {n: hashlib.sha256(d).hexdigest() for n, d in mine.items()}
    # The old run's files are gone (its epoch-2 state), the new run's are there, and only they are recorded.
    assert [s[0].epoch for s in list_states(run / "checkpoints")] == [1]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    recorded = json.loads((run / RECORD).read_text())["files"]
    assert set(recorded) == set(after) - set(mine) - {RECORD}


@pytest.mark.parametrize("config", ["a project's own config.yaml", None])
def test_overwrite_refuses_a_folder_advtrain_did_not_mark_and_changes_nothing(tmp_path, capsys, config):
    folder = tmp_path / "project"
    for name in ("checkpoints/my_model.pt", "figures/paper_fig1.pdf", "metrics.jsonl"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    if config is not None:
        (folder / "config.yaml").write_text(config)
    before = snapshot(folder)
    assert train_cli(folder, "--overwrite") == 2
    line = one_error_line(capsys)
    assert RECORD in line and "will not" in line and "nothing was changed" in line, line
    assert snapshot(folder) == before


# --- point 6: all or nothing -----------------------------------------------------------------------------


def test_a_symlinked_checkpoints_folder_is_refused_up_front_and_the_run_stays_resumable(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    elsewhere = tmp_path / "bigdisk" / "checkpoints"
    elsewhere.parent.mkdir()
    shutil.move(run / "checkpoints", elsewhere)
    (run / "checkpoints").symlink_to(elsewhere)
    before, target = snapshot(run), snapshot(elsewhere)
    assert train_cli(run, "--overwrite") == 2
    line = one_error_line(capsys)
    assert f"{run / 'checkpoints'} is a symbolic link" in line and "space" not in line, line
    assert snapshot(run) == before and snapshot(elsewhere) == target
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # still a whole, resumable run


def test_a_failure_half_way_through_the_clear_out_puts_the_old_run_back(finished, tmp_path, capsys, monkeypatch):
    run = copy_run(finished, tmp_path)
    (run / "checkpoints" / "my_model.pt").write_bytes(b"mine")
    before = snapshot(run)
    real_rename, calls = os.rename, []

    def rename(src, dst):  # the fifth file sits on another file system (a mount point inside the run)
        calls.append(src)
        if len(calls) == 5:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    assert train_cli(run, "--overwrite") == 2
    line = one_error_line(capsys)
    assert "Invalid cross-device link" in line and "the old run is unchanged" in line, line
    assert snapshot(run) == before
    assert not list(run.glob(".advtrain-replaced-*"))
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0


# SIGKILLs itself at the N-th rename: --overwrite killed while it moves the old run's files aside.
KILL_IN_RENAME = """
import os, signal, sys
n, calls, real_rename = int(sys.argv[1]), [0], os.rename
def rename(src, dst):
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rename(src, dst)
os.rename = rename
from advtrain.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_an_overwrite_killed_half_way_keeps_every_old_file_and_is_named_next_time(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    killed = subprocess.run([sys.executable, "-c", KILL_IN_RENAME, "4", "train", *sets([*RUN, *PGD]), "--out",
                             str(run), "--overwrite"], env=ENV, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    (aside,) = run.glob(".advtrain-replaced-*")
    # Every old file is still there, in the run or in the aside folder under the same relative path.
    after = {name.removeprefix(f"{aside.name}/"): digest for name, digest in snapshot(run).items()}
    assert after == before
    assert train_cli(run, "--overwrite") == 2
    line = one_error_line(capsys)
    assert f"{aside} holds the files of a run that an interrupted --overwrite was replacing" in line, line
    assert {name.removeprefix(f"{aside.name}/"): digest for name, digest in snapshot(run).items()} == before


# --- point 7: a run's eval.json is never silently replaced ---------------------------------------------


def test_eval_under_another_protocol_never_replaces_the_runs_eval_json(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    kept = {name: (run / name).read_bytes() for name in ("eval.json", "report.md")}
    assert main(["eval", str(run), "--attacks", "clean", "--num-images", "30", "--seed", "3"]) == 2
    line = one_error_line(capsys)
    assert "n 60 there, 30 now" in line and "--out FILE.json" in line and "nothing was run" in line, line
    assert {name: (run / name).read_bytes() for name in kept} == kept
    # Another file takes it; the run's own evaluation stays.
    other = tmp_path / "n30.json"
    assert main(["eval", str(run), "--attacks", "clean", "--n", "30", "--out", str(other)]) == 0
    assert json.loads(other.read_text())["n"] == 30
    assert {name: (run / name).read_bytes() for name in kept} == kept
    # The same protocol evaluates again in place; --out RUN_DIR/eval.json replaces it on purpose.
    assert main(["eval", str(run), "--attacks", "clean", "--n", "60", "--seed", "3"]) == 0
    assert json.loads((run / "eval.json").read_text())["results"] == json.loads(kept["eval.json"])["results"]
    assert main(["eval", str(run), "--attacks", "clean", "--n", "30", "--out", str(run / "eval.json")]) == 0
    assert json.loads((run / "eval.json").read_text())["n"] == 30 and "(30 examples)" in (run / "report.md").read_text()


# --- point 8 and a full disk: damage and failures are announced as they are -------------------------------


def test_resume_announces_a_newest_state_whose_sidecar_is_missing(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    (run / "eval.json").unlink()
    (newest, path), (previous, _) = list_states(run / "checkpoints")
    path.with_suffix(".json").unlink()
    lines: list[str] = []
    train(load_config(None, [*RUN, *PGD]), run, resume=True, log=lines.append)
    assert any(f"skipping damaged checkpoint {path.name}: its sidecar {path.with_suffix('.json').name} is missing"
               in line for line in lines), lines
    assert f"resuming {run} at epoch {previous.epoch + 1}" in "\n".join(lines)
    assert list_states(run / "checkpoints")[0][0] == newest  # trained to the end again


@needs_mount
def test_a_full_disk_before_the_first_checkpoint_says_none_was_saved(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    py = f"{sys.executable} -m advtrain"
    # Room for config.yaml and the logs, not for the first weights file (380 kB).
    script = (f"mount -t tmpfs -o size=64k tmpfs {mnt} && {py} train {' '.join(sets([*RUN, *PGD]))} --out {mnt}/run; "
              f"echo rc=$?; mount -o remount,size=64m {mnt} && {py} train --resume {mnt}/run --quiet; echo rc=$?")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], env=ENV, capture_output=True, text=True)
    assert [x for x in done.stdout.splitlines() if x.startswith("rc=")] == ["rc=2", "rc=0"], done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("advtrain")]
    assert "No space left on device" in line and "no checkpoint was saved yet" in line, line
    assert "intact" not in line and f"advtrain train --resume {mnt}/run" in line, line
