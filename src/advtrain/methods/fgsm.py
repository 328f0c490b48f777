"""`fgsm`: CE(z(x'), y) with x' = clamp(x + ε·sign ∇ₓCE(z(x), y), 0, 1), zero start (docs/methods.md §2).

Plain FGSM training, the baseline that collapses (catastrophic overfitting; Wong et al. 2020, Andriushchenko
& Flammarion 2020). The attack is exactly `--attack=fgsm --attack_init=zero` of
tml-epfl/understanding-fast-adv-training train.py: δ = clamp(1.25ε·sign g, −ε, ε) = ε·sign g, then x + δ
clamped to [0, 1]; the model stays in train mode while crafting (BN default `train`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from advtrain.attacks import AttackLoss, BNMode, bn_policy, single_step_unchecked, zero_gradient_fraction
from advtrain.methods.base import AdversarialMethod, Batch, MethodConfig, StepContext
from advtrain.methods.registry import register_method


@dataclass
class FGSMConfig(MethodConfig):
    name: str = "fgsm"
    attack_loss: AttackLoss = "ce"
    # Wong et al. and Andriushchenko & Flammarion craft FGSM with the model in train mode.
    bn_mode: BNMode = "train"


@register_method
class FGSM(AdversarialMethod):
    name = "fgsm"
    config_class = FGSMConfig
    config: FGSMConfig

    def perturb_with_metrics(self, model: nn.Module, batch: Batch, ctx: StepContext) -> tuple[Tensor, dict]:
        """x' and the attack's diagnostics (`zero_grad`: fraction of examples whose sign step is all zero)."""
        with bn_policy(model, self.config.bn_mode):
            step = single_step_unchecked(
                model, batch.x, batch.y, step_size=self.threat.eps, eps=self.threat.eps,
                norm=self.threat.norm, loss=self.config.attack_loss,
            )
        return step.x_adv, {"zero_grad": zero_gradient_fraction(step.grad)}

    def perturb(self, model: nn.Module, batch: Batch, ctx: StepContext) -> Tensor:
        return self.perturb_with_metrics(model, batch, ctx)[0]
