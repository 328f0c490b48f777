"""Replace a file atomically: readers see the old file or the complete new one, never a torn one.

The primitive under `advtrain.fileio` (which first records a run folder's files) and `advtrain.runfiles` (which
writes that record with it), kept apart from both so that neither imports the other back.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, without recording ``path`` in a run's list of files (that is
    :func:`advtrain.fileio.atomic_write_bytes`).

    The bytes go to a temporary file in the same directory (``os.replace`` is only atomic within one file
    system), are fsynced, and the temporary file is renamed over ``path``; the directory is then fsynced so the
    rename itself survives a crash. On failure the temporary file is removed and ``path`` is left untouched.
    """
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


def _fsync_dir(directory: Path) -> None:
    # Persist the rename itself. Directories cannot be opened for fsync on Windows; skip there.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
