"""`arat` (Asymmetrically Representation-regularized AT; docs/methods.md §6): split BatchNorm, and an invariance term
that pulls adversarial features toward stop-gradient clean features through a predictor.

    L = α_e·CE(z_adv(x'), y) + β_e·CE(z_clean(x), y) + (γ/|S|) Σ_{l∈S} [1 − (1/B) Σᵢ cos(h_l(z'_{l,i}), sg(z_{l,i}))]

- Split BN (`split_bn`): `prepare_model` turns every BatchNorm into a clean/adv pair; the clean pass runs
  under `bn_route(model, "clean")`, the adversarial pass and the attack under the default adv route. Weights
  files hold the adv branch only (`export_model`): AR-AT tests with the adv BN for clean and robust accuracy.
- z_l, z'_l: ReLU then global average pooling of layer l's output on the clean / adversarial pass
  (`models.features`); S defaults to the paper's set for the model (`default_invariance_layers`).
- h_l: Linear(d → d·`predictor_ratio`, no bias) → BatchNorm1d → ReLU → Linear(→ d), one per layer, trained by
  the model's optimizer (`extra_modules`) and never exported.
- Auto-balance (§6): before each epoch α_e = accuracy of the clean-BN branch in eval mode on
  `auto_balance_size` augmented training images, β_e = 1 − α_e; with `auto_balance` off, α and β are fixed.
- x' = PGD-`steps` on CE through the adv BN with the model in train mode. `official_noise` (the released
  code's behaviour, the default): the random start u ~ U(−ε, ε) is added to the batch itself, unclamped, as
  the released attack does in place: the clean pass (so the clean CE and the feature targets z_l) sees x + u,
  and PGD projects around x + u. x' may therefore lie up to 2ε from x in L∞, the effective threat radius a
  comparison "at equal ε" must state (L∞ only: the released L2 path uses torchattacks' PGDL2, which has no
  such quirk).
- Ablations: `stop_gradient` off gives the symmetric loss 1 − cos(z', z) (the invariance term also moves the
  clean features) and, like the released `x<->y` variant, no predictor unless `predictor` is set true;
  `predictor` off compares z' with z directly, `split_bn` off shares one BN between the two (still separate)
  passes.
- SWA (`averaging.swa_start`, `averaging.swa_every_steps`): `recalibrate_bn` resets every BN statistic and
  recomputes the adv-BN ones from PGD examples crafted against the averaged model (§6, "SWA variant").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import MAX_DISTANCE, BNMode, ThreatModel, at_least_fp32, bn_policy, pgd_unchecked
from advtrain.bounds import Ge, Gt, Le
from advtrain.errors import UserError
from advtrain.methods.base import (
    AdversarialMethod,
    Batch,
    EpochContext,
    MethodConfig,
    QuarterEpsStep,
    StepContext,
    StepOutput,
    accuracy,
)
from advtrain.methods.registry import register_method
from advtrain.models.features import default_invariance_layers, feature_dims, feature_taps
from advtrain.models.split_bn import bn_route, has_split_bn, merge_split_bn, recompute_bn_statistics, to_split_bn


@dataclass
class ARATConfig(MethodConfig):
    name: str = "arat"
    gamma: Annotated[float, Ge(0)] = 30.0  # γ: ResNet-18 30, WRN-34-10 100
    layers: list[str] | None = None  # S; None: the model's default set (models.features.default_invariance_layers)
    # h_l on the adversarial features. None: as the released variants, on with stop-gradient (`x->y`) and off
    # without (`x<->y`, whose loss ignores the predictor); true/false force it.
    predictor: bool | None = None
    predictor_ratio: Annotated[float, Gt(0), Le(1)] = 0.25  # hidden width of h_l relative to d
    stop_gradient: bool = True  # sg on the clean features (ablation: off = symmetric)
    split_bn: bool = True  # separate clean/adv BatchNorm (ablation: off = shared)
    auto_balance: bool = True  # α_e = clean-BN accuracy before each epoch, β_e = 1 − α_e
    auto_balance_size: Annotated[int, Ge(1)] = 1000  # training images α_e is measured on
    alpha: Annotated[float, Ge(0)] = 1.0  # weight of the adversarial CE when auto_balance is off
    beta: Annotated[float, Ge(0)] = 1.0  # weight of the clean CE when auto_balance is off
    steps: Annotated[int, Ge(1)] = 10
    step_size: Annotated[float, Gt(0), Le(MAX_DISTANCE)] | None = None  # None: ε/4, i.e. 2/255 at ε = 8/255
    random_start: bool = True
    # The released code's start: x + u (unclamped) is the clean input and the projection centre, so x' may lie up
    # to 2ε from x in L∞; off: standard PGD around x (random start clamped to the ε-ball and [0, 1]).
    official_noise: bool = True
    bn_mode: BNMode = "train"  # BN mode while crafting x' (§6: train mode, adv BN)


def make_predictor(dim: int, ratio: float) -> nn.Sequential:
    """h: Linear(d → d·ratio, no bias) → BatchNorm1d → ReLU → Linear(d·ratio → d) (SimSiam's predictor)."""
    hidden = max(1, int(dim * ratio))
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim))


def _key(layer: str) -> str:
    return layer.replace(".", "-")  # module names cannot contain dots


@register_method
class ARAT(QuarterEpsStep, AdversarialMethod):
    name = "arat"
    config_class = ARATConfig
    config: ARATConfig

    def __init__(self, config: MethodConfig, threat: ThreatModel) -> None:
        super().__init__(config, threat)
        layers = self.config.layers
        if layers is not None and (not layers or len(set(layers)) != len(layers)):
            raise UserError(f"method.layers must name at least one layer, each once; got {layers}")
        self.layers: list[str] = list(layers or [])
        self.predictors: nn.ModuleDict | None = None
        self.alpha = self.config.alpha
        self.beta = self.config.beta
        predictor = self.config.predictor
        self.use_predictor: bool = self.config.stop_gradient if predictor is None else predictor
        # (x', clean input) of the latest training attack: `objective` runs the clean pass on x + u when given that
        # x' under `official_noise`. Kept here because the AdversarialMethod split hands only x' from `perturb` to
        # `objective` (AWP re-evaluates `objective` at the same x').
        self._latest_attack: tuple[Tensor, Tensor] | None = None

    # -- the model -----------------------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module, example: Tensor) -> nn.Module:
        if self.config.split_bn:
            to_split_bn(model)
        if not self.layers:
            self.layers = default_invariance_layers(model)
        dims = feature_dims(model, self.layers, example)
        if self.use_predictor:
            self.predictors = nn.ModuleDict(
                {_key(layer): make_predictor(dims[layer], self.config.predictor_ratio) for layer in self.layers}
            ).to(example.device)
        return model

    def export_model(self, model: nn.Module) -> nn.Module:
        return merge_split_bn(model, keep="adv") if has_split_bn(model) else model

    def extra_modules(self) -> dict[str, nn.Module]:
        if self.use_predictor and self.predictors is None:
            raise RuntimeError("arat: call prepare_model before extra_modules (the predictors need the layer widths)")
        return {"predictors": self.predictors} if self.predictors is not None else {}

    # -- auto-balance --------------------------------------------------------------------------------------------
    def on_epoch_start(self, model: nn.Module, ctx: EpochContext) -> None:
        if not self.config.auto_balance:
            return
        x, y = ctx.sample_train(self.config.auto_balance_size)
        self.alpha = clean_branch_accuracy(model, x, y)
        self.beta = 1.0 - self.alpha

    # -- the attack ----------------------------------------------------------------------------------------------
    def craft(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None, bn_mode: BNMode
    ) -> tuple[Tensor, Tensor]:
        """(x', the clean input): x' = PGD on CE through the adv BN, in `bn_mode`. The clean input is x, or
        x + u under `official_noise`, where the released attack adds u to the batch in place."""
        eps, norm = self.threat.eps, self.threat.norm
        kwargs = dict(eps=eps, steps=self.config.steps, step_size=self.step_size, norm=norm, generator=generator,
                      keep="last")
        x = x.detach()
        with bn_route(model, "adv"), bn_policy(model, bn_mode):
            if self.config.official_noise and self.config.random_start and norm == "linf":
                u = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
                center = x + u  # unclamped: the clean input and the projection centre from here on
                return pgd_unchecked(model, center, y, x_init=center, **kwargs), center
            return pgd_unchecked(model, x, y, random_start=self.config.random_start, **kwargs), x

    def perturb(self, model: nn.Module, batch: Batch, ctx: StepContext) -> Tensor:
        x_adv, clean_input = self.craft(model, batch.x, batch.y, ctx.generator, self.config.bn_mode)
        self._latest_attack = (x_adv, clean_input)
        return x_adv

    def clean_input(self, batch: Batch, x_adv: Tensor) -> Tensor:
        """What the clean pass sees for this x': the clean input of the attack that crafted it (x + u under
        `official_noise`), or `batch.x` for an x' this method did not just craft."""
        if self._latest_attack is not None and self._latest_attack[0] is x_adv:
            return self._latest_attack[1]
        return batch.x

    # -- the loss ------------------------------------------------------------------------------------------------
    def objective(self, model: nn.Module, batch: Batch, x_adv: Tensor) -> StepOutput:
        with feature_taps(model, self.layers) as features:
            with bn_route(model, "clean"):
                clean_logits = model(self.clean_input(batch, x_adv))
            clean = dict(features)
            adv_logits = model(x_adv)  # the default route: adv BN
            adv = dict(features)
        ce_adv = F.cross_entropy(at_least_fp32(adv_logits), batch.y)
        ce_clean = F.cross_entropy(at_least_fp32(clean_logits), batch.y)
        distance = adv_logits.new_zeros((), dtype=torch.float32)
        invariance = adv_logits.new_zeros((), dtype=torch.float32)
        for layer in self.layers:
            z_adv, z_clean = at_least_fp32(adv[layer]), at_least_fp32(clean[layer])
            prediction = self.predictors[_key(layer)](z_adv) if self.predictors is not None else z_adv
            target = z_clean.detach() if self.config.stop_gradient else z_clean
            distance = distance + (1 - F.cosine_similarity(at_least_fp32(prediction), target, dim=1).mean())
            invariance = invariance + F.cosine_similarity(z_adv.detach(), z_clean.detach(), dim=1).mean()
        regulariser = self.config.gamma / len(self.layers) * distance
        loss = self.alpha * ce_adv + self.beta * ce_clean + regulariser
        metrics = {
            "acc": accuracy(adv_logits, batch.y), "clean_acc": accuracy(clean_logits, batch.y),
            "align": regulariser.detach(), "feature_cos": invariance.detach() / len(self.layers),
            "alpha": adv_logits.new_full((), self.alpha, dtype=torch.float32),  # a fill, no host→device copy
        }
        return StepOutput(loss, metrics)

    # -- SWA -----------------------------------------------------------------------------------------------------
    def recalibrate_bn(
        self, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], generator: torch.Generator | None = None
    ) -> None:
        """Reset every BN statistic, then recompute the adv-BN ones on PGD examples crafted against `model` (the
        average). Crafting uses batch statistics without updating them, so only the forwards of x' count."""

        def adversarial() -> Iterator[Tensor]:
            for x, y in batches:
                yield self.craft(model, x, y, generator, "train_frozen")[0]

        with bn_route(model, "adv"):
            recompute_bn_statistics(model, adversarial())

    # -- resume and metadata -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta}  # a mid-epoch resume does not rerun on_epoch_start

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha, self.beta = state["alpha"], state["beta"]

    def metadata(self) -> dict[str, Any]:
        return super().metadata() | {
            "layers_used": self.layers, "feature": "relu+global_avg_pool", "test_bn": "adv",
            "predictor_used": self.use_predictor,
            "swa_bn_recalibration": "adv BN on PGD examples against the average (train_frozen while crafting)",
        }


def clean_branch_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Accuracy of the clean-BN branch in eval mode on (x, y): auto-balance's α_e."""
    correct = 0
    with torch.no_grad(), bn_route(model, "clean"), bn_policy(model, "eval"):
        for start in range(0, len(y), batch_size):
            logits = model(x[start : start + batch_size])
            correct += int((logits.argmax(1) == y[start : start + batch_size]).sum())
    return correct / max(len(y), 1)
