"""`advtrain.fit`: adversarially train any `nn.Module` from Python, with the loop `advtrain train` runs.

    import advtrain
    result = advtrain.fit(model, advtrain.methods.TRADES(beta=6.0), (x_train, y_train), val_data=(x_val, y_val),
                          epochs=10, lr=0.05, threat={"eps": 8 / 255, "norm": "linf"})
    result.model, result.history

Images are float tensors in [0, 1] or uint8 pixels (0..255); normalise by mean/std inside the model. Single-process
(data-parallel training is `torchrun advtrain train`). Progress goes to the "advtrain" logger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

import advtrain
from advtrain.attacks.threat import ThreatModel, check_images
from advtrain.bounds import FieldError
from advtrain.config import (
    AveragingConfig,
    MonitorConfig,
    OptimConfig,
    ScheduleConfig,
    ThreatConfig,
    TrainConfig,
    check_averaging,
)
from advtrain.data import Augment, DeviceBatcher
from advtrain.distributed import Processes
from advtrain.errors import InvalidValue, UserError
from advtrain.methods import Method, MethodConfig, build_method, method_class
from advtrain.runtime import (
    SEED_LIMIT,
    autocast_dtype,
    derive_seed,
    resolve_device,
    seed_everything,
    torch_settings,
    use_channels_last,
)
from advtrain.train.averaging import WeightAverages
from advtrain.train.callbacks import Callback, CollapseWatch, MetricsFile, ProgressBar, WeightAveraging, disk_errors
from advtrain.train.checkpointing import Checkpointer, read_resumable_state
from advtrain.train.loop import Loop, Training
from advtrain.train.monitor import CollapseMonitor
from advtrain.train.schedule import LRSchedule, build_optimizer
from advtrain.train.sources import LoaderSource, TensorSource, TrainSource
from advtrain.train.trainer import create_run_dir, holds_run_files, prepare_model
from advtrain.train.validation import Validator

logger = logging.getLogger("advtrain")
SETTINGS_FILE = "fit.json"  # what makes a folder a fit run; its digest is checked on resume
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class FitResult:
    model: nn.Module  # the trained model after the last epoch, as exported for evaluation, in eval mode
    history: list[dict[str, Any]]  # one metrics row per epoch (all epochs of the run, also after a resume)
    best_epoch: int  # the epoch with the best validation metric (the last one without validation data)
    run_dir: Path | None = None  # holds checkpoints/best.safetensors and last.safetensors


@dataclass
class _Settings:
    """fit's arguments, checked; their JSON is the run folder's fit.json."""

    method: MethodConfig
    threat: ThreatModel
    optim: OptimConfig
    schedule: ScheduleConfig
    train: TrainConfig
    augment: Augment
    averaging: AveragingConfig | None
    monitor: MonitorConfig | None
    seed: int

    def to_json(self, model: nn.Module) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        plain = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in fields.items()}
        # fit trains in one process, where train.sync_bn does nothing, and offers no train.attack_graph: both left
        # out, so runs from before they existed resume.
        del plain["train"]["sync_bn"], plain["train"]["attack_graph"]
        plain["model"] = {"class": type(model).__qualname__,
                          "tensors": {k: list(v.shape) for k, v in model.state_dict().items()}}
        return json.dumps(plain, indent=1, default=str) + "\n"


def fit(
    model: nn.Module,
    method: MethodConfig | str,
    train_data: Any,
    *,
    val_data: Any = None,
    epochs: int,
    batch_size: int = 128,
    optimizer: str | OptimConfig | OptimizerFactory = "sgd",
    lr: float | None = None,
    schedule: str | ScheduleConfig = "multistep",
    threat: ThreatModel | dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    precision: Literal["auto", "fp32", "bf16"] = "auto",
    channels_last: bool | None = None,
    augment: Augment | None = None,
    val_steps: int = 10,
    averaging: AveragingConfig | None = None,
    monitor: MonitorConfig | None = None,
    checkpoint_every: int | None = None,
    run_dir: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    seed: int = 0,
    progress: bool = False,
) -> FitResult:
    """Train `model` with `method` (a method config such as `advtrain.methods.TRADES(beta=6.0)`, or a method name)
    on `train_data`: a pair (x, y) of tensors, or a DataLoader / re-iterable of (x, y) batches. `val_data` (same
    forms) is validated every epoch (clean and PGD-`val_steps` accuracy) and selects the best epoch.

    `optimizer`: "sgd" (momentum 0.9, weight decay 5e-4) or "adam", an `OptimConfig`, or a function from the
    parameters to a torch optimizer; `lr` replaces its learning rate. `schedule`: a schedule name or a
    `ScheduleConfig`. `threat`: a `ThreatModel` or {"eps": ..., "norm": ...} in [0, 1] pixel units (default L∞
    8/255). With `run_dir`, checkpoints and metrics.jsonl are written there, and calling fit again with the same
    arguments and `run_dir` resumes the run; without it nothing is written. `callbacks` are `Callback`s whose hooks
    the loop calls. Bad input raises a one-line UserError (or ValueError) naming the fix.
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    settings = _settings(method, optimizer, lr, schedule, threat, precision, epochs, batch_size, val_steps,
                         checkpoint_every, augment, averaging, monitor, seed)
    user_callbacks = list(callbacks)
    for c in user_callbacks:
        if not isinstance(c, Callback):
            raise UserError(f"callbacks: {type(c).__name__} is no advtrain.train.Callback: subclass it")
    folder = None if run_dir is None else Path(run_dir).expanduser()
    dev = resolve_device(str(device))
    seed_everything(seed)
    with torch_settings():  # cuDNN autotuning on, restored afterwards
        training = _training(model, settings, optimizer, train_data, val_data, dev, channels_last)
        components = _components(settings, training, folder, progress)
        checkpointer = None if folder is None else _checkpointer(folder, settings, model, training, components)
        loop = Loop(training, [*components, *user_callbacks], checkpointer, logger.info)
        loop.run()
    history = loop.history if folder is None else _read_rows(folder / "metrics.jsonl")
    exported = training.method.export_model(training.model).eval()
    return FitResult(exported, history, loop.progress.best_epoch, folder)


def _settings(method: MethodConfig | str, optimizer: Any, lr: float | None, schedule: str | ScheduleConfig,
              threat: ThreatModel | dict[str, Any] | None, precision: str, epochs: int, batch_size: int,
              val_steps: int, checkpoint_every: int | None, augment: Augment | None,
              averaging: AveragingConfig | None, monitor: MonitorConfig | None, seed: int) -> _Settings:
    if isinstance(method, str):
        method = method_class(method).config_class()
    if not isinstance(method, MethodConfig):
        raise UserError(f"method must be a method config such as advtrain.methods.TRADES(beta=6.0) or a method "
                        f"name, got {type(method).__name__}")
    if isinstance(threat, dict):
        unknown = set(threat) - {"eps", "norm"}
        if unknown:
            raise UserError(f"threat: unknown keys {sorted(unknown)}; pass {{'eps': 8/255, 'norm': 'linf'}}")
        threat = ThreatModel(**threat)
    if not isinstance(threat, ThreatModel | None):
        raise UserError(f"threat must be a ThreatModel or {{'eps': 8/255, 'norm': 'linf'}}, got {threat!r}")
    if not (isinstance(optimizer, str | OptimConfig) or callable(optimizer)):
        raise UserError(f"optimizer must be 'sgd', 'adam', an OptimConfig or a function of the parameters, got "
                        f"{optimizer!r}")
    with _named_as_argument("optimizer"):
        optim = optimizer if isinstance(optimizer, OptimConfig) else OptimConfig(
            name=optimizer if isinstance(optimizer, str) else "sgd")  # type: ignore[arg-type]  # checked here
        if lr is not None:
            optim = dataclasses.replace(optim, lr=lr)
    if isinstance(schedule, str):
        with _named_as_argument("schedule"):
            schedule = ScheduleConfig(name=schedule)  # type: ignore[arg-type]  # checked here
    if not isinstance(schedule, ScheduleConfig):
        raise UserError(f"schedule must be a schedule name (multistep, cosine, ...) or a ScheduleConfig, got "
                        f"{schedule!r}")
    if isinstance(seed, bool) or not (isinstance(seed, int) and 0 <= seed < SEED_LIMIT):
        raise UserError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    with _named_as_argument(""):
        train = TrainConfig(epochs=epochs, batch_size=batch_size, precision=precision,  # type: ignore[arg-type]
                            val_steps=val_steps, checkpoint_every=checkpoint_every)
    method.check_schedule(schedule.lr_milestones(), schedule.name)
    if averaging is not None:
        check_averaging(averaging, epochs, "epochs")
    return _Settings(method, threat or ThreatModel(), optim, schedule, train, augment or Augment(), averaging, monitor,
                     seed)


@contextlib.contextmanager
def _named_as_argument(name_field: str) -> Iterator[None]:
    """A config field's error named as fit's argument ("lr must be > 0"); its `name` field is the argument
    `name_field` ("schedule: 'cosin' is not allowed ...")."""
    try:
        yield
    except FieldError as e:
        relative = name_field + e.relative.removeprefix("name") if e.relative.startswith("name") else e.relative
        raise InvalidValue(relative) from None


def _training(model: nn.Module, s: _Settings, optimizer: Any, train_data: Any, val_data: Any, device: torch.device,
              channels_last: bool | None) -> Training:
    source = _train_source(train_data, s.train.batch_size, device, s.seed, s.augment)
    x_val, y_val = _validation_tensors(val_data, device)
    method: Method = build_method(s.method, s.threat)
    x, y = source.first(64)
    model, extras = prepare_model(method, model, x, y, seed=s.seed, channels_last=use_channels_last(channels_last))
    params = [*model.parameters(), *(p for m in extras.values() for p in m.parameters())]
    if callable(optimizer):
        torch_optimizer = optimizer(params)
        if not isinstance(torch_optimizer, torch.optim.Optimizer):
            raise UserError("optimizer: the function must return a torch.optim.Optimizer of the parameters given")
    else:
        torch_optimizer = build_optimizer(params, s.optim)
    # The loop sets the LR of every step from the schedule: a custom optimizer's own LR is the schedule's base.
    base_lr = torch_optimizer.defaults["lr"] if callable(optimizer) else s.optim.lr
    amp = autocast_dtype(s.train.precision, device)
    return Training(
        model=model, method=method, extras=extras, optimizer=torch_optimizer,
        schedule=LRSchedule(s.schedule, base_lr, s.train.epochs), source=source,
        validator=Validator(x_val, y_val, s.threat.eps, s.threat.norm, s.train.val_steps, s.train.batch_size, s.seed,
                            amp, method.validation_attack),
        device=device, epochs=s.train.epochs, seed=s.seed, base_lr=base_lr, select_metric=method.selection_metric,
        amp=amp, channels_last=use_channels_last(channels_last), lr_milestones=s.schedule.lr_milestones(),
        procs=Processes(), lr_option="lr",
    )


def _image_tensors(data: tuple[Any, Any], where: str) -> tuple[Tensor, Tensor, int]:
    """(x, y, pixel_max) of a pair of tensors: uint8 pixels (0..255) or float images in [0, 1]."""
    x, y = data
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise UserError(f"{where} must be (x, y) tensors, got ({type(x).__name__}, {type(y).__name__})")
    if x.dtype != torch.uint8:
        check_images(x, f"{where} x")  # floats in [0, 1]; other integer pixels are refused with the fix
        x = x.float()
    if x.dim() != 4 or y.dim() != 1 or len(y) != len(x) or y.is_floating_point():
        raise UserError(f"{where} must be images x N×C×H×W and N integer labels y, got x {tuple(x.shape)} and y "
                        f"{tuple(y.shape)} {str(y.dtype).removeprefix('torch.')}")
    return x, y.long(), 255 if x.dtype == torch.uint8 else 1


def _is_pair(data: Any) -> bool:
    return isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], Tensor)


def _train_source(data: Any, batch_size: int, device: torch.device, seed: int, augment: Augment) -> TrainSource:
    if _is_pair(data):
        x, y, pixel_max = _image_tensors(data, "train_data")
        if len(y) == 0:
            raise UserError("train_data holds no images: pass at least one (x, y) example")
        return TensorSource(DeviceBatcher(x, y, batch_size=batch_size, pixel_max=pixel_max, device=device, seed=seed,
                                          augment=augment))
    if isinstance(data, Iterable) and not isinstance(data, Tensor | str):
        return LoaderSource(data, device)
    raise UserError(f"train_data must be (x, y) tensors or a DataLoader of (x, y) batches, got {type(data).__name__}")


def _validation_tensors(data: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    if data is None:
        return torch.empty(0, device=device), torch.empty(0, dtype=torch.int64, device=device)
    if _is_pair(data):
        x, y, pixel_max = _image_tensors(data, "val_data")
        return (x.float() / pixel_max).to(device), y.to(device)
    if isinstance(data, Iterable) and not isinstance(data, Tensor | str):
        xs, ys, _ = zip(*LoaderSource(data, device, "val_data").epoch(0, 0), strict=True)
        return torch.cat(xs), torch.cat(ys)
    raise UserError(f"val_data must be (x, y) tensors or a DataLoader of (x, y) batches, got {type(data).__name__}")


def _components(s: _Settings, training: Training, folder: Path | None, progress: bool) -> list[Callback]:
    components: list[Callback] = [ProgressBar()] if progress else []
    advice = f"free space or fix the folder, then call fit again with run_dir={folder}"
    if s.monitor is not None:
        v = training.validator
        monitor = CollapseMonitor(s.monitor, ThreatConfig(norm=s.threat.norm, eps=s.threat.eps), v.x, v.y,
                                  derive_seed(s.seed, "monitor"))
        components.append(CollapseWatch(monitor, s.monitor.every_steps, s.monitor.stop_on_collapse, folder, advice))
    if s.averaging is not None:
        components.append(WeightAveraging(WeightAverages(s.averaging, training.model)))
    if folder is not None:
        components.append(MetricsFile(folder / "metrics.jsonl", lambda: advice))
    return components


def _checkpointer(folder: Path, s: _Settings, model: nn.Module, training: Training,
                  components: list[Callback]) -> Checkpointer:
    """A fit run folder is resumed when it holds fit.json (refused when its settings differ); any other folder must
    be new or empty."""
    settings = s.to_json(model)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:16]
    hint = f"call fit again with the same arguments and run_dir={folder}"
    resuming = (folder / SETTINGS_FILE).is_file()
    state = None
    if resuming:
        state = read_resumable_state(folder, digest, training.procs, logger.info, mismatch=(
            f"run_dir {folder} holds a fit run with other settings (its {SETTINGS_FILE}): pass the same arguments to "
            "resume it, or choose a new run_dir"))
    elif folder.exists() and (not folder.is_dir() or holds_run_files(folder)):
        raise UserError(f"run_dir {folder} is not empty and holds no fit run: choose a new or empty folder")

    def start_run() -> None:
        with disk_errors("choose a run_dir on a writable disk with free space"):
            create_run_dir(folder, SETTINGS_FILE, settings, None)
        logger.info("training %s for %d epochs → %s", s.method.name, s.train.epochs, folder)

    averages = next((c for c in components if isinstance(c, WeightAveraging)), None)
    sidecar = {"config_hash": digest, "method": training.method.metadata(),
               "threat": {"norm": s.threat.norm, "eps": s.threat.eps},
               "advtrain_version": advtrain.__version__, "torch_version": torch.__version__}
    return Checkpointer(folder, state=state, resuming=resuming, start_run=start_run, sidecar=sidecar,
                        resume_hint=hint, every=s.train.checkpoint_every, averages=averages, log=logger.info)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
