"""`fgsm_rs` (Wong, Rice, Kolter 2020, "Fast is better than free"): FGSM from a random start (docs/methods.md §2).

    δ₀ ~ U(−ε, ε);  δ = Π_ε(δ₀ + α·sign ∇ₓCE(z(x + δ₀), y));  loss = CE(z(clamp(x + δ, 0, 1)), y),  α = 1.25ε

As in the released code (locuslab/fast_adversarial CIFAR10/train_fgsm.py, `--delta-init random`, default
`--alpha 10` at `--epsilon 8`, i.e. α = 1.25ε): δ₀ is clamped so x + δ₀ ∈ [0, 1] before the gradient is
taken, the step is clipped to [−ε, ε] and x + δ clamped to [0, 1]; the model is in train mode throughout.
Under L2 the start is uniform in the ball (`random_start`) and the step is the normalised gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from torch import Tensor, nn

from advtrain.attacks import AttackLoss, BNMode, bn_policy, random_start, single_step_unchecked, zero_gradient_fraction
from advtrain.bounds import Gt
from advtrain.methods.base import AdversarialMethod, Batch, MethodConfig, StepContext
from advtrain.methods.registry import register_method


@dataclass
class FGSMRSConfig(MethodConfig):
    name: str = "fgsm_rs"
    alpha_factor: Annotated[float, Gt(0)] = 1.25  # step α as a multiple of ε (Wong et al.: 10/255 at 8/255)
    attack_loss: AttackLoss = "ce"
    bn_mode: BNMode = "train"  # locuslab/fast_adversarial crafts in train mode


@register_method
class FGSMRS(AdversarialMethod):
    name = "fgsm_rs"
    config_class = FGSMRSConfig
    config: FGSMRSConfig

    def perturb_with_metrics(self, model: nn.Module, batch: Batch, ctx: StepContext) -> tuple[Tensor, dict]:
        """x' and the attack's diagnostics (`zero_grad`: fraction of examples whose sign step is all zero)."""
        eps, norm = self.threat.eps, self.threat.norm
        # random_start draws U(−ε, ε) elementwise for L∞ (one draw from ctx.generator) and clamps to [0, 1].
        noise = random_start(batch.x, eps, norm, ctx.generator) - batch.x
        with bn_policy(model, self.config.bn_mode):
            step = single_step_unchecked(
                model, batch.x, batch.y, step_size=self.config.alpha_factor * eps, eps=eps, noise=noise,
                norm=norm, loss=self.config.attack_loss,
            )
        return step.x_adv, {"zero_grad": zero_gradient_fraction(step.grad)}

    def perturb(self, model: nn.Module, batch: Batch, ctx: StepContext) -> Tensor:
        return self.perturb_with_metrics(model, batch, ctx)[0]
