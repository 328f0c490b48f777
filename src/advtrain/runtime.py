"""Device, precision and seeding helpers shared by training and evaluation."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import random
import resource
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks.frozen import frozen_parameters
from advtrain.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when available, else cpu; anything else must be a usable torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but CUDA is not available here: use --device cpu")
    return device


_CLEAR_REFS = Path("/proc/self/clear_refs")  # Linux: writing "5" resets the peak resident set size (VmHWM)
_STATUS = Path("/proc/self/status")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new `peak_memory_mb` window: on CUDA the allocator's peak counter; on a Linux CPU the process's
    peak resident set size (so `compare`, which trains cell after cell in one process, gets each cell's own);
    elsewhere there is none to reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB since `reset_peak_memory`: on CUDA, the tensors allocated on `device`; on CPU, the
    process's peak resident set size (Linux's VmHWM; without /proc, the peak since the process started)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError, ValueError, StopIteration):
        line = next(x for x in _STATUS.read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 2**10  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default (fp32 master weights stay in the optimizer), fp32 on CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def use_channels_last(setting: bool | None) -> bool:
    """`train.channels_last`; None (auto) means on, on CUDA and on CPU alike: convolutions in channels_last ran
    1.2–1.6× faster in PGD-AT on this project's CPU machine as well as being the fast layout on CUDA
    (docs/benchmarks.md)."""
    return True if setting is None else setting


@contextlib.contextmanager
def evaluation_layout(model: nn.Module, device: torch.device) -> Iterator[torch.memory_format]:
    """The memory format evaluation runs in, with `model`'s 4-D weights in it for the block and their own layout
    restored afterwards (for in-process callers). channels_last on CUDA, training's default there
    (`use_channels_last`), where cuDNN's convolutions, forward and input-backward, are fastest in it; contiguous
    on CPU as before: channels_last changes an attack's floating-point sums slightly, and its speed-up on CPU was
    measured in training, not for the attacks alone."""
    if device.type != "cuda":
        yield torch.contiguous_format
        return
    saved = [(p, p.data) for p in model.parameters() if p.dim() == 4]
    for p, data in saved:
        p.data = data.contiguous(memory_format=torch.channels_last)
    try:
        yield torch.channels_last
    finally:
        for p, data in saved:
            p.data = data


@contextlib.contextmanager
def torch_settings(threads: int | None = None, deterministic: bool = False) -> Iterator[None]:
    """CPU threads and kernel choice for one run of training or evaluation: `deterministic` refuses
    non-deterministic kernels and turns cuDNN autotuning off; otherwise `cudnn.benchmark` is on, so cuDNN times
    its convolution algorithms once per input shape and keeps the fastest (the shapes of a run repeat: one
    training batch size, its last batch, the evaluation chunks); on CPU that flag changes nothing.

    All are process-wide torch settings, restored afterwards for in-process callers (tests, notebooks).
    """
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible GEMMs
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not deterministic
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
        torch.backends.cudnn.benchmark = previous[2]


# Seeds are in [0, 2**63): torch generators refuse seeds >= 2**64 and derived seeds are 63-bit, and a negative
# seed would map to different streams in numpy (which takes it mod 2**32) and torch.
SEED_LIMIT = 2**63


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from several parts, stable across runs, processes and platforms."""
    # Normalise numpy integers etc. first: their repr differs from a plain int's.
    key = repr(tuple(p if isinstance(p, str) else int(p) for p in parts))
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def make_generator(device: torch.device, *parts: int | str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


CompileMode = Literal["eager", "default", "reduce-overhead", "max-autotune"]


def compile_checked(
    model: nn.Module,
    mode: CompileMode,
    x: Tensor,
    y: Tensor,
    training_loss: Callable[[nn.Module], Tensor] | None = None,
    *,
    rtol: float = 1e-3,
) -> tuple[nn.Module, str | None]:
    """`model` compiled in place by `torch.compile(mode=...)` (nn.Module.compile: the same module, names, state
    dict and hooks) when it passes the checks below; otherwise an eager copy of the model as it was, and the
    reason in one line. Call it before an optimizer is built: on fallback the returned module is another object.

    Checks, each against an eager copy: (1) the input gradient ∇ₓCE on (x, y) with the parameters frozen, as the
    attacks take it (`attacks.frozen_parameters`), in train and in eval mode, within
    max |Δ| ≤ rtol·max |∇ eager| and not all zero: torch.compile on CPU (torch 2.13) can silently return zero
    input gradients (seen for Conv→ReLU→MaxPool2d in some shapes), and PGD on zero gradients takes no step.
    (2) `training_loss(model)`, e.g. one step of the training method's loss with a fixed seed, runs, and its
    value and parameter-gradient norm agree within 1e-2 relative (loose: sign steps of a PGD inside it may flip
    on gradients near zero). Some methods' losses fail under compile (a train-mode BatchNorm buffer updated in
    place between two forwards and one backward); they then train eagerly. Checks run in fp32 and leave the
    parameters, buffers, gradients and training flag as they were. `reduce-overhead` is torch's CUDA-graph mode.
    """
    if mode == "eager":
        return model, None
    # One model meets dynamo in several variants (train/eval, grad/no-grad, input with/without requires_grad,
    # batch sizes); past the default limit of 8 dynamo silently runs the rest eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    reference = copy.deepcopy(model)
    # Parameters too: a loss may leave weights perturbed until its after-step hook (AWP), which the check skips.
    saved = {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}
    training = model.training
    model.compile(mode=mode)
    reason = None
    try:
        for train_mode in (True, False):
            expected = _input_gradient(reference.train(train_mode), x, y)
            got = _input_gradient(model.train(train_mode), x, y)
            scale, error = float(expected.abs().max()), float((got - expected).abs().max())
            if error > rtol * scale or (scale > 0 and not bool(got.any())):
                reason = (f"torch.compile's input gradients differ from eager ones in "
                          f"{'train' if train_mode else 'eval'} mode (max |Δ| {error:.3g}, eager max {scale:.3g})")
                break
        if reason is None and training_loss is not None:
            (loss_e, norm_e), (loss_c, norm_c) = (_loss_and_grad_norm(m.train(training), training_loss)
                                                  for m in (reference, model))
            if not (math.isclose(loss_c, loss_e, rel_tol=1e-2) and math.isclose(norm_c, norm_e, rel_tol=1e-2)):
                reason = (f"the training loss under torch.compile differs from eager ({loss_c:.6g} vs {loss_e:.6g}, "
                          f"gradient norm {norm_c:.6g} vs {norm_e:.6g})")
    except Exception as e:  # no C++ compiler, an unsupported op, an in-place buffer update, ...: eager
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = f"torch.compile failed: {first_line}"
    with torch.no_grad():
        for m in (model, reference):
            for name, t in m.state_dict(keep_vars=True).items():
                t.copy_(saved[name])
            m.train(training)
            m.zero_grad(set_to_none=True)
    return (model, None) if reason is None else (reference, reason)


def _input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    # With the parameters frozen, as every attack takes it: that is the compiled graph the attacks run.
    x = x.detach().clone().requires_grad_(True)
    with frozen_parameters(model):
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x).float(), y, reduction="sum"), x)
    return grad


def _loss_and_grad_norm(model: nn.Module, training_loss: Callable[[nn.Module], Tensor]) -> tuple[float, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = training_loss(model).float()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None]))
    return float(loss.detach()), float(norm)
