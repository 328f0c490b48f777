"""Name → method class, and building a method from its config."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from advtrain.registry import Registry

if TYPE_CHECKING:
    from advtrain.attacks import ThreatModel
    from advtrain.methods.base import Method, MethodConfig

_METHODS: Registry[type[Method]] = Registry("method")
M = TypeVar("M", bound="type[Method]")


def register_method(cls: M) -> M:
    """Class decorator: make ``cls`` buildable by its ``name``; re-running the defining cell replaces it."""
    _METHODS.add(cls.name, cls)
    return cls


def list_methods() -> list[str]:
    return _METHODS.names()


def method_class(name: str) -> type[Method]:
    return _METHODS.get(name)


def build_method(config: MethodConfig, threat: ThreatModel) -> Method:
    return method_class(config.name)(config, threat)
