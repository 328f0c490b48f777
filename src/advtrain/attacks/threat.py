"""The threat model shared by training attacks, validation and evaluation (METHODS.md §0)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Norm = Literal["linf", "l2"]

# The largest ε or step size accepted from users, in [0, 1] pixel units. No two images of up to 10**6 values
# are farther apart than sqrt(10**6) = 1000 in L2 (or 1 in L∞), so a larger value changes no attack, while
# values near the float32 range overflow inside the attack arithmetic.
MAX_DISTANCE = 1000.0


@dataclass(frozen=True)
class ThreatModel:
    """An ε-ball in [0, 1] pixel units around each clean input."""

    norm: Norm = "linf"
    eps: float = 8 / 255

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
