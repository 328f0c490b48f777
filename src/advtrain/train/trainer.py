"""`advtrain train`: a RunConfig becomes the objects the training loop (`loop.Loop`) runs, in a run folder.

The folder holds config.yaml, metrics.jsonl (monitor.jsonl, tensorboard/, vulnerability/ when configured) and
checkpoints/ (resumable states; last, best, ema and swa weights). `train(..., resume=True)` continues it from the
newest intact state bit-identically (`checkpointing`). `advtrain.fit` builds the same loop from Python objects.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import advtrain
from advtrain.config import RunConfig, dump_yaml
from advtrain.data import Augment, Dataset, DeviceBatcher, FolderDataset, load_dataset, to_float
from advtrain.distributed import Processes, local_device, processes
from advtrain.errors import UserError
from advtrain.fileio import atomic_write_text
from advtrain.methods import Batch, Method, build_method
from advtrain.models.spec import ModelSpec
from advtrain.runfiles import RECORD, Replacement, mark_run, plan_replacement, record_folder, replace_run
from advtrain.runtime import (
    CompileMode,
    autocast_dtype,
    derive_seed,
    make_generator,
    resolve_device,
    seed_everything,
    torch_settings,
    use_channels_last,
)
from advtrain.train.averaging import WeightAverages
from advtrain.train.callbacks import (
    Callback,
    CollapseWatch,
    MetricsFile,
    ProgressBar,
    TensorBoardScalars,
    VulnerabilityRecord,
    WeightAveraging,
    disk_errors,
)
from advtrain.train.checkpointing import Checkpointer, read_resumable_state
from advtrain.train.loop import Loop, Training
from advtrain.train.monitor import CollapseMonitor
from advtrain.train.schedule import LRSchedule, build_optimizer
from advtrain.train.sources import TensorSource, run_split
from advtrain.train.step import compile_for_training, graph_captured_attack
from advtrain.train.stream import folder_training_data
from advtrain.train.validation import Validator


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_value: float | None
    select_metric: str
    last: dict[str, Any]
    main: bool = True  # rank 0, the process that wrote the run (always, without torchrun)


def load_run_data(config: RunConfig) -> Dataset | FolderDataset:
    return load_dataset(config.data.name, config.data.root, **config.data.options)


def holds_run_files(folder: Path) -> bool:
    """Whether `folder` is a folder holding anything besides temporary files of a killed writer and the run's record
    (written just before the settings file)."""
    return folder.is_dir() and any(not p.name.endswith(".tmp") and p.name != RECORD for p in folder.iterdir())


def check_run_dir(run_dir: Path, overwrite: bool) -> Replacement | None:
    """Refuse an --out that holds anything, unless --overwrite names a run that can be replaced as a whole;
    writes nothing. Returns what --overwrite will remove (None: a new or empty folder)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a folder: choose a new --out folder")
    # Temporary files of a writer killed before config.yaml existed, or the run's record alone (written just
    # before config.yaml), do not make a folder hold anything.
    if not holds_run_files(run_dir):
        return None
    if not overwrite:
        raise UserError(
            f"{run_dir} is not empty: continue that run with --resume {run_dir}, replace it with --overwrite, "
            "or choose a new --out folder (nothing was changed)"
        )
    return plan_replacement(run_dir)


def create_run_dir(run_dir: Path, settings_file: str, settings: str, replacing: Replacement | None) -> None:
    """The run folder: its record of files first, then its settings (config.yaml); from then on the folder can be
    resumed. `replacing` (--overwrite): the old run's files are removed only once the new settings are in place."""
    if replacing is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        mark_run(run_dir, files=[], folders=[])
        atomic_write_text(run_dir / settings_file, settings)
    else:
        def write_new() -> None:
            atomic_write_text(run_dir / settings_file, settings)
            mark_run(run_dir, files=[settings_file], folders=replacing.folders)

        replace_run(replacing, write_new)
    record_folder(run_dir / "checkpoints")


def require_tensorboard() -> None:
    """`train.tensorboard` without the tensorboard package fails here, before the run writes anything."""
    try:
        import torch.utils.tensorboard  # noqa: F401  imported only to see that it loads
    except ImportError:
        raise UserError("train.tensorboard needs the tensorboard package: pip install 'advtrain[tensorboard]' "
                        "(or set train.tensorboard: false)") from None


def prepare_model(
    method: Method, model: nn.Module, x: Tensor, y: Tensor, *, seed: int, channels_last: bool,
    compile_mode: CompileMode = "eager", log: Callable[[str], None] = lambda _: None,
) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The model `method` trains, made from `model` (on the device of `x`, a few training images with labels
    `y`): converted by the method (AR-AT: split BatchNorm) before any optimizer sees its parameters, in
    channels_last when asked, compiled when `compile_mode` passes its checks; and the method's extra modules."""
    model = method.prepare_model(model.to(x.device), x[:2])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_mode != "eager":
        x_check = x[:64].contiguous(memory_format=torch.channels_last) if channels_last else x[:64]
        model, reason = compile_for_training(model, method, compile_mode, Batch(x_check, y[:64]),
                                             lambda: make_generator(x.device, seed, "compile check"))
        if reason is not None:
            log(f"train.compile={compile_mode}: {reason}; training eagerly")
    return model, {name: module.to(x.device) for name, module in method.extra_modules().items()}


def train(
    config: RunConfig,
    run_dir: Path,
    *,
    data: Dataset | FolderDataset | None = None,
    log: Callable[[str], None] = print,
    resume: bool = False,
    overwrite: bool = False,
) -> TrainResult:
    """Train `config` into `run_dir`; `resume` continues the run there, `overwrite` replaces it.

    A fresh run needs an empty or new `run_dir` (or `overwrite`); `data` skips a second load.
    """
    with torch_settings(config.train.threads, config.train.deterministic):
        device = resolve_device(local_device(config.train.device))
        if config.train.sync_bn and device.type != "cuda":
            raise UserError(f"train.sync_bn needs CUDA: torch's SyncBatchNorm cannot train on {device.type}; set "
                            "train.sync_bn=false")
        # Every state on disk was written atomically by rank 0, so the newest one is intact if a process dies.
        intact = (f"the newest checkpoint in {Path(run_dir) / 'checkpoints'} is intact: continue with: "
                  f"advtrain train --resume {run_dir}")
        with processes(device, "training", intact) as procs:
            return _train(config, Path(run_dir), data, log if procs.main else _silent, resume, overwrite, device,
                          procs)


def _silent(_: str) -> None:
    """The log of processes other than rank 0: one process speaks for the run."""


@dataclass
class _Built:
    """What `_build` makes from a RunConfig, beyond the loop's Training: for the run's metadata and log."""

    training: Training
    spec: ModelSpec
    n_train: int


def _train(
    config: RunConfig, run_dir: Path, data: Dataset | FolderDataset | None, log: Callable[[str], None], resume: bool,
    overwrite: bool, device: torch.device, procs: Processes,
) -> TrainResult:
    t = config.train
    if t.tensorboard:
        require_tensorboard()
    state, replacing = None, None
    if resume:
        state = read_resumable_state(run_dir, config.digest(), procs, log, mismatch=(
            f"{run_dir}/config.yaml no longer matches the config its checkpoints were trained with: restore it, or "
            "start a new run"))
    elif procs.main:
        replacing = check_run_dir(run_dir, overwrite)
    seed_everything(config.seed)
    data = load_run_data(config) if data is None else data
    built = _build(config, data, device, procs, log)
    training = built.training

    def start_run() -> None:
        with disk_errors("the old run is unchanged: free space or fix the folder, then run again" if replacing
                         else "choose an --out folder on a writable disk with free space"):
            create_run_dir(run_dir, "config.yaml", dump_yaml(config), replacing)
        log(f"training {config.method.name} on {data.name} ({built.n_train} train / {len(training.validator.y)} val "
            f"images) with {built.spec.name} on {device} ({'bf16' if training.amp else 'fp32'}) for {t.epochs} "
            f"epochs → {run_dir}")

    sidecar = {
        "config_hash": config.digest(), "model": built.spec.to_dict(), "method": training.method.metadata(),
        "data": config.data.name, "threat": {"norm": config.threat.norm, "eps": config.threat.eps},
        "advtrain_version": advtrain.__version__, "torch_version": torch.__version__,
    }
    averaging = WeightAveraging(WeightAverages(config.averaging, training.model))
    checkpointer = Checkpointer(run_dir, state=state, resuming=resume, start_run=start_run, sidecar=sidecar,
                                resume_hint=f"continue with: advtrain train --resume {run_dir}",
                                every=t.checkpoint_every, averages=averaging, log=log)
    loop = Loop(training, _components(config, run_dir, training, averaging, checkpointer), checkpointer, log)
    loop.run()
    if loop.history:
        row = loop.history[-1]
    else:  # resumed a run whose training had already finished (only rank 0 reads the run folder)
        lines = (run_dir / "metrics.jsonl").read_text().splitlines() if procs.main else []
        row = json.loads(lines[-1]) if lines else {}
    p = loop.progress
    best = None if p.best_value == -math.inf else p.best_value
    return TrainResult(run_dir, p.best_epoch, best, training.select_metric, row, procs.main)


def _build(config: RunConfig, data: Dataset | FolderDataset, device: torch.device, procs: Processes,
           log: Callable[[str], None]) -> _Built:
    """Data (the validation split is carved from the training set, never from the test set), model, method and
    optimizer; extra method modules (AR-AT predictors) train with the model."""
    t = config.train
    source, n_train, x_val, y_val = (folder_training_data(config, data, device, procs)
                                     if isinstance(data, FolderDataset) else _tensor_data(config, data, device, procs))
    spec = ModelSpec.for_dataset(config.model.name, data, config.model.normalize, config.model.options)
    method = build_method(config.method, config.threat_model())
    graph_attack = graph_captured_attack(method, device, "train.attack_graph", log) if t.attack_graph else None
    x_check, y_check = source.first(64)
    model, extras = prepare_model(
        method, spec.build().to(device), x_check, y_check, seed=config.seed,
        channels_last=use_channels_last(t.channels_last), compile_mode=t.compile, log=log)
    if graph_attack is not None:  # after the compile check, whose batches are not training batches
        method.training_pgd = graph_attack
    if t.sync_bn and procs.active:  # the same parameters and buffers, in SyncBatchNorm modules (AR-AT's splits too)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    amp = autocast_dtype(t.precision, device)
    params = list(model.parameters()) + [p for m in extras.values() for p in m.parameters()]
    training = Training(
        model=model, method=method, extras=extras, optimizer=build_optimizer(params, config.optim),
        schedule=LRSchedule(config.schedule, config.optim.lr, t.epochs), source=source,
        validator=Validator(x_val, y_val, config.threat.eps, config.threat.norm, t.val_steps, t.batch_size,
                            config.seed, amp, method.validation_attack, procs),
        device=device, epochs=t.epochs, seed=config.seed, base_lr=config.optim.lr,
        select_metric=method.selection_metric if t.select_metric == "auto" else t.select_metric, amp=amp,
        channels_last=use_channels_last(t.channels_last), lr_milestones=config.schedule.lr_milestones(), procs=procs,
    )
    return _Built(training, spec, n_train)


def _tensor_data(config: RunConfig, data: Dataset, device: torch.device, procs: Processes
                 ) -> tuple[TensorSource, int, Tensor, Tensor]:
    """The on-device training source, its number of images, and the validation split (at most train.val_max
    images) of an in-memory dataset."""
    train_idx, val_idx = run_split(data.y_train, config.data.val_size, config.train.val_max, config.seed)
    augment = Augment(crop_padding=config.data.crop_padding, flip=config.data.flip, idbh=config.data.idbh)
    batcher = DeviceBatcher(
        data.x_train[train_idx], data.y_train[train_idx], batch_size=config.train.batch_size,
        pixel_max=data.pixel_max, device=device, seed=config.seed, augment=augment,
    )
    x_val, y_val = to_float(data.x_train[val_idx], data.pixel_max), data.y_train[val_idx]
    return TensorSource(batcher, procs), len(train_idx), x_val.to(device), y_val.to(device)


def _components(config: RunConfig, run_dir: Path, training: Training, averaging: WeightAveraging,
                checkpointer: Checkpointer) -> list[Callback]:
    """The run's components in the order the loop calls them: the bar closes before the epoch's measurements,
    which go monitor, averages, vulnerability; the metric files are written before the checkpoint."""
    t, advice = config.train, checkpointer.save_advice
    components: list[Callback] = [ProgressBar()] if t.progress == "bar" else []
    monitor = CollapseMonitor(config.monitor, config.threat, training.validator.x, training.validator.y,
                              derive_seed(config.seed, "monitor"))
    components += [CollapseWatch(monitor, config.monitor.every_steps, config.monitor.stop_on_collapse, run_dir,
                                 f"free space or fix the folder, then {checkpointer.resume_hint}"), averaging]
    v = config.vulnerability
    if v.every_epochs is not None:
        components.append(VulnerabilityRecord(v.every_epochs, v.size, v.steps, t.batch_size, run_dir, advice))
    components.append(MetricsFile(run_dir / "metrics.jsonl", advice))
    if t.tensorboard:
        components.append(TensorBoardScalars(run_dir / "tensorboard", advice))
    return components
