"""`--config NAME` names a bundled config; `advtrain configs` lists them; `advtrain train --help` lists the methods
and models; the device, precision and seed flags say what they do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from advtrain.checkpoint import save_weights
from advtrain.cli import main
from advtrain.cli.parser import build_parser
from advtrain.config import load_config
from advtrain.configfile import BUNDLED_CONFIGS, bundled_configs, config_description, config_path, read_yaml
from advtrain.data.sources.folders import class_list_path
from advtrain.errors import UserError
from advtrain.methods import list_methods
from advtrain.models import list_models
from advtrain.models.spec import ModelSpec
from advtrain.registry import suggestion

SRC = Path(__file__).resolve().parents[1] / "src"


def test_a_bundled_config_is_named_with_or_without_yaml():
    path = BUNDLED_CONFIGS / "digits_trades.yaml"
    assert config_path("digits_trades") == path == config_path("digits_trades.yaml")
    assert load_config("digits_trades").to_dict() == load_config(path).to_dict()
    assert load_config("digits_trades").method.name == "trades"


def test_a_path_that_exists_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("digits_trades.yaml").write_text("method: {name: mart}\n")
    assert config_path("digits_trades.yaml") == Path("digits_trades.yaml")
    assert load_config("digits_trades.yaml").method.name == "mart"
    assert load_config("digits_trades").method.name == "trades"  # no file of that name here: the bundled one


def test_a_missing_path_with_a_folder_is_reported_as_a_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"^config file .*nowhere/digits\.yaml not found"):
        load_config(tmp_path / "nowhere" / "digits.yaml")


def test_an_unknown_name_lists_the_closest_bundled_names():
    with pytest.raises(UserError) as raised:
        config_path("digits_trade")
    message = str(raised.value)
    assert message.startswith("config 'digits_trade' not found, as a file or a bundled config: did you mean "
                              "'digits_trades'")
    assert "`advtrain configs` lists the bundled ones" in message and "\n" not in message
    assert suggestion("digits_fgsm_r", list(bundled_configs()), 3).startswith("did you mean 'digits_fgsm_rs', ")
    assert suggestion("zzz", ["digits"], 3) == ""


def test_train_with_a_bundled_name_reads_that_config(tmp_path, capsys):
    # The bundled config is read before any check: its option then fails, so nothing trains or is written.
    out = tmp_path / "run"
    assert main(["train", "--config", "digits_trades", "--set", "method.beta=-1", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "advtrain: error: method.beta must be >= 0, got -1.0\n"
    assert not out.exists()


def test_an_unknown_config_name_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "advtrain", "train", "--config", "digits_trdes", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("advtrain: error: config 'digits_trdes' not found, as a file or a bundled config: "
                                  "did you mean 'digits_trades'")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_configs_lists_every_bundled_config_with_its_description(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    bundled = bundled_configs()
    assert [line.split()[0] for line in lines] == list(bundled)
    digits = next(line for line in lines if line.split()[0] == "digits")
    assert digits.split(None, 1)[1] == "PGD-AT on scikit-learn's bundled 8×8 digits"
    assert all(config_description(path) for path in bundled.values())  # every bundled config says what it is


def test_a_config_without_a_leading_comment_has_no_description(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\n# not leading\n")
    assert config_description(path) == ""
    path.write_text("\n# A recipe (Someone et al. 2020: its\n# code). More: details\nseed: 1\n")
    assert config_description(path) == "A recipe (Someone et al. 2020: its code)"
    path.write_text("# The recipe of Rice et al. 2020. Details\n")
    assert config_description(path) == "The recipe of Rice et al. 2020"
    path.write_text("# One line, no full stop\n")
    assert config_description(path) == "One line, no full stop"


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_train_help_lists_the_methods_and_models(capsys):
    text = _help(capsys, ["train", "--help"])
    assert f"methods (--set method.name=...): {', '.join(list_methods())}." in text
    assert f"models (--set model.name=...): {', '.join(list_models())}." in text
    assert "a bundled config by name (`advtrain configs` lists them" in text


@pytest.mark.parametrize("command", ["eval", "diagnose", "bench"])
def test_device_precision_and_seed_flags_have_help(capsys, command):
    text = _help(capsys, [command, "--help"])
    assert "--device DEVICE auto (CUDA when available), cpu, cuda or cuda:N (default auto)" in text
    if command != "bench":
        assert "--seed SEED seed of the random starts and generated noise" in text
    if command == "eval":
        assert "--precision {fp32,bf16} the attacks' precision: fp32, or bf16 autocast (CUDA or CPU)" in text


# --- the ImageNet-scale recipes (IGD on Tiny-ImageNet and ImageNet-100, the PGD-AT baseline, their teachers) -------

REPO = Path(__file__).resolve().parents[1]
IMAGENET_SCALE = {  # config → (method, data source, the IGD teacher's config)
    "tiny_imagenet_resnet18_igd": ("igd", "tiny_imagenet", "tiny_imagenet_resnet18_standard"),
    "tiny_imagenet_resnet18_standard": ("standard", "tiny_imagenet", None),
    "imagenet100_resnet18_igd": ("igd", "image_folder", "imagenet100_resnet18_standard"),
    "imagenet100_resnet18_pgd_at": ("pgd_at", "image_folder", None),
    "imagenet100_resnet18_standard": ("standard", "image_folder", None),
}




@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory) -> Path:
    """A weights file with its sidecar: an igd config refuses to load without an existing teacher."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    spec = ModelSpec("small_cnn", 10, 1, 8)
    save_weights(path, spec.build().state_dict(), {"model": spec.to_dict()})
    return path


def _load_bundled(name: str, teacher: Path):
    """Bundled config `name`, given `teacher` when it is an IGD config (its teacher is the user's run)."""
    is_igd = read_yaml(config_path(name))["method"]["name"] == "igd"
    return load_config(name, [f"method.teacher={teacher}"] if is_igd else [])


@pytest.mark.parametrize("name", sorted(bundled_configs()))
def test_every_bundled_config_loads(name, teacher_weights):
    config = _load_bundled(name, teacher_weights)
    assert config.method.name == read_yaml(config_path(name))["method"]["name"]


@pytest.mark.parametrize("name", sorted(IMAGENET_SCALE))
def test_the_imagenet_scale_configs_hold_the_igd_recipe(name, teacher_weights):
    method, data, teacher = IMAGENET_SCALE[name]
    config = _load_bundled(name, teacher_weights)
    assert config.method.name == method and config.data.name == data
    assert config.model.name == "resnet18" and config.model.options == {"stem": "imagenet"}
    assert config.threat.norm == "linf" and config.threat.eps == pytest.approx(8 / 255)
    assert (config.train.epochs, config.train.batch_size) == (150, 128)
    optim = config.optim
    assert (optim.name, optim.lr, optim.momentum, optim.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    schedule = config.schedule
    assert (schedule.name, schedule.patience, schedule.threshold, schedule.factor) == ("plateau", 10, 1e-2, 0.1)
    assert config.data.flip
    if data == "tiny_imagenet":
        assert config.data.crop_padding == 4 and config.data.options == {"workers": 8}
    else:
        assert config.data.crop_padding == 0
        assert config.data.options == {"classes": "imagenet100", "image_size": 224,
                                       "resize": 256, "workers": 8, "random_resized_crop": True}
    if method != "standard":  # PGD-10 at ε/4, crafted in eval mode: the IGD paper's setting, for its baseline too
        attack = config.method.base if method == "igd" else config.method
        assert (attack.name, attack.steps, attack.bn_mode) == ("pgd_at", 10, "eval")
        assert attack.step_size == pytest.approx(2 / 255)
    if teacher is not None:  # the header names the standard run that is this config's teacher
        assert f"configs/{teacher}.yaml" in config_path(name).read_text()
        assert (config.method.lam, config.method.target, config.method.distance) == (1.0, "logit", "cos")


def test_the_imagenet100_class_list_is_100_distinct_wordnet_ids():
    path = REPO / "configs" / "imagenet100_classes.txt"
    assert path.resolve() == (BUNDLED_CONFIGS / "imagenet100_classes.txt").resolve()  # shipped with the package
    wnids = path.read_text().splitlines()
    assert len(wnids) == len(set(wnids)) == 100
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in wnids)
    assert wnids[:3] == ["n02869837", "n01749939", "n02488291"]  # CMC's order is the label order
    assert class_list_path("imagenet100") == BUNDLED_CONFIGS / "imagenet100_classes.txt"  # what the configs name


@pytest.mark.parametrize("name", ["imagenet100_resnet18_igd", "imagenet100_resnet18_pgd_at"])
def test_the_imagenet_c_command_in_the_header_is_a_valid_eval_command(name):
    header = " ".join(line.lstrip("# ") for line in config_path(name).read_text().splitlines() if line.startswith("#"))
    command = header.split("advtrain eval ", 1)[1].split(" (", 1)[0].split()
    args = build_parser().parse_args(["eval", *command])
    assert (args.attacks, args.corruption_constants) == ("clean,corruptions", "imagenet")
    assert args.run_dir == Path("RUN_DIR") and args.out == Path("RUN_DIR/imagenet_c.json")
