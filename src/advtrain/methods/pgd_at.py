"""`pgd_at` (Madry et al. 2018): CE(z(x'), y) with x' = PGD on CE, random start (docs/methods.md §2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from torch import Tensor, nn

from advtrain.attacks import MAX_DISTANCE, AttackLoss, BNMode, bn_policy
from advtrain.bounds import Ge, Gt, Le
from advtrain.methods.base import AdversarialMethod, Batch, MethodConfig, QuarterEpsStep, StepContext
from advtrain.methods.registry import register_method


@dataclass
class PGDATConfig(MethodConfig):
    name: str = "pgd_at"
    steps: Annotated[int, Ge(1)] = 10
    step_size: Annotated[float, Gt(0), Le(MAX_DISTANCE)] | None = None  # None: ε/4, i.e. 2/255 at ε = 8/255
    random_start: bool = True
    attack_loss: AttackLoss = "ce"
    # Madry, Rice et al., ISEAT and AR-AT code attack in train mode; the IGD paper's baseline used eval.
    bn_mode: BNMode = "train"


@register_method
class PGDAT(QuarterEpsStep, AdversarialMethod):
    name = "pgd_at"
    config_class = PGDATConfig
    config: PGDATConfig
    plain_pgd_attack = True

    def perturb(self, model: nn.Module, batch: Batch, ctx: StepContext) -> Tensor:
        with bn_policy(model, self.config.bn_mode):
            return self.training_pgd(
                model, batch.x, batch.y, eps=self.threat.eps, steps=self.config.steps,
                step_size=self.step_size, norm=self.threat.norm, loss=self.config.attack_loss,
                random_start=self.config.random_start, generator=ctx.generator, keep="last",
            )
