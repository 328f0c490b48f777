"""`iseat` (Instance-adaptive Smoothness Enhanced AT; docs/methods.md §4): adversarial CE at weights θ + γv, plus a
logit-smoothness regulariser weighted by each example's rank of adversarial vulnerability in the batch.

    AVᵢ = CE(z(x'ᵢ; θ+γv), yᵢ) − CE(z(xᵢ; θ), yᵢ)            (no gradient)
    wᵢ  = rankᵢ / B                                          (ascending: most vulnerable → 1, least → 1/B)
    L   = (1/B) Σᵢ CE(z(x'ᵢ; θ+γv), yᵢ) + λ_stage · (1/B) Σᵢ wᵢ · ‖z(x'ᵢ; θ+γv) − z(xᵢ; θ)‖²

- Gradients flow through both branches: the adversarial logits at θ+γv and the clean logits at θ (v is a
  constant). The clean branch runs through `torch.func.functional_call` on clones of the parameters, so
  shifting the real parameters to θ+γv in place afterwards leaves its saved tensors intact; no second model
  is built. The optimizer then steps at θ+γv (weight decay and momentum see the perturbed weights, the AWP
  convention) and `after_step` subtracts γv.
- x' = PGD-`steps` (ε/4 steps) with no random start whose first step reuses the gradient of the clean CE
  from the clean branch's forward pass; BN in train mode throughout the attack (§4.2).
- v: one AWP step (§4.3) on the unweighted batch-mean adversarial CE at θ, with BN on batch statistics and
  running statistics untouched (the code's throwaway proxy copy), multi-dimensional weights only.
- λ per LR stage (the released code's `--lam 0 0.1`): `lam_before_decay` (0) before the first LR milestone,
  `lam` (0.1) from the epoch ⌊m₁⌋ (0-based) the first milestone m₁ falls in, as the released code counts
  stages (`epoch >= int(milestone)`). Only a multistep schedule has milestones; a config with any other
  schedule is refused unless `lam_start_epoch` names the epoch (which also overrides the milestone): under
  cosine, cyclic or warm-up schedules the LR is below its base from epoch 1, so its first drop marks no stage.
- Ties in AV share the average of their ranks, so the weights do not depend on the order of the batch
  (the paper and released code do not say; this is our choice).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from advtrain.attacks import (
    MAX_DISTANCE,
    BNMode,
    ThreatModel,
    ascent_step,
    at_least_fp32,
    bn_policy,
    pgd_unchecked,
    project,
)
from advtrain.bounds import Ge, Gt, Le
from advtrain.errors import UserError
from advtrain.methods.base import (
    Batch,
    EpochContext,
    Method,
    MethodConfig,
    QuarterEpsStep,
    StepContext,
    StepOutput,
    accuracy,
)
from advtrain.methods.registry import register_method
from advtrain.methods.weight_perturbation import layerwise_direction, perturbed_parameters, shift


@dataclass
class ISEATConfig(MethodConfig):
    name: str = "iseat"
    gamma: Annotated[float, Ge(0)] = 7e-3  # AWP step (`-ag 7e-3` in the authors' command)
    lam: Annotated[float, Ge(0)] = 0.1  # λ after the first LR decay (`--lam 0 0.1`)
    lam_before_decay: Annotated[float, Ge(0)] = 0.0  # λ before it
    # 0-based epoch from which λ = lam; None: the epoch of the first LR milestone (needs a multistep schedule).
    lam_start_epoch: Annotated[int, Ge(0)] | None = None
    steps: Annotated[int, Ge(1)] = 10
    step_size: Annotated[float, Gt(0), Le(MAX_DISTANCE)] | None = None  # None: ε/4, i.e. 2/255 at ε = 8/255
    bn_mode: BNMode = "train"  # BN mode while crafting x' (§4.2: train)

    def check_schedule(self, lr_milestones: Sequence[float], schedule_name: str) -> None:
        lam_start_epoch(self, lr_milestones, schedule_name)


def lam_start_epoch(config: ISEATConfig, lr_milestones: Sequence[float], schedule_name: str = "") -> int:
    """The 0-based epoch from which λ = `lam`: `lam_start_epoch` if set, else the epoch the first LR milestone
    falls in; a one-line UserError naming the fix when neither exists."""
    if config.lam_start_epoch is not None:
        return config.lam_start_epoch
    if lr_milestones:
        return math.floor(min(lr_milestones))
    schedule = f"schedule {schedule_name}" if schedule_name else "this schedule"
    raise UserError(
        f"iseat switches λ on at the first LR milestone, but {schedule} has none: set method.lam_start_epoch "
        "(the 0-based epoch, e.g. 100 of 200) or use schedule.name=multistep with milestones"
    )


def rank_weights(av: Tensor) -> Tensor:
    """rankᵢ / B with ascending ranks 1..B (largest AV → 1); tied values share the average of their ranks."""
    n = len(av)
    order = av.argsort(stable=True)
    ranks = torch.empty(n, dtype=torch.float64, device=av.device)
    ranks[order] = torch.arange(1, n + 1, dtype=torch.float64, device=av.device)
    _, group = torch.unique(av, return_inverse=True)
    totals = torch.zeros(int(group.max()) + 1 if n else 0, dtype=torch.float64, device=av.device)
    totals.index_add_(0, group, ranks)
    mean_rank = totals / torch.bincount(group).to(torch.float64)
    return (mean_rank[group] / n).to(av.dtype)


@register_method
class ISEAT(QuarterEpsStep, Method):
    name = "iseat"
    config_class = ISEATConfig
    config: ISEATConfig

    def __init__(self, config: MethodConfig, threat: ThreatModel) -> None:
        super().__init__(config, threat)
        self.stage_lam = self.config.lam_before_decay

    def on_epoch_start(self, model: nn.Module, ctx: EpochContext) -> None:
        switched = ctx.epoch >= lam_start_epoch(self.config, ctx.lr_milestones)
        self.stage_lam = self.config.lam if switched else self.config.lam_before_decay

    def clean_branch(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """Clean logits z(x; θ) through clones of θ (differentiable), and ∇ₓ of the summed clean CE."""
        clones = {name: p.clone() for name, p in model.named_parameters()}
        x = batch.x.detach().requires_grad_(True)
        with bn_policy(model, self.config.bn_mode):
            logits = functional_call(model, clones, (x,))
        ce = F.cross_entropy(at_least_fp32(logits), batch.y, reduction="sum")
        (grad,) = torch.autograd.grad(ce, x, retain_graph=True)
        return logits, grad

    def attack(self, model: nn.Module, batch: Batch, clean_grad: Tensor) -> Tensor:
        """x': PGD without a random start, its first step taken along the clean-input gradient."""
        eps, norm, alpha = self.threat.eps, self.threat.norm, self.step_size
        x = batch.x.detach()
        first = project(ascent_step(x, clean_grad, alpha, norm), x, eps, norm)
        if self.config.steps == 1:
            return first.detach()
        with bn_policy(model, self.config.bn_mode):
            return pgd_unchecked(model, x, batch.y, eps=eps, steps=self.config.steps - 1, step_size=alpha, norm=norm,
                                 x_init=first, keep="last")

    def weight_direction(self, model: nn.Module, batch: Batch, x_adv: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        """v of §4.3: the layer-wise scaled gradient of the unweighted adversarial CE at θ (averaged over the
        whole batch when it is split across processes)."""
        params = perturbed_parameters(model)
        with bn_policy(model, "train_frozen"):
            loss = F.cross_entropy(at_least_fp32(model(x_adv)), batch.y)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        return layerwise_direction(params, ctx.average_gradients(list(params.values()), grads))

    def loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        clean_logits, clean_grad = self.clean_branch(model, batch)
        x_adv = self.attack(model, batch, clean_grad)
        v = self.weight_direction(model, batch, x_adv, ctx)
        gamma = self.config.gamma
        shift(model, v, gamma)
        adv_logits = model(x_adv)
        adv_ce = F.cross_entropy(at_least_fp32(adv_logits), batch.y, reduction="none")
        with torch.no_grad():
            clean_ce = F.cross_entropy(at_least_fp32(clean_logits), batch.y, reduction="none")
            av = adv_ce - clean_ce
            weights = rank_weights(av)
        distance = (at_least_fp32(adv_logits) - at_least_fp32(clean_logits)).pow(2).sum(1)
        regulariser = (weights * distance).mean()
        loss = adv_ce.mean() + self.stage_lam * regulariser
        metrics = {"acc": accuracy(adv_logits, batch.y), "av": av.mean().detach(), "smooth": regulariser.detach()}
        return StepOutput(loss, metrics, lambda: shift(model, v, -gamma))

    def state_dict(self) -> dict[str, Any]:
        return {"stage_lam": self.stage_lam}  # a mid-epoch resume does not rerun on_epoch_start

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage_lam = state["stage_lam"]

    def metadata(self) -> dict[str, Any]:
        return super().metadata() | {"attack_bn_mode": self.config.bn_mode, "awp_bn_mode": "train_frozen",
                                     "random_start": False, "rank_ties": "average"}
