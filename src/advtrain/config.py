"""Typed run configuration: dataclasses, YAML files, `--set key=value` overrides, validation.

Every option has a named field with its default; unknown keys and bad values raise a one-line
`UserError` with a suggestion. Numbers accept fractions such as `8/255`. Single-field ranges are declared on
the fields themselves (`Annotated[int, Ge(1)]`, see `advtrain.bounds`) and checked whenever a config dataclass is
built, from YAML or in Python; `validate()` holds only the checks that involve several fields or a registry of
names, and runs whenever a RunConfig is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import torch
import yaml

from advtrain.attacks import MAX_DISTANCE, Norm, ThreatModel, check_distance, parse_norm
from advtrain.bounds import CheckedConfig, FieldError, Ge, Gt, Le, Lt, Parsed, check_value
from advtrain.data.sources import check_dataset_args
from advtrain.errors import UserError
from advtrain.eval.robustness import check_attack_names
from advtrain.methods import MethodConfig, method_class
from advtrain.models.registry import check_model_args
from advtrain.runtime import SEED_LIMIT, CompileMode
from advtrain.yamltags import refused_tag


@dataclass
class DataConfig(CheckedConfig):
    name: str = "digits"
    root: str | None = None  # folder or file for on-disk datasets (cifar10, cifar100, svhn, npz)
    # A fraction (< 1) or a count of training images held out for validation.
    val_size: Annotated[float, Ge(0, "a fraction < 1 or a count of images")] = 0.1
    crop_padding: Annotated[int, Ge(0)] = 0  # random crop with this much zero padding (4 for CIFAR); 0 = off
    flip: bool = False  # random horizontal flip
    idbh: Literal["none", "weak", "strong"] = "none"  # IDBH augmentation (METHODS.md §4.4), replaces crop/flip when set
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
    eps: Annotated[float, Ge(0), Le(MAX_DISTANCE)] = 8 / 255  # in [0, 1] pixel units: 8/255, not 8 (validate)


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


@dataclass
class MonitorConfig(CheckedConfig):
    """Catastrophic-overfitting monitor (METHODS.md §7.7): PGD and FGSM on a fixed held-out batch.

    The batch is the first `size` images of the validation split; readings go to monitor.jsonl and the
    epoch-end reading also to metrics.jsonl. A reading is flagged as a collapse when PGD accuracy falls more
    than `pgd_drop` below the previous reading or FGSM − PGD accuracy exceeds `fgsm_gap`.
    """

    enabled: bool = True
    size: Annotated[int, Ge(1)] = 512  # METHODS.md §7.7: 512–1024 images
    steps: Annotated[int, Ge(1)] = 10  # PGD-10, random start, step ε/4
    every_steps: Annotated[int, Ge(1)] | None = None  # also read every N optimizer steps
    pgd_drop: Annotated[float, Ge(0), Le(1)] = 0.2
    fgsm_gap: Annotated[float, Ge(0), Le(1)] = 0.3
    stop_on_collapse: bool = False  # stop at the first collapse; the best checkpoint is the one kept


@dataclass
class VulnerabilityConfig(CheckedConfig):
    """Per-example adversarial vulnerability AVᵢ = CE(x'ᵢ) − CE(xᵢ) (METHODS.md §7.5) of a fixed training
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
class EvalConfig(CheckedConfig):
    attacks: list[str] = field(default_factory=lambda: ["clean", "pgd"])  # names: see eval.ATTACK_ALIASES
    eps: list[Annotated[float, Ge(0), Le(MAX_DISTANCE)]] | None = None  # None: the threat model's ε
    steps: Annotated[int, Ge(1)] = 20
    restarts: Annotated[int, Ge(1)] = 1
    step_size: Annotated[float, Gt(0), Le(MAX_DISTANCE)] | None = None  # None: 2.5·ε/steps
    n: Annotated[int, Ge(1)] | None = None  # first n test images; None = all
    checkpoint: Literal["best", "last", "ema", "swa"] = "best"  # ema/swa need the `averaging` section
    # auto: sized to the device's free memory (256 on CPU), see advtrain.eval.batching
    batch_size: Annotated[int, Ge(1)] | Literal["auto"] = "auto"


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
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        validate(self)  # the checks across sections, for a config built in Python as for one read from YAML

    def threat_model(self) -> ThreatModel:
        return ThreatModel(self.threat.norm, self.threat.eps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short hash of the resolved config, recorded with every checkpoint.

        `train.progress` and `train.tensorboard` are left out: they change what is printed or logged, not what
        is trained, so a run started with a progress bar may be resumed with --quiet, and a run from before
        `train.tensorboard` existed still matches its checkpoints.
        """
        settings = self.to_dict()
        del settings["train"]["progress"], settings["train"]["tensorboard"]
        text = json.dumps(settings, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_number(value: Any, where: str) -> float:
    """A float from a number or a string such as '8/255' or '0.03'."""
    if isinstance(value, bool):
        raise UserError(f"{where}: expected a number, got {value!r}")
    number: float | None = None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range, e.g. 10**400
            number = math.inf
    elif isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                number = float(num) / float(den)
            else:
                number = float(text)
        except (ValueError, ZeroDivisionError, OverflowError):
            pass
    if number is None:
        raise UserError(f"{where}: expected a number such as 0.03 or 8/255, got {value!r}")
    # No option means anything at inf or nan: they would only surface later as a diverging loss or an empty
    # attack, after files were written.
    if not math.isfinite(number):
        raise UserError(f"{where}: expected a finite number such as 0.03 or 8/255, got {value!r}")
    return number


def _show(name: str) -> str:
    """`name` as typed, or its repr if it holds a line break or another unprintable character.

    Error messages are one line; a key such as 'a\\nb' from a YAML file must not break that.
    """
    return name if name.isprintable() else repr(name)


_MAX_DEPTH = 16  # of lists and mappings inside an option value


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """`value` if it is made of YAML/JSON scalars, lists and string-keyed mappings, else a UserError.

    Free-form options (`data.options`, `model.options`) end up as keyword arguments and in the JSON
    checkpoint sidecar, so dates, binary blobs, non-string keys and non-finite floats are refused up front.
    The depth limit also stops YAML anchors that make a value contain itself (`&a [*a]`).
    """
    if depth > _MAX_DEPTH:
        option = where.partition("[")[0]  # the option's own name, without the list indices that led here
        raise UserError(f"{option}: nested more than {_MAX_DEPTH} levels deep (or contains itself): simplify it")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UserError(f"{where}: expected a finite number, got {value!r}")
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise UserError(f"{where}: option names must be strings, got {key!r}")
        return {k: _plain(v, f"{where}.{_show(k)}", depth + 1) for k, v in value.items()}
    raise UserError(f"{where}: expected a number, string, list or mapping, got {value!r}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        # Annotated[T, Parsed(f), Ge(1), ...]: parse with f and coerce to T; the bounds are checked when the
        # dataclass is built (bounds.CheckedConfig), as for a config built in Python.
        base, *extras = get_args(tp)
        for extra in extras:
            if isinstance(extra, Parsed):
                value = extra.parse(value, where)
        return _coerce(value, base, where)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, where)
            except UserError as e:
                # A Literal of words speaks for strings only: for a number (`eval.batch_size: 0`), the numeric
                # option's error says what is wrong (its bound), not "choose one of auto".
                if get_origin(option) is not Literal or isinstance(value, str):
                    errors.append(str(e))
        raise UserError(errors[-1] if errors else f"{where}: bad value {value!r}")
    if origin is Literal or tp in (bool, int, str):
        check_value(value, tp, where)  # nothing to convert: YAML writes these as they are
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item,) = get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        # Option mappings become keyword arguments of a loader or model builder, so their names are identifiers.
        for key in value:
            if not (isinstance(key, str) and key.isidentifier()):
                raise UserError(f"{where}: option names are identifiers (letters, digits, _), got {key!r}")
        return _plain(value, where)
    if tp is float:
        return parse_number(value, where)
    if tp is Any:
        return _plain(value, where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def _build(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    if cls is MethodConfig:
        name = raw.get("name", "pgd_at")
        if not isinstance(name, str):
            raise UserError(f"{where}.name: expected a method name, got {name!r}")
        cls = method_class(name).config_class
    hints = get_type_hints(cls, include_extras=True)  # include_extras keeps the Annotated bounds
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f"did you mean {(where + '.' if where else '') + close[0]!r}? " if close else ""
        raise UserError(
            f"unknown option {(where + '.' if where else '') + str(key)!r}: {hint}"
            f"valid options here are {', '.join(sorted(fields))}"
        )
    for f in dataclasses.fields(cls):
        # A nested method (AWP's and IGD's `base`) given in part starts from the wrapper's own default for it
        # when it names the same method: `method.base.steps=5` on igd keeps IGD's eval-mode attack.
        nested = raw.get(f.name)
        if hints[f.name] is MethodConfig and isinstance(nested, dict) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if nested.get("name", default.name) == default.name:
                raw = {**raw, f.name: {**dataclasses.asdict(default), **nested}}
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except FieldError as e:  # named from the class (TRADESConfig.beta): name it as written (method.beta)
        raise e.under(where) from None


def _get_path(raw: dict[str, Any], keys: list[str]) -> Any:
    """The value at `keys` in nested mappings, or None where the path does not exist."""
    node: Any = raw
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {_show(dotted)}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` strings (values parsed as YAML) to a raw config mapping, in order.

    Setting `method.name` (or `method.base.name`) to another method drops the options of the method it replaces.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=30")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        key = key.strip()
        parts = key.split(".")
        if parts[0] == "method" and parts[-1] == "name" and isinstance(value, str):
            # Switching a method (`method.name`, or the method AWP wraps, `method.base.name`) starts the new
            # one from its own defaults: the file's options belong to the method it named (e.g. `--set
            # method.name=standard` on a pgd_at config). Only a string can name a method, and comparing two
            # YAML values can recurse forever when an anchor makes one contain itself (`[&a [*a]]`).
            parent = _get_path(raw, parts[:-1])
            if isinstance(parent, dict) and parent.get("name", value) != value:
                _set_path(raw, ".".join(parts[:-1]), {})  # a new mapping: a YAML alias of the old one keeps it
        _set_path(raw, key, value)
    return raw


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    return _build(RunConfig, raw, "")  # RunConfig.__post_init__ validates it


def read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        found = sorted(p.name for pattern in ("*.yaml", "*.yml") for p in path.glob(pattern))[:3]
        fix = f"one of its YAML files ({', '.join(found)})" if found else "a YAML file, e.g. configs/digits.yaml"
        raise UserError(f"config file {path} is a folder: pass {fix}")
    if not path.is_file():
        raise UserError(f"config file {path} not found: pass an existing YAML file, e.g. configs/digits.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # e.g. --config pointing at a weights file
        raise UserError(f"config file {path} is not UTF-8 text: pass a YAML config, e.g. configs/digits.yaml") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        tag = refused_tag(e)
        if tag is not None:
            raise UserError(f"config file {path} {tag}: write plain values instead") from None
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {path} is not valid YAML{at}: fix the syntax") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (data, model, method, ...)")
    return raw


def load_config(path: Path | None, overrides: list[str] | None = None) -> RunConfig:
    raw = read_yaml(path) if path is not None else {}
    return config_from_dict(apply_overrides(raw, overrides or []))


def validate(config: RunConfig) -> None:
    """Checks across fields, and of names against the registries, that the field types cannot express.

    Everything here runs at load time, so a bad config fails before the trainer creates or writes anything.
    """
    # Names first: they are the likeliest typos, and the registries suggest the closest valid name.
    check_dataset_args(config.data.name, config.data.options)
    check_model_args(config.model.name, config.model.options)
    check_attack_names(config.eval.attacks, "eval.attacks")
    config.method.check_schedule(config.schedule.lr_milestones(), config.schedule.name)
    if not config.eval.attacks:
        raise UserError("eval.attacks is empty: name at least one attack, e.g. [clean, pgd]")
    device = config.train.device
    if device != "auto":
        try:
            torch.device(device)
        except RuntimeError:
            raise UserError(f"train.device: unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    # Distances in 0..255 pixel units (threat.eps: 8) are refused under L∞, where they are unmistakable.
    norm = config.threat.norm
    check_distance(config.threat.eps, norm, "threat.eps")
    for i, eps in enumerate(config.eval.eps or ()):
        check_distance(eps, norm, f"eval.eps[{i}]")
    if config.eval.step_size is not None:
        check_distance(config.eval.step_size, norm, "eval.step_size")
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
    if config.averaging.swa_start is not None and config.averaging.swa_start >= config.train.epochs:
        raise UserError(f"averaging.swa_start {config.averaging.swa_start} is not before train.epochs "
                        f"{config.train.epochs}: SWA would average nothing; use an earlier epoch (0-based)")
    if config.averaging.swa_every_steps is not None and config.averaging.swa_start is None:
        raise UserError("averaging.swa_every_steps needs averaging.swa_start (the 0-based epoch SWA starts at)")
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
    "EvalConfig",
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
]
