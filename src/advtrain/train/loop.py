"""The training loop, top to bottom. It knows the `Method` contract and nothing about any method, and calls its
components (`callbacks.Callback`: the CO monitor, weight averages, vulnerability records, metric logs, a progress
bar, a user's own) and the run folder's `Checkpointer` at named points.

Every random draw of the loop is a pure function of (seed, epoch, batch), so a run resumed from a saved state
continues bit-identically. A non-finite loss or weight stops training before anything non-finite is saved.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from advtrain.distributed import Processes
from advtrain.errors import TrainingStopped, UserError
from advtrain.methods import Batch, EpochContext, Method, StepContext
from advtrain.runtime import make_generator, peak_memory_mb, reset_peak_memory
from advtrain.train.callbacks import Callback, percent
from advtrain.train.schedule import LRSchedule
from advtrain.train.sources import TrainSource
from advtrain.train.step import autocast_context, data_parallel, train_step
from advtrain.train.validation import Validator

if TYPE_CHECKING:
    from advtrain.train.checkpointing import Checkpointer

# Every this many steps (and at the epoch's last step and before every save) the loop reads the device once:
# the pending losses, checked for NaN/Inf (the message still names the first bad step exactly), and the running
# metric sums the progress bar shows, in one transfer (`Loop.read_device`); no step waits on the device otherwise.
FINITE_CHECK_EVERY = 10
EXIT_DIVERGED = 3


@dataclass
class Progress:
    """The loop's own counters, saved with every state."""

    epoch: int = 0  # 0-based epoch in progress (== epochs when training is complete)
    batch: int = 0  # next batch of that epoch
    sums: dict[str, Tensor] = field(default_factory=dict)  # per-epoch metric sums so far (on the device)
    seen: int = 0  # training examples seen this epoch
    seconds: float = 0.0  # training time spent in this epoch before the current process started it
    best_value: float = -math.inf
    best_epoch: int = 0
    rows: int = 0  # rows of metrics.jsonl that belong to this state
    monitor_rows: int = 0  # rows of monitor.jsonl that belong to this state
    stopped: bool = False  # a component (the CO monitor) ended training early

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Readout:
    """The running totals of the epoch as of the loop's last device read: after `batches` batches, `seen` images
    and the metric sums (`sums["loss"] / seen` is the running mean loss); all on the host. Data-parallel, this
    process's share of the sums not yet reduced is counted once per process."""

    batches: int = 0
    seen: int = 0
    sums: dict[str, float] = field(default_factory=dict)


@dataclass
class Training:
    """What the loop trains and how: built from a RunConfig by `trainer.train`, from objects by `fit`."""

    model: nn.Module
    method: Method
    extras: dict[str, nn.Module]  # the method's extra trainable modules (AR-AT predictors)
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    source: TrainSource
    validator: Validator
    device: torch.device
    epochs: int
    seed: int
    base_lr: float
    select_metric: str
    amp: torch.dtype | None = None
    channels_last: bool = False
    lr_milestones: tuple[float, ...] = ()
    procs: Processes = field(default_factory=Processes)
    lr_option: str = "optim.lr"  # how the user sets the learning rate, for the advice of a diverged run


class Loop:
    """Trains `training` for its epochs: the steps of each epoch, then its validation, measurements, metric row,
    checkpoint and log line. `callbacks` are called in their order at every hook (callbacks.py); the optional
    `checkpointer` restores a resumed run first and saves after the steps and epochs it is due at."""

    def __init__(self, training: Training, callbacks: Sequence[Callback] = (), checkpointer: Checkpointer | None = None,
                 log: Callable[[str], None] = lambda _: None) -> None:
        self.training, self.callbacks, self.checkpointer, self.log = training, list(callbacks), checkpointer, log
        self.progress = Progress()
        self.steps_per_epoch = len(training.source)
        smallest, world = training.source.smallest_batch, training.procs.world
        if world > smallest:
            raise UserError(f"the last batch of each epoch has {smallest} image{'s' * (smallest != 1)}, fewer than "
                            f"the {world} training processes: change train.batch_size or data.val_size so that it "
                            "has at least one per process")
        # Data-parallel: the step wrapped in DDP (a collective: every process builds it here).
        self.parallel = data_parallel(training.method, training.model, training.extras) \
            if training.procs.active else None
        self.autocast = autocast_context(training.device, training.amp)
        self.fresh: dict[str, Any] = {}  # this process's metric sums (and "seen") not yet added into progress.sums
        self.pending: list[tuple[int, Tensor]] = []  # losses not yet checked for NaN/Inf
        self.readout = Readout()  # what the last device read found, for the callbacks
        self.clock = 0.0  # when the current stretch of training time started
        self.epoch_lr = 0.0
        self.new_best = False  # the epoch just recorded is the best so far
        self.notes: list[str] = []  # what components say about the epoch, logged after its line
        self.history: list[dict[str, Any]] = []  # the metric rows of the epochs this loop trained

    def run(self) -> None:
        """Train from the restored (or initial) progress to the last epoch, or until a component stops it."""
        with contextlib.ExitStack() as stack:
            if self.checkpointer is not None:
                self.checkpointer.restore(self)
                stack.enter_context(self.checkpointer.watching_signals())
            stack.callback(lambda: [c.close() for c in self.callbacks])
            self._call("on_fit_start")
            for epoch in range(self.progress.epoch, self.training.epochs):
                if self.progress.stopped:
                    break
                self.train_epoch(epoch)
                self.end_epoch(epoch)
            self._call("on_fit_end")

    def train_epoch(self, epoch: int) -> None:
        t, p = self.training, self.progress
        reset_peak_memory(t.device)
        self.epoch_lr = t.schedule.lr_at(epoch)
        if p.batch == 0:
            p.sums, p.seen, p.seconds = {}, 0, 0.0
            gen = make_generator(t.device, t.seed, "epoch", epoch)
            t.method.on_epoch_start(t.model, EpochContext(epoch, t.epochs, self.epoch_lr, t.base_lr,
                                                          lambda n, g=gen: t.source.sample(n, g), gen,
                                                          t.lr_milestones))
        self._call("on_epoch_start", epoch)
        self.clock = time.perf_counter()
        t.model.train()
        for i, (x, y, n_global) in enumerate(t.source.epoch(epoch, p.batch), start=p.batch):
            step = epoch * self.steps_per_epoch + i
            self.train_step(epoch, i, x, y, n_global)
            if len(self.pending) >= FINITE_CHECK_EVERY or i == self.steps_per_epoch - 1:
                self.check_losses(epoch)
            self._call("on_step_end", epoch, step)
            if p.stopped:
                break
            if self.checkpointer is not None:
                self.checkpointer.after_step(self, epoch, step)

    def train_step(self, epoch: int, i: int, x: Tensor, y: Tensor, n_global: int) -> None:
        """Optimizer step on (x, y), this process's part of the `n_global` images of batch `i` of `epoch`; its loss
        and metrics stay on the device."""
        t = self.training
        lr = t.schedule.lr_at(epoch + i / self.steps_per_epoch)
        for group in t.optimizer.param_groups:
            group["lr"] = lr
        if t.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = StepContext(epoch, epoch * self.steps_per_epoch + i, make_generator(t.device, t.seed, "step", epoch, i),
                          functools.partial(t.procs.average_gradients, local=len(y), total=n_global))
        parallel = None if self.parallel is None else (self.parallel, t.procs.loss_weight(len(y), n_global))
        out = train_step(t.method, t.model, t.optimizer, Batch(x, y), ctx, self.autocast, parallel)
        t.procs.broadcast_buffers([t.model, *t.extras.values()])
        self.pending.append((i, out.loss.detach()))
        for key, value in {"loss": out.loss.detach(), **out.metrics}.items():
            self.fresh[key] = self.fresh.get(key, 0) + value.float() * len(y)
        self.fresh["seen"] = self.fresh.get("seen", 0) + len(y)
        self.progress.batch = i + 1

    def end_epoch(self, epoch: int) -> None:
        """Validate, let the components measure, select the best epoch, record the row, save, log."""
        t, p = self.training, self.progress
        self.check_losses(epoch)
        self.reduce_sums()
        train_seconds = p.seconds + time.perf_counter() - self.clock
        totals = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in p.sums.values()]).tolist() \
            if p.sums else []  # one transfer
        means = {key: total / p.seen for key, total in zip(p.sums, totals, strict=True)}
        val_clean, val_adv = t.validator(t.model)
        measured: dict[str, Any] = {}
        for callback in self.callbacks:
            measured |= callback.on_epoch_measure(self, epoch)
        t.schedule.end_epoch(means["loss"])
        row = {
            "epoch": epoch + 1, "lr": self.epoch_lr,
            "train_loss": means.pop("loss"), "train_acc": means.pop("acc", None),
            "val_clean_acc": val_clean, f"val_{t.validator.attack}_acc": val_adv,
            "seconds": p.seconds + time.perf_counter() - self.clock,
            "images_per_s": p.seen / max(train_seconds, 1e-9),
            # This process's (rank 0's, data-parallel) over the epoch so far; on CPU the process's peak.
            "peak_memory_mb": peak_memory_mb(t.device),
        } | measured | {f"train_{key}": value for key, value in means.items()}
        self.check_weights()
        self.select_best(row)
        p.epoch, p.batch, p.rows = epoch + 1, 0, p.rows + 1
        self.history.append(row)
        self._call("on_epoch_end", row)
        if self.checkpointer is not None:
            self.checkpointer.end_epoch(self, row)
        self.log(f"epoch {epoch + 1:>3}/{t.epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
                 f"acc {percent(row['train_acc'])}  val clean {percent(val_clean)}  val {t.validator.label} "
                 f"{percent(val_adv)}  {row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s")
        for note in self.notes:
            self.log(note)
        self.notes.clear()
        if self.checkpointer is not None:
            self.checkpointer.stop_if_signalled(self)

    def select_best(self, row: dict[str, Any]) -> None:
        """Without a validation split there is nothing to select on: best is then the last epoch. An epoch a
        component stopped is never best unless it is the only one (keep the best state from before a collapse)."""
        p = self.progress
        value = row.get(self.training.select_metric)
        candidate = not p.stopped or p.best_epoch == 0
        self.new_best = candidate and (value is None or value > p.best_value)
        if self.new_best:
            p.best_value = value if value is not None else -math.inf
            p.best_epoch = row["epoch"]

    def bank_time(self) -> None:
        """Add the training time since the clock started to the epoch's total, and restart the clock."""
        now = time.perf_counter()
        self.progress.seconds += now - self.clock
        self.clock = now

    def elapsed(self) -> float:
        """Seconds since the clock started (the epoch's start, or its last save)."""
        return time.perf_counter() - self.clock

    def reduce_sums(self) -> None:
        """Add every process's fresh sums into progress.sums and progress.seen: the same global totals in every
        process (the processes run the same steps, so they hold the same keys)."""
        if not self.fresh:
            return
        keys = sorted(self.fresh)
        t, p = self.training, self.progress
        totals = t.procs.sum(torch.stack([torch.as_tensor(self.fresh[k], device=t.device, dtype=torch.float64)
                                          for k in keys]))
        for key, total in zip(keys, totals, strict=True):
            if key == "seen":
                p.seen += int(total)
            else:
                p.sums[key] = p.sums.get(key, 0) + total
        self.fresh.clear()

    def kept(self) -> str:
        return self.checkpointer.kept() if self.checkpointer is not None else "no checkpoint is kept (no run folder)"

    def check_losses(self, epoch: int) -> None:
        """Read the device (`read_device`) when losses are pending; stop at the first non-finite one."""
        if not self.pending:
            return
        bad = self.read_device()
        if bad is not None:
            batch, value = bad
            n = self.steps_per_epoch
            raise TrainingStopped(
                f"the training loss became {value} in epoch {epoch + 1}, batch {batch + 1} of {n} "
                f"(step {epoch * n + batch + 1}); nothing after it was saved, {self.kept()}; lower "
                f"{self.training.lr_option} or check the data", EXIT_DIVERGED)

    def read_device(self) -> tuple[int, float] | None:
        """The interval's one device→host transfer: the pending losses (summed over processes, so that all of them
        find the same bad one) and this process's running metric sums, into `readout`; returns (batch index,
        value) of the first non-finite loss, or None."""
        t, p = self.training, self.progress
        losses = t.procs.sum(torch.stack([loss.float() for _, loss in self.pending]))
        keys = sorted((set(p.sums) | set(self.fresh)) - {"seen"})
        # This process's share of the sums not yet reduced stands for every process's (as the progress bar shows).
        sums = [torch.as_tensor(p.sums.get(k, 0) + t.procs.world * self.fresh.get(k, 0), device=t.device).double()
                for k in keys]
        host = torch.cat([losses.double(), *(s.reshape(1) for s in sums)]).cpu()
        values = host[:len(losses)]
        batches = [i for i, _ in self.pending]
        self.pending.clear()
        seen = p.seen + t.procs.world * self.fresh.get("seen", 0)
        self.readout = Readout(self.progress.batch, seen, dict(zip(keys, host[len(losses):].tolist(), strict=True)))
        bad = (~torch.isfinite(values)).nonzero()
        return (batches[int(bad[0, 0])], float(values[int(bad[0, 0])])) if len(bad) else None

    def check_weights(self) -> None:
        t = self.training
        if not all_finite([t.model, *t.extras.values()]):
            raise TrainingStopped(
                f"the weights became NaN/Inf in epoch {self.progress.epoch + 1} by batch {self.progress.batch} of "
                f"{self.steps_per_epoch}; nothing was saved, {self.kept()}; lower {t.lr_option}", EXIT_DIVERGED)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)


def all_finite(modules: list[nn.Module]) -> bool:
    return bool(torch.stack([p.detach().isfinite().all() for m in modules for p in m.parameters()]).all())

