"""The threat model shared by training attacks, validation and evaluation (docs/methods.md §0).

One parser for norm names (`parse_norm`) and one place for the pixel-scale rules (`check_distance`,
`check_images`): advtrain's images and distances are in [0, 1] pixel units. The public attack and evaluation
functions apply the rules once per call; the training hot loop does not (checking an image range costs a
device sync), its data having been checked when it was loaded.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from advtrain.errors import InvalidValue

Norm = Literal["linf", "l2"]

# Every accepted spelling, lower-cased: AutoAttack, RobustBench and torchattacks write "Linf" and "L2".
_NORM_SPELLINGS: dict[str, Norm] = {"linf": "linf", "inf": "linf", "l2": "l2"}
NORM_SPELLINGS = "linf (also Linf, LINF, inf) or l2 (also L2)"

# The largest ε or step size accepted from users, in [0, 1] pixel units. No two images of up to 10**6 values
# are farther apart than sqrt(10**6) = 1000 in L2 (or 1 in L∞), so a larger value changes no attack, while
# values near the float32 range overflow inside the attack arithmetic.
MAX_DISTANCE = 1000.0


def parse_norm(name: object, where: str = "") -> Norm:
    """The norm a user's spelling names, case-insensitively: "linf" for linf/inf, "l2" for l2.

    Anything else is an `InvalidValue` (a ValueError) naming the accepted spellings, never a silent fallback;
    `where` (e.g. "threat.norm") prefixes its message.
    """
    norm = _NORM_SPELLINGS.get(name.lower()) if isinstance(name, str) else None
    if norm is None:
        prefix = f"{where}: " if where else ""
        raise InvalidValue(f"{prefix}unknown norm {name!r}; use {NORM_SPELLINGS}")
    return norm


def check_distance(value: float, norm: Norm, where: str = "eps") -> None:
    """Refuse an ε or step size that cannot be in [0, 1] pixel units: negative, not finite, beyond
    MAX_DISTANCE, or above 1 under L∞ (no two [0, 1] images are farther apart, so it is 0..255 units)."""
    if not (isinstance(value, numbers.Real) and math.isfinite(value) and 0 <= value <= MAX_DISTANCE):
        raise InvalidValue(f"{where} must be a finite number in [0, {MAX_DISTANCE:g}] ([0, 1] pixel units), "
                           f"got {value!r}")
    if norm == "linf" and value > 1:
        raise InvalidValue(f"{where}={value:g} is in 0..255 pixel units; advtrain uses [0, 1]: write "
                           f"{value:g}/255")


def check_radius(value: float, norm: Norm, where: str = "eps") -> None:
    """`check_distance`, and refuse 0: the ε of an attack that must move the images (AutoAttack, diagnose)."""
    check_distance(value, norm, where)
    if value == 0:
        raise InvalidValue(f"{where} must be a positive number, got {value!r}; e.g. {where}=8/255 for L∞")


def training_step_size(eps: float) -> float:
    """ε/4, the step of the multi-step training and validation PGD when none is set (2/255 at ε = 8/255, as in
    the PGD-AT, TRADES, MART, ISEAT and AR-AT codes). Evaluation's PGD uses `default_step_size` instead."""
    return eps / 4


def check_images(x: Tensor, where: str = "x") -> None:
    """Refuse inputs that are not float images in [0, 1] (one device sync): uint8 or other integer pixels,
    0..255 floats, mean/std-normalised floats, NaN."""
    if not x.is_floating_point():
        raise InvalidValue(f"{where} holds {str(x.dtype).removeprefix('torch.')} pixels; advtrain attacks float "
                           f"images in [0, 1]: pass {where}.float() / 255")
    if x.numel() == 0:
        return
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    if not (low >= 0 and high <= 1):  # also false for NaN
        raise InvalidValue(f"{where} holds values in [{low:g}, {high:g}]; advtrain attacks images in [0, 1]: "
                           f"divide 0..255 pixels by 255, and normalise by mean/std inside the model, not before")


def check_attack_inputs(x: Tensor, eps: float, norm: object, step_size: float | None = None) -> Norm:
    """The norm `norm` names, after refusing an ε, step size or images outside the pixel-scale rules: what a
    public attack function checks once per call (one device sync)."""
    parsed = parse_norm(norm)
    check_distance(eps, parsed)
    if step_size is not None:
        check_distance(step_size, parsed, "step_size")
    check_images(x)
    return parsed


@dataclass(frozen=True)
class ThreatModel:
    """An ε-ball in [0, 1] pixel units around each clean input."""

    norm: Norm = "linf"
    eps: float = 8 / 255

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", parse_norm(self.norm))
        check_distance(self.eps, self.norm)
