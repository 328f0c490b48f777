"""Per-example losses that attacks ascend (docs/methods.md §1)."""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

AttackLoss = Literal["ce", "cw", "kl"]
ATTACK_LOSSES: tuple[str, ...] = get_args(AttackLoss)


def at_least_fp32(t: Tensor) -> Tensor:
    """`t` in fp32 when autocast made it bf16/fp16; fp32 and fp64 (the exactness tests) are kept as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def cw_margin(logits: Tensor, y: Tensor, kappa: float = math.inf) -> Tensor:
    """max_{j≠y} z_j − z_y, capped at κ (Carlini–Wagner confidence); positive means misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf)
    return (others.amax(1) - true).clamp(max=kappa)


def attack_loss(
    logits: Tensor,
    y: Tensor,
    loss: AttackLoss = "ce",
    *,
    clean_logits: Tensor | None = None,
    kappa: float = math.inf,
) -> Tensor:
    """Per-example loss (shape N), computed in fp32 whatever the autocast dtype."""
    logits = at_least_fp32(logits)
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "cw":
        return cw_margin(logits, y, kappa)
    if loss == "kl":
        if clean_logits is None:
            raise ValueError("the 'kl' attack loss needs clean_logits (TRADES: KL(p(x) ‖ p(x')))")
        target = F.softmax(at_least_fp32(clean_logits), dim=1)
        return F.kl_div(F.log_softmax(logits, dim=1), target, reduction="none").sum(1)
    raise ValueError(f"attack loss must be one of {ATTACK_LOSSES}, got {loss!r}")
