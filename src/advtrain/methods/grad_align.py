"""`grad_align` (Andriushchenko & Flammarion 2020, "Understanding and Improving Fast Adversarial Training").

    loss = CE(z(clamp(x + ε·sign g₁, 0, 1)), y) + λ·(1 − mean_i cos(g₁ᵢ, g₂ᵢ))
    g₁ = sg(∇ₓCE(z(x), y)),  g₂ = ∇ₓCE(z(x + η), y) with create_graph (double backprop),  η ~ U(−ε, ε)

(docs/methods.md §2.) Choices taken from the released code, tml-epfl/understanding-fast-adv-training:
- The FGSM part is `--attack=fgsm --attack_init=zero` (sh/exps_diff_eps_cifar10.sh): a zero start and
  δ = clamp(1.25ε·sign g₁, −ε, ε) = ε·sign g₁. g₁ is detached before the regulariser (train.py `grad.detach()`),
  so only g₂ is differentiated through.
- x + η is **not** clamped to [0, 1] (utils.get_input_grad with `delta_init='random_uniform'` feeds X + delta).
- The cosine is per example on the flattened gradients; examples where either gradient is all zero are
  dropped and the mean is over the rest (train.py `grads_nnz_idx`). Where none is left the released code
  would produce NaN; here the regulariser is then 0.
- λ: the authors' log-linear schedule λ(ε) = 0.02·10^(ε·255/8) (sh/exps_diff_eps_cifar10.sh: "exp(eps *
  1/8*ln(10) + ln(0.02))"), 0.2 at 8/255 and 2.0 at 16/255; they ran it for ε ∈ [1, 16]/255, so an unset λ
  outside that range is refused rather than extrapolated.
- Every forward runs in train mode in their code; the g₁ attack follows `bn_mode`, while the adversarial and
  the noisy forward (both part of the trained loss) run in the trainer's mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import (
    BNMode,
    ThreatModel,
    at_least_fp32,
    attack_loss,
    bn_policy,
    gradient_cosine,
    input_gradient,
    uniform_noise,
    zero_gradient_fraction,
)
from advtrain.bounds import Ge
from advtrain.errors import UserError
from advtrain.methods.base import Batch, Method, MethodConfig, StepContext, StepOutput, accuracy
from advtrain.methods.registry import register_method

_MAX_SCHEDULED_EPS = 16 / 255  # the largest ε the authors' λ schedule was run at


def default_lambda(eps: float) -> float:
    """The authors' λ(ε) = 0.02·10^(255ε/8): 0.2 at ε = 8/255, 2.0 at 16/255."""
    return 0.02 * 10 ** (eps * 255 / 8)


@dataclass
class GradAlignConfig(MethodConfig):
    name: str = "grad_align"
    lam: Annotated[float, Ge(0)] | None = None  # None: 0.02·10^(255ε/8), the authors' schedule over ε
    bn_mode: BNMode = "train"  # BN mode while crafting the FGSM point (their code: train)


@register_method
class GradAlign(Method):
    name = "grad_align"
    config_class = GradAlignConfig
    double_backprop = True
    config: GradAlignConfig

    def __init__(self, config: GradAlignConfig, threat: ThreatModel) -> None:
        if threat.norm != "linf":
            raise UserError(f"grad_align is defined for the L∞ threat model only, got threat.norm={threat.norm!r}")
        if config.lam is None and not 0 < threat.eps <= _MAX_SCHEDULED_EPS + 1e-9:
            raise UserError(
                f"grad_align's default λ follows the authors' schedule for ε in (0, 16/255], got ε={threat.eps:g}; "
                f"set method.lam (their 0.02·10^(255ε/8) would give {default_lambda(threat.eps):.3g})"
            )
        super().__init__(config, threat)

    @property
    def lam(self) -> float:
        return default_lambda(self.threat.eps) if self.config.lam is None else self.config.lam

    def loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        x, y, eps = batch.x.detach(), batch.y, self.threat.eps
        with bn_policy(model, self.config.bn_mode):
            g1, _ = input_gradient(model, x, y)  # detached, fp32 loss from the logits
        x_adv = (x + eps * g1.sign()).clamp(0, 1)
        logits = model(x_adv)
        ce = F.cross_entropy(at_least_fp32(logits), y)

        metrics: dict[str, Tensor] = {"acc": accuracy(logits, y), "zero_grad": zero_gradient_fraction(g1)}
        if self.lam == 0:  # plain FGSM training: skip the double-backprop pass (the released code does too)
            return StepOutput(ce, metrics)

        x_noisy = (x + uniform_noise(x, eps, ctx.generator)).requires_grad_(True)
        noisy_loss = attack_loss(model(x_noisy), y).sum()
        (g2,) = torch.autograd.grad(noisy_loss, x_noisy, create_graph=True)
        cos, mask = gradient_cosine(g1, g2)
        valid = mask.sum()
        # λ·(1 − mean of cos over the examples with two non-zero gradients); 0 when there are none.
        reg = self.lam * (valid - cos.sum()) / valid.clamp_min(1)
        metrics["cos"] = (cos.sum() / valid.clamp_min(1)).detach()
        metrics["reg"] = reg.detach()
        return StepOutput(ce + reg, metrics)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["lam_resolved"] = self.lam
        return meta


__all__ = ["GradAlign", "GradAlignConfig", "default_lambda"]
