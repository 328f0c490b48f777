"""Range bounds for numeric config fields, written as `typing.Annotated` metadata, and the check of every field.

    steps: Annotated[int, Ge(1)] = 10
    step_size: Annotated[float, Gt(0)] | None = None   # the bound applies when a value is given

Every config dataclass derives from `CheckedConfig`, whose `__post_init__` checks each field's value against its
annotation (type, `Literal` choices, bounds), so a config built in Python (`TRADESConfig(beta=-1)`) is refused
just as one read from YAML is: with a one-line `FieldError` (a UserError and a ValueError) naming the field. The
YAML loader (`advtrain.configfile`) relies on this same check. This module imports nothing from advtrain but
`errors`, so method modules can use it without importing `advtrain.config` (which imports the methods).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin, get_type_hints

from advtrain.errors import InvalidValue, UserError


@dataclass(frozen=True)
class Bound(ABC):
    """A one-sided bound; `hint` is appended to the error message (e.g. what the value means)."""

    limit: int | float
    hint: str = ""
    symbol: ClassVar[str] = ""

    @abstractmethod
    def holds(self, value: int | float) -> bool: ...

    def check(self, value: Any, where: str) -> None:
        """Raise a one-line UserError unless `value` satisfies the bound; None (an unset option) passes."""
        # NaN compares false with everything, so `holds` refuses it under every bound.
        if value is None or self.holds(value):
            return
        hint = f" ({self.hint})" if self.hint else ""
        raise UserError(f"{where} must be {self.symbol} {self.limit}{hint}, got {value!r}")


class Ge(Bound):
    """value >= limit"""

    symbol = ">="

    def holds(self, value: int | float) -> bool:
        return value >= self.limit


class Gt(Bound):
    """value > limit"""

    symbol = ">"

    def holds(self, value: int | float) -> bool:
        return value > self.limit


class Le(Bound):
    """value <= limit"""

    symbol = "<="

    def holds(self, value: int | float) -> bool:
        return value <= self.limit


class Lt(Bound):
    """value < limit"""

    symbol = "<"

    def holds(self, value: int | float) -> bool:
        return value < self.limit


@dataclass(frozen=True)
class Parsed:
    """`Annotated` metadata: turns the value as written into the field's canonical one before it is checked, e.g. a
    norm's spellings (`Annotated[Norm, Parsed(parse_norm)]`), in Python as from YAML. `parse(value, where)` raises
    a UserError for a value it does not understand."""

    parse: Callable[[Any, str], Any]


class FieldError(InvalidValue):
    """A config field's value its annotation refuses. The message starts with the field's name as seen from the
    dataclass (`relative`, e.g. "betas[1] must be < 1, got 1.0"), qualified by `owner`: the class name when the
    config is built in Python, the section (e.g. "optim") when it is read from YAML."""

    def __init__(self, relative: str, owner: str = "", field: str = "") -> None:
        super().__init__(f"{owner}.{relative}" if owner else relative)
        self.relative = relative
        self.field = field  # the field `relative` starts with, e.g. "betas"

    def under(self, owner: str) -> FieldError:
        """The same error, named from `owner` ("" for the top level)."""
        return FieldError(self.relative, owner, self.field)

    def renamed(self, name: Callable[[str], str]) -> InvalidValue:
        """The error naming its field as `name(field)` does, list index dropped: "eps[1] must be >= 0" becomes
        "--eps must be >= 0" for the flag that sets the field."""
        rest = self.relative.removeprefix(self.field)
        if self.field and rest.startswith("["):
            rest = rest.partition("]")[2]
        return InvalidValue(name(self.field) + rest if self.field else self.relative)


class CheckedConfig:
    """Base of the config dataclasses: building one checks every field against its annotation (see the module
    docstring); a tuple given for a list field is stored as a list. A subclass with its own `__post_init__`
    (cross-field rules) calls `super().__post_init__()` first."""

    def __post_init__(self) -> None:
        for name, annotation in _field_annotations(type(self)).items():
            if isinstance(getattr(self, name), tuple) and _holds_list(annotation):
                object.__setattr__(self, name, list(getattr(self, name)))  # Python callers write either
            try:
                for parsed in _parsers(annotation):
                    # object.__setattr__: frozen config dataclasses are parsed too
                    object.__setattr__(self, name, parsed.parse(getattr(self, name), name))
                check_value(getattr(self, name), annotation, name)
            except UserError as e:
                raise FieldError(str(e), type(self).__name__, name) from None


# Field metadata for a field that config files do not set: the program sets it each time the config is used (an
# evaluation's device, from the command line or the run's other sections). A file naming it is refused as naming an
# unknown option, and a run config leaves it out of its config.yaml and digest.
NOT_IN_FILES = types.MappingProxyType({"in_files": False})


def file_fields(cls: type) -> list[str]:
    """The names of the fields of the config dataclass `cls` that config files set (all but NOT_IN_FILES ones)."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("in_files", True)]


def _holds_list(annotation: Any) -> bool:
    """Whether a field of this annotation may hold a list."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _holds_list(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_holds_list(option) for option in get_args(annotation))
    return origin is list


def _parsers(annotation: Any) -> list[Parsed]:
    return [e for e in get_args(annotation)[1:] if isinstance(e, Parsed)] if get_origin(annotation) is Annotated else []


@functools.cache
def _field_annotations(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls, include_extras=True)  # include_extras keeps the Annotated bounds
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_choice(value: Any, allowed: tuple[Any, ...], where: str) -> None:
    """A one-line UserError, with the closest choice, unless `value` is one of `allowed`."""
    if value in allowed:
        return
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(f"{where}: {value!r} is not allowed: {hint}choose one of {', '.join(map(str, allowed))}")


def check_value(value: Any, annotation: Any, where: str) -> None:
    """A one-line UserError naming `where` unless `value` fits `annotation`: a scalar type, a Literal, a list or
    dict of them, a union, a dataclass, with the bounds of any `Annotated` part."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extras = get_args(annotation)
        check_value(value, base, where)
        for extra in extras:
            if isinstance(extra, Bound):
                extra.check(value, where)
    elif origin in (typing.Union, types.UnionType):
        _check_union(value, get_args(annotation), where)
    elif origin is Literal:
        check_choice(value, get_args(annotation), where)
    elif origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item,) = get_args(annotation)
        for i, v in enumerate(value):
            check_value(v, item, f"{where}[{i}]")
    elif origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
    elif annotation is not Any:
        _check_scalar(value, annotation, where)


def _check_union(value: Any, options: tuple[Any, ...], where: str) -> None:
    if value is None and type(None) in options:
        return
    errors = []
    for option in (o for o in options if o is not type(None)):
        try:
            check_value(value, option, where)
            return
        except UserError as e:
            # A Literal of words speaks for strings only: for a number (`eval.batch_size: 0`), the numeric
            # option's error says what is wrong (its bound), not "choose one of auto".
            if get_origin(option) is not Literal or isinstance(value, str):
                errors.append(str(e))
    raise UserError(errors[-1] if errors else f"{where}: bad value {value!r}")


def _check_scalar(value: Any, kind: type, where: str) -> None:
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where}: expected a number, got {value!r}")
        # inf or nan would only surface later, as a diverging loss or an empty attack, after files were written.
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{where}: expected a finite number, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        if not -(2**63) <= value < 2**63:  # torch takes sizes, counts and seeds as 64-bit integers
            raise UserError(f"{where}: {value} does not fit in a 64-bit integer")
    elif kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
    elif kind is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
    elif not isinstance(value, kind):
        raise UserError(f"{where}: expected a {kind.__name__}, got {value!r}")


__all__ = [
    "NOT_IN_FILES", "Bound", "CheckedConfig", "FieldError", "Ge", "Gt", "Le", "Lt", "Parsed", "check_choice",
    "check_value", "file_fields",
]
