"""Atomic file writes: readers see the old file or the complete new one, never a torn one.

A file written into a run folder is first added to the run's record of its files (`advtrain.runfiles`), which
is what lets `--overwrite` remove exactly the files advtrain wrote.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one.

    The bytes go to a temporary file in the same directory (``os.replace`` is only atomic within one
    file system), are fsynced, and the temporary file is renamed over ``path``; the directory is then
    fsynced so the rename itself survives a crash. On failure the temporary file is removed and the
    previous ``path`` is left untouched. Missing parent directories are created. Inside a run folder, ``path``
    and those directories are recorded first (:func:`advtrain.runfiles.record_write`).
    """
    from advtrain.runfiles import record_write  # runfiles writes its record with replace_file

    record_write(Path(path))
    replace_file(Path(path), data)


def replace_file(path: Path, data: bytes) -> None:
    """:func:`atomic_write_bytes` without recording ``path`` in a run's list of files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never write through a file (or symlink) someone else put there; mode 0o666 lets the umask
    # decide the final permissions like a plain open() would (mkstemp would force 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(directory: Path) -> None:
    # Persist the rename itself. Directories cannot be opened for fsync on Windows; skip there.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
