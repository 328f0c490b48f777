"""One optimizer step of any method: the only training step there is (the trainer, `advtrain bench` and
benchmarks/method_cost.py all run this function).

Nothing in it synchronises with the host: no `.item()`, no `.cpu()`, no Python branch on a tensor value; the
returned outputs stay on the device until the caller reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from advtrain.methods import Batch, Method, StepContext, StepOutput
from advtrain.runtime import CompileMode, compile_checked


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


def train_step(
    method: Method,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    ctx: StepContext,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    average_gradients: Callable[[], None] | None = None,
) -> StepOutput:
    """method.loss under autocast (fp32 master weights), backward, `average_gradients` (data-parallel training:
    the mean over processes, advtrain/distributed.py), optimizer step, then the method's `after_step` (e.g. removing
    a weight perturbation)."""
    with autocast():
        out = method.loss(model, batch, ctx)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    if average_gradients is not None:
        average_gradients()
    optimizer.step()
    if out.after_step is not None:
        out.after_step()
    return out
