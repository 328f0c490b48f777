"""`advtrain.eval.public.evaluate`: the Python face of `advtrain eval` on any nn.Module and images in memory."""

from __future__ import annotations

import contextlib
import json
import re

import pytest
import torch
from pyautoattack import AutoAttack

from advtrain.attacks import ThreatModel, training_step_size
from advtrain.cli import main
from advtrain.data import load_dataset, to_float
from advtrain.eval.diagnose import diagnose
from advtrain.eval.public import Evaluation, evaluate
from advtrain.eval.robustness import AttackSpec
from advtrain.methods import build_method, method_class
from tests.helpers import digits_tensors, trained_digits_cnn


def test_evaluate_gives_the_cli_numbers_and_table(tmp_path, capsys):
    model = trained_digits_cnn()
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "eval.json"
    flags = ["--attacks", "clean,pgd,fgsm,cw", "--eps", "0.1,0.2", "--steps", "5", "--n", "60", "--seed", "3"]
    capsys.readouterr()
    assert main(["eval", "--weights", str(weights), "--model", "small_cnn", "--data", "digits", *flags,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    _, _, x, y = digits_tensors()

    result = evaluate(model, x, y, attacks=["clean", "pgd", "fgsm", "cw"], eps=[0.1, 0.2], steps=5, n=60, seed=3,
                      device="cpu")

    cli = json.loads(out.read_text())
    assert result.rows() == cli["results"]  # same attacks, settings and accuracies, to the last bit
    assert result.n == 60 and result.batch_size == cli["batch_size"] and result.precision == "fp32"
    assert str(result) in printed  # the table the CLI prints
    assert result.accuracy("clean") == cli["results"][0]["accuracy"]
    assert result.accuracy("pgd", 0.2) == cli["results"][4]["accuracy"] < result.accuracy("clean")
    with pytest.raises(ValueError, match="several results"):
        result.accuracy("pgd")
    with pytest.raises(ValueError, match="no result for attack 'aa'"):
        result.accuracy("aa", 0.1)


def test_aa_is_the_reference_autoattack():
    model = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    x, y = x[:24], y[:24]

    result = evaluate(model, x, y, attacks="aa", eps=0.1, device="cpu")

    adversary = AutoAttack(model, norm="Linf", eps=0.1, version="standard", seed=0, device=torch.device("cpu"))
    adversary.verbose = False
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(y))
    with torch.no_grad():
        expected = (model(x_adv).argmax(1) == y).float().mean().item()
    (row,) = result.rows()
    assert row["attack"] == "autoattack" and row["version"] == "standard" and row["norm"] == "linf"
    assert result.accuracy("aa") == pytest.approx(expected, abs=0)
    assert result.accuracy("aa") < 1


def test_uint8_pixels_are_read_as_pixels_out_of_255():
    model = trained_digits_cnn()
    data = load_dataset("digits")
    pixels = (data.x_test[:40].to(torch.int32) * 255 // data.pixel_max).to(torch.uint8)
    as_floats = evaluate(model, pixels.float() / 255, data.y_test[:40], attacks=["clean", "fgsm"], eps=0.1,
                         device="cpu")
    as_uint8 = evaluate(model, pixels, data.y_test[:40], attacks=["clean", "fgsm"], eps=0.1, device="cpu")
    assert as_uint8.rows() == as_floats.rows()
    assert isinstance(as_uint8, Evaluation) and as_uint8.accuracy() > 0.5


@pytest.mark.parametrize(
    ("kwargs", "python_message", "cli_flags", "cli_message"),
    [
        ({"eps": 8}, "eps=8 is in 0..255 pixel units; advtrain uses [0, 1]: write 8/255",
         ["--eps", "8"], "--eps=8 is in 0..255 pixel units; advtrain uses [0, 1]: write 8/255"),
        ({"attacks": ["clean", "pgdd"]}, "unknown attack 'pgdd': did you mean 'pgd'?",
         ["--attacks", "clean,pgdd"], "unknown attack 'pgdd': did you mean 'pgd'?"),
        ({"steps": 0}, "steps must be >= 1, got 0", ["--steps", "0"], "--steps must be >= 1, got 0"),
        ({"norm": "l3"}, "norm: unknown norm 'l3'; use linf", ["--norm", "l3"], "--norm: unknown norm 'l3'; use linf"),
    ],
)
def test_bad_settings_are_the_clis_one_line_error(tmp_path, capsys, kwargs, python_message, cli_flags, cli_message):
    model = trained_digits_cnn()
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    _, _, x, y = digits_tensors()
    with pytest.raises(ValueError) as raised:
        evaluate(model, x[:10], y[:10], device="cpu", **kwargs)
    assert python_message in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(SystemExit) if cli_flags[0] == "--norm" else contextlib.nullcontext():  # argparse's check
        assert main(["eval", "--weights", str(weights), "--model", "small_cnn", "--data", "digits", *cli_flags]) == 2
    err = capsys.readouterr().err
    assert cli_message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (torch.rand(4, 1, 8, 8), torch.rand(4, 10), "y must be a 1-D tensor of integer class labels"),
        (torch.rand(4, 1, 8, 8), torch.zeros(3, dtype=torch.long), "one label in y each"),
        (torch.rand(4, 1, 8, 8) * 255, torch.zeros(4, dtype=torch.long), "divide 0..255 pixels by 255"),
        ([[0.0]], torch.zeros(1, dtype=torch.long), "torch.as_tensor"),
    ],
)
def test_bad_images_or_labels_are_a_one_line_value_error(x, y, message):
    with pytest.raises(ValueError, match=message):
        evaluate(trained_digits_cnn(), x, y, device="cpu")


def test_float_images_need_no_conversion_and_the_model_stays_in_its_mode():
    model = trained_digits_cnn().train()
    data = load_dataset("digits")
    result = evaluate(model, to_float(data.x_test[:30], data.pixel_max), data.y_test[:30], attacks=["clean"],
                      device="cpu")
    assert model.training
    with torch.no_grad():
        expected = (model.eval()(to_float(data.x_test[:30], data.pixel_max)).argmax(1) == data.y_test[:30])
    assert result.accuracy() == expected.sum().item() / len(expected)  # exact: the count over the images


# ------------------------------------------------------------------ one place for each ε rule (issue 20, point 4)


def test_an_attack_spec_carries_its_threat_model_and_is_checked_by_it():
    spec = AttackSpec("pgd", 0.1, "Linf", steps=5, step_size=0.025)
    assert spec.threat == ThreatModel("linf", 0.1) and spec.norm == "linf"
    for bad in ((8, "linf"), (0.1, "l3")):
        with pytest.raises(ValueError) as from_spec:
            AttackSpec("pgd", *bad)
        with pytest.raises(ValueError) as from_threat:
            ThreatModel(bad[1], bad[0])
        assert str(from_spec.value) == str(from_threat.value)


def test_the_training_step_is_a_quarter_of_eps_in_every_method_that_defaults_it():
    threat = ThreatModel("linf", 0.1)
    assert training_step_size(0.1) == 0.1 / 4
    for name in ("pgd_at", "trades", "mart"):
        method = build_method(method_class(name).config_class(), threat)
        assert method.step_size == training_step_size(threat.eps)


def test_diagnose_refuses_a_zero_or_pixel_unit_eps_with_the_attacks_messages(tmp_path, capsys):
    model = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    with pytest.raises(ValueError, match=r"^eps must be a positive number, got 0"):
        diagnose(model, x[:10], y[:10], eps=0)
    fix = "eps=8 is in 0..255 pixel units; advtrain uses [0, 1]: write 8/255"
    with pytest.raises(ValueError, match=re.escape(fix)):
        diagnose(model, x[:10], y[:10], eps=8)
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    capsys.readouterr()
    assert main(["diagnose", "--weights", str(weights), "--model", "small_cnn", "--data", "digits",
                 "--eps", "0"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--eps must be a positive number, got 0" in line
