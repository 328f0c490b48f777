"""Name → method class, and building a method from its config."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, TypeVar

from advtrain.errors import UserError

if TYPE_CHECKING:
    from advtrain.attacks import ThreatModel
    from advtrain.methods.base import Method, MethodConfig

_METHODS: dict[str, type[Method]] = {}
M = TypeVar("M", bound="type[Method]")


def register_method(cls: M) -> M:
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    if name not in _METHODS:
        close = difflib.get_close_matches(name, _METHODS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown method {name!r}: {hint}choose one of {', '.join(list_methods())}")
    return _METHODS[name]


def build_method(config: MethodConfig, threat: ThreatModel) -> Method:
    return method_class(config.name)(config, threat)
