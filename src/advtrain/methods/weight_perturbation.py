"""The adversarial weight perturbation shared by `awp` and `iseat` (docs/methods.md §4.3; Wu et al. 2020).

Only multi-dimensional `weight` tensors (conv kernels, linear weights) are perturbed, never BN parameters
or biases (the AWP code's `len(w.size()) > 1 and 'weight' in name`), each scaled to its own norm:
v_l = ‖W_l‖ · g_l / (‖g_l‖ + 1e-20), where g_l is the ascent direction of layer l.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

EPS = 1e-20  # as in the AWP code


def perturbed_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The tensors AWP perturbs: trainable multi-dimensional `weight`s (never BN weights or biases)."""
    return {
        name: p for name, p in model.named_parameters()
        if p.requires_grad and p.dim() > 1 and "weight" in name.rsplit(".", 1)[-1]
    }


def layerwise_direction(params: dict[str, nn.Parameter], grads: Sequence[Tensor | None]) -> dict[str, Tensor]:
    """v per perturbed tensor: ‖W‖·g/(‖g‖ + 1e-20); a weight the loss does not use (g None) is left out."""
    v: dict[str, Tensor] = {}
    with torch.no_grad():
        for (name, p), g in zip(params.items(), grads, strict=True):
            if g is not None:
                v[name] = p.norm() * g / (g.norm() + EPS)
    return v


def shift(model: nn.Module, v: dict[str, Tensor], scale: float) -> None:
    """W ← W + scale·v in place for every tensor of v (scale −γ undoes a +γ shift)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, direction in v.items():
            params[name].add_(direction, alpha=scale)
