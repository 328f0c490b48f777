"""`sat_r2` (SAT-R2, docs/methods.md §5): FGSM-AT plus a penalty on the logit distance between the FGSM sample and
an R-FGSM sample (a full ε step from a random sign start), for every example.

    L = (1/B) Σᵢ CE(z(x̃ᵢ), yᵢ) + λ · (1/B) Σᵢ ‖z(x̃ᵢ) − z(x̄ᵢ)‖²
    x̃ = FGSM(x),  x′ = x + α·sign(N(0, I)),  x̄ = clamp(x′ + ε·sign ∇ₓCE(x′), 0, 1)

- §5's details: x′ is *not* clamped before its gradient is taken, the step from x′ is a full ε, and x̄ is not
  projected back to the ε-ball around x (only clamped to [0, 1]).
- Crafted in eval mode; one train-mode forward over [x̃; x̄]; adversarial samples only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import BNMode, ascent_step, at_least_fp32, bn_policy, fgsm_unchecked, input_gradient
from advtrain.bounds import Ge, Gt
from advtrain.methods.base import Batch, Method, MethodConfig, StepContext, StepOutput, accuracy, joint_forward
from advtrain.methods.registry import register_method


@dataclass
class SATR2Config(MethodConfig):
    name: str = "sat_r2"
    lam: Annotated[float, Ge(0)] = 25.0  # CIFAR-10; 5 on MNIST
    alpha: Annotated[float, Gt(0)] = 2 / 255  # size of the random sign start; 0.01 on MNIST
    bn_mode: BNMode = "eval"


@register_method
class SATR2(Method):
    name = "sat_r2"
    config_class = SATR2Config
    config: SATR2Config
    validation_attack = "ifgsm"  # §5: model selection against I-FGSM-3 on the validation split
    selection_metric = "val_ifgsm_acc"

    def loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        c, eps, norm = self.config, self.threat.eps, self.threat.norm
        x, y = batch.x, batch.y
        noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
        x_start = x + c.alpha * noise.sign()  # not clamped (§5)
        with bn_policy(model, c.bn_mode):
            x_fgsm = fgsm_unchecked(model, x, y, eps=eps, norm=norm, keep="last")
            grad, _ = input_gradient(model, x_start, y)
        x_rfgsm = ascent_step(x_start, grad, eps, norm).clamp(0, 1).detach()  # full ε step, no projection
        z_fgsm, z_rfgsm = joint_forward(model, x_fgsm, x_rfgsm)
        ce = F.cross_entropy(at_least_fp32(z_fgsm), y)
        distance = (at_least_fp32(z_fgsm) - at_least_fp32(z_rfgsm)).pow(2).sum(1).mean()
        return StepOutput(ce + c.lam * distance, {"acc": accuracy(z_fgsm, y), "distance": distance.detach()})
