"""The run folder's checkpoints: resumable states, weights files, and stopping on a signal.

A resumable state (model, optimizer, schedule, method state, every stateful component, loop counters, RNG states)
is written at every epoch end and optionally every N steps; resuming continues from the newest intact one
bit-identically. SIGINT/SIGTERM save a state at the next step boundary and stop. Only rank 0 reads and writes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from advtrain.checkpoint import load_state_into, save_weights
from advtrain.distributed import Processes
from advtrain.errors import TrainingStopped, UserError
from advtrain.fileio import atomic_write_text
from advtrain.runfiles import record_folder
from advtrain.train.callbacks import WeightAveraging, disk_errors
from advtrain.train.loop import Loop, Progress
from advtrain.train.schedule import match_state_layout
from advtrain.train.state import (
    Position,
    capture_rng,
    list_states,
    load_newest_state,
    remove_incomplete_writes,
    restore_rng,
    save_state,
)


class StopSignals:
    """SIGINT/SIGTERM set `signum`; the loop saves a state at the next step boundary and stops.

    A second signal interrupts at once (KeyboardInterrupt). Handlers are only installed in the main thread,
    the only one Python delivers signals to.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def read_resumable_state(run_dir: Path, digest: str, procs: Processes, log: Callable[[str], None],
                         mismatch: str) -> dict[str, Any] | None:
    """The newest intact state of `run_dir` (None: stopped before its first one); damaged ones are reported and
    skipped. A state trained with settings of another `digest` is refused with the one-line `mismatch`.
    Data-parallel, rank 0 reads it and sends it to the others (nodes need not share the run folder)."""
    return procs.from_main(lambda: _newest_state(run_dir, digest, log, mismatch))


def _newest_state(run_dir: Path, digest: str, log: Callable[[str], None], mismatch: str) -> dict[str, Any] | None:
    checkpoints = run_dir / "checkpoints"
    with disk_errors("fix the folder's permissions and resume again"):
        record_folder(checkpoints)  # missing when the run was killed right after its settings were written
        remove_incomplete_writes(checkpoints, log)
    if not list_states(checkpoints):
        log(f"{run_dir} was stopped before its first checkpoint: training it from the start")
        return None
    state, meta = load_newest_state(checkpoints, log)
    if meta.get("config_hash") != digest:
        raise UserError(mismatch)
    return state


def keep_metrics_rows(path: Path, rows: int) -> None:
    """Cut a .jsonl file to the rows a resumed state knows (a killed run may have written more)."""
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    if len(lines) != rows or (lines and not lines[-1].endswith("\n")):
        atomic_write_text(path, "".join(lines[:rows]))


class Checkpointer:
    """Restores a resumed run into the loop, writes its states and weights files (last, best, and each weight
    average), and stops on SIGINT/SIGTERM once a state is saved.

    `state`: the state to resume from (None: train from the start). `start_run()`: makes the run folder of a run
    that does not resume (`resuming` false). `sidecar`: the metadata every file carries (`config_hash` included).
    """

    def __init__(self, run_dir: Path, *, state: dict[str, Any] | None, resuming: bool, start_run: Callable[[], None],
                 sidecar: dict[str, Any], resume_hint: str, every: int | None = None,
                 averages: WeightAveraging | None = None, log: Callable[[str], None] = lambda _: None) -> None:
        self.run_dir, self.folder = run_dir, run_dir / "checkpoints"
        self.state, self.resuming, self.start_run = state, resuming, start_run
        self.sidecar, self.resume_hint, self.every, self.averages, self.log = sidecar, resume_hint, every, averages, log
        self.signals = StopSignals()

    def restore(self, loop: Loop) -> None:
        """Everything is built as for a fresh run, then overwritten from the state, RNG states last; a resumed
        run's metric files are cut to the rows its state knows, a fresh run's folder is made."""
        if self.state is not None:
            self._load(loop, self.state)
        if not loop.training.procs.main:  # only rank 0 writes
            return
        if self.resuming:
            with disk_errors(f"fix the folder, then {self.resume_hint}"):
                keep_metrics_rows(self.run_dir / "metrics.jsonl", loop.progress.rows)
                keep_metrics_rows(self.run_dir / "monitor.jsonl", loop.progress.monitor_rows)
        else:
            self.start_run()

    def _load(self, loop: Loop, state: dict[str, Any]) -> None:
        t, where = loop.training, f"checkpoint in {self.folder}"
        load_state_into(t.model, state["model"], where)
        for name, module in t.extras.items():
            load_state_into(module, state["extras"][name], f"{where} ({name})")
        t.optimizer.load_state_dict(state["optimizer"])
        match_state_layout(t.optimizer)
        t.schedule.load_state_dict(state["schedule"])
        t.method.load_state_dict(state["method"])
        for callback in loop.callbacks:
            if callback.state_key is not None:
                if callback.state_key not in state:
                    raise UserError(f"{where} has no {callback.state_key} state: resume with the settings the run "
                                    "started with")
                callback.load_state_dict(state[callback.state_key])
        progress = Progress(**state["progress"])
        progress.sums = {k: v.to(t.device) for k, v in progress.sums.items()}
        if progress.batch > loop.steps_per_epoch:
            raise UserError(f"{where} is at batch {progress.batch} of an epoch of {loop.steps_per_epoch}: restore "
                            "the run's settings (batch size, data)")
        loop.progress = progress
        restore_rng(state["rng"])
        if progress.epoch == t.epochs:
            self.log(f"{self.run_dir} had finished training: nothing left to train")
        else:
            self.log(f"resuming {self.run_dir} at epoch {progress.epoch + 1}, batch {progress.batch + 1} of "
                     f"{loop.steps_per_epoch}")

    def watching_signals(self) -> contextlib.AbstractContextManager[StopSignals]:
        return self.signals.installed()

    def after_step(self, loop: Loop, epoch: int, step: int) -> None:
        """Save a state every `every` steps, or at a signal and then stop (not at an epoch's last step: the epoch
        end saves anyway)."""
        # Processes stop at the same step: a signal seen by any of them stops them all.
        signalled = loop.training.procs.any(self.signals.signum is not None)
        if not (signalled or (self.every is not None and (step + 1) % self.every == 0)):
            return
        loop.check_losses(epoch)  # nothing non-finite is saved
        if loop.progress.batch < loop.steps_per_epoch:
            loop.bank_time()
            self.save_state(loop)
            if signalled:
                raise self.stopped_by(loop, self.signals.signum or signal.SIGTERM)

    def end_epoch(self, loop: Loop, row: dict[str, Any]) -> None:
        """Weights files hold the plain exported model (AR-AT: the adv BN branch, no predictors); then the state."""
        t = loop.training
        if t.procs.main:
            meta = self.sidecar | {"epoch": row["epoch"], "metric": t.select_metric, "value": row.get(t.select_metric)}
            with disk_errors(self.save_advice()):
                exported = t.method.export_model(t.model).state_dict()
                save_weights(self.folder / "last.safetensors", exported, meta)
                for name, average in (self.averages.ready if self.averages is not None else {}).items():
                    save_weights(self.folder / f"{name}.safetensors", t.method.export_model(average).state_dict(),
                                 self.sidecar | {"epoch": row["epoch"], "averaging": name})
                if loop.new_best:
                    save_weights(self.folder / "best.safetensors", exported, meta)
        self.save_state(loop)

    def stop_if_signalled(self, loop: Loop) -> None:
        if self.signals.signum is not None:
            raise self.stopped_by(loop, self.signals.signum)

    def save_state(self, loop: Loop) -> None:
        """Write a resumable state at the loop's progress (rank 0); a non-finite model is never saved."""
        loop.check_weights()
        loop.reduce_sums()
        t = loop.training
        if not t.procs.main:
            return
        tree = {
            "model": t.model.state_dict(), "extras": {n: m.state_dict() for n, m in t.extras.items()},
            "optimizer": t.optimizer.state_dict(), "schedule": t.schedule.state_dict(),
            "method": t.method.state_dict(),
            **{c.state_key: c.state_dict() for c in loop.callbacks if c.state_key is not None},
            "progress": loop.progress.to_dict(), "rng": capture_rng(),
        }
        with disk_errors(self.save_advice()):
            save_state(self.folder, Position(loop.progress.epoch, loop.progress.batch), tree, self.sidecar)

    def newest_state(self) -> str:
        states = list_states(self.folder)
        return str(states[0][1]) if states else "none was written yet"

    def kept(self) -> str:
        return f"the last good checkpoint is kept ({self.newest_state()})"

    def save_advice(self) -> str:
        """What a failed write leaves and what to do, as true at the moment before the write."""
        states = list_states(self.folder)
        kept = (f"the previous checkpoint is intact ({states[0][1].name})" if states else
                "no checkpoint was saved yet, so resuming starts the run from the beginning")
        return f"{kept}: free space or fix the folder, then {self.resume_hint}"

    def stopped_by(self, loop: Loop, signum: int) -> TrainingStopped:
        p, n = loop.progress, loop.steps_per_epoch
        where = f"epoch {p.epoch + 1}, batch {p.batch} of {n}" if p.batch else f"the end of epoch {p.epoch}"
        return TrainingStopped(
            f"stopped by {signal.Signals(signum).name} after step {p.epoch * n + p.batch} of "
            f"{loop.training.epochs * n} ({where}); saved {self.newest_state()}; {self.resume_hint}",
            128 + signum,
        )
