"""Components of training: objects whose hooks the loop (`loop.Loop`) calls at named points.

Hooks, in the order the loop calls them (every one optional; a user's callback subclasses `Callback`):

- `on_fit_start(loop)`: before the first epoch (after a resumed state is restored).
- `on_epoch_start(loop, epoch)`: after the method's own epoch hook (0-based `epoch`).
- `on_step_end(loop, epoch, step)`: after each optimizer step (0-based global `step`); setting
  `loop.progress.stopped` ends the epoch here and training after it.
- `on_epoch_measure(loop, epoch) -> dict`: after the epoch's steps and its validation; what it returns is added to
  the epoch's metric row.
- `on_epoch_end(loop, row)`: the row is final and the best epoch selected (`loop.new_best`).
- `on_fit_end(loop)`: after the last epoch. `close()` runs however training ends.

A component with `state_key` has its `state_dict()` saved with every checkpoint and restored on resume.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from advtrain.attacks.threat import training_step_size
from advtrain.errors import UserError
from advtrain.eval.vulnerability import adversarial_vulnerability
from advtrain.fileio import atomic_write_bytes
from advtrain.runfiles import record_folder, record_write
from advtrain.runtime import derive_seed, make_generator
from advtrain.train.averaging import WeightAverages
from advtrain.train.monitor import CollapseMonitor

if TYPE_CHECKING:
    from torch import nn

    from advtrain.train.loop import Loop, Readout


class Callback:
    """A training component; see the module docstring for when each hook runs."""

    state_key: str | None = None  # saved with every checkpoint under this key (None: stateless)

    def on_fit_start(self, loop: Loop) -> None:
        pass

    def on_epoch_start(self, loop: Loop, epoch: int) -> None:
        pass

    def on_step_end(self, loop: Loop, epoch: int, step: int) -> None:
        pass

    def on_epoch_measure(self, loop: Loop, epoch: int) -> dict[str, Any]:
        return {}

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        pass

    def on_fit_end(self, loop: Loop) -> None:
        pass

    def close(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@contextlib.contextmanager
def disk_errors(advice: str) -> Iterator[None]:
    """A full disk or a read-only folder becomes a one-line UserError that says what to do next."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write {e.filename or 'the run directory'}: {e.strerror or e}; {advice}") from None


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    record_write(path)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


class CollapseWatch(Callback):
    """The catastrophic-overfitting monitor: a reading every `every_steps` steps and at each epoch end, appended to
    `folder`/monitor.jsonl (rank 0, when there is a folder); `stop_on_collapse` ends training at a flagged one."""

    state_key = "monitor"

    def __init__(self, monitor: CollapseMonitor, every_steps: int | None, stop_on_collapse: bool,
                 folder: Path | None = None, advice: str = "") -> None:
        self.monitor, self.stop_on_collapse, self.folder, self.advice = monitor, stop_on_collapse, folder, advice
        self.every = every_steps if monitor.active else None
        self.stopped = False  # this component stopped training in the current epoch

    def read(self, loop: Loop, epoch: int, step: int) -> dict[str, Any]:
        reading = self.monitor.read(loop.training.model, loop.training.amp)
        if loop.training.procs.main and self.folder is not None:
            with disk_errors(self.advice):
                append_jsonl(self.folder / "monitor.jsonl", {"epoch": epoch + 1, "step": step, **reading})
        loop.progress.monitor_rows += 1
        if reading["co_collapse"] and self.stop_on_collapse:
            loop.progress.stopped = self.stopped = True
        return reading

    def on_step_end(self, loop: Loop, epoch: int, step: int) -> None:
        # The epoch end reads anyway.
        if self.every is not None and (step + 1) % self.every == 0 and loop.progress.batch < loop.steps_per_epoch:
            self.read(loop, epoch, step + 1)

    def on_epoch_measure(self, loop: Loop, epoch: int) -> dict[str, Any]:
        if not self.monitor.active:
            return {}
        return self.read(loop, epoch, epoch * loop.steps_per_epoch + loop.progress.batch)

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        if self.stopped:
            loop.notes.append(
                f"catastrophic overfitting flagged in epoch {row['epoch']} (CO monitor: PGD "
                f"{percent(row['co_pgd_acc'])}, FGSM {percent(row['co_fgsm_acc'])}): training stops; the run keeps "
                f"the best checkpoint from before it, epoch {loop.progress.best_epoch}")

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state)


class WeightAveraging(Callback):
    """EMA/SWA copies of the model: updated after each step and epoch, their BatchNorm statistics recomputed and
    validated at each epoch end (val_ema_*, val_swa_*); `ready` holds those a checkpoint writes."""

    state_key = "averages"

    def __init__(self, averages: WeightAverages) -> None:
        self.averages = averages
        self.ready: dict[str, nn.Module] = {}

    def on_step_end(self, loop: Loop, epoch: int, step: int) -> None:
        # After the method's after_step: the average never sees perturbed weights.
        self.averages.after_step(loop.training.model, epoch, step)

    def on_epoch_measure(self, loop: Loop, epoch: int) -> dict[str, Any]:
        t = loop.training
        self.averages.after_epoch(t.model, epoch)
        self.ready = self.averages.ready()
        if not self.ready:
            return {}
        generator = make_generator(t.device, t.seed, "bn", epoch)
        self.averages.recalibrate(lambda: t.source.shuffled_batches(generator),
                                  lambda average, batches: t.method.recalibrate_bn(average, batches, generator))
        metrics: dict[str, Any] = {}
        for name, average in self.ready.items():
            clean, adv = t.validator(average)
            metrics |= {f"val_{name}_clean_acc": clean, f"val_{name}_{t.validator.attack}_acc": adv}
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return self.averages.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averages.load_state_dict(state)


class VulnerabilityRecord(Callback):
    """AV of the first `size` training images (unaugmented, index-matched across epochs) after the first epoch and
    every `every_epochs`: its mean and std in the row, the per-image values in `folder`/vulnerability/."""

    def __init__(self, every_epochs: int, size: int, steps: int, batch_size: int, folder: Path | None = None,
                 advice: Callable[[], str] = str) -> None:
        self.every, self.size, self.steps, self.batch_size = every_epochs, size, steps, batch_size
        self.folder, self.advice = folder, advice

    def on_epoch_measure(self, loop: Loop, epoch: int) -> dict[str, Any]:
        if not (epoch == 0 or (epoch + 1) % self.every == 0):
            return {}
        t = loop.training
        x, y = t.source.first(self.size)
        eps = t.method.threat.eps
        av = adversarial_vulnerability(t.model, x, y, eps=eps, norm=t.method.threat.norm, steps=self.steps,
                                       step_size=training_step_size(eps),
                                       seed=derive_seed(t.seed, "vulnerability", epoch), batch_size=self.batch_size)
        if t.procs.main and self.folder is not None:
            buffer = io.BytesIO()
            np.save(buffer, av.numpy().astype(np.float32))
            with disk_errors(self.advice()):
                atomic_write_bytes(self.folder / "vulnerability" / f"epoch-{epoch + 1:04d}.npy", buffer.getvalue())
        return {"vuln_mean": float(av.mean()), "vuln_std": float(av.std())}


class MetricsFile(Callback):
    """Each epoch's row appended to `path` (metrics.jsonl) by rank 0."""

    def __init__(self, path: Path, advice: Callable[[], str] = str) -> None:
        self.path, self.advice = path, advice

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        if loop.training.procs.main:
            with disk_errors(self.advice()):
                append_jsonl(self.path, row)


class TensorBoardScalars(Callback):
    """Every number of each row as a TensorBoard scalar (tag = key, step = the row's epoch) in `folder`, flushed
    with the row. A resumed run adds an event file to the same folder; `purge_step` hides the scalars from the
    resumed epoch on that a killed earlier process wrote but its checkpoint does not know."""

    def __init__(self, folder: Path, advice: Callable[[], str] = str) -> None:
        self.folder, self.advice = folder, advice
        self.writer: Any = None

    def on_fit_start(self, loop: Loop) -> None:
        if not loop.training.procs.main:
            return
        from torch.utils.tensorboard import SummaryWriter  # only here: the tensorboard package is optional

        record_folder(self.folder)
        before = set(self.folder.iterdir())
        self.writer = SummaryWriter(str(self.folder), purge_step=loop.progress.epoch + 1)
        for path in set(self.folder.iterdir()) - before:  # its event file, named by time, host and process
            record_write(path)

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        with disk_errors(self.advice()):
            for key, value in row.items():
                if key != "epoch" and isinstance(value, int | float):  # None (not measured) is no scalar
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressBar(Callback):
    """A tqdm bar per epoch on rank 0 (on a terminal only) with the running loss and throughput, as of the loop's
    last device read (`Loop.readout`, every few steps): the bar itself never waits on the device."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.shown: Readout | None = None

    def on_epoch_start(self, loop: Loop, epoch: int) -> None:
        self.bar = tqdm(total=loop.steps_per_epoch, initial=loop.progress.batch,
                        desc=f"epoch {epoch + 1}/{loop.training.epochs}", leave=False,
                        disable=None if loop.training.procs.main else True, dynamic_ncols=True)  # None: TTY only

    def on_step_end(self, loop: Loop, epoch: int, step: int) -> None:
        assert self.bar is not None  # opened by on_epoch_start
        self.bar.update(1)
        readout = loop.readout
        if readout is not self.shown and readout.seen > 0 and loop.training.procs.main:
            self.shown = readout
            elapsed = loop.progress.seconds + loop.elapsed()
            self.bar.set_postfix(loss=f"{readout.sums['loss'] / readout.seen:.3f}",
                                 img_s=f"{readout.seen / max(elapsed, 1e-9):.0f}")

    def on_epoch_measure(self, loop: Loop, epoch: int) -> dict[str, Any]:
        self.close()  # the epoch's steps are done
        return {}

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def percent(x: float | None) -> str:
    """An accuracy for the log, or a dash when it was not measured."""
    return "  –  " if x is None else f"{100 * x:5.1f}%"
