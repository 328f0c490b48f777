"""`trades` (Zhang et al. 2019): CE(z(x), y) + β·KL(p(x) ‖ p(x')), x' = PGD on the KL (docs/methods.md §2).

Choices taken from the authors' released code (yaodongyu/TRADES, `trades.py`; the same in csdongxian/AWP,
`trades_AWP/train_trades_cifar.py`), which is the default wherever the paper is silent (docs/methods.md, introduction):

- The attack starts at x + 0.001·N(0, 1) (not the uniform random start), unclamped, and ascends
  Σᵢ KL(p(xᵢ) ‖ p(x'ᵢ)) with signed steps; the KL target p(x) is a constant for the attack (the code takes
  the gradient w.r.t. x' only), computed once here since it does not change between steps.
- The model is in eval mode during the attack (running BN statistics), then in train mode for the loss.
- The KL of the loss is summed over classes and divided by the batch size (`batchmean`), and the clean
  distribution p(x) in it is *not* detached: gradients flow through both branches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

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
class TRADESConfig(MethodConfig):
    name: str = "trades"
    beta: Annotated[float, Ge(0)] = 6.0  # 1/λ of the paper; 6 for the CIFAR-10 results
    steps: Annotated[int, Ge(1)] = 10
    step_size: Annotated[float, Gt(0), Le(MAX_DISTANCE)] | None = None  # None: ε/4, i.e. 2/255 at ε = 8/255
    init_std: Annotated[float, Ge(0)] = 0.001  # std of the Gaussian start x + init_std·N(0, 1) (TRADES code)
    bn_mode: BNMode = "eval"  # the TRADES code calls model.eval() before crafting x'


def kl_batchmean(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """(1/B) Σᵢ Σₖ p_k(xᵢ)·(log p_k(xᵢ) − log p_k(x'ᵢ)), in fp32; gradients flow through both arguments."""
    return F.kl_div(F.log_softmax(at_least_fp32(adv_logits), dim=1), F.softmax(at_least_fp32(clean_logits), dim=1),
                    reduction="batchmean")


@register_method
class TRADES(QuarterEpsStep, AdversarialMethod):
    name = "trades"
    config_class = TRADESConfig
    config: TRADESConfig
    plain_pgd_attack = True

    def perturb(self, model: nn.Module, batch: Batch, ctx: StepContext) -> Tensor:
        x = batch.x.detach()
        noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
        with bn_policy(model, self.config.bn_mode):
            with torch.no_grad():
                clean_logits = model(x)  # the attack's constant KL target p(x)
            return self.training_pgd(
                model, x, batch.y, eps=self.threat.eps, steps=self.config.steps, step_size=self.step_size,
                norm=self.threat.norm, loss="kl", clean_logits=clean_logits,
                x_init=x + self.config.init_std * noise, generator=ctx.generator, keep="last",
            )

    def objective(self, model: nn.Module, batch: Batch, x_adv: Tensor) -> StepOutput:
        # Two separate forwards (as in the code), so each pass normalises with its own batch statistics.
        logits = model(batch.x)
        adv_logits = model(x_adv)
        natural = F.cross_entropy(at_least_fp32(logits), batch.y)
        robust = kl_batchmean(logits, adv_logits)
        loss = natural + self.config.beta * robust
        metrics = {
            "acc": accuracy(adv_logits, batch.y), "clean_acc": accuracy(logits, batch.y),
            "kl": robust.detach(),
        }
        return StepOutput(loss, metrics)
