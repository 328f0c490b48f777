import math

import pytest
import yaml

from advtrain.config import RunConfig, ScheduleConfig, config_from_dict, dump_yaml, load_config, parse_number
from advtrain.errors import UserError
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
