"""One optimizer step of any method: the only training step there is (the trainer, `advtrain bench` and
benchmarks/method_cost.py all run this function), and the module data-parallel training wraps in DDP.

Nothing in it synchronises with the host: no `.item()`, no `.cpu()`, no Python branch on a tensor value; the
returned outputs stay on the device until the caller reads them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from advtrain.attacks import StaticPGD
from advtrain.config import OptimConfig
from advtrain.errors import UserError
from advtrain.methods import Batch, Method, StepContext, StepOutput
from advtrain.runtime import CompileMode, compile_checked
from advtrain.train.schedule import build_optimizer


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> Callable[[], AbstractContextManager]:
    """A factory of the autocast context for `dtype` on `device` (no autocast when None)."""
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def compile_for_training(
    model: nn.Module, method: Method, mode: CompileMode, batch: Batch, generator: Callable[[], torch.Generator]
) -> tuple[nn.Module, str | None]:
    """`runtime.compile_checked` for training `method` (the trainer's `train.compile`, `advtrain bench
    --compile`): the model compiled, or an eager one and why. The training-loss check is one step of the
    method's loss on `batch`, with a fresh `generator()` per call so eager and compiled draw the same attack.
    A method with double backprop stays eager without trying."""
    if method.double_backprop:
        return model, f"{method.name} differentiates input gradients twice, which torch.compile cannot"

    def one_step_loss(m: nn.Module) -> torch.Tensor:
        return method.loss(m, batch, StepContext(0, 0, generator())).loss

    return compile_checked(model, mode, batch.x, batch.y, one_step_loss)


def graph_captured_attack(method: Method, device: torch.device, option: str,
                          log: Callable[[str], None]) -> StaticPGD:
    """The graph-captured training attack for `method` on `device` (`train.attack_graph`, `bench --attack-graph`,
    named by `option` in its messages), to set as `method.training_pgd`; refused in one line off CUDA and for a
    method whose training attack is not one plain PGD run (pgd_at, trades and mart have one)."""
    if device.type != "cuda":
        raise UserError(f"{option} records the attack as a CUDA graph, which needs CUDA (the device is "
                        f"{device.type}): turn {option} off")
    if not method.plain_pgd_attack:
        raise UserError(f"{option} records a plain PGD training attack (pgd_at, trades, mart); {method.name} crafts "
                        f"otherwise: turn {option} off")
    return StaticPGD(capture=True, log=lambda message: log(f"{option}: {message}"))


class TrainingStep(nn.Module):
    """The method's whole loss as one module: `forward(batch, ctx)` is `method.loss(model, batch, ctx)`; the model
    and the method's extra modules (AR-AT predictors) are its submodules, so DDP owns all their parameters."""

    def __init__(self, method: Method, model: nn.Module, extras: dict[str, nn.Module]) -> None:
        super().__init__()
        self.method = method  # not a module: a teacher it holds (IGD) is neither trained nor synchronised
        self.model = model
        self.extras = nn.ModuleDict(extras)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        return self.method.loss(self.model, batch, ctx)


def data_parallel(method: Method, model: nn.Module, extras: dict[str, nn.Module]) -> DistributedDataParallel:
    """`TrainingStep` wrapped in DDP, for `train_step`'s `parallel`; built in every process of the run at once.

    The step is wrapped, not the model, so DDP sees one forward (the loss, however many forwards the method runs
    inside it) per backward, its contract, and the attacks run on the plain model. A gradient taken inside the
    loss with `torch.autograd.grad` (an attack's w.r.t. its input; AWP's and ISEAT's w.r.t. the weights) is
    returned, not accumulated, so it fires no reducer hook, and the reducer only expects hooks once the forward
    has returned. With `device_ids=None` DDP passes the batch and the returned StepOutput through untouched.
    Building it broadcasts rank 0's parameters and buffers. `forward_sync_buffers=False`: instead of DDP's
    broadcast before each forward, the loop broadcasts rank 0's buffers after each step, so the BatchNorm
    statistics every process validates and saves with are rank 0's. `find_unused_parameters=False`: every
    trainable parameter must get a gradient from each step's loss, which every method's does
    (tests/test_ddp.py); `train_step` refuses a model with one that gets none.
    """
    return DistributedDataParallel(TrainingStep(method, model, extras), device_ids=None, forward_sync_buffers=False,
                                   find_unused_parameters=False)


def train_step(
    method: Method,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    ctx: StepContext,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    parallel: tuple[DistributedDataParallel, float] | None = None,
) -> StepOutput:
    """method.loss under autocast (fp32 master weights), backward, optimizer step, then the method's `after_step`
    (e.g. removing a weight perturbation). Data-parallel training passes `parallel`: the DDP-wrapped step
    (`data_parallel`) and this process's loss weight (`Processes.loss_weight`); its backward then leaves the
    global-batch mean gradient in every process. The returned loss is the unweighted one."""
    with autocast():
        out = method.loss(model, batch, ctx) if parallel is None else parallel[0](batch, ctx)
    optimizer.zero_grad(set_to_none=True)
    (out.loss if parallel is None else out.loss * parallel[1]).backward()
    if parallel is not None:
        check_every_parameter_reached(parallel[0])
    optimizer.step()
    if out.after_step is not None:
        out.after_step()
    return out


def standalone_step(method: Method, initial: nn.Module, batch: Batch, optim: OptimConfig, *, channels_last: bool,
                    amp: torch.dtype | None, seed: int,
                    adapt: Callable[[nn.Module], nn.Module] = lambda model: model) -> Callable[[int], StepOutput]:
    """Step i of `method` training its own copy of `initial` on `batch`, set up as the trainer sets it up: the copy
    prepared for the method, in channels_last when asked, then `adapt`ed (e.g. compiled), in train mode, with the
    trainer's optimizer over it and the method's extra modules and one generator seeded `seed`. For measuring a
    step (`advtrain bench`'s timings, `flops.step_flops_per_image`)."""
    model = method.prepare_model(copy.deepcopy(initial), batch.x[:2])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = adapt(model)
    model.train()
    params = [*model.parameters(), *(p for m in method.extra_modules().values() for p in m.parameters())]
    optimizer = build_optimizer(params, optim)  # the trainer's optimizer (foreach kernel)
    generator = torch.Generator(batch.x.device).manual_seed(seed)
    autocast = autocast_context(batch.x.device, amp)
    return lambda i: train_step(method, model, optimizer, batch, StepContext(0, i, generator), autocast)


def check_every_parameter_reached(parallel: DistributedDataParallel) -> None:
    """Refuse, before the optimizer steps, a trainable parameter the loss did not reach: DDP's reducer then left
    the step's gradients unaveraged and would fail at the next step with a long message. A check of Python
    attributes, no device sync. (One process trains such a model: the optimizer skips a parameter without
    gradient.)"""
    missed = [name.removeprefix("model.") for name, p in parallel.module.named_parameters()
              if p.requires_grad and p.grad is None]
    if missed:
        raise UserError(f"data-parallel training needs a gradient for every trainable parameter, but the loss does "
                        f"not reach {len(missed)} ({', '.join(missed[:3])}{', ...' if len(missed) > 3 else ''}): "
                        "freeze them (requires_grad=False) or remove them from the model (e.g. WideResNet's "
                        "sub_block1), or train in one process")
