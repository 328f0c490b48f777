"""`n_fgsm` (de Jorge et al. 2022, "Make Some Noise"): noisy FGSM without projection (docs/methods.md §2).

    η ~ U(−kε, kε);  δ = η + α·sign ∇ₓCE(z(x + η), y);  loss = CE(z(clamp(x + δ, 0, 1)), y),  k = 2, α = ε

δ is **not** clipped to the ε-ball (‖δ‖∞ can reach (k + 1)ε = 3ε): the released code's default
`--clip -1` (pdejorge/N-FGSM train.py). As there, η is clamped so that x + η ∈ [0, 1] before the gradient is
taken, and the model is in train mode throughout. L∞ only (the paper's threat model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from torch import Tensor, nn

from advtrain.attacks import (
    AttackLoss,
    BNMode,
    ThreatModel,
    bn_policy,
    single_step_unchecked,
    uniform_noise,
    zero_gradient_fraction,
)
from advtrain.bounds import Ge, Gt
from advtrain.errors import UserError
from advtrain.methods.base import AdversarialMethod, Batch, MethodConfig, StepContext
from advtrain.methods.registry import register_method


@dataclass
class NFGSMConfig(MethodConfig):
    name: str = "n_fgsm"
    noise_factor: Annotated[float, Ge(0)] = 2.0  # k: η ~ U(−kε, kε) (`--unif 2`); 0 disables the noise
    step_factor: Annotated[float, Gt(0)] = 1.0  # α as a multiple of ε (`--alpha 8` at `--epsilon 8`)
    attack_loss: AttackLoss = "ce"
    bn_mode: BNMode = "train"  # pdejorge/N-FGSM crafts in train mode


@register_method
class NFGSM(AdversarialMethod):
    name = "n_fgsm"
    config_class = NFGSMConfig
    config: NFGSMConfig

    def __init__(self, config: NFGSMConfig, threat: ThreatModel) -> None:
        if threat.norm != "linf":
            raise UserError(f"n_fgsm is defined for the L∞ threat model only, got threat.norm={threat.norm!r}")
        super().__init__(config, threat)

    def perturb_with_metrics(self, model: nn.Module, batch: Batch, ctx: StepContext) -> tuple[Tensor, dict]:
        """x' and the attack's diagnostics (`zero_grad`: fraction of examples whose sign step is all zero)."""
        eps = self.threat.eps
        noise = uniform_noise(batch.x, self.config.noise_factor * eps, ctx.generator)
        with bn_policy(model, self.config.bn_mode):
            step = single_step_unchecked(
                model, batch.x, batch.y, step_size=self.config.step_factor * eps, eps=None, noise=noise,
                loss=self.config.attack_loss,
            )
        return step.x_adv, {"zero_grad": zero_gradient_fraction(step.grad)}

    def perturb(self, model: nn.Module, batch: Batch, ctx: StepContext) -> Tensor:
        return self.perturb_with_metrics(model, batch, ctx)[0]
