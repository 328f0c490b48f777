"""Device, precision and seeding helpers shared by training and evaluation."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from advtrain.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when available, else cpu; anything else must be a usable torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but CUDA is not available here: use --device cpu")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default (fp32 master weights stay in the optimizer), fp32 on CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def use_channels_last(setting: bool | None) -> bool:
    """`train.channels_last`; None (auto) means on, on CUDA and on CPU alike: convolutions in channels_last ran
    1.2–1.6× faster in PGD-AT on this project's CPU machine as well as being the fast layout on CUDA
    (docs/benchmarks.md)."""
    return True if setting is None else setting


# Seeds are in [0, 2**63): torch generators refuse seeds >= 2**64 and derived seeds are 63-bit, and a negative
# seed would map to different streams in numpy (which takes it mod 2**32) and torch.
SEED_LIMIT = 2**63


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from several parts, stable across runs, processes and platforms."""
    # Normalise numpy integers etc. first: their repr differs from a plain int's.
    key = repr(tuple(p if isinstance(p, str) else int(p) for p in parts))
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def make_generator(device: torch.device, *parts: int | str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
