"""A run folder's record of what advtrain wrote in it: RUN_DIR/.advtrain-run.json.

The record is what makes a folder a run. `advtrain train` writes it first, before config.yaml; from then on
every file advtrain writes into the folder is added to it *before* the file is written (`fileio` does this for
every atomic write, the trainer for its appended logs and TensorBoard's files), with the folders advtrain made
for them. `--overwrite` removes exactly the recorded files and, once empty, the recorded folders, so a user's
own files in a run folder (or in its checkpoints/ and figures/) are never touched, and a folder without the
record (one advtrain did not create, or a run from before the record existed) is never treated as a run.

Replacing a run is all-or-nothing: everything is checked first (`plan_replacement`, which writes nothing), the
old files are then moved aside into one folder inside the run and deleted only once the new config.yaml and
record are in place; any failure before that moves them back.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from advtrain.atomic_replace import replace_file
from advtrain.errors import UserError

RECORD = ".advtrain-run.json"
ASIDE_PREFIX = ".advtrain-replaced-"  # the old run's files while --overwrite replaces it


# --- the record ----------------------------------------------------------------------------------------


def is_run(folder: Path) -> bool:
    return (folder / RECORD).is_file()


def run_of(path: Path) -> Path | None:
    """The run folder `path` lies in (the nearest folder above it holding a record), or None."""
    for folder in Path(os.path.abspath(path)).parents:
        if is_run(folder):
            return folder
    return None


def read_record(run_dir: Path) -> dict[str, list[str]]:
    path = run_dir / RECORD
    fix = "restore it, or delete it and remove the run's files yourself (--overwrite refuses a folder without it)"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} (advtrain's list of the files it wrote here) is damaged: {fix}") from None
    lists = (data.get("files"), data.get("folders")) if isinstance(data, dict) else (None, None)
    if not all(isinstance(x, list) and all(_is_relative(p) for p in x) for x in lists):
        raise UserError(f"{path} (advtrain's list of the files it wrote here) is damaged: {fix}")
    return {"files": data["files"], "folders": data["folders"]}


def _is_relative(name: object) -> bool:
    """A path inside the run folder: relative, no `..`, so a tampered record cannot reach outside it."""
    return isinstance(name, str) and bool(name) and not PurePosixPath(name).is_absolute() and \
        ".." not in PurePosixPath(name).parts


def mark_run(run_dir: Path, files: Iterable[str], folders: Iterable[str]) -> None:
    """Write a new record naming `files` and `folders` (relative to `run_dir`): the folder is a run from now."""
    _write_record(run_dir, {"files": sorted(set(files)), "folders": sorted(set(folders))})


def record_write(path: Path) -> None:
    """Add `path`, and the folders above it that do not exist yet, to the record of the run it lies in (if any).

    Called before `path` and those folders are made, so a crash in between leaves a recorded name with no
    file (skipped by --overwrite), never an unrecorded file of advtrain's."""
    run_dir = run_of(path)
    if run_dir is None or Path(path).name == RECORD:
        return
    target = Path(os.path.abspath(path))
    new_folders = [p for p in target.parents if run_dir in p.parents and not p.exists()]
    _update(run_dir, add_files=[target], add_folders=new_folders)


def record_folder(folder: Path) -> None:
    """Make `folder` (and missing folders above it), recording those advtrain makes in the run it lies in."""
    run_dir = run_of(folder / "x")
    if run_dir is not None:
        target = Path(os.path.abspath(folder))
        new = [p for p in (target, *target.parents) if run_dir in p.parents and not p.exists()]
        _update(run_dir, add_files=[], add_folders=new)
    folder.mkdir(parents=True, exist_ok=True)


def forget_files(paths: Iterable[Path]) -> None:
    """Drop deleted files from their run's record (keeps it from growing with every rotated checkpoint)."""
    paths = [Path(os.path.abspath(p)) for p in paths]
    run_dir = run_of(paths[0]) if paths else None
    if run_dir is not None:
        _update(run_dir, add_files=[], add_folders=[], drop_files=paths)


def _update(run_dir: Path, *, add_files: list[Path], add_folders: list[Path], drop_files: Iterable[Path] = ()
            ) -> None:
    def names(paths: Iterable[Path]) -> set[str]:
        return {p.relative_to(run_dir).as_posix() for p in paths}

    with _locked(run_dir):
        record = read_record(run_dir)
        files = (set(record["files"]) | names(add_files)) - names(drop_files)
        folders = set(record["folders"]) | names(add_folders)
        if files != set(record["files"]) or folders != set(record["folders"]):
            mark_run(run_dir, files, folders)


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """One writer of the record at a time (e.g. `advtrain eval` while the run trains); POSIX only."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_record(run_dir: Path, record: dict[str, Any]) -> None:
    replace_file(run_dir / RECORD, (json.dumps(record, indent=1) + "\n").encode())


# --- replacing a run (--overwrite) -----------------------------------------------------------------------


@dataclass
class Replacement:
    """What `--overwrite` will remove: the old run's existing recorded files and its recorded folders."""

    run_dir: Path
    files: list[str]
    folders: list[str]


def plan_replacement(run_dir: Path) -> Replacement:
    """Check that the run in `run_dir` can be replaced as a whole, writing nothing; one-line UserError if not."""
    keep = "nothing was changed"
    if not is_run(run_dir):
        if (run_dir / "config.yaml").is_file():
            raise UserError(
                f"{run_dir} has a config.yaml but no {RECORD} (a run from an advtrain that kept no list of the files "
                f"it wrote, or not a run), so --overwrite will not guess what to delete: delete the old run's files "
                f"yourself, or choose a new --out folder ({keep})")
        raise UserError(f"{run_dir} is not empty and holds no advtrain run (no {RECORD}), so --overwrite will not "
                        f"delete anything in it: choose a new --out folder ({keep})")
    leftover = sorted(run_dir.glob(f"{ASIDE_PREFIX}*"))
    if leftover:
        raise UserError(
            f"{leftover[0]} holds the files of a run that an interrupted --overwrite was replacing: move them back "
            f"into {run_dir} to keep that run, or delete the folder, then run again ({keep})")
    record = read_record(run_dir)
    files = [name for name in record["files"] if _check_removable(run_dir, name, keep)]
    return Replacement(run_dir, files, record["folders"])


def _check_removable(run_dir: Path, name: str, keep: str) -> bool:
    """Whether the recorded file `name` is there to remove; UserError if removing it could touch anything else
    (a folder on its way is a symbolic link or not writable, or a folder now stands in its place)."""
    path = run_dir
    for part in PurePosixPath(name).parts[:-1]:
        path = path / part
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}), so the files advtrain wrote through "
                            f"it may not be this run's alone and --overwrite will not delete them ({keep}): replace "
                            "the link by a folder holding this run's files, or choose a new --out folder")
        if not path.is_dir():
            return False
    path = path / PurePosixPath(name).name
    if not path.is_symlink() and not path.exists():
        return False
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"{path} is a folder now, not the file advtrain wrote there, so --overwrite will not delete "
                        f"it ({keep}): move it out of the run, or choose a new --out folder")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot delete {path}: its folder is not writable ({keep}); fix the folder's permissions, "
                        "or choose a new --out folder")
    return True


def replace_run(plan: Replacement, write_new: Callable[[], None]) -> None:
    """Move the old run's files aside, call `write_new` (the new config.yaml, then the new record), then delete
    them; if moving or `write_new` fails, the old files are moved back and the old run is as it was."""
    run_dir = plan.run_dir
    aside = run_dir / f"{ASIDE_PREFIX}{secrets.token_hex(4)}"
    moved: list[str] = []
    try:
        aside.mkdir()
        for name in plan.files:
            (aside / name).parent.mkdir(parents=True, exist_ok=True)
            os.rename(run_dir / name, aside / name)
            moved.append(name)
        write_new()
    except BaseException as error:
        _move_back(run_dir, aside, moved, error)
        raise
    # The new run is in place: a file that cannot be deleted now only leaves the aside folder behind, which
    # the next --overwrite names.
    with contextlib.suppress(OSError):
        _remove_aside(aside, moved)
    for folder in sorted(plan.folders, key=lambda f: -len(PurePosixPath(f).parts)):  # deepest first
        with contextlib.suppress(OSError):  # not empty (a user's file, or the new run's): kept
            (run_dir / folder).rmdir()


def _move_back(run_dir: Path, aside: Path, moved: list[str], error: BaseException) -> None:
    try:
        for name in reversed(moved):
            os.replace(aside / name, run_dir / name)
        _remove_aside(aside, [])
    except OSError:
        raise UserError(f"--overwrite failed ({error}) and could not move the old run's files back: they are in "
                        f"{aside}; move them back into {run_dir} to restore it") from error


def _remove_aside(aside: Path, files: list[str]) -> None:
    """Delete the moved-aside files, then the folders that held them (only they are in there)."""
    for name in files:
        (aside / name).unlink()
    for folder in sorted((p for p in aside.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        folder.rmdir()
    if aside.exists():
        aside.rmdir()
