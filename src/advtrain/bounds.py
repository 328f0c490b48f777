"""Range bounds for numeric config fields, written as `typing.Annotated` metadata.

    steps: Annotated[int, Ge(1)] = 10
    step_size: Annotated[float, Gt(0)] | None = None   # the bound applies when a value is given

The config loader (`advtrain.config`) checks every bound while it builds a config, so an out-of-range value
fails at load time with a one-line `UserError` naming the field, before any file is written. This module
imports nothing from advtrain but `errors`, so method modules can use the markers without importing
`advtrain.config` (which imports the methods).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from advtrain.errors import UserError


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


__all__ = ["Bound", "Ge", "Gt", "Le", "Lt"]
