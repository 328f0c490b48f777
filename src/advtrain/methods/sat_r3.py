"""`sat_r3` (SAT-R3, docs/methods.md §5): the loss must grow along the attack direction — train on a large step
along one signed-gradient direction and penalise a small step whose loss is not below τ times it.

    x′ = clamp(x + α·sign N(0, I)),  s = sign ∇ₓCE(x′)  (one direction for both points)
    x_lo = clamp(x′ + ε_lo·s),  x_hi = clamp(x′ + ε_hi·s)
    L = L_hi + λ·max(0, L_lo − τ·L_hi)    with batch-mean losses (`reduction: batch`), or
    L = L_hi + λ·(1/B) Σᵢ max(0, l_lo,ᵢ − τ·l_hi,ᵢ)    per example (`reduction: per_sample`)

Crafted in eval mode; one train-mode forward over [x_lo; x_hi]; adversarial samples only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import BNMode, ascent_step, at_least_fp32, bn_policy, input_gradient
from advtrain.bounds import Ge, Gt
from advtrain.methods.base import Batch, Method, MethodConfig, StepContext, StepOutput, accuracy, joint_forward
from advtrain.methods.registry import register_method


@dataclass
class SATR3Config(MethodConfig):
    name: str = "sat_r3"
    lam: Annotated[float, Ge(0)] = 1.0
    eps_lo: Annotated[float, Gt(0)] = 2 / 255  # 0.1 on MNIST
    eps_hi: Annotated[float, Gt(0)] = 8 / 255  # 0.3 on MNIST
    tau: Annotated[float, Ge(0)] = 0.6  # 0.4 on MNIST
    alpha: Annotated[float, Ge(0)] = 2 / 255  # random sign start; 0.01 on MNIST
    reduction: Literal["batch", "per_sample"] = "batch"
    bn_mode: BNMode = "eval"


@register_method
class SATR3(Method):
    name = "sat_r3"
    config_class = SATR3Config
    config: SATR3Config
    validation_attack = "ifgsm"  # §5: model selection against I-FGSM-3 on the validation split
    selection_metric = "val_ifgsm_acc"

    def loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        c, norm = self.config, self.threat.norm
        x, y = batch.x, batch.y
        noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
        x_start = (x + c.alpha * noise.sign()).clamp(0, 1)
        with bn_policy(model, c.bn_mode):
            grad, _ = input_gradient(model, x_start, y)
        x_lo = ascent_step(x_start, grad, c.eps_lo, norm).clamp(0, 1).detach()
        x_hi = ascent_step(x_start, grad, c.eps_hi, norm).clamp(0, 1).detach()
        z_lo, z_hi = joint_forward(model, x_lo, x_hi)
        l_lo = F.cross_entropy(at_least_fp32(z_lo), y, reduction="none")
        l_hi = F.cross_entropy(at_least_fp32(z_hi), y, reduction="none")
        if c.reduction == "batch":
            penalty = (l_lo.mean() - c.tau * l_hi.mean()).clamp(min=0)
        else:
            penalty = (l_lo - c.tau * l_hi).clamp(min=0).mean()
        return StepOutput(l_hi.mean() + c.lam * penalty, {"acc": accuracy(z_hi, y), "penalty": penalty.detach()})
