"""Atomic file writes: readers see the old file or the complete new one, never a torn one.

A file written into a run folder is first added to the run's record of its files (`advtrain.runfiles`), which
is what lets `--overwrite` remove exactly the files advtrain wrote.
"""

from __future__ import annotations

from pathlib import Path

from advtrain.atomic_replace import replace_file
from advtrain.runfiles import record_write

__all__ = ["atomic_write_bytes", "atomic_write_text", "replace_file"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one.

    The bytes go to a temporary file in the same directory (``os.replace`` is only atomic within one
    file system), are fsynced, and the temporary file is renamed over ``path``; the directory is then
    fsynced so the rename itself survives a crash. On failure the temporary file is removed and the
    previous ``path`` is left untouched. Missing parent directories are created. Inside a run folder, ``path``
    and those directories are recorded first (:func:`advtrain.runfiles.record_write`).
    """
    record_write(Path(path))
    replace_file(Path(path), data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))
