"""The training loop, top to bottom. It knows the `Method` contract and nothing about any method.

Reliability (issue 3): the loop writes a resumable state (model, optimizer, schedule, method state,
loop counters, RNG states) at every epoch end and optionally every N steps; `train(..., resume=True)`
continues from the newest intact one bit-identically, because every random draw of the loop is a pure
function of (seed, epoch, batch). SIGINT/SIGTERM save a state at the next step boundary and stop; a
non-finite loss or weight stops training before anything non-finite is saved.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

import advtrain
from advtrain.attacks.threat import training_step_size
from advtrain.checkpoint import load_state_into, save_weights
from advtrain.config import RunConfig, dump_yaml
from advtrain.data import Augment, Dataset, DeviceBatcher, augment_batch, load_dataset, split_validation, to_float
from advtrain.distributed import Processes, local_device, processes
from advtrain.errors import TrainingStopped, UserError
from advtrain.eval.robustness import AttackSpec, evaluate_attacks
from advtrain.eval.vulnerability import adversarial_vulnerability
from advtrain.fileio import atomic_write_bytes, atomic_write_text
from advtrain.methods import Batch, EpochContext, StepContext, build_method
from advtrain.models.spec import ModelSpec
from advtrain.runfiles import RECORD, Replacement, mark_run, plan_replacement, record_folder, record_write, replace_run
from advtrain.runtime import (
    autocast_dtype,
    derive_seed,
    make_generator,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
    seed_everything,
    use_channels_last,
)
from advtrain.train.averaging import WeightAverages, shuffled_passes
from advtrain.train.monitor import CollapseMonitor
from advtrain.train.schedule import LRSchedule, build_optimizer, match_state_layout
from advtrain.train.state import (
    Position,
    capture_rng,
    list_states,
    load_newest_state,
    remove_incomplete_writes,
    restore_rng,
    save_state,
)
from advtrain.train.step import autocast_context, compile_for_training, train_step

# Losses are checked for NaN/Inf in one device sync every this many steps (and before every save), so
# the check costs no per-step synchronisation; the message still names the first bad step exactly.
FINITE_CHECK_EVERY = 10
EXIT_DIVERGED = 3


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_value: float | None
    select_metric: str
    last: dict[str, Any]
    main: bool = True  # rank 0, the process that wrote the run (always, without torchrun)


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
    stopped: bool = False  # the CO monitor ended training early (monitor.stop_on_collapse)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_run_data(config: RunConfig) -> Dataset:
    return load_dataset(config.data.name, config.data.root, **config.data.options)


def check_run_dir(run_dir: Path, overwrite: bool) -> Replacement | None:
    """Refuse an --out that holds anything, unless --overwrite names a run that can be replaced as a whole;
    writes nothing. Returns what --overwrite will remove (None: a new or empty folder)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a folder: choose a new --out folder")
    # Temporary files of a writer killed before config.yaml existed, or the run's record alone (written just
    # before config.yaml), do not make a folder hold anything.
    if not run_dir.is_dir() or all(p.name.endswith(".tmp") or p.name == RECORD for p in run_dir.iterdir()):
        return None
    if not overwrite:
        raise UserError(
            f"{run_dir} is not empty: continue that run with --resume {run_dir}, replace it with --overwrite, "
            "or choose a new --out folder (nothing was changed)"
        )
    return plan_replacement(run_dir)


def create_run_dir(run_dir: Path, config: RunConfig, replacing: Replacement | None) -> None:
    """The run folder: its record of files first, then config.yaml; from then on the folder can be resumed.
    `replacing` (--overwrite): the old run's files are removed only once the new config.yaml is in place."""
    if replacing is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        mark_run(run_dir, files=[], folders=[])
        atomic_write_text(run_dir / "config.yaml", dump_yaml(config))
    else:
        def write_new() -> None:
            atomic_write_text(run_dir / "config.yaml", dump_yaml(config))
            mark_run(run_dir, files=["config.yaml"], folders=replacing.folders)

        replace_run(replacing, write_new)
    record_folder(run_dir / "checkpoints")


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    record_write(path)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def require_tensorboard() -> None:
    """`train.tensorboard` without the tensorboard package fails here, before the run writes anything."""
    try:
        import torch.utils.tensorboard  # noqa: F401  imported only to see that it loads
    except ImportError:
        raise UserError("train.tensorboard needs the tensorboard package: pip install 'advtrain[tensorboard]' "
                        "(or set train.tensorboard: false)") from None


@contextlib.contextmanager
def tensorboard_scalars(folder: Path, first_epoch: int, on: bool) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A function that writes every number of a metrics row as a scalar (tag = key, step = the row's epoch) to
    `folder` and flushes, so an epoch's scalars are on disk when its row is; a no-op when not `on`. The writer
    is closed however training ends. A resumed run adds an event file to the same folder; `purge_step` hides
    the scalars from `first_epoch` on that a killed earlier process wrote but its checkpoint does not know."""
    if not on:
        yield lambda _: None
        return
    from torch.utils.tensorboard import SummaryWriter  # only here: the tensorboard package is optional

    record_folder(folder)
    before = set(folder.iterdir())
    writer = SummaryWriter(str(folder), purge_step=first_epoch)
    for path in set(folder.iterdir()) - before:  # its event file, named by time, host and process
        record_write(path)

    def write(row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float):  # None (not measured) is no scalar
                writer.add_scalar(key, value, row["epoch"])
        writer.flush()

    try:
        yield write
    finally:
        writer.close()


def keep_metrics_rows(path: Path, rows: int) -> None:
    """Cut metrics.jsonl to the rows a resumed state knows (a killed run may have written more)."""
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    if len(lines) != rows or (lines and not lines[-1].endswith("\n")):
        atomic_write_text(path, "".join(lines[:rows]))


def validate(
    model: nn.Module, x: Tensor, y: Tensor, config: RunConfig, amp: torch.dtype | None, seed: int,
    attack: str = "pgd",
) -> tuple[float | None, float | None]:
    """Clean and adversarial accuracy on the validation split: PGD-k (step ε/4, random start), or for
    `attack="ifgsm"` I-FGSM-3 (step ε/3, from x; SAT-R's model selection, METHODS.md §5)."""
    if len(x) == 0:
        return None, None
    eps, steps = config.threat.eps, config.train.val_steps
    specs = [AttackSpec("clean")]
    if attack == "ifgsm":
        specs.append(AttackSpec("ifgsm", eps, config.threat.norm, 3, 1, eps / 3))
    elif steps > 0:
        specs.append(AttackSpec("pgd", eps, config.threat.norm, steps, 1, training_step_size(eps)))
    results = evaluate_attacks(model, x, y, specs, batch_size=max(config.train.batch_size, 256), seed=seed,
                               autocast_dtype=amp)
    return results[0].accuracy, (results[1].accuracy if len(results) > 1 else None)


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


@contextlib.contextmanager
def torch_settings(threads: int | None, deterministic: bool) -> Iterator[None]:
    """CPU threads and `--deterministic` (no non-deterministic kernels, no cuDNN autotuning) for one run.

    Both are process-wide torch settings, restored afterwards for in-process callers (tests, notebooks).
    """
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible GEMMs
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
        torch.backends.cudnn.benchmark = previous[2]


@contextlib.contextmanager
def disk_errors(advice: str) -> Iterator[None]:
    """A full disk or a read-only folder becomes a one-line UserError that says what to do next."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write {e.filename or 'the run directory'}: {e.strerror or e}; {advice}") from None


def first_nonfinite(losses: list[tuple[int, Tensor]], procs: Processes | None = None) -> tuple[int, float] | None:
    """(batch index, value) of the first non-finite loss among `losses`, with one device sync; data-parallel, the
    losses are summed over processes first, so every process finds the same one and they all stop."""
    if not losses:
        return None
    values = torch.stack([loss.float() for _, loss in losses])
    if procs is not None:
        values = procs.sum(values)
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad) == 0:
        return None
    k = int(bad[0, 0])
    return losses[k][0], float(values[k])


def all_finite(modules: list[nn.Module]) -> bool:
    return bool(torch.stack([p.detach().isfinite().all() for m in modules for p in m.parameters()]).all())


def train(
    config: RunConfig,
    run_dir: Path,
    *,
    data: Dataset | None = None,
    log: Callable[[str], None] = print,
    resume: bool = False,
    overwrite: bool = False,
) -> TrainResult:
    """Train `config` into `run_dir`; `resume` continues the run there, `overwrite` replaces it.

    A fresh run needs an empty or new `run_dir` (or `overwrite`); `data` skips a second load.
    """
    with torch_settings(config.train.threads, config.train.deterministic):
        device = resolve_device(local_device(config.train.device))
        # Every state on disk was written atomically by rank 0, so the newest one is intact if a process dies.
        intact = (f"the newest checkpoint in {Path(run_dir) / 'checkpoints'} is intact: continue with: "
                  f"advtrain train --resume {run_dir}")
        with processes(device, "training", intact) as procs:
            return _train(config, Path(run_dir), data, log if procs.main else _silent, resume, overwrite, device,
                          procs)


def _silent(_: str) -> None:
    """The log of processes other than rank 0: one process speaks for the run."""


def _train(
    config: RunConfig, run_dir: Path, data: Dataset | None, log: Callable[[str], None], resume: bool,
    overwrite: bool, device: torch.device, procs: Processes,
) -> TrainResult:
    checkpoints = run_dir / "checkpoints"
    t = config.train
    resume_hint = f"continue with: advtrain train --resume {run_dir}"
    state: dict[str, Any] | None = None
    replacing: Replacement | None = None
    if t.tensorboard:
        require_tensorboard()
    if resume:
        if procs.main:  # only rank 0 writes; the others read what it leaves
            with disk_errors("fix the folder's permissions and resume again"):
                record_folder(checkpoints)  # missing when the run was killed right after config.yaml
                remove_incomplete_writes(checkpoints, log)
        if list_states(checkpoints):
            state, meta = load_newest_state(checkpoints, log)
            if meta.get("config_hash") != config.digest():
                raise UserError(
                    f"{run_dir}/config.yaml no longer matches the config its checkpoints were trained with: "
                    "restore it, or start a new run"
                )
        else:
            log(f"{run_dir} was stopped before its first checkpoint: training it from the start")
    elif procs.main:
        replacing = check_run_dir(run_dir, overwrite)
    seed_everything(config.seed)
    amp = autocast_dtype(t.precision, device)
    channels_last = use_channels_last(t.channels_last)

    # Data: the validation split is carved from the training set, never from the test set.
    data = load_run_data(config) if data is None else data
    val_size = config.data.val_size
    train_idx, val_idx = split_validation(
        len(data.y_train), int(val_size) if val_size >= 1 else val_size, config.seed, labels=data.y_train
    )
    augment = Augment(crop_padding=config.data.crop_padding, flip=config.data.flip, idbh=config.data.idbh)
    batcher = DeviceBatcher(
        data.x_train[train_idx], data.y_train[train_idx], batch_size=t.batch_size, pixel_max=data.pixel_max,
        device=device, seed=config.seed, augment=augment,
    )
    x_val = to_float(data.x_train[val_idx], data.pixel_max)
    y_val = data.y_train[val_idx]
    if t.val_max is not None:
        x_val, y_val = x_val[: t.val_max], y_val[: t.val_max]
    x_val, y_val = x_val.to(device), y_val.to(device)
    monitor = CollapseMonitor(config.monitor, config.threat, x_val, y_val, derive_seed(config.seed, "monitor"))

    # Model, method and optimizer. Extra method modules (AR-AT predictors) train with the model.
    spec = ModelSpec.for_dataset(config.model.name, data, config.model.normalize, config.model.options)
    method = build_method(config.method, config.threat_model())
    # The method may convert the model (AR-AT: split BatchNorm) before the optimizer sees its parameters.
    model = method.prepare_model(spec.build().to(device), to_float(batcher.x[:2], data.pixel_max))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if t.compile != "eager":
        n_check = min(64, len(batcher.y))
        x_check = to_float(batcher.x[:n_check], data.pixel_max)
        if channels_last:
            x_check = x_check.contiguous(memory_format=torch.channels_last)
        model, reason = compile_for_training(model, method, t.compile, Batch(x_check, batcher.y[:n_check]),
                                             lambda: make_generator(device, config.seed, "compile check"))
        if reason is not None:
            log(f"train.compile={t.compile}: {reason}; training eagerly")
    extras = {name: module.to(device) for name, module in method.extra_modules().items()}
    params = list(model.parameters()) + [p for m in extras.values() for p in m.parameters()]
    optimizer = build_optimizer(params, config.optim)
    averages = WeightAverages(config.averaging, model)
    schedule = LRSchedule(config.schedule, config.optim.lr, t.epochs)
    select_metric = method.selection_metric if t.select_metric == "auto" else t.select_metric
    val_label = "I-FGSM-3" if method.validation_attack == "ifgsm" else f"PGD-{t.val_steps}"
    steps_per_epoch = len(batcher)
    smallest_batch = len(batcher.y) - (steps_per_epoch - 1) * t.batch_size
    if procs.world > smallest_batch:
        raise UserError(f"the last batch of each epoch has {smallest_batch} image{'s' * (smallest_batch != 1)}, "
                        f"fewer than the {procs.world} "
                        "training processes: change train.batch_size or data.val_size so that it has at least one "
                        "per process")

    progress = Progress()
    if state is not None:
        # Everything is built as for a fresh run, then overwritten from the state, RNG states last.
        load_state_into(model, state["model"], f"checkpoint in {checkpoints}")
        for name, module in extras.items():
            load_state_into(module, state["extras"][name], f"checkpoint in {checkpoints} ({name})")
        optimizer.load_state_dict(state["optimizer"])
        match_state_layout(optimizer)
        schedule.load_state_dict(state["schedule"])
        method.load_state_dict(state["method"])
        monitor.load_state_dict(state["monitor"])
        averages.load_state_dict(state["averages"])
        progress = Progress(**state["progress"])
        progress.sums = {k: v.to(device) for k, v in progress.sums.items()}
        if progress.batch > steps_per_epoch:
            raise UserError(f"checkpoint in {checkpoints} is at batch {progress.batch} of an epoch of "
                            f"{steps_per_epoch}: restore the run's config.yaml")
        restore_rng(state["rng"])
        if progress.epoch == t.epochs:
            log(f"{run_dir} had finished training: nothing left to train")
        else:
            log(f"resuming {run_dir} at epoch {progress.epoch + 1}, batch {progress.batch + 1} of {steps_per_epoch}")
    if procs.main and resume:  # only rank 0 writes
        with disk_errors(f"fix the folder, then {resume_hint}"):
            keep_metrics_rows(run_dir / "metrics.jsonl", progress.rows)
            keep_metrics_rows(run_dir / "monitor.jsonl", progress.monitor_rows)
    elif procs.main:
        with disk_errors("the old run is unchanged: free space or fix the folder, then run again" if replacing
                         else "choose an --out folder on a writable disk with free space"):
            create_run_dir(run_dir, config, replacing)
        log(
            f"training {config.method.name} on {data.name} ({len(train_idx)} train / {len(y_val)} val images) "
            f"with {spec.name} on {device} ({'bf16' if amp else 'fp32'}) for {t.epochs} epochs → {run_dir}"
        )
    sidecar = {
        "config_hash": config.digest(), "model": spec.to_dict(), "method": method.metadata(),
        "data": config.data.name, "threat": {"norm": config.threat.norm, "eps": config.threat.eps},
        "advtrain_version": advtrain.__version__, "torch_version": torch.__version__,
    }

    def sample_train(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return train_images(torch.randperm(len(batcher.y), generator=generator, device=device)[:n], generator)

    def train_images(idx: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x = batcher.x[idx]
        if augment.active:
            x = augment_batch(x, augment, generator)
        return to_float(x, data.pixel_max), batcher.y[idx]

    def check_weights() -> None:
        if not all_finite([model, *extras.values()]):
            raise TrainingStopped(
                f"the weights became NaN/Inf in epoch {progress.epoch + 1} by batch {progress.batch} of "
                f"{steps_per_epoch}; nothing was saved, the last good checkpoint is kept ({newest_state()}); "
                "lower optim.lr",
                EXIT_DIVERGED,
            )

    fresh: dict[str, Any] = {}  # this process's metric sums (and "seen") not yet added into progress.sums

    def reduce_sums() -> None:
        """Add every process's fresh sums into progress.sums and progress.seen: the same global totals in every
        process (the processes run the same steps, so they hold the same keys)."""
        if not fresh:
            return
        keys = sorted(fresh)
        totals = procs.sum(torch.stack([torch.as_tensor(fresh[k], device=device, dtype=torch.float64)
                                        for k in keys]))
        for key, total in zip(keys, totals, strict=True):
            if key == "seen":
                progress.seen += int(total)
            else:
                progress.sums[key] = progress.sums.get(key, 0) + total
        fresh.clear()

    def save_train_state() -> None:
        """Write a resumable state at `progress` (rank 0); a non-finite model is never saved."""
        check_weights()
        reduce_sums()
        if not procs.main:
            return
        tree = {
            "model": model.state_dict(), "extras": {n: m.state_dict() for n, m in extras.items()},
            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "method": method.state_dict(),
            "monitor": monitor.state_dict(), "averages": averages.state_dict(), "progress": progress.to_dict(),
            "rng": capture_rng(),
        }
        with disk_errors(save_advice()):
            save_state(checkpoints, Position(progress.epoch, progress.batch), tree, sidecar)

    def newest_state() -> str:
        states = list_states(checkpoints)
        return str(states[0][1]) if states else "none was written yet"

    def save_advice() -> str:
        """What a failed write leaves and what to do, as true at the moment before the write."""
        states = list_states(checkpoints)
        kept = (f"the previous checkpoint is intact ({states[0][1].name})" if states else
                "no checkpoint was saved yet, so resuming starts the run from the beginning")
        return f"{kept}: free space or fix the folder, then {resume_hint}"

    def check_losses(pending: list[tuple[int, Tensor]], epoch: int) -> None:
        bad = first_nonfinite(pending, procs)
        pending.clear()
        if bad is not None:
            batch, value = bad
            raise TrainingStopped(
                f"the training loss became {value} in epoch {epoch + 1}, batch {batch + 1} of {steps_per_epoch} "
                f"(step {epoch * steps_per_epoch + batch + 1}); nothing after it was saved, the last good checkpoint "
                f"is kept ({newest_state()}); lower optim.lr or check the data",
                EXIT_DIVERGED,
            )

    def stop_for_signal(signum: int) -> TrainingStopped:
        done = progress.epoch * steps_per_epoch + progress.batch
        where = (f"epoch {progress.epoch + 1}, batch {progress.batch} of {steps_per_epoch}" if progress.batch
                 else f"the end of epoch {progress.epoch}")
        return TrainingStopped(
            f"stopped by {signal.Signals(signum).name} after step {done} of {t.epochs * steps_per_epoch} ({where}); "
            f"saved {newest_state()}; {resume_hint}",
            128 + signum,
        )

    autocast = autocast_context(device, amp)
    every = t.checkpoint_every
    monitor_every = config.monitor.every_steps if monitor.active else None
    row: dict[str, Any] = {}

    vuln = config.vulnerability

    def record_vulnerability(epoch: int) -> dict[str, Any]:
        """AV of the fixed training subset after the first epoch and every `every_epochs`; its mean and std."""
        if vuln.every_epochs is None or not (epoch == 0 or (epoch + 1) % vuln.every_epochs == 0):
            return {}
        # A fixed subset: the first `size` training images, unaugmented, index-matched across epochs.
        x, y = to_float(batcher.x[: vuln.size], data.pixel_max), batcher.y[: vuln.size]
        av = adversarial_vulnerability(
            model, x, y, eps=config.threat.eps, norm=config.threat.norm, steps=vuln.steps,
            step_size=training_step_size(config.threat.eps), seed=derive_seed(config.seed, "vulnerability", epoch),
            batch_size=t.batch_size,
        )
        buffer = io.BytesIO()
        np.save(buffer, av.numpy().astype(np.float32))
        if procs.main:
            with disk_errors(save_advice()):
                atomic_write_bytes(run_dir / "vulnerability" / f"epoch-{epoch + 1:04d}.npy", buffer.getvalue())
        return {"vuln_mean": float(av.mean()), "vuln_std": float(av.std())}

    def validate_averages(epoch: int) -> dict[str, Any]:
        """Recompute the BN statistics of the weight averages, then validate them (val_ema_*, val_swa_*)."""
        ready = averages.ready()
        if not ready:
            return {"models": {}, "metrics": {}}
        generator = make_generator(device, config.seed, "bn", epoch)
        averages.recalibrate(
            lambda: (train_images(i, generator) for i in shuffled_passes(len(batcher.y), t.batch_size, generator)),
            lambda average, batches: method.recalibrate_bn(average, batches, generator))
        metrics: dict[str, Any] = {}
        for name, average in ready.items():
            clean, adv = validate(average, x_val, y_val, config, amp, config.seed, method.validation_attack)
            metrics |= {f"val_{name}_clean_acc": clean, f"val_{name}_{method.validation_attack}_acc": adv}
        return {"models": ready, "metrics": metrics}

    def read_monitor(epoch: int, step: int) -> dict[str, Any]:
        reading = monitor.read(model, amp)
        if procs.main:
            with disk_errors(f"free space or fix the folder, then {resume_hint}"):
                append_jsonl(run_dir / "monitor.jsonl", {"epoch": epoch + 1, "step": step, **reading})
        progress.monitor_rows += 1
        return reading

    with (StopSignals().installed() as stop,
          tensorboard_scalars(run_dir / "tensorboard", progress.epoch + 1, t.tensorboard and procs.main)
          as write_scalars):
        for epoch in range(progress.epoch, t.epochs):
            if progress.stopped:
                break
            reset_peak_memory(device)
            epoch_lr = schedule.lr_at(epoch)
            if progress.batch == 0:
                progress.sums, progress.seen, progress.seconds = {}, 0, 0.0
                epoch_gen = make_generator(device, config.seed, "epoch", epoch)
                method.on_epoch_start(
                    model,
                    EpochContext(epoch, t.epochs, epoch_lr, config.optim.lr,
                                 lambda n, g=epoch_gen: sample_train(n, g), epoch_gen,
                                 config.schedule.lr_milestones()),
                )
            start = time.perf_counter()
            model.train()
            pending: list[tuple[int, Tensor]] = []  # losses not yet checked for NaN/Inf
            bar = tqdm(total=steps_per_epoch, initial=progress.batch, desc=f"epoch {epoch + 1}/{t.epochs}",
                       leave=False, disable=True if t.progress != "bar" or not procs.main else None,  # None: TTY only
                       dynamic_ncols=True)
            for i, (x, y) in enumerate(batcher.epoch(epoch, progress.batch), start=progress.batch):
                lr = schedule.lr_at(epoch + i / steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # Data-parallel: this process's contiguous part of the global batch (all of it in one process).
                n_global = len(y)
                part = procs.shard(n_global)
                x, y = x[part], y[part]
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                step = epoch * steps_per_epoch + i
                ctx = StepContext(epoch, step, make_generator(device, config.seed, "step", epoch, i),
                                  functools.partial(procs.average_gradients, local=len(y), total=n_global))
                sync = functools.partial(procs.average_parameter_gradients, params, len(y), n_global) \
                    if procs.active else None
                out = train_step(method, model, optimizer, Batch(x, y), ctx, autocast, sync)
                procs.broadcast_buffers([model, *extras.values()])
                averages.after_step(model, epoch, step)  # after after_step: the average never sees perturbed weights
                # Metrics stay on the device; they are read once per progress refresh and per epoch.
                pending.append((i, out.loss.detach()))
                for key, value in {"loss": out.loss.detach(), **out.metrics}.items():
                    fresh[key] = fresh.get(key, 0) + value.float() * len(y)
                fresh["seen"] = fresh.get("seen", 0) + len(y)
                progress.batch = i + 1
                bar.update(1)
                # Processes stop at the same step: a signal seen by any of them stops them all.
                signalled = procs.any(stop.signum is not None)
                save_now = signalled or (every is not None and (step + 1) % every == 0)
                if len(pending) >= FINITE_CHECK_EVERY or save_now:
                    check_losses(pending, epoch)
                if save_now and progress.batch < steps_per_epoch:  # the epoch end saves anyway
                    progress.seconds += time.perf_counter() - start
                    start = time.perf_counter()
                    save_train_state()
                    if signalled:
                        raise stop_for_signal(stop.signum or signal.SIGTERM)
                read_now = monitor_every is not None and (step + 1) % monitor_every == 0
                if read_now and progress.batch < steps_per_epoch:  # the epoch end reads anyway
                    collapse = read_monitor(epoch, step + 1)["co_collapse"]
                    if collapse and config.monitor.stop_on_collapse:
                        progress.stopped = True
                        break
                if t.progress == "bar" and procs.main and (i % 10 == 0 or i == steps_per_epoch - 1):
                    # This process's share only (the exact global sums are added up at saves and epoch ends).
                    elapsed = progress.seconds + time.perf_counter() - start
                    seen = progress.seen + procs.world * float(fresh["seen"])
                    loss = float(progress.sums.get("loss", 0) + procs.world * fresh["loss"]) / seen
                    bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{seen / max(elapsed, 1e-9):.0f}")
            bar.close()
            check_losses(pending, epoch)
            reduce_sums()
            sums = progress.sums
            train_seconds = progress.seconds + time.perf_counter() - start
            means = {key: float(value) / progress.seen for key, value in sums.items()}
            val_clean, val_adv = validate(model, x_val, y_val, config, amp, config.seed, method.validation_attack)
            reading = read_monitor(epoch, epoch * steps_per_epoch + progress.batch) if monitor.active else {}
            averages.after_epoch(model, epoch)
            averaged = validate_averages(epoch)
            vulnerability = record_vulnerability(epoch)
            if reading.get("co_collapse") and config.monitor.stop_on_collapse:
                progress.stopped = True
            schedule.end_epoch(means["loss"])
            row = {
                "epoch": epoch + 1, "lr": epoch_lr,
                "train_loss": means.pop("loss"), "train_acc": means.pop("acc", None),
                "val_clean_acc": val_clean, f"val_{method.validation_attack}_acc": val_adv,
                "seconds": progress.seconds + time.perf_counter() - start,
                "images_per_s": progress.seen / max(train_seconds, 1e-9),
                # This process's (rank 0's, data-parallel) over the epoch so far; on CPU the process's peak.
                "peak_memory_mb": peak_memory_mb(device),
            } | reading | averaged["metrics"] | vulnerability | {f"train_{key}": value for key, value in means.items()}
            check_weights()
            value = row.get(select_metric)
            checkpoint_meta = sidecar | {"epoch": epoch + 1, "metric": select_metric, "value": value}
            # Without a validation split there is nothing to select on: best is then the last epoch. An epoch the
            # CO monitor stopped is never best unless it is the only one (METHODS §7.7: keep the best state from
            # before the collapse); the evaluation then reads that best checkpoint.
            candidate = not progress.stopped or progress.best_epoch == 0
            new_best = candidate and (value is None or value > progress.best_value)
            if new_best:
                progress.best_value = value if value is not None else -math.inf
                progress.best_epoch = epoch + 1
            if procs.main:
                with disk_errors(save_advice()):
                    append_jsonl(run_dir / "metrics.jsonl", row)
                    write_scalars(row)
                    # Weights files hold the plain exported model (AR-AT: the adv BN branch, no predictors).
                    exported = method.export_model(model).state_dict()
                    save_weights(checkpoints / "last.safetensors", exported, checkpoint_meta)
                    for name, average in averaged["models"].items():
                        save_weights(checkpoints / f"{name}.safetensors", method.export_model(average).state_dict(),
                                     sidecar | {"epoch": epoch + 1, "averaging": name})
                    if new_best:
                        save_weights(checkpoints / "best.safetensors", exported, checkpoint_meta)
            progress.epoch, progress.batch, progress.rows = epoch + 1, 0, progress.rows + 1
            save_train_state()
            log(
                f"epoch {epoch + 1:>3}/{t.epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
                f"acc {_pct(row['train_acc'])}  val clean {_pct(val_clean)}  val {val_label} {_pct(val_adv)}  "
                f"{row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s"
            )
            if progress.stopped:
                log(f"catastrophic overfitting flagged in epoch {epoch + 1} (CO monitor: PGD "
                    f"{_pct(row['co_pgd_acc'])}, FGSM {_pct(row['co_fgsm_acc'])}): training stops; the run keeps "
                    f"the best checkpoint from before it, epoch {progress.best_epoch}")
            if stop.signum is not None:
                raise stop_for_signal(stop.signum)
    if not row:  # resumed a run whose training had already finished
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        row = json.loads(lines[-1]) if lines else {}
    best = None if progress.best_value == -math.inf else progress.best_value
    return TrainResult(run_dir, progress.best_epoch, best, select_metric, row, procs.main)


def _pct(x: float | None) -> str:
    return "  –  " if x is None else f"{100 * x:5.1f}%"
