"""One name → entry table for models, methods and datasets, with the one "did you mean" message they share.

Re-registering a name is allowed only from the same place: an entry whose ``__module__`` and ``__qualname__``
match the registered one replaces it. That is what a re-run notebook cell does (the cell defines a new
function or class with the same qualified name), so re-running it neither fails nor leaves the stale entry
in place. A different definition claiming a taken name is a programming error and raises ValueError.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Generic, TypeVar

from advtrain.errors import UserError

T = TypeVar("T")


def _origin(entry: object) -> tuple[str | None, str | None]:
    """Where ``entry`` was defined: (module, qualified name); None for objects that do not say."""
    return getattr(entry, "__module__", None), getattr(entry, "__qualname__", None)


def suggestion(name: object, choices: list[str], n: int = 1) -> str:
    """``"did you mean 'x'? "`` for the choice closest to ``name`` (``"did you mean 'x', 'y' or 'z'? "`` for up to
    ``n`` of them, closest first), or ``""`` when none is close."""
    close = [repr(c) for c in difflib.get_close_matches(str(name), choices, n=n)]
    if not close:
        return ""
    listed = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
    return f"did you mean {listed}? "


class Registry(Generic[T]):
    """Entries of one ``kind`` ("model", "method", "dataset") by name."""

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.add(name, entry)

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name`` (see the module docstring for re-registering); return ``entry``."""
        old = self._entries.get(name)
        if old is not None and old is not entry and (None in _origin(entry) or _origin(old) != _origin(entry)):
            where = ".".join(filter(None, _origin(old)))
            raise ValueError(f"{self.kind} name {name!r} is already registered (by {where or repr(old)})")
        self._entries[name] = entry
        return entry

    def get(self, name: object) -> T:
        """The entry ``name``; a one-line UserError naming the closest name and every valid one if unknown."""
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            names = self.names()
            raise UserError(f"unknown {self.kind} {name!r}: {suggestion(name, names)}choose one of {', '.join(names)}")
        return entry

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
