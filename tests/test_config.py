import math
import tempfile
import types
import typing
from pathlib import Path
from typing import Annotated, get_args, get_origin, get_type_hints

import pytest
import yaml

from advtrain.bounds import Bound, Ge, Gt, Le, Lt, file_fields
from advtrain.checkpoint import save_weights
from advtrain.config import RunConfig, ScheduleConfig, config_from_dict, dump_yaml, load_config, parse_number
from advtrain.configfile import bundled_configs
from advtrain.errors import UserError
from advtrain.methods import list_methods, method_class
from advtrain.models.spec import ModelSpec
from advtrain.train.schedule import LRSchedule


def test_fractions_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("threat: {eps: 8/255}\nmethod: {name: pgd_at, steps: 7}\n")
    config = load_config(path, ["train.epochs=3", "method.step_size=2/255", "optim.nesterov=true"])
    assert config.threat.eps == 8 / 255
    assert config.method.steps == 7 and config.method.step_size == 2 / 255
    assert config.train.epochs == 3 and config.optim.nesterov is True


def test_method_section_becomes_the_methods_typed_config():
    config = load_config(None, ["method.name=standard"])
    assert type(config.method).__name__ == "StandardConfig"
    with pytest.raises(UserError, match=r"method\.steps"):
        load_config(None, ["method.name=standard", "method.steps=3"])


def test_switching_method_drops_the_other_methods_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: {name: pgd_at, steps: 7}\n")
    assert load_config(path, ["method.name=standard"]).method.name == "standard"
    assert load_config(path, ["method.name=pgd_at"]).method.steps == 7
    assert load_config(path, ["method.name=standard", "method.name=pgd_at"]).method.steps == 10


def test_switching_the_method_awp_wraps_drops_the_old_base_options_but_keeps_awps_own(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: {name: awp, gamma: 0.02, base: {name: trades, beta: 3.0, steps: 5}}\n")
    config = load_config(path, ["method.base.name=mart"])
    assert type(config.method.base).__name__ == "MARTConfig"
    assert config.method.base.beta == 6.0 and config.method.base.steps == 10  # MART's defaults
    assert config.method.gamma == 0.02  # AWP's own option stays
    assert load_config(path, ["method.base.name=trades"]).method.base.beta == 3.0  # same base: kept


def test_a_partly_given_wrapped_method_keeps_the_wrappers_default_for_it():
    # IGD attacks in eval mode (its own default base); setting one base option must not reset that to
    # pgd_at's train-mode default. AWP's default base is plain pgd_at (train mode).
    teacher = f"method.teacher={_teacher_file()}"
    igd = load_config(None, ["method.name=igd", teacher, "method.base.steps=5"]).method
    assert igd.base.steps == 5 and igd.base.bn_mode == "eval"
    assert load_config(None, ["method.name=awp", "method.base.steps=5"]).method.base.bn_mode == "train"
    # Another base starts from its own defaults.
    trades = load_config(None, ["method.name=igd", teacher, "method.base.name=trades", "method.base.steps=5"])
    assert type(trades.method.base).__name__ == "TRADESConfig" and trades.method.base.beta == 6.0


def test_resolved_config_round_trips_through_yaml():
    config = load_config(None, ["threat.eps=0.2", "data.val_size=100", "schedule.milestones=[5, 8]"])
    again = config_from_dict(yaml.safe_load(dump_yaml(config)))
    assert again == config and again.digest() == config.digest()
    assert load_config(None, ["train.epochs=2"]).digest() != RunConfig().digest()


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epoch=3", "did you mean 'train.epochs'"),
        ("optim.name=sdg", "did you mean 'sgd'"),
        ("method.name=pgd_att", "did you mean 'pgd_at'"),
        ("threat.eps=abc", "expected a number"),
        ("train.epochs=2.5", "expected an integer"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("model.normalize=maybe", "model.normalize"),
        ("noequals", "expected key=value"),
    ],
)
def test_bad_values_give_one_line_errors_with_a_fix(override, fragment):
    with pytest.raises(UserError) as info:
        load_config(None, [override])
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_parse_number():
    assert parse_number("8/255", "x") == 8 / 255
    assert parse_number(" 0.5 ", "x") == 0.5
    for bad in ("1/0", "eight", True):
        with pytest.raises(UserError):
            parse_number(bad, "x")


def test_schedules_follow_their_closed_forms():
    multistep = LRSchedule(ScheduleConfig("multistep", milestones=[2, 4], gamma=0.1), 0.1, 6)
    assert [round(multistep.lr_at(t), 10) for t in (0, 1.99, 2, 3.5, 4, 5.9)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    cosine = LRSchedule(ScheduleConfig("cosine"), 0.2, 10)
    assert cosine.lr_at(0) == pytest.approx(0.2) and cosine.lr_at(5) == pytest.approx(0.1)
    assert cosine.lr_at(10) == pytest.approx(0.0, abs=1e-12)
    assert cosine.lr_at(2.5) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)))
    cyclic = LRSchedule(ScheduleConfig("cyclic", peak_epoch_fraction=0.4), 0.2, 10)
    assert [cyclic.lr_at(t) for t in (0, 2, 4, 7, 10)] == pytest.approx([0, 0.1, 0.2, 0.1, 0])


def test_plateau_reduces_after_patience_epochs_without_relative_improvement():
    s = LRSchedule(ScheduleConfig("plateau", patience=2, threshold=0.01, factor=0.1), 0.1, 50)
    for loss in (1.0, 0.995, 0.995, 0.995):  # 0.995 is not 1% better than 1.0
        s.end_epoch(loss)
    assert s.lr_at(4) == pytest.approx(0.01)
    s.end_epoch(0.5)
    state = s.state_dict()
    other = LRSchedule(ScheduleConfig("plateau", patience=2, threshold=0.01, factor=0.1), 0.1, 50)
    other.load_state_dict(state)
    assert other.lr_at(5) == s.lr_at(5) and other.best == 0.5



def _bounds_of(tp: object, key: str, extra: list[str]) -> list[tuple[str, list[str], Bound, type]]:
    """The bounds of one field: on its type, on the type inside `X | None`, or on the items of a list."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is list:
        (tp,), key = get_args(tp), f"{key}[]"
    if get_origin(tp) is not Annotated:
        return []
    base, *marks = get_args(tp)
    return [(key, extra, m, base) for m in marks if isinstance(m, Bound)]


def _teacher_file() -> Path:
    """A real weights file with its sidecar: igd's config refuses to load without a teacher."""
    path = Path(tempfile.mkdtemp(prefix="advtrain-teacher-")) / "teacher.safetensors"
    spec = ModelSpec("small_cnn", 10, 1, 8)
    save_weights(path, spec.build().state_dict(), {"model": spec.to_dict()})
    return path


# Options a method needs before any of its fields can be checked.
REQUIRED = {"igd": [f"method.teacher={_teacher_file()}"]}
# Options a single field needs before it can be checked.
# The fields' own bound on a distance (MAX_DISTANCE) is the L2 one; under L∞ validate() refuses more than 1.
FIELD_REQUIRED = {"averaging.swa_every_steps": ["averaging.swa_start=0"],
                  **{key: ["threat.norm=l2"] for key in ("threat.eps", "eval.eps", "eval.step_size")}}


def _bounded_fields() -> list[tuple[str, list[str], Bound, type]]:
    """(dotted key, overrides it needs, bound, base type) for every bounded field of every config section."""
    sections = [(n, tp, []) for n, tp in get_type_hints(RunConfig).items() if n != "method" and isinstance(tp, type)]
    sections += [("method", method_class(m).config_class, [f"method.name={m}", *REQUIRED.get(m, [])])
                 for m in list_methods()]
    found = _bounds_of(get_type_hints(RunConfig, include_extras=True)["seed"], "seed", [])
    for section, cls, extra in sections:
        for name, tp in get_type_hints(cls, include_extras=True).items():
            if name not in file_fields(cls):
                continue  # set for each evaluation, not by config files (EvalSettings.seed)
            key = f"{section}.{name}"
            found += _bounds_of(tp, key, [*extra, *FIELD_REQUIRED.get(key, [])])
    return found


BOUNDED = _bounded_fields()


def test_the_range_checks_are_declared_on_the_fields():
    keys = {key for key, *_ in BOUNDED}
    expected = {
        "train.epochs", "train.batch_size", "optim.lr", "threat.eps", "data.val_size", "data.crop_padding",
        "train.val_steps", "eval.steps", "eval.restarts", "eval.batch_size", "eval.n", "train.val_max",
        "train.threads", "optim.momentum", "optim.weight_decay", "schedule.gamma", "schedule.factor",
        "schedule.patience", "method.steps", "method.step_size", "eval.eps[]", "seed",
    }
    assert expected <= keys, expected - keys


@pytest.mark.parametrize(
    ("key", "extra", "bound", "base"), BOUNDED, ids=[f"{k}{b.symbol}{b.limit}" for k, _, b, _ in BOUNDED]
)
def test_every_bound_refuses_values_beyond_it_and_accepts_its_limit(key, extra, bound, base):
    step = 1 if base is int else 1e-6 * max(1.0, abs(bound.limit))
    below = bound.symbol in (">=", ">")  # a lower bound
    beyond = bound.limit - step if below else bound.limit + step
    strict = bound.symbol in (">", "<")
    inside = bound.limit + (step if below else -step) if strict else bound.limit
    where = key.replace("[]", "[0]")

    def load(value: float) -> RunConfig:
        text = repr(float(value)) if base is float else str(int(value))
        return load_config(None, [*extra, f"{key[:-2]}=[{text}]" if key.endswith("[]") else f"{key}={text}"])

    for refused in (beyond, bound.limit) if strict else (beyond,):
        with pytest.raises(UserError) as info:
            load(refused)
        message = str(info.value)
        assert message.startswith(where) and "\n" not in message, message
        # Seeds at 2**63 are refused one step earlier, as integers that torch cannot take.
        assert f"must be {bound.symbol} {bound.limit}" in message or "64-bit integer" in message, message
    node: object = load(inside)
    for part in where.removesuffix("[0]").split("."):
        node = getattr(node, part)
    assert (node[0] if key.endswith("[]") else node) == pytest.approx(inside)  # type: ignore[index]


def test_bounds_refuse_nan_and_let_an_unset_option_pass():
    assert Ge(0).holds(0) and not Gt(0).holds(0) and Le(1).holds(1) and not Lt(1).holds(1)
    for bound in (Ge(0), Gt(0), Le(1), Lt(1)):
        assert not bound.holds(math.nan)
        bound.check(None, "x")
    with pytest.raises(UserError, match=r"^x must be >= 0 \(a count\), got nan$"):
        Ge(0, "a count").check(math.nan, "x")


CONFIGS = Path(__file__).parents[1] / "configs"


def test_mart_resnet18_config_uses_the_released_scripts_beta():
    # YisenWang/MART train_resnet.py (the ResNet-18 script) defaults to --beta 5.0; the WideResNet one to 6.
    config = load_config(CONFIGS / "cifar10_resnet18_mart.yaml")
    assert config.method.name == "mart" and config.model.name == "resnet18" and config.method.beta == 5.0


@pytest.mark.parametrize("r", [1, 2, 3])
def test_sat_r_configs_describe_the_validation_the_code_runs(r):
    path = CONFIGS / f"cifar10_wrn28_10_sat_r{r}.yaml"
    config = load_config(path)
    method = method_class(config.method.name)
    # What the trainer does for these methods: select on I-FGSM-3 validation accuracy.
    assert method.validation_attack == "ifgsm" and method.selection_metric == "val_ifgsm_acc"
    assert config.train.select_metric == "auto"
    header = " ".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert "I-FGSM-3" in header and "val_ifgsm_acc" in header
    assert "PGD-10" not in header  # the old comment claimed validation used the trainer's PGD-10


# RunConfig.digest() of every bundled config (but the IGD ones, whose digest holds their teacher's path), as recorded
# before the eval section became EvalSettings (the ImageNet-scale ones: when they were added). Every checkpoint stores
# it and resuming compares it, so it must not change: old runs stay resumable.
BUNDLED_DIGESTS = {
    "cifar10_preact_resnet18_awp": "97f9ca12695a56b6",
    "cifar10_preact_resnet18_fgsm": "c792c054df46e38f",
    "cifar10_preact_resnet18_fgsm_rs": "a1b27b146a81f4d3",
    "cifar10_preact_resnet18_grad_align": "96e898cd1b52080b",
    "cifar10_preact_resnet18_iseat": "4017f4edd12a7084",
    "cifar10_preact_resnet18_n_fgsm": "48034ca39532f2dd",
    "cifar10_preact_resnet18_pgd_at": "2f8c0b5a48fb526a",
    "cifar10_resnet18_arat": "d6eb870186942403",
    "cifar10_resnet18_arat_swa": "9122c9eb5f387cc2",
    "cifar10_resnet18_mart": "4db195054d7a2d1e",
    "cifar10_resnet18_standard": "d3c19c95d1407c0f",
    "cifar10_wrn28_10_sat_r1": "0663449d6f034fa2",
    "cifar10_wrn28_10_sat_r2": "b754ce394e1f5afe",
    "cifar10_wrn28_10_sat_r3": "7c62291ac76142ab",
    "cifar10_wrn34_10_arat": "79f0509ef55224e5",
    "cifar10_wrn34_10_pgd_at": "9ded867c10f3e91f",
    "cifar10_wrn34_10_trades": "94d411b05f7b80df",
    "cifar10_wrn34_10_trades_awp": "4800c46387b8bd34",
    "digits": "7a7d945be3f8bd9b",
    "digits_arat": "0b11d09cce333ed9",
    "digits_awp": "7a6d6fb6cadb0417",
    "digits_fgsm": "ac4fbb053e23e3f9",
    "digits_fgsm_rs": "afe9495f2593d3a8",
    "digits_grad_align": "ed8ca942a8bd0a00",
    "digits_iseat": "45da2e4924dcc1fe",
    "digits_mart": "8217571985c9d3b2",
    "digits_n_fgsm": "2c394322bad360e6",
    "digits_sat_r1": "b14bdb82bef72ff9",
    "digits_sat_r2": "58c1a4f11f871540",
    "digits_sat_r3": "578c1231a4f7e6e9",
    "digits_trades": "3fb5bf56216da6fb",
    "imagenet100_resnet18_pgd_at": "cac8123e0c5be8b2",
    "imagenet100_resnet18_standard": "f4dc183e6385df57",
    "tiny_imagenet_resnet18_standard": "37ca45e3348d50fc",
}
EVAL_OVERRIDES = ["eval.attacks=[clean, fgsm, aa]", "eval.eps=[2/255, 8/255]", "eval.steps=7", "eval.restarts=2",
                  "eval.step_size=1/255", "eval.n=100", "eval.batch_size=64", "eval.checkpoint=last"]


def test_the_digests_of_the_bundled_configs_are_the_ones_old_runs_recorded():
    bundled = bundled_configs()
    assert set(BUNDLED_DIGESTS) == {name for name in bundled if not name.endswith("_igd")}
    assert {name: load_config(bundled[name]).digest() for name in BUNDLED_DIGESTS} == BUNDLED_DIGESTS
    assert load_config(None).digest() == "573cdcc63e1a8dfa"
    assert load_config(bundled["digits"], EVAL_OVERRIDES).digest() == "04cf96467c3f5464"
    assert load_config(None, ["threat.norm=l2", "threat.eps=0.5", "eval.eps=[0.25, 2]"]).digest() == "272da7c7e9e46345"
