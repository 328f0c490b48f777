"""Data-parallel training and sharded evaluation across processes started by `torchrun` (gloo on CPU, nccl on
CUDA). Training (advtrain.train.loop):

Every process holds the whole model and trains on its slice of each global batch; after backward the gradients
are averaged over processes with one all-reduce of their concatenation (weighted by each slice's size, so an
uneven last batch still gives the global-batch mean). We do not wrap the model in DistributedDataParallel: its
reducer expects one forward per backward, while attacks run many forwards whose gradients are taken w.r.t. the
input only (and IGD, GradAlign differentiate twice), so DDP would need `find_unused_parameters` and still trip
on them. The explicit all-reduce is the same arithmetic as DDP's bucketed one, applied once per optimizer step,
and attacks run on the plain module as in one process. BatchNorm statistics are per process (as in DDP without
SyncBatchNorm) and rank 0's buffers are broadcast after each step (as DDP's `broadcast_buffers`).
Evaluation (advtrain.eval.robustness.evaluate_attacks) gives each process whole chunks and merges their per-example
results with one `sum` per attack.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from advtrain.errors import TrainingStopped, UserError

EXIT_PEER_FAILED = 4  # a torchrun process stopped because another process of the run failed


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives run (nccl: its GPU)

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes files and logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of n examples (sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def average_gradients(
        self, params: Sequence[Tensor], grads: Sequence[Tensor | None], local: int, total: int
    ) -> list[Tensor | None]:
        """The global-batch mean of this process's `grads` of `params`, each a mean over its `local` of the
        `total` examples: Σ_ranks (local/total)·grad, in one all-reduce. A None gradient (the loss did not reach
        that parameter here) is sent as zeros and stays None: which parameters a loss reaches depends on the
        method and its options, never on the data, so it is the same in every process. One process: unchanged."""
        if not self.active:
            return list(grads)
        dtype = next((g.dtype for g in grads if g is not None), torch.float32)
        device = params[0].device
        flat = torch.cat([torch.zeros(p.numel(), device=device, dtype=dtype) if g is None
                          else g.detach().reshape(-1).to(dtype) for p, g in zip(params, grads, strict=True)])
        flat.mul_(local / total)
        dist.all_reduce(flat)
        out: list[Tensor | None] = []
        offset = 0
        for p, g in zip(params, grads, strict=True):
            # Copied into the parameter's own layout: the fused optimizer needs .grad strides to match it.
            piece = flat[offset:offset + p.numel()].view(p.shape)
            out.append(None if g is None else torch.empty_like(p).copy_(piece))
            offset += p.numel()
        return out

    def average_parameter_gradients(self, params: Sequence[nn.Parameter], local: int, total: int) -> None:
        """`average_gradients` on the parameters' .grad, in place (before the optimizer step)."""
        if self.active:
            for p, g in zip(params, self.average_gradients(params, [p.grad for p in params], local, total),
                            strict=True):
                p.grad = g

    def sum(self, tensor: Tensor) -> Tensor:
        """The sum of `tensor` over processes (in place, returned)."""
        if self.active:
            dist.all_reduce(tensor)
        return tensor

    def min(self, value: int) -> int:
        """The smallest of the processes' `value` (e.g. the evaluation batch each could fit; all must use one)."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true in any process (one tiny all-reduce; no communication in one process)."""
        if not self.active:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)) > 0)

    def broadcast_buffers(self, modules: Iterable[nn.Module]) -> None:
        """Rank 0's floating-point buffers (BatchNorm statistics) on every process."""
        if not self.active:
            return
        buffers = [b for m in modules for b in m.buffers() if b.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for b in buffers:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()


def start_processes(device: torch.device) -> tuple[Processes, bool]:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR, ...), nccl
    for CUDA and gloo for the CPU; one process without torchrun. Returns it and whether this call created the
    group (then the caller destroys it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(), False
    rank = int(os.environ["RANK"])
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=30))
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise UserError(f"the process group ({dist.get_world_size()} processes) does not match torchrun's "
                        f"WORLD_SIZE={world}: start advtrain with torchrun only")
    return Processes(rank, world, device), started


def local_device(name: str) -> str:
    """Under torchrun each CUDA process uses its own GPU, cuda:LOCAL_RANK; other device names are kept."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return name


@contextlib.contextmanager
def processes(device: torch.device, role: str, intact: str) -> Iterator[Processes]:
    """`start_processes` for the duration of a command; the group is destroyed afterwards.

    Under torchrun a failed collective means another process died (killed, out of memory, ...): that becomes a
    one-line TrainingStopped with exit code EXIT_PEER_FAILED, "`role` process R of W stopped: ...; `intact`"
    (what is kept and how to continue). gloo reports a dead peer as a plain RuntimeError, and nccl's
    DistBackendError is one.
    """
    procs, started = start_processes(device)
    try:
        yield procs
    except RuntimeError as e:
        if not procs.active:
            raise
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainingStopped(f"{role} process {procs.rank} of {procs.world} stopped: another process of the run "
                              f"failed ({cause}); {intact}", EXIT_PEER_FAILED) from None
    finally:
        if started:
            dist.destroy_process_group()
