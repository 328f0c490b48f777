"""`mart` (Wang et al. 2020, "Misclassification Aware adveRsarial Training"), docs/methods.md §2.

    L = CE(z(x'), y) − log(1.0001 − max_{k≠y} p_k(x') + 1e-12)
        + β·(1/B) Σᵢ [Σₖ p_k(xᵢ)·(log p_k(xᵢ) − log(p_k(x'ᵢ) + 1e-12))]·(1.0000001 − p_y(xᵢ))

with p = softmax. The constants follow the authors' released code (YisenWang/MART, `mart.py`), which is the
default wherever the paper is silent (docs/methods.md, introduction):

- The "boosted" BCE term uses the most probable class of p(x') other than y (the code's argsort/`new_y`),
  with the 1.0001 − p clamp and a 1e-12 inside the log; the KL uses log(p(x') + 1e-12).
- The KL is summed over classes, weighted per example by (1.0000001 − p_y(x)) and averaged over the
  batch; nothing is detached (gradients flow through p(x) in the KL and in the weight).
- The attack is PGD on CE in eval mode (the code calls model.eval() while crafting, model.train() for the
  loss) and starts at x + 0.001·N(0, 1) like TRADES (`start: normal`); `start: uniform` gives the paper's
  reading of a random start in the ε-ball, `start: none` a zero start. The code's step is 0.007 at
  ε = 0.031; the default here is ε/4 (2/255 at 8/255), as for every PGD-10 training attack here (docs/methods.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import MAX_DISTANCE, BNMode, at_least_fp32, bn_policy
from advtrain.bounds import Ge, Gt, Le
from advtrain.methods.base import (
    AdversarialMethod,
    Batch,
    MethodConfig,
    QuarterEpsStep,
    StepContext,
    StepOutput,
    accuracy,
)
from advtrain.methods.registry import register_method


@dataclass
class MARTConfig(MethodConfig):
    name: str = "mart"
    beta: Annotated[float, Ge(0)] = 6.0
    steps: Annotated[int, Ge(1)] = 10
    step_size: Annotated[float, Gt(0), Le(MAX_DISTANCE)] | None = None  # None: ε/4, i.e. 2/255 at ε = 8/255
    # normal: x + init_std·N(0, 1) (MART code); uniform: U(−ε, ε) random start; none: start at x.
    start: Literal["normal", "uniform", "none"] = "normal"
    init_std: Annotated[float, Ge(0)] = 0.001
    bn_mode: BNMode = "eval"  # the MART code attacks in eval mode


@register_method
class MART(QuarterEpsStep, AdversarialMethod):
    name = "mart"
    config_class = MARTConfig
    config: MARTConfig
    plain_pgd_attack = True

    def perturb(self, model: nn.Module, batch: Batch, ctx: StepContext) -> Tensor:
        x = batch.x.detach()
        x_init = None
        if self.config.start == "normal":
            noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
            x_init = x + self.config.init_std * noise
        with bn_policy(model, self.config.bn_mode):
            return self.training_pgd(
                model, x, batch.y, eps=self.threat.eps, steps=self.config.steps, step_size=self.step_size,
                norm=self.threat.norm, loss="ce", random_start=self.config.start == "uniform",
                x_init=x_init, generator=ctx.generator, keep="last",
            )

    def objective(self, model: nn.Module, batch: Batch, x_adv: Tensor) -> StepOutput:
        y = batch.y
        logits = model(batch.x)
        adv_logits = model(x_adv)
        adv_probs = F.softmax(at_least_fp32(adv_logits), dim=1)
        nat_probs = F.softmax(at_least_fp32(logits), dim=1)
        # max_{k≠y} p_k(x'): the code's new_y (top class unless it is y, then the runner-up) picks the same value.
        others = adv_probs.masked_fill(F.one_hot(y, adv_probs.shape[1]).bool(), -1.0)
        top_other = others.amax(dim=1)
        boosted_ce = F.cross_entropy(at_least_fp32(adv_logits), y) - torch.log(1.0001 - top_other + 1e-12).mean()
        # kl_div computes p·(log p − input) with 0·log 0 = 0, as the code's nn.KLDivLoss(reduction='none').
        kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)
        true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
        robust = (kl * (1.0000001 - true_probs)).mean()
        loss = boosted_ce + self.config.beta * robust
        metrics = {"acc": accuracy(adv_logits, y), "clean_acc": accuracy(logits, y), "kl": robust.detach()}
        return StepOutput(loss, metrics)
