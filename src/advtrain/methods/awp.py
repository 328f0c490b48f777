"""`awp` (Wu, Xia, Wang 2020, Adversarial Weight Perturbation): a wrapper around an adversarial method.

Per step (docs/methods.md §2 `awp` row, procedure of §4.3 with the wrapped method's own loss as the ascent
objective; authors' code: csdongxian/AWP, `utils_awp.py` AdvWeightPerturb / TradesAWP):

1. x' = base.perturb(...) at the unperturbed weights θ (with the attack's diagnostics, e.g. `zero_grad`).
2. g = ∇_W base.objective(θ, x, x', y).loss for the multi-dimensional `weight` tensors only (conv kernels,
   linear weights; never BN weights nor any bias — the code's `len(w.size()) > 1 and 'weight' in name`).
   This extra pass runs with BN in `train_frozen` mode: batch statistics, running statistics untouched. The
   code gets the same effect from a proxy copy in train mode whose BN buffers are thrown away.
3. v_l = ‖W_l‖·g_l/(‖g_l‖ + 1e-20) per tensor; W_l ← W_l + γ·v_l. (The code normalises lr·g_l, the step of its
   plain-SGD proxy optimiser, which is the same direction and norm up to where the 1e-20 sits.)
4. Return base.objective at θ + γv; after the optimizer step, `after_step` subtracts γ·v_l.

Defaults from the code: γ = 1e-2 and no warm-up for AT-AWP (`--awp-gamma 0.01 --awp-warmup 0`), γ = 5e-3
for TRADES-AWP with `--awp-warmup 10` checked as `epoch >= 10` on 1-based epochs, i.e. the first 9 epochs
train without AWP (`warmup_epochs = 9` here, epochs counted from 0). MART-AWP's training script is not in
the released code; it takes the TRADES-AWP settings (γ = 5e-3 in the AWP paper). Any other adversarial base
takes the AT-AWP settings unless `gamma` / `warmup_epochs` are given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from advtrain.attacks import ThreatModel, bn_policy
from advtrain.bounds import Ge
from advtrain.errors import UserError
from advtrain.methods.base import (
    AdversarialMethod,
    Batch,
    EpochContext,
    Method,
    MethodConfig,
    StepContext,
    StepOutput,
)
from advtrain.methods.pgd_at import PGDATConfig
from advtrain.methods.registry import build_method, list_methods, method_class, register_method
from advtrain.methods.weight_perturbation import layerwise_direction, perturbed_parameters, shift

# base method name → (γ, warm-up epochs counted from 0), from the AWP code (see the module docstring).
DEFAULTS: dict[str, tuple[float, int]] = {"pgd_at": (1e-2, 0), "trades": (5e-3, 9), "mart": (5e-3, 9)}
FALLBACK = DEFAULTS["pgd_at"]


def adversarial_method_names() -> list[str]:
    return [n for n in list_methods() if issubclass(method_class(n), AdversarialMethod)]


@dataclass
class AWPConfig(MethodConfig):
    name: str = "awp"
    base: MethodConfig = field(default_factory=PGDATConfig)  # the wrapped method, chosen by `base.name`
    gamma: Annotated[float, Ge(0)] | None = None  # None: 1e-2 for pgd_at, 5e-3 for trades and mart
    warmup_epochs: Annotated[int, Ge(0)] | None = None  # epochs without AWP; None: 0 for pgd_at, 9 for trades/mart

    def __post_init__(self) -> None:
        super().__post_init__()
        # Checked here so a bad base fails while the config is loaded, before a run writes anything.
        if not issubclass(method_class(self.base.name), AdversarialMethod):
            raise UserError(
                f"method.base: awp wraps an adversarial method (one that crafts x' and then a loss), "
                f"got {self.base.name!r}: choose one of {', '.join(adversarial_method_names())}"
            )


@register_method
class AWP(Method):
    name = "awp"
    config_class = AWPConfig
    config: AWPConfig

    def __init__(self, config: MethodConfig, threat: ThreatModel) -> None:
        super().__init__(config, threat)
        base = build_method(self.config.base, threat)
        if not isinstance(base, AdversarialMethod):
            raise UserError(
                f"method.base: awp wraps an adversarial method, got {self.config.base.name!r}: "
                f"choose one of {', '.join(adversarial_method_names())}"
            )
        self.base: AdversarialMethod = base
        gamma, warmup = DEFAULTS.get(base.name, FALLBACK)
        self.gamma = gamma if self.config.gamma is None else self.config.gamma
        self.warmup_epochs = warmup if self.config.warmup_epochs is None else self.config.warmup_epochs

    @property  # type: ignore[override]
    def selection_metric(self) -> str:  # type: ignore[override]
        return self.base.selection_metric

    @property  # type: ignore[override]
    def double_backprop(self) -> bool:  # type: ignore[override]
        return self.base.double_backprop

    def weight_perturbation(self, model: nn.Module, batch: Batch, x_adv: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        """v: per perturbed tensor, ‖W‖·g/(‖g‖ + 1e-20), g = ∇_W of the base objective at x' (BN frozen), g
        averaged over the whole batch when it is split across processes."""
        params = perturbed_parameters(model)
        with bn_policy(model, "train_frozen"):
            loss = self.base.objective(model, batch, x_adv).loss
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        return layerwise_direction(params, ctx.average_gradients(list(params.values()), grads))

    def loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        if ctx.epoch < self.warmup_epochs or self.gamma == 0:
            return self.base.loss(model, batch, ctx)
        x_adv, attack_metrics = self.base.perturb_with_metrics(model, batch, ctx)
        v = self.weight_perturbation(model, batch, x_adv, ctx)
        shift(model, v, self.gamma)
        out = self.base.objective(model, batch, x_adv)
        return StepOutput(out.loss, attack_metrics | out.metrics,
                          _chain(out.after_step, lambda: shift(model, v, -self.gamma)))

    # Everything else is the wrapped method's.
    # The wrapped method's model conversion, add-ons, hooks and state (e.g. AR-AT's split BN and predictors).
    def prepare_model(self, model: nn.Module, example: Tensor) -> nn.Module:
        return self.base.prepare_model(model, example)

    def export_model(self, model: nn.Module) -> nn.Module:
        return self.base.export_model(model)

    def recalibrate_bn(
        self, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], generator: torch.Generator | None = None
    ) -> None:
        self.base.recalibrate_bn(model, batches, generator)

    def extra_modules(self) -> dict[str, nn.Module]:
        return self.base.extra_modules()

    def on_epoch_start(self, model: nn.Module, ctx: EpochContext) -> None:
        self.base.on_epoch_start(model, ctx)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name, "base": self.base.metadata(), "gamma": self.gamma,
            "warmup_epochs": self.warmup_epochs, "gamma_option": self.config.gamma,
            "warmup_epochs_option": self.config.warmup_epochs,
            "ascent_bn_mode": "train_frozen", "perturbed": "multi-dimensional weights (no BN, no biases)",
        }


def _chain(first: Callable[[], None] | None, second: Callable[[], None]) -> Callable[[], None]:
    """Run the base's own after_step (if any), then remove the weight perturbation."""
    if first is None:
        return second

    def both() -> None:
        first()
        second()

    return both
