"""Typed run configuration: the dataclasses of a run config's sections, `RunConfig`, and its checks.

Every option has a named field with its default. Single-field ranges are declared on the fields themselves
(`Annotated[int, Ge(1)]`, see `advtrain.bounds`) and checked whenever a config dataclass is built, from YAML or in
Python; `validate()` holds only the checks that involve several sections or a registry of names, and runs whenever
a RunConfig is built. Reading YAML files and `--set` overrides is `advtrain.configfile`'s part.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml

from advtrain.attacks import MAX_DISTANCE, Norm, ThreatModel, parse_norm
from advtrain.bounds import CheckedConfig, FieldError, Ge, Gt, Le, Lt, Parsed, file_fields
from advtrain.configfile import apply_overrides, build_config, config_path, parse_number, read_yaml
from advtrain.data.sources import check_dataset_args
from advtrain.errors import UserError
from advtrain.eval.settings import EvalSettings
from advtrain.methods import MethodConfig, method_class
from advtrain.models.registry import check_model_args
from advtrain.runtime import SEED_LIMIT, CompileMode


@dataclass
class DataConfig(CheckedConfig):
    name: str = "digits"
    root: str | None = None  # folder or file for on-disk datasets (cifar10, cifar100, svhn, npz)
    # A fraction (< 1) or a count of training images held out for validation.
    val_size: Annotated[float, Ge(0, "a fraction < 1 or a count of images")] = 0.1
    crop_padding: Annotated[int, Ge(0)] = 0  # random crop with this much zero padding (4 for CIFAR); 0 = off
    flip: bool = False  # random horizontal flip
    # IDBH augmentation (docs/methods.md §4.4), replaces crop/flip when set
    idbh: Literal["none", "weak", "strong"] = "none"
    options: dict[str, Any] = field(default_factory=dict)  # source options, e.g. synthetic `shape`


@dataclass
class ModelConfig(CheckedConfig):
    name: str = "small_cnn"
    # Per-channel normalisation as the model's first layer: "none", "dataset" (training-set mean/std)
    # or an explicit [[means], [stds]].
    normalize: str | list[list[float]] = "none"
    options: dict[str, Any] = field(default_factory=dict)  # builder options, e.g. WRN `sub_block1`


@dataclass
class ThreatConfig(CheckedConfig):
    norm: Annotated[Norm, Parsed(parse_norm)] = "linf"  # linf (also Linf, inf) or l2 (L2)
    eps: Annotated[float, Ge(0), Le(MAX_DISTANCE)] = 8 / 255  # in [0, 1] pixel units: 8/255, not 8

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            ThreatModel(self.norm, self.eps)  # refuses an L∞ radius in 0..255 pixel units (8)
        except UserError as e:
            raise FieldError(str(e), type(self).__name__, "eps") from None


@dataclass
class OptimConfig(CheckedConfig):
    name: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[float, Gt(0)] = 0.1
    momentum: Annotated[float, Ge(0)] = 0.9
    weight_decay: Annotated[float, Ge(0)] = 5e-4
    nesterov: bool = False
    # Adam's (β1, β2); torch refuses values outside [0, 1).
    betas: list[Annotated[float, Ge(0), Lt(1)]] = field(default_factory=lambda: [0.9, 0.999])
    # The update kernel: false (default) runs torch's multi-tensor (foreach) kernel, true its fused one (one kernel
    # for every parameter). Both take the for-loop step, SGD bit for bit (tests/test_train.py).
    fused: bool = False


@dataclass
class ScheduleConfig(CheckedConfig):
    # multistep: ×gamma at each milestone epoch; cosine: to 0; cyclic: linear 0 → lr at
    # peak_epoch_fraction of the run → 0 (Wong et al. 2020); plateau: ×factor after `patience` epochs
    # without relative improvement > threshold of the training loss (IGD code); constant.
    name: Literal["multistep", "cosine", "cyclic", "plateau", "constant"] = "multistep"
    milestones: list[Annotated[float, Ge(0)]] = field(default_factory=lambda: [100.0, 150.0])
    gamma: Annotated[float, Gt(0)] = 0.1
    peak_epoch_fraction: Annotated[float, Gt(0), Lt(1)] = 0.5
    patience: Annotated[int, Ge(0)] = 10
    threshold: Annotated[float, Ge(0)] = 1e-2
    factor: Annotated[float, Gt(0)] = 0.1

    def lr_milestones(self) -> tuple[float, ...]:
        """The epochs where the LR decays, sorted: `milestones` for multistep; none for the other schedules."""
        return tuple(sorted(self.milestones)) if self.name == "multistep" else ()


@dataclass
class TrainConfig(CheckedConfig):
    epochs: Annotated[int, Ge(1)] = 200
    batch_size: Annotated[int, Ge(1)] = 128
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: bool | None = None  # None (auto): on, CPU and CUDA (runtime.use_channels_last)
    val_steps: Annotated[int, Ge(0)] = 10  # validation PGD steps (step ε/4, random start); 0: clean only
    val_max: Annotated[int, Ge(1)] | None = None  # validate on at most this many validation images
    # auto: the method's (val_pgd_acc, or val_clean_acc for standard). Only the validation accuracies the
    # trainer records can select a checkpoint; any other name would silently never select one.
    select_metric: Literal["auto", "val_clean_acc", "val_pgd_acc", "val_ifgsm_acc"] = "auto"
    progress: Literal["bar", "quiet"] = "bar"
    # torch CPU threads; None = torch's default. Capped: torch would try to start every thread asked for.
    threads: Annotated[int, Ge(1), Le(1024)] | None = None
    # A resumable state is written at every epoch end; this adds one every N optimizer steps.
    checkpoint_every: Annotated[int, Ge(1)] | None = None  # 0 would divide by zero in the step counter
    deterministic: bool = False  # refuse non-deterministic kernels (torch.use_deterministic_algorithms)
    # torch.compile of the model, opt-in: eager (none) | default | reduce-overhead (CUDA graphs) | max-autotune.
    # Used only after its input gradients match eager ones (runtime.compile_checked); methods with double
    # backprop (IGD, GradAlign), which torch.compile cannot differentiate twice, train eagerly.
    compile: CompileMode = "eager"
    # Also write every number of each metrics.jsonl row as a TensorBoard scalar (step = epoch) to
    # RUN_DIR/tensorboard/; opt-in because it needs the optional tensorboard package (advtrain[tensorboard]).
    tensorboard: bool = False
    # Data-parallel training on CUDA: BatchNorm statistics over the whole global batch (torch's SyncBatchNorm)
    # instead of each process's share. One process has nothing to synchronise.
    sync_bn: bool = False
    # CUDA only, opt-in: the PGD training attack (pgd_at, trades, mart) recorded once as a CUDA graph and replayed
    # per batch (attacks.StaticPGD), used only after it crafts what eager PGD crafts on a first batch.
    attack_graph: bool = False


@dataclass
class MonitorConfig(CheckedConfig):
    """Catastrophic-overfitting monitor (docs/methods.md §7.7): PGD and FGSM on a fixed held-out batch.

    The batch is the first `size` images of the validation split; readings go to monitor.jsonl and the
    epoch-end reading also to metrics.jsonl. A reading is flagged as a collapse when PGD accuracy falls more
    than `pgd_drop` below the previous reading or FGSM − PGD accuracy exceeds `fgsm_gap`.
    """

    enabled: bool = True
    size: Annotated[int, Ge(1)] = 512  # docs/methods.md §7.7: 512–1024 images
    steps: Annotated[int, Ge(1)] = 10  # PGD-10, random start, step ε/4
    every_steps: Annotated[int, Ge(1)] | None = None  # also read every N optimizer steps
    pgd_drop: Annotated[float, Ge(0), Le(1)] = 0.2
    fgsm_gap: Annotated[float, Ge(0), Le(1)] = 0.3
    stop_on_collapse: bool = False  # stop at the first collapse; the best checkpoint is the one kept


@dataclass
class VulnerabilityConfig(CheckedConfig):
    """Per-example adversarial vulnerability AVᵢ = CE(x'ᵢ) − CE(xᵢ) (docs/methods.md §7.5) of a fixed training
    subset (its first `size` images, no augmentation), every `every_epochs` epochs and after the first, saved
    as vulnerability/epoch-EEEE.npy; x' = PGD-`steps` (step ε/4, random start) in eval mode."""

    every_epochs: Annotated[int, Ge(1)] | None = None  # None: off
    size: Annotated[int, Ge(1)] = 1000
    steps: Annotated[int, Ge(1)] = 10


@dataclass
class AveragingConfig(CheckedConfig):
    """Weight averaging; each average is validated every epoch and saved as checkpoints/ema|swa.safetensors,
    with its BatchNorm statistics recomputed first on the first `bn_batches` batches of a shuffled pass over the
    training set (the method's inputs: clean images, or AR-AT's PGD examples)."""

    ema_decay: Annotated[float, Gt(0), Lt(1)] | None = None  # e.g. 0.999: θ_ema ← d·θ_ema + (1 − d)·θ each step
    swa_start: Annotated[int, Ge(0)] | None = None  # SWA: equal-weight mean of the weights from this epoch (0-based)
    # None: average at each epoch end; N: after every N-th optimizer step (AR-AT's SWA: 500, from epoch 76)
    swa_every_steps: Annotated[int, Ge(1)] | None = None
    bn_batches: Annotated[int, Ge(1)] = 50  # ⌈N/batch_size⌉: every training image once (AR-AT's SWA)


@dataclass
class RunConfig(CheckedConfig):
    seed: Annotated[int, Ge(0), Lt(SEED_LIMIT)] = 0  # see runtime.SEED_LIMIT
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    threat: ThreatConfig = field(default_factory=ThreatConfig)
    method: MethodConfig = field(default_factory=lambda: method_class("pgd_at").config_class())
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    averaging: AveragingConfig = field(default_factory=AveragingConfig)
    vulnerability: VulnerabilityConfig = field(default_factory=VulnerabilityConfig)
    # What `advtrain train` evaluates at the end. Of its NOT_IN_FILES fields, `norm` is kept to threat.norm here;
    # advtrain.workflow sets the others for that evaluation.
    eval: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval.norm != self.threat.norm:  # the eval section checks its ε as distances under this norm
            try:
                self.eval = dataclasses.replace(self.eval, norm=self.threat.norm)
            except FieldError as e:
                raise e.under("eval") from None
        validate(self)  # the checks across sections, for a config built in Python as for one read from YAML

    def threat_model(self) -> ThreatModel:
        return ThreatModel(self.threat.norm, self.threat.eps)

    def to_dict(self) -> dict[str, Any]:
        """The options as config.yaml holds them (not the eval fields set for each evaluation)."""
        options = dataclasses.asdict(self)
        options["eval"] = {name: options["eval"][name] for name in file_fields(EvalSettings)}
        return options

    def digest(self) -> str:
        """A short hash of the resolved config, recorded with every checkpoint.

        `train.progress` and `train.tensorboard` are left out: they change what is printed or logged, not what
        is trained, so a run started with a progress bar may be resumed with --quiet, and a run from before
        `train.tensorboard` existed still matches its checkpoints. `train.sync_bn` and `train.attack_graph` count
        only when on, so runs from before they existed match too.
        """
        settings = self.to_dict()
        del settings["train"]["progress"], settings["train"]["tensorboard"]
        for opt_in in ("sync_bn", "attack_graph"):
            if not settings["train"][opt_in]:
                del settings["train"][opt_in]
        text = json.dumps(settings, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """The RunConfig of raw YAML values (checked: RunConfig.__post_init__ validates it)."""
    # The eval section's ε are distances under the threat model's norm: it is built under that norm.
    threat = raw.get("threat")
    try:
        norm = parse_norm(threat.get("norm", "linf") if isinstance(threat, dict) else "linf")
    except ValueError:  # building the threat section names the bad norm
        norm = "linf"
    return build_config(RunConfig, raw, given={"eval": {"norm": norm}})


def load_config(path: Path | str | None, overrides: list[str] | None = None) -> RunConfig:
    """The run config of a YAML file (a path, or a bundled config's name: `config_path`) or of the defaults
    (None), with `key=value` overrides applied."""
    raw = read_yaml(config_path(path)) if path is not None else {}
    return config_from_dict(apply_overrides(raw, overrides or []))


def check_averaging(averaging: AveragingConfig, epochs: int, epochs_name: str) -> None:
    """The averaging settings against the run's length (`epochs_name` names it: train.epochs, or fit's epochs)."""
    if averaging.swa_start is not None and averaging.swa_start >= epochs:
        raise UserError(f"averaging.swa_start {averaging.swa_start} is not before {epochs_name} {epochs}: SWA would "
                        "average nothing; use an earlier epoch (0-based)")
    if averaging.swa_every_steps is not None and averaging.swa_start is None:
        raise UserError("averaging.swa_every_steps needs averaging.swa_start (the 0-based epoch SWA starts at)")


def validate(config: RunConfig) -> None:
    """Checks across fields, and of names against the registries, that the field types cannot express.

    Everything here runs at load time, so a bad config fails before the trainer creates or writes anything.
    """
    # Names first: they are the likeliest typos, and the registries suggest the closest valid name.
    check_dataset_args(config.data.name, config.data.options)
    check_model_args(config.model.name, config.model.options)
    config.method.check_schedule(config.schedule.lr_milestones(), config.schedule.name)
    device = config.train.device
    if device != "auto":
        try:
            torch.device(device)
        except RuntimeError:
            raise UserError(f"train.device: unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    val_size = config.data.val_size
    if val_size >= 1 and not val_size.is_integer():
        raise UserError(
            f"data.val_size {val_size:g} is neither a fraction < 1 nor a whole count of images: "
            f"use e.g. 0.1 or {math.floor(val_size)}"
        )
    if config.data.idbh != "none" and (config.data.crop_padding or config.data.flip):
        raise UserError("data.idbh replaces data.crop_padding and data.flip (it has its own flip and CropShift): "
                        "unset them")
    averaged = {"ema": config.averaging.ema_decay, "swa": config.averaging.swa_start}
    if config.eval.checkpoint in averaged and averaged[config.eval.checkpoint] is None:
        option = "ema_decay" if config.eval.checkpoint == "ema" else "swa_start"
        raise UserError(f"eval.checkpoint: {config.eval.checkpoint} needs averaging.{option} to be set")
    check_averaging(config.averaging, config.train.epochs, "train.epochs")
    if config.optim.name == "adam" and len(config.optim.betas) != 2:
        raise UserError(f"optim.betas must be two numbers [beta1, beta2] for adam, got {config.optim.betas}")
    if config.optim.name == "sgd" and config.optim.nesterov and config.optim.momentum == 0:
        raise UserError("optim.nesterov needs optim.momentum > 0: set a momentum such as 0.9 or drop nesterov")
    normalize = config.model.normalize
    if isinstance(normalize, str) and normalize not in ("none", "dataset"):
        raise UserError("model.normalize must be 'none', 'dataset' or [[means], [stds]]")
    if isinstance(normalize, list):
        if len(normalize) != 2 or len(normalize[0]) != len(normalize[1]) or not normalize[0]:
            raise UserError("model.normalize as a list must be [[means...], [stds...]] of equal, non-zero length")
        if not all(std > 0 for std in normalize[1]):
            raise UserError(f"model.normalize stds must all be > 0, got {normalize[1]}")


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


__all__ = [
    "AveragingConfig",
    "DataConfig",
    "EvalSettings",
    "ModelConfig",
    "MonitorConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "ThreatConfig",
    "TrainConfig",
    "VulnerabilityConfig",
    "apply_overrides",
    "config_from_dict",
    "dump_yaml",
    "load_config",
    "parse_number",
    "read_yaml",
]
