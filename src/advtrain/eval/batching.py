"""The evaluation batch size: a number given by the user, or "auto", sized to the device's free memory.

The batch size is part of what an evaluation computes, not only of how fast: chunk i of a PGD/CW evaluation
draws its random start from `seed + i`, so the same seed with another batch size gives other (equally valid)
adversarial examples. That is why "auto" is resolved once, before the first attack, and recorded in the eval
JSON, and why running out of memory is an error that names a smaller batch rather than a silent retry.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from advtrain.attacks import bn_policy, input_gradient
from advtrain.bounds import Ge, Lt
from advtrain.errors import UserError

# "auto" off CUDA: the batch size evaluation has always used. On a CPU the time per image hardly changes once a
# batch holds a few dozen images, so a larger batch would only change the results (the seeds follow the chunks).
CPU_EVAL_BATCH = 256
# The batch at which "auto" measures the memory of one attack step on CUDA.
PROBE_BATCH = 64


def check_batch_setting(setting: object, where: str) -> None:
    """One-line UserError, naming `where` (a flag or config key), unless `setting` is "auto" or an integer in
    [1, 2**63) (torch splits take 64-bit sizes)."""
    if isinstance(setting, str) and setting == "auto":
        return
    if isinstance(setting, bool) or not isinstance(setting, int):
        raise UserError(f"{where} {setting!r}: use a positive integer or auto")
    for bound in (Ge(1), Lt(2**63)):
        bound.check(setting, where)


def out_of_memory_message(batch_size: int) -> str:
    """What to do after the GPU ran out of memory evaluating batches of `batch_size`."""
    if batch_size <= 1:
        return "evaluation ran out of GPU memory at batch size 1: the model does not fit; use --device cpu"
    return f"evaluation ran out of GPU memory at batch size {batch_size}: pass --batch-size {batch_size // 2}"


@contextlib.contextmanager
def out_of_memory_as_user_error(batch_size: int) -> Iterator[None]:
    """Turn a CUDA out-of-memory error in the body into a one-line UserError naming a smaller batch.

    No retry with a smaller batch: it would change the random starts of every later chunk (see the module
    docstring), so the user reruns with the batch size the message names, and the eval JSON records it.
    """
    try:
        yield
    except torch.OutOfMemoryError:
        raise UserError(out_of_memory_message(batch_size)) from None


def batch_for_memory(
    free_bytes: int,
    bytes_per_example: float,
    n: int,
    *,
    headroom: float = 0.7,
    multiple: int = 64,
    cap: int = 8192,
) -> int:
    """The largest multiple of `multiple` whose examples take at most `headroom`·`free_bytes`, clipped to
    [`multiple`, `cap`], then to at most `n` (the number of examples) and at least 1.

    The headroom is memory left unplanned: the caching allocator fragments, and a batch needs more than the
    measured step (autocast's low-precision copies of the weights, the attack's kept iterates and masks,
    cuDNN workspaces that depend on the batch size). A multiple of 64 keeps the GPU kernels' tiles full. The
    cap: a few thousand images already keep a GPU busy, so a larger batch would add risk, not speed.
    `bytes_per_example` <= 0 (nothing measured) gives the cap.
    """
    if multiple < 1 or cap < multiple or not 0 < headroom <= 1:
        raise ValueError(f"need multiple >= 1, cap >= multiple, 0 < headroom <= 1; got {multiple}, {cap}, {headroom}")
    fits = cap if bytes_per_example <= 0 else math.floor(headroom * free_bytes / bytes_per_example)
    batch = min(max(fits // multiple * multiple, multiple), cap)
    return max(1, min(batch, n))


def resolve_eval_batch(
    model: nn.Module,
    x_example: Tensor,
    y_example: Tensor,
    n: int,
    setting: int | str,
    autocast_dtype: torch.dtype | None,
) -> int:
    """The batch size to evaluate `n` examples with: `setting` itself when it is an integer; for "auto",
    `CPU_EVAL_BATCH` off CUDA, and on CUDA the batch that fits the free memory (`batch_for_memory`).

    On CUDA the cost per example is the peak memory of one forward and input-gradient backward (one PGD step,
    the costliest part of evaluation) at a batch of `PROBE_BATCH` examples built from `x_example`, `y_example`
    (rows repeated when there are fewer), under `autocast_dtype` and with the model in eval mode, as the
    attacks run. What the step allocates beyond what was already allocated counts, so the fixed costs it
    incurs (workspaces, autocast's weight copies) are charged to the examples, so the batch errs on the small
    side. Any other string is a one-line UserError.
    """
    check_batch_setting(setting, "batch size")
    if isinstance(setting, int):
        return setting
    device = x_example.device
    if device.type != "cuda" or len(x_example) == 0:
        return CPU_EVAL_BATCH
    repeats = -(-PROBE_BATCH // len(x_example))
    x = x_example.repeat(repeats, *([1] * (x_example.dim() - 1)))[:PROBE_BATCH]
    y = y_example.repeat(repeats)[:PROBE_BATCH]
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    )
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with out_of_memory_as_user_error(PROBE_BATCH), torch.enable_grad(), bn_policy(model, "eval"), autocast:
        input_gradient(model, x, y)
    torch.cuda.synchronize(device)
    per_example = (torch.cuda.max_memory_allocated(device) - before) / PROBE_BATCH
    free, _ = torch.cuda.mem_get_info(device)
    # Blocks the caching allocator holds but no tensor uses (the probe's, now) are free to the next batch too.
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return batch_for_memory(free + cached, per_example, n)


__all__ = [
    "CPU_EVAL_BATCH",
    "PROBE_BATCH",
    "batch_for_memory",
    "check_batch_setting",
    "out_of_memory_as_user_error",
    "out_of_memory_message",
    "resolve_eval_batch",
]
