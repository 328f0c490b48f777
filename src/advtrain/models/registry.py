"""Registry from model names to builders, and the shared weight initialisation."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from torch import nn

from advtrain.errors import UserError
from advtrain.registry import Registry

Builder = Callable[..., nn.Module]
_B = TypeVar("_B", bound=Builder)

_REGISTRY: Registry[Builder] = Registry("model")

# Every builder takes these as keyword arguments; anything else is a model-specific option.
_COMMON_ARGS = ("num_classes", "in_channels", "input_size", "normalize")


def register_model(name: str) -> Callable[[_B], _B]:
    """Decorator that makes ``builder`` available to :func:`build_model` under ``name``.

    Re-running the notebook cell that defines ``builder`` replaces it; another builder claiming a taken name
    raises ValueError.
    """

    def decorator(builder: _B) -> _B:
        missing = [a for a in _COMMON_ARGS if a not in inspect.signature(builder).parameters]
        if missing:
            raise TypeError(f"builder for {name!r} must accept keyword arguments {missing}")
        _REGISTRY.add(name, builder)
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return _REGISTRY.names()


def _builder_options(builder: Builder) -> list[str]:
    params = inspect.signature(builder).parameters
    return [p for p in params if p not in _COMMON_ARGS]


def check_model_args(name: str, options: Mapping[str, object] | None = None) -> Builder:
    """The builder of model ``name``; a one-line UserError if the name or an option name is unknown.

    Used by the config loader too, so a typo in ``model.name`` fails before a run directory is created.
    """
    builder = _REGISTRY.get(name)
    known = _builder_options(builder)
    # str(): option names from a hand-edited sidecar need not be strings, and sorting mixed types fails;
    # repr() keeps the message on one line when a name holds a line break.
    unknown = sorted({str(o) if str(o).isprintable() else repr(o) for o in options or {}} - set(known))
    if unknown:
        valid_opts = ", ".join(known) if known else "none"
        raise UserError(
            f"model {name!r} has no option(s) {', '.join(unknown)}; its options are: {valid_opts}"
        )
    return builder


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    **options: object,
) -> nn.Module:
    """Build the registered model ``name``; it takes N×C×H×W inputs in [0, 1] and returns logits.

    ``normalize=(mean, std)`` makes per-channel normalisation the model's first layer without changing
    its state_dict keys. ``options`` are passed to the builder (e.g. ``sub_block1=True`` for WRNs).
    """
    builder = check_model_args(name, options)
    for arg, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("input_size", input_size),
    ):
        # bool is an int subclass; True classes is certainly a mistake.
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{arg} must be a positive integer; got {value!r}")
    return builder(
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        normalize=normalize,
        **options,
    )


def check_input_size(name: str, input_size: int, low: int, high: int | None = None) -> None:
    """Raise UserError if ``input_size`` is outside what model ``name`` is meant for."""
    if input_size < low or (high is not None and input_size > high):
        limit = f"{low}..{high}" if high is not None else f">= {low}"
        raise UserError(
            f"model {name!r} supports input sizes {limit}; got {input_size}: resize the images or pick another model"
        )


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, BN weight 1 / bias 0, zero linear and conv biases.

    This is the initialisation of the TRADES WideResNet and torchvision-style ResNets; linear weights keep
    PyTorch's default.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
