"""Typed run configuration: dataclasses, YAML files, `--set key=value` overrides, validation.

Every option has a named field with its default; unknown keys and bad values raise a one-line
`UserError` with a suggestion. Numbers accept fractions such as `8/255`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from advtrain.attacks import Norm, ThreatModel
from advtrain.errors import UserError
from advtrain.methods import MethodConfig, method_class


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None  # folder or file for on-disk datasets (cifar10, cifar100, svhn, npz)
    val_size: float = 0.1  # a fraction (< 1) or a count of training images held out for validation
    crop_padding: int = 0  # random crop with this much zero padding (4 for CIFAR); 0 = off
    flip: bool = False  # random horizontal flip
    options: dict[str, Any] = field(default_factory=dict)  # source options, e.g. synthetic `shape`


@dataclass
class ModelConfig:
    name: str = "small_cnn"
    # Per-channel normalisation as the model's first layer: "none", "dataset" (training-set mean/std)
    # or an explicit [[means], [stds]].
    normalize: str | list[list[float]] = "none"
    options: dict[str, Any] = field(default_factory=dict)  # builder options, e.g. WRN `sub_block1`


@dataclass
class ThreatConfig:
    norm: Norm = "linf"
    eps: float = 8 / 255


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    # multistep: ×gamma at each milestone epoch; cosine: to 0; cyclic: linear 0 → lr at
    # peak_epoch_fraction of the run → 0 (Wong et al. 2020); plateau: ×factor after `patience` epochs
    # without relative improvement > threshold of the training loss (IGD code); constant.
    name: Literal["multistep", "cosine", "cyclic", "plateau", "constant"] = "multistep"
    milestones: list[float] = field(default_factory=lambda: [100.0, 150.0])
    gamma: float = 0.1
    peak_epoch_fraction: float = 0.5
    patience: int = 10
    threshold: float = 1e-2
    factor: float = 0.1


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: bool | None = None  # None: on for CUDA, off for CPU
    val_steps: int = 10  # validation PGD steps (step ε/4, random start)
    val_max: int | None = None  # validate on at most this many validation images
    select_metric: str = "auto"  # auto: the method's (val_pgd_acc, or val_clean_acc for standard)
    progress: Literal["bar", "quiet"] = "bar"
    threads: int | None = None  # torch CPU threads; None = torch's default


@dataclass
class EvalConfig:
    attacks: list[str] = field(default_factory=lambda: ["clean", "pgd"])
    eps: list[float] | None = None  # None: the threat model's ε
    steps: int = 20
    restarts: int = 1
    step_size: float | None = None  # None: 2.5·ε/steps
    n: int | None = None  # first n test images; None = all
    checkpoint: Literal["best", "last"] = "best"
    batch_size: int = 256


@dataclass
class RunConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    threat: ThreatConfig = field(default_factory=ThreatConfig)
    method: MethodConfig = field(default_factory=lambda: method_class("pgd_at").config_class())
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def threat_model(self) -> ThreatModel:
        return ThreatModel(self.threat.norm, self.threat.eps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short hash of the resolved config, recorded with every checkpoint."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_number(value: Any, where: str) -> float:
    """A float from a number or a string such as '8/255' or '0.03'."""
    if isinstance(value, bool):
        raise UserError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                return float(num) / float(den)
            return float(text)
        except (ValueError, ZeroDivisionError):
            pass
    raise UserError(f"{where}: expected a number such as 0.03 or 8/255, got {value!r}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[-1] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            choices = ", ".join(map(str, allowed))
            raise UserError(f"{where}: {value!r} is not allowed: {hint}choose one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item,) = get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        return parse_number(value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
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
    hints = get_type_hints(cls)
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
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in raw.items()}
    return cls(**kwargs)


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` strings (values parsed as YAML) to a raw config mapping, in order.

    Setting `method.name` to another method drops the options of the method it replaces.
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
        method = raw.get("method")
        if key == "method.name" and isinstance(method, dict) and method.get("name", value) != value:
            # Switching method starts the new one from its own defaults: the file's options belong
            # to the method it named (e.g. `--set method.name=standard` on a pgd_at config).
            raw["method"] = {}
        _set_path(raw, key, value)
    return raw


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    config: RunConfig = _build(RunConfig, raw, "")
    validate(config)
    return config


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file {path} not found: pass an existing YAML file, e.g. configs/digits.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
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
    """Checks across fields that types alone cannot express."""
    checks = [
        (config.train.epochs >= 1, "train.epochs must be >= 1"),
        (config.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (config.optim.lr > 0, "optim.lr must be > 0"),
        (config.threat.eps >= 0, "threat.eps must be >= 0"),
        (config.data.val_size >= 0, "data.val_size must be >= 0 (a fraction < 1 or a count)"),
        (config.data.crop_padding >= 0, "data.crop_padding must be >= 0"),
        (config.train.val_steps >= 0, "train.val_steps must be >= 0"),
        (config.eval.steps >= 1 and config.eval.restarts >= 1, "eval.steps and eval.restarts must be >= 1"),
        (0 < config.schedule.peak_epoch_fraction < 1, "schedule.peak_epoch_fraction must be in (0, 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    normalize = config.model.normalize
    if isinstance(normalize, str) and normalize not in ("none", "dataset"):
        raise UserError("model.normalize must be 'none', 'dataset' or [[means], [stds]]")
    if isinstance(normalize, list) and (len(normalize) != 2 or len(normalize[0]) != len(normalize[1])):
        raise UserError("model.normalize as a list must be [[means...], [stds...]] of equal length")


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


__all__ = [
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "ThreatConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "dump_yaml",
    "load_config",
    "parse_number",
]
