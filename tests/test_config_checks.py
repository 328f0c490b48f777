"""Config dataclasses built in Python are checked like configs read from YAML: every field's bound, choices and
type, with the same one-line error (a UserError and a ValueError) naming the field."""

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin, get_type_hints

import pytest

from advtrain.bounds import Bound, Parsed, file_fields
from advtrain.checkpoint import save_weights
from advtrain.config import (
    AveragingConfig,
    DataConfig,
    EvalSettings,
    ModelConfig,
    MonitorConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    ThreatConfig,
    TrainConfig,
    VulnerabilityConfig,
    load_config,
)
from advtrain.errors import UserError
from advtrain.methods import list_methods, method_class
from advtrain.methods.awp import AWPConfig
from advtrain.methods.iseat import ISEATConfig
from advtrain.methods.pgd_at import PGDATConfig
from advtrain.methods.trades import TRADESConfig
from advtrain.models.spec import ModelSpec

# (class, its section in a YAML config, overrides that select it there)
SECTIONS = [(cls, section, []) for section, cls in [
    ("data", DataConfig), ("model", ModelConfig), ("threat", ThreatConfig), ("optim", OptimConfig),
    ("schedule", ScheduleConfig), ("train", TrainConfig), ("monitor", MonitorConfig),
    ("vulnerability", VulnerabilityConfig), ("averaging", AveragingConfig), ("eval", EvalSettings)]]
SECTIONS += [(method_class(m).config_class, "method", [f"method.name={m}"])
             for m in list_methods() if not m.startswith("test_")]  # not the methods other test files register
SECTIONS += [(RunConfig, "", [])]


def _unwrap(tp: object) -> tuple[object, bool]:
    """The type inside `X | None` (or `X | Literal[...]`), and whether the field holds a list of it."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in get_args(tp) if a is not type(None) and get_origin(a) is not Literal)
    if get_origin(tp) is list:
        return get_args(tp)[0], True
    return tp, False


def _bounded() -> list[tuple[type, str, list[str], str, Bound, type, bool]]:
    """(class, section, overrides, field, bound, base type, is a list) for every bound of every config class."""
    found = []
    for cls, section, overrides in SECTIONS:
        for name, tp in get_type_hints(cls, include_extras=True).items():
            if name not in file_fields(cls):
                continue  # not an option of config files (EvalSettings.seed): see test_settings_set_per_evaluation
            tp, is_list = _unwrap(tp)
            if get_origin(tp) is Annotated:
                base, *marks = get_args(tp)
                found += [(cls, section, overrides, name, m, base, is_list) for m in marks if isinstance(m, Bound)]
    return found


BOUNDED = _bounded()


# The fields' own bound on a distance (MAX_DISTANCE) is the L2 one; under L∞ (the default norm) the classes refuse
# more than 1. Per class: what sets the L2 norm in Python, and in a YAML config.
L2_NORM = {ThreatConfig: ({"norm": "l2"}, ["threat.norm=l2"]), EvalSettings: ({"norm": "l2"}, ["threat.norm=l2"])}


@pytest.fixture(scope="module")
def required(tmp_path_factory) -> dict[type, dict[str, str]]:
    """Options a class needs before it can be built at all: igd refuses to build without a real teacher."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    spec = ModelSpec("small_cnn", 10, 1, 8)
    save_weights(path, spec.build().state_dict(), {"model": spec.to_dict()})
    return {method_class("igd").config_class: {"teacher": str(path)}}


def _beyond_and_inside(bound: Bound, base: type) -> tuple[float, float]:
    """A value just outside the bound, and one inside it (the limit itself unless the bound is strict)."""
    step = 1 if base is int else 1e-6 * max(1.0, abs(bound.limit))
    below = bound.symbol in (">=", ">")
    beyond = bound.limit - step if below else bound.limit + step
    inside = bound.limit + (step if below else -step) if bound.symbol in (">", "<") else bound.limit
    return base(beyond), base(inside)


@pytest.mark.parametrize(
    ("cls", "section", "overrides", "name", "bound", "base", "is_list"), BOUNDED,
    ids=[f"{c.__name__}.{n}{b.symbol}{b.limit}" for c, _, _, n, b, *_ in BOUNDED],
)
def test_every_bound_is_checked_in_python_with_the_yaml_message(
        cls, section, overrides, name, bound, base, is_list, required):
    beyond, inside = _beyond_and_inside(bound, base)
    kwargs = required.get(cls, {})
    l2_kwargs, l2_overrides = L2_NORM.get(cls, ({}, []))
    field = f"{name}[0]" if is_list else name
    with pytest.raises(ValueError) as python:
        cls(**kwargs, **l2_kwargs, **{name: [beyond] if is_list else beyond})
    message = str(python.value)
    assert isinstance(python.value, UserError)
    assert message.startswith(f"{cls.__name__}.{field}"), message
    # Seeds at 2**63 are refused one step earlier, as integers that torch cannot take.
    assert f" must be {bound.symbol} {bound.limit}" in message or "64-bit integer" in message, message
    assert "\n" not in message

    # The YAML path raises the same error, named from the section instead of the class.
    text = repr(beyond) if is_list or base is float else str(beyond)
    option = f"{section}.{name}" if section else name
    with pytest.raises(UserError) as yaml:
        load_config(None, [*overrides, *l2_overrides, *(f"{section}.{k}={v}" for k, v in kwargs.items()),
                           f"{option}=[{text}]" if is_list else f"{option}={text}"])
    assert str(yaml.value) == message.replace(f"{cls.__name__}.", f"{section}." if section else "", 1)

    config = cls(**kwargs, **l2_kwargs, **{name: [inside] if is_list else inside})
    assert getattr(config, name) == ([inside] if is_list else inside)


def test_every_config_class_has_bounds_to_check():
    # Methods without a numeric option (fgsm, standard) have none; every other class must show up above.
    bounded = {cls for cls, *_ in BOUNDED}
    assert {TRADESConfig, TrainConfig, OptimConfig, EvalSettings, RunConfig, AWPConfig} <= bounded


def _choice_fields() -> list[tuple[type, str, tuple[str, ...]]]:
    found = []
    for cls, _, _ in SECTIONS:
        for name, tp in get_type_hints(cls, include_extras=True).items():
            if get_origin(tp) is Annotated and any(isinstance(e, Parsed) for e in get_args(tp)):
                continue  # a parsed field (threat.norm) names its own spellings: see the norm test below
            options = get_args(tp) if get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
            options = tuple(get_args(o)[0] if get_origin(o) is Annotated else o for o in options)
            found += [(cls, name, get_args(o)) for o in options if get_origin(o) is Literal]
    return found


CHOICES = _choice_fields()


@pytest.mark.parametrize(("cls", "name", "allowed"), CHOICES, ids=[f"{c.__name__}.{n}" for c, n, _ in CHOICES])
def test_every_choice_is_checked_in_python(cls, name, allowed, required):
    kwargs = required.get(cls, {})
    typo = allowed[0] + "x"
    with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{name}: '{typo}' is not allowed: did you mean "
                                         rf"'{allowed[0]}'\? choose one of"):
        cls(**kwargs, **{name: typo})
    assert getattr(cls(**kwargs, **{name: allowed[-1]}), name) == allowed[-1]


@pytest.mark.parametrize(("build", "message"), [
    (lambda: TRADESConfig(steps=2.5), r"^TRADESConfig\.steps: expected an integer, got 2\.5$"),
    (lambda: TRADESConfig(steps=True), r"^TRADESConfig\.steps: expected an integer, got True$"),
    (lambda: TRADESConfig(beta="6"), r"^TRADESConfig\.beta: expected a number, got '6'$"),
    (lambda: TRADESConfig(beta=math.nan), r"^TRADESConfig\.beta: expected a finite number, got nan$"),
    (lambda: TRADESConfig(beta=math.inf), r"^TRADESConfig\.beta: expected a finite number, got inf$"),
    (lambda: TrainConfig(epochs=2**64), r"^TrainConfig\.epochs: 18446744073709551616 does not fit in a 64-bit"),
    (lambda: OptimConfig(betas=0.9), r"^OptimConfig\.betas: expected a list, got 0\.9$"),
    (lambda: DataConfig(flip="yes"), r"^DataConfig\.flip: expected true or false, got 'yes'$"),
    (lambda: AWPConfig(base=PGDATConfig(steps=0)), r"^PGDATConfig\.steps must be >= 1, got 0$"),
    (lambda: RunConfig(method="trades"), r"^RunConfig\.method: expected a MethodConfig, got 'trades'$"),
    (lambda: RunConfig(train=TrainConfig(epochs=0)), r"^TrainConfig\.epochs must be >= 1, got 0$"),
])
def test_wrong_types_and_values_are_refused_in_python(build, message):
    with pytest.raises(ValueError, match=message) as info:
        build()
    assert isinstance(info.value, UserError)


def test_a_run_config_built_in_python_gets_the_checks_across_sections():
    """The checks that involve several sections run whenever a RunConfig is built, not only from YAML."""
    with pytest.raises(UserError, match=r"^train\.device: unknown device 'gpu'"):
        RunConfig(train=TrainConfig(device="gpu"))
    with pytest.raises(UserError, match=r"^iseat switches λ on at the first LR milestone, but schedule cosine"):
        RunConfig(method=ISEATConfig(), schedule=ScheduleConfig("cosine"))
    with pytest.raises(UserError, match=r"^averaging\.swa_start 3 is not before train\.epochs 3"):
        RunConfig(train=TrainConfig(epochs=3), averaging=AveragingConfig(swa_start=3))
    config = RunConfig(method=TRADESConfig(beta=1), train=TrainConfig(epochs=3))
    assert config.method.beta == 1 and config.train.epochs == 3
    # dataclasses.replace builds a new config, so it is checked too.
    with pytest.raises(ValueError, match=r"^TRADESConfig\.beta must be >= 0, got -1$"):
        dataclasses.replace(config.method, beta=-1)


def test_yaml_and_python_refuse_a_config_the_same_way_in_the_cli(tmp_path):
    """The loader names the option as written, however deep: the wrapped method of awp."""
    with pytest.raises(ValueError, match=r"^method\.base\.steps must be >= 1, got 0$"):
        load_config(None, ["method.name=awp", "method.base.steps=0"])
    path = tmp_path / "c.yaml"
    path.write_text("optim: {betas: [0.9, 1]}\n")
    with pytest.raises(ValueError, match=r"^optim\.betas\[1\] must be < 1, got 1\.0$"):
        load_config(Path(path))


def test_a_norm_spelling_is_normalised_in_python_as_in_yaml():
    from advtrain.config import ThreatConfig, load_config

    assert ThreatConfig(norm="Linf").norm == "linf" == load_config(None, ["threat.norm=Linf"]).threat.norm
    assert ThreatConfig(norm="L2", eps=0.5).norm == "l2"
    with pytest.raises(ValueError, match=r"ThreatConfig\.norm: unknown norm 'foo'; use linf"):
        ThreatConfig(norm="foo")


def test_settings_set_per_evaluation():
    """EvalSettings' fields that config files do not set (NOT_IN_FILES) are still checked in Python; a run config's
    `eval:` section refuses them by name and leaves them out of config.yaml."""
    with pytest.raises(ValueError, match=r"^EvalSettings\.seed must be >= 0, got -1$"):
        EvalSettings(seed=-1)
    with pytest.raises(ValueError, match=r"^EvalSettings\.precision: 'fp16' is not allowed: .* auto, fp32, bf16$"):
        EvalSettings(precision="fp16")
    with pytest.raises(UserError, match=r"^unknown option 'eval\.seed': valid options here are attacks, batch_size, "
                                        r"checkpoint, eps, n, restarts, step_size, steps$"):
        load_config(None, ["eval.seed=3"])
    assert list(load_config(None).to_dict()["eval"]) == file_fields(EvalSettings)
    assert set(file_fields(EvalSettings)) == {"attacks", "eps", "steps", "restarts", "step_size", "n", "checkpoint",
                                              "batch_size"}


def test_the_eval_section_takes_the_threat_models_norm():
    assert RunConfig(threat=ThreatConfig(norm="l2", eps=0.5)).eval.norm == "l2"
    assert load_config(None, ["threat.norm=L2", "threat.eps=0.5", "eval.eps=[2]"]).eval.eps == [2.0]  # an L2 radius
    # Under the run's L∞ threat model, an ε of 2 is in 0..255 pixel units, whatever norm the section was built with.
    with pytest.raises(UserError, match=r"^eval\.eps\[0\]=2 is in 0\.\.255 pixel units; advtrain uses \[0, 1\]"):
        RunConfig(eval=EvalSettings(eps=[2], norm="l2"))
    with pytest.raises(UserError, match=r"^unknown option 'eval\.norm': valid options here are attacks,"):
        load_config(None, ["eval.norm=l2"])
