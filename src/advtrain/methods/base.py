"""The contract between a training method and the trainer.

The trainer knows nothing about any particular method. For every batch it does exactly::

    out = method.loss(model, batch, ctx)      # under autocast; may attack, run several forwards, ...
    optimizer.zero_grad(); out.loss.backward(); optimizer.step()
    if out.after_step is not None:
        out.after_step()                      # e.g. remove a weight perturbation

and around that it calls `on_epoch_start` before each epoch, optimises and checkpoints the modules of
`extra_modules()` with the model, and saves `state_dict()` with every checkpoint.

Data-parallel (torchrun), each process runs that on its share of the batch with `loss` called through torch's
DistributedDataParallel as one forward (advtrain/train/step.py): the returned loss must reach every trainable
parameter of the model and of `extra_modules()` in every step, and a gradient the method takes itself and acts
on before the optimizer step (AWP's direction) goes through `ctx.average_gradients`.

How each method of docs/methods.md §2–6 plugs in, with no special case in the trainer:

- Several forward passes (TRADES, MART, ISEAT, AR-AT): `loss` calls the model as often as it needs;
  the trainer only sees the final scalar.
- Double backprop (IGD, GradAlign): inside `loss`, `torch.autograd.grad(..., create_graph=True)` on
  an input gradient; the trainer's single `backward` then differentiates through it.
- Weight perturbation around the optimizer step (AWP, ISEAT §4.3): `loss` computes the ascent
  direction v, adds γ·v to the weights, returns the loss at θ+γv and an `after_step` that subtracts
  γ·v once the optimizer has stepped. AWP wraps another method through `AdversarialMethod`'s split
  into `perturb` (craft x') and `objective` (the loss given x'), so the ascent direction is the
  wrapped method's own loss.
- Split BatchNorm routing (AR-AT): `prepare_model` converts the model before training (the trainer then
  builds the optimizer from the converted model); `loss` runs the clean pass under a routing context on the
  model (clean BN) and the adversarial pass under the default (adv BN); models' forward signatures stay.
  Every weights file the trainer writes (best, last, averages) holds `export_model(model)`, the plain model
  that keeps the adv branch, so evaluation never sees a split model.
- Extra trainable modules (AR-AT predictors): returned by `extra_modules()`; the trainer adds their
  parameters to the optimizer with the same LR and weight decay and checkpoints them; they are
  discarded when the model is exported (they are never part of `export_model`).
- Per-epoch hooks (AR-AT auto-balance α_e/β_e, ISEAT's λ per LR stage, AWP warm-up): in
  `on_epoch_start`, from `EpochContext` (epoch, lr and base lr, a sampler of augmented training
  batches); anything they compute lives in `state_dict()` so a resumed run continues exactly.
- One concatenated forward over several adversarial variants (SAT-R1/R2/R3): `loss` crafts the
  variants in eval mode, concatenates them, runs one train-mode forward and splits the logits.
- A frozen teacher (IGD): held by the method, in eval mode, not in `extra_modules()` (so neither
  optimised nor checkpointed); its source path goes into `metadata()`.
- BatchNorm statistics of a weight average (SWA, EMA): the trainer calls `recalibrate_bn(model, batches)`
  before validating or saving an average; the default recomputes them on clean training batches, AR-AT
  recomputes the adv-BN statistics on PGD examples crafted against the averaged model.
- A method-specific validation attack or selection metric (SAT-R: I-FGSM-3; `standard`: clean
  accuracy): the class attribute `selection_metric`.

Randomness: every random draw inside `loss` comes from `ctx.generator`, which the trainer seeds from
(run seed, epoch, batch index), so a resumed or replayed step draws the same numbers.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import ThreatModel, at_least_fp32, pgd_unchecked, training_step_size
from advtrain.bounds import CheckedConfig
from advtrain.models.split_bn import recompute_bn_statistics


@dataclass
class MethodConfig(CheckedConfig):
    """Base of every method's options; subclasses add fields with the paper defaults.

    Numeric options declare their valid range on the field with the markers of `advtrain.bounds`, and building
    the config (from YAML or in Python) refuses an out-of-range value with a one-line error naming the field
    (a `FieldError`, also a ValueError), e.g.::

        steps: Annotated[int, Ge(1)] = 10
        step_size: Annotated[float, Gt(0)] | None = None
        beta: Annotated[float, Ge(0)] = 6.0  # loss weights (λ, β, ...) are Ge(0)

    Import the markers from `advtrain.bounds`, never from `advtrain.config` (which imports the methods). A subclass
    with cross-field rules checks them in its own `__post_init__`, after calling `super().__post_init__()`.
    """

    name: str = ""

    def check_schedule(self, lr_milestones: Sequence[float], schedule_name: str) -> None:
        """Refuse, while the config loads, an LR schedule these options cannot follow (one-line UserError).
        `lr_milestones` are the epochs where the schedule decays the LR (empty unless multistep). Any by default."""


@dataclass
class Batch:
    """One training batch on the device: inputs in [0, 1], labels, and dataset indices."""

    x: Tensor
    y: Tensor
    index: Tensor | None = None


@dataclass
class StepContext:
    """What a method may know about the current step."""

    epoch: int  # 0-based
    step: int  # global step, 0-based
    generator: torch.Generator  # on the batch's device, seeded from (seed, epoch, batch index)
    # (params, grads) → the global-batch mean of gradients this process computed on its share of the batch
    # (data-parallel training, advtrain/distributed.py); the identity in one process. For gradients a method takes
    # itself and acts on before the optimizer step (AWP's and ISEAT's weight perturbation direction).
    average_gradients: Callable[[Sequence[Tensor], Sequence[Tensor | None]], list[Tensor | None]] = (
        lambda params, grads: list(grads))


@dataclass
class EpochContext:
    """What a method may know at the start of an epoch."""

    epoch: int  # 0-based
    epochs: int
    lr: float  # learning rate at the start of this epoch
    base_lr: float  # the configured initial learning rate
    sample_train: Callable[[int], tuple[Tensor, Tensor]]  # n augmented training examples (x, y)
    generator: torch.Generator
    lr_milestones: tuple[float, ...] = ()  # epochs where the multistep schedule decays the LR; () for any other


@dataclass
class StepOutput:
    loss: Tensor
    # Detached scalars averaged over the epoch by the trainer; read from the device once per log
    # line, never with .item() in the step. "acc" is the accuracy on the examples the loss trains on.
    metrics: dict[str, Tensor] = field(default_factory=dict)
    after_step: Callable[[], None] | None = None


class Method(ABC):
    """A training method: only its math. See the module docstring for the contract."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    # Validation metric the best checkpoint is selected on (always measured on the validation split).
    selection_metric: ClassVar[str] = "val_pgd_acc"
    # The inputs the step's "acc" (metrics.jsonl's train_acc) is measured on: the examples the loss trains on.
    train_acc_inputs: ClassVar[str] = "adversarial"
    # The validation attack: "pgd" (PGD-k, step ε/4, random start) or "ifgsm" (I-FGSM-3 from x, SAT-R §5);
    # its accuracy is the metrics column val_<attack>_acc.
    validation_attack: ClassVar[str] = "pgd"
    # The loss differentiates an input gradient again (create_graph=True): torch.compile cannot run its
    # backward, so `train.compile` leaves such a method's model eager.
    double_backprop: ClassVar[bool] = False
    # The training attack is one run of PGD (`keep="last"`), called as `self.training_pgd(...)` with
    # `pgd_unchecked`'s arguments; `train.attack_graph` replaces it by a graph-captured `attacks.StaticPGD`.
    plain_pgd_attack: ClassVar[bool] = False
    training_pgd: Callable[..., Tensor] = staticmethod(pgd_unchecked)

    def __init__(self, config: MethodConfig, threat: ThreatModel) -> None:
        self.config = config
        self.threat = threat

    def prepare_model(self, model: nn.Module, example: Tensor) -> nn.Module:
        """The model this method trains, made from the built one (AR-AT: split BatchNorm); `example` is a small
        batch of the model's input shape on its device. Called once, before the optimizer is built."""
        return model

    def export_model(self, model: nn.Module) -> nn.Module:
        """The plain model a weights file holds (AR-AT: the adv branch of every split BatchNorm)."""
        return model

    def extra_modules(self) -> dict[str, nn.Module]:
        return {}

    def recalibrate_bn(
        self, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], generator: torch.Generator | None = None
    ) -> None:
        """Recompute the BatchNorm statistics of a weight average from augmented training batches (x, y);
        `generator` seeds any attack the method crafts for it."""
        recompute_bn_statistics(model, (x for x, _ in batches))

    def on_epoch_start(self, model: nn.Module, ctx: EpochContext) -> None:  # noqa: B027 (optional hook)
        pass

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (stateless by default)
        pass

    def metadata(self) -> dict[str, Any]:
        """Every option of this method, recorded in the run metadata (docs/methods.md, introduction)."""
        return dataclasses.asdict(self.config)


class AdversarialMethod(Method):
    """A method whose loss is `objective(model, x, x', y)` at an adversarial input x' = `perturb(...)`.

    The split lets a wrapper (AWP) re-evaluate the same objective at perturbed weights. The default
    objective is Madry's CE(z(x'), y) (pgd_at and the single-step methods); TRADES and MART override it.
    """

    @abstractmethod
    def perturb(self, model: nn.Module, batch: Batch, ctx: StepContext) -> Tensor: ...

    def perturb_with_metrics(self, model: nn.Module, batch: Batch, ctx: StepContext) -> tuple[Tensor, dict]:
        """x' and the attack's own diagnostics (e.g. single-step `zero_grad`); none by default."""
        return self.perturb(model, batch, ctx), {}

    def objective(self, model: nn.Module, batch: Batch, x_adv: Tensor) -> StepOutput:
        logits = model(x_adv)
        loss = F.cross_entropy(at_least_fp32(logits), batch.y)
        return StepOutput(loss, {"acc": accuracy(logits, batch.y)})

    def loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        x_adv, metrics = self.perturb_with_metrics(model, batch, ctx)
        out = self.objective(model, batch, x_adv)
        out.metrics.update(metrics)
        return out


class QuarterEpsStep:
    """Mixin: the multi-step training attack's `step_size` is the config's, or ε/4 (`training_step_size`) when that
    is None."""

    config: Any
    threat: ThreatModel

    @property
    def step_size(self) -> float:
        return training_step_size(self.threat.eps) if self.config.step_size is None else self.config.step_size


def joint_forward(model: nn.Module, *inputs: Tensor) -> tuple[Tensor, ...]:
    """One forward pass over the concatenation of `inputs`, split back: the variants share BN batch statistics
    (the single train-mode forward of SAT-R, docs/methods.md §5)."""
    logits = model(torch.cat(inputs))
    return logits.split([len(x) for x in inputs])


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.detach().argmax(1) == y).float().mean()
