"""Data-parallel training and sharded evaluation across processes started by `torchrun` (gloo on CPU, nccl on
CUDA). Training (advtrain.train.loop, advtrain.train.step):

Every process holds the whole model and trains on its share of each global batch. The training step, not the
model, is wrapped in torch's DistributedDataParallel (`train.step.data_parallel`): one forward of the wrapper is
the method's whole loss, so DDP sees one forward per backward, and its bucketed all-reduce overlaps the single
backward. The attacks and every extra forward inside the loss run on the plain module: an attack differentiates
w.r.t. the input only and fires no parameter hook, and the reducer ignores gradients taken during the forward
(AWP's and ISEAT's ascent direction, averaged over processes by `Processes.average_gradients`). Each process's loss
is weighted by its share of the global batch, so uneven shards still give the global-batch mean. DDP broadcasts
rank 0's parameters when it is built; BatchNorm statistics are per process (or synchronised with
`train.sync_bn` on CUDA), and rank 0's buffers are broadcast at the start and after each step, so every process
validates and saves the same model.
Evaluation (advtrain.eval.robustness.evaluate_attacks, also the per-epoch validation) gives each process whole
chunks and merges their per-example results with one `sum` per attack.
Files: rank 0 alone reads the run folder (its settings and the state a resumed run continues from) and sends
what it read to the others (`Processes.from_main`), so the nodes of a run need no shared file system.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from advtrain.errors import TrainingStopped, UserError

T = TypeVar("T")
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

    def loss_weight(self, local: int, total: int) -> float:
        """The weight of this process's mean loss over its `local` of the `total` examples of a global batch: DDP
        averages the processes' gradients with equal weights, so local·world/total makes that average the
        global-batch mean (as `average_gradients` does) also when the shares differ in size."""
        return local * self.world / total

    def from_main(self, read: Callable[[], T]) -> T:
        """`read()` in rank 0, sent to every process (pickled, through `device`): the others never read the files it
        reads, so the nodes of a run need no shared file system. A UserError of `read` is raised in every process,
        so they all stop with the same one line. One process: `read()`."""
        if not self.active:
            return read()
        box: list[Any] = [None]
        if self.main:
            try:
                box[0] = (True, read())
            except UserError as e:
                box[0] = (False, e)
        dist.broadcast_object_list(box, src=0, device=self.device)
        ok, value = box[0]
        if not ok:
            raise value
        return value

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
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR, ...), with
    `device` for the collectives; one process without torchrun. Returns it and whether this call created the
    group (then the caller destroys it). The group has gloo for CPU tensors and, where CUDA is, nccl for CUDA
    tensors (each collective picks by its tensors' device), so it can be started before the run's settings say
    which device trains (a resumed run's settings are sent from rank 0 through it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(), False
    rank = int(os.environ["RANK"])
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo",
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
        if started:
            # Every process past its last collective before any tears the group down: a gloo peer destroyed while
            # another is still inside a collective can abort that process (SIGABRT) instead of raising.
            dist.barrier()
    except RuntimeError as e:
        if not procs.active:
            raise
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainingStopped(f"{role} process {procs.rank} of {procs.world} stopped: another process of the run "
                              f"failed ({cause}); {intact}", EXIT_PEER_FAILED) from None
    finally:
        if started:
            dist.destroy_process_group()
