"""`sat_r1` (SAT-R1, docs/methods.md §5): FGSM-AT plus a penalty on the gap between single- and multi-step
adversarial logits, the latter computed for only a few examples of the batch so the cost stays single-step.

    L = (1/B) Σᵢ CE(z(x̃ᵢ), yᵢ) + λ · (1/M) Σₘ ‖z(x̃ₘ) − z(x̂ₘ)‖²,   x̃ = FGSM(x), x̂ₘ = I-FGSM-T(xₘ), step ε/T

- Both attacks start at x (no random start) and are crafted in eval mode; the update is one train-mode
  forward over the concatenation [x̃; x̂] (shared BN batch statistics); the batch holds adversarial samples
  only. The penalty is averaged over the M = `n_iter_samples` pairs, not divided by B (§5).
- The M examples are drawn uniformly without replacement from the batch with the step's generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import BNMode, at_least_fp32, bn_policy, fgsm_unchecked, pgd_unchecked
from advtrain.bounds import Ge
from advtrain.methods.base import Batch, Method, MethodConfig, StepContext, StepOutput, accuracy, joint_forward
from advtrain.methods.registry import register_method


@dataclass
class SATR1Config(MethodConfig):
    name: str = "sat_r1"
    lam: Annotated[float, Ge(0)] = 0.2  # CIFAR-10 and MNIST
    iter_steps: Annotated[int, Ge(1)] = 3  # T: 3 on CIFAR-10, 10 on MNIST
    n_iter_samples: Annotated[int, Ge(1)] = 1  # M: examples per batch that get the multi-step attack
    bn_mode: BNMode = "eval"  # §5: samples are crafted in eval mode


@register_method
class SATR1(Method):
    name = "sat_r1"
    config_class = SATR1Config
    config: SATR1Config
    validation_attack = "ifgsm"  # §5: model selection against I-FGSM-3 on the validation split
    selection_metric = "val_ifgsm_acc"

    def loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        c, eps, norm = self.config, self.threat.eps, self.threat.norm
        x, y = batch.x, batch.y
        m = min(c.n_iter_samples, len(y))
        picked = torch.randperm(len(y), generator=ctx.generator, device=x.device)[:m]
        with bn_policy(model, c.bn_mode):
            x_single = fgsm_unchecked(model, x, y, eps=eps, norm=norm, keep="last")
            x_multi = pgd_unchecked(model, x[picked], y[picked], eps=eps, steps=c.iter_steps,
                                    step_size=eps / c.iter_steps, norm=norm, random_start=False, keep="last")
        z_single, z_multi = joint_forward(model, x_single, x_multi)
        ce = F.cross_entropy(at_least_fp32(z_single), y)
        gap = (at_least_fp32(z_single[picked]) - at_least_fp32(z_multi)).pow(2).sum(1).mean()
        return StepOutput(ce + c.lam * gap, {"acc": accuracy(z_single, y), "gap": gap.detach()})
