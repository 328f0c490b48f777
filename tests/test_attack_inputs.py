"""What the public attack and evaluation entry points accept (issue 19, points 1–3).

1. One parser for norm names: every accepted spelling runs exactly the attack its canonical name runs, anything
   else is refused naming the spellings, in Python, in the config and on the command line.
2. Pixel scale: an L∞ ε above 1 (0..255 units) and images outside [0, 1] (0..255 floats, uint8, normalised) are
   refused with the fix named, at every entry point.
3. One evaluation default: `pgd()` and `fgsm()` count an example as broken at the first fooling iterate, as
   `evaluate` (and `advtrain eval`) do, so "PGD-k" gives one number.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from advtrain.attacks import fgsm, pgd, single_step
from advtrain.attacks.reference_autoattack import autoattack
from advtrain.checkpoint import save_weights
from advtrain.cli import main
from advtrain.config import load_config
from advtrain.errors import UserError
from advtrain.eval.robustness import AttackSpec, attack_specs, evaluate_attacks, last_iterate_pgd
from advtrain.eval.vulnerability import evaluate_vulnerability
from advtrain.models.spec import ModelSpec
from tests.helpers import digits_tensors, trained_digits_cnn

LINF_SPELLINGS = ["linf", "Linf", "LINF", "LInf", "inf", "Inf", "INF"]
L2_SPELLINGS = ["l2", "L2"]
BAD_NORMS = ["foo", "L1", "l3", "", "infinity", "linf ", None, 2]
SPELLINGS_NAMED = "linf (also Linf, LINF, inf) or l2 (also L2)"


def _digits(n: int = 120) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    _, _, x, y = digits_tensors()
    return trained_digits_cnn(), x[:n], y[:n]


def _pgd(model, x, y, norm, eps, **kwargs):
    return pgd(model, x, y, eps=eps, steps=3, norm=norm, generator=torch.Generator().manual_seed(5), **kwargs)


# ------------------------------------------------------------------------------------------- 1. norm names


@pytest.mark.parametrize("keep", ["last", "first_fooling"])
def test_every_norm_spelling_runs_the_canonical_attack_bit_for_bit(keep):
    model, x, y = _digits()
    linf = _pgd(model, x, y, "linf", 8 / 255, keep=keep)
    assert (linf - x).abs().max() == pytest.approx(8 / 255, abs=1e-6)  # an L∞ attack, to the edge of the ball
    for spelling in LINF_SPELLINGS:
        assert torch.equal(_pgd(model, x, y, spelling, 8 / 255, keep=keep), linf), spelling
        assert torch.equal(fgsm(model, x, y, eps=8 / 255, norm=spelling), fgsm(model, x, y, eps=8 / 255)), spelling
    l2 = _pgd(model, x, y, "l2", 0.5, keep=keep)
    for spelling in L2_SPELLINGS:
        assert torch.equal(_pgd(model, x, y, spelling, 0.5, keep=keep), l2), spelling
    assert not torch.equal(_pgd(model, x, y, "L2", 8 / 255, keep=keep), linf)


def test_single_step_and_building_blocks_accept_the_spellings():
    model, x, y = _digits(40)
    expected = single_step(model, x, y, step_size=0.1, eps=0.1, norm="linf").x_adv
    for spelling in LINF_SPELLINGS:
        assert torch.equal(single_step(model, x, y, step_size=0.1, eps=0.1, norm=spelling).x_adv, expected)


@pytest.mark.parametrize("bad", BAD_NORMS)
def test_an_unknown_norm_is_a_value_error_naming_the_spellings(bad):
    model, x, y = _digits(8)
    calls = [
        lambda: pgd(model, x, y, eps=0.1, norm=bad),
        lambda: fgsm(model, x, y, eps=0.1, norm=bad),
        lambda: single_step(model, x, y, step_size=0.1, eps=0.1, norm=bad),
        lambda: autoattack(model, x, y, eps=0.1, norm=bad),
        lambda: attack_specs(["pgd"], [0.1], norm=bad),
        lambda: next(last_iterate_pgd(model, x, y, eps=0.1, norm=bad)),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=f"unknown norm .*; use {re.escape(SPELLINGS_NAMED)}$"):
            call()


def test_evaluation_entry_points_take_the_spellings_and_record_the_canonical_name():
    model, x, y = _digits(60)
    specs = attack_specs(["pgd", "fgsm"], [0.1], norm="Linf", steps=3)
    assert specs == attack_specs(["pgd", "fgsm"], [0.1], norm="linf", steps=3)
    assert [s.describe()["norm"] for s in specs] == ["linf", "linf"]
    results = evaluate_attacks(model, x, y, specs, seed=1)
    reference = evaluate_attacks(model, x, y, attack_specs(["pgd", "fgsm"], [0.1], steps=3), seed=1)
    assert all(torch.equal(a.correct, b.correct) for a, b in zip(results, reference, strict=True))
    ours = [adv for _, _, adv in last_iterate_pgd(model, x, y, eps=0.1, norm="INF", steps=3)]
    theirs = [adv for _, _, adv in last_iterate_pgd(model, x, y, eps=0.1, norm="linf", steps=3)]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    report = evaluate_vulnerability({"cnn": model}, x, y, eps=0.1, norm="Linf", steps=2)
    assert report["norm"] == "linf"


def test_the_config_takes_the_spellings_and_refuses_others_in_one_line():
    for spelling in LINF_SPELLINGS:
        assert load_config(None, [f"threat.norm={spelling}"]).threat.norm == "linf"
    assert load_config(None, ["threat.norm=L2", "threat.eps=0.5"]).threat.norm == "l2"
    with pytest.raises(UserError, match=re.escape(f"threat.norm: unknown norm 'l1'; use {SPELLINGS_NAMED}")):
        load_config(None, ["threat.norm=l1"])


def _cli_refuses(capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> None:
    """Exit 2, one line on stderr that contains `fragment`, no traceback."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, err


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """Untrained small_cnn weights for digits: every case below is refused before any attack runs."""
    spec = ModelSpec("small_cnn", num_classes=10, in_channels=1, input_size=8)
    torch.manual_seed(0)
    path = tmp_path / "cnn.safetensors"
    save_weights(path, spec.build().state_dict(), {"model": spec.to_dict()})
    return path


def test_the_command_line_takes_the_spellings_and_refuses_others_in_one_line(capsys, weights, tmp_path):
    from advtrain.cli import build_parser

    for spelling in LINF_SPELLINGS:
        assert build_parser().parse_args(["eval", "--norm", spelling]).norm == "linf"
    assert build_parser().parse_args(["eval", "--norm", "L2"]).norm == "l2"
    _cli_refuses(capsys, ["eval", "--weights", str(weights), "--data", "digits", "--norm", "l1"],
                 f"argument --norm: unknown norm 'l1'; use {SPELLINGS_NAMED}")
    _cli_refuses(capsys, ["train", "--set", "threat.norm=foo", "--out", str(tmp_path / "run")],
                 f"threat.norm: unknown norm 'foo'; use {SPELLINGS_NAMED}")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- 2. pixel scale


def test_linf_eps_in_pixel_units_is_refused_naming_the_fix():
    model, x, y = _digits(8)
    calls = [
        lambda: pgd(model, x, y, eps=8),
        lambda: pgd(model, x, y, eps=8, norm="Linf"),
        lambda: fgsm(model, x, y, eps=8),
        lambda: single_step(model, x, y, step_size=8, eps=8),
        lambda: autoattack(model, x, y, eps=8, version="apgd"),
        lambda: AttackSpec("pgd", 8, "linf", 10, 1, 2.0),
        lambda: attack_specs(["pgd"], [8]),
        lambda: next(last_iterate_pgd(model, x, y, eps=8)),
        lambda: evaluate_vulnerability({"cnn": model}, x, y, eps=8),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"eps=8 is in 0\.\.255 pixel units; advtrain uses \[0, 1\]: write 8/255"):
            call()
    with pytest.raises(ValueError, match=r"step_size=2 is in 0\.\.255 pixel units.*write 2/255"):
        pgd(model, x, y, eps=8 / 255, step_size=2)
    # L2 distances above 1 are ordinary (the whole image's norm), so they stay allowed.
    assert (pgd(model, x, y, eps=3.0, norm="l2", steps=1) - x).flatten(1).norm(dim=1).max() <= 3.0 + 1e-5


@pytest.mark.parametrize(
    ("scale", "fragment"),
    [
        (lambda x: x * 255, r"holds values in \[0, 255\]; advtrain attacks images in \[0, 1\]: divide 0..255 pixels "
                            r"by 255"),
        (lambda x: (x - 0.5) / 0.25, "normalise by mean/std inside the model"),
        (lambda x: torch.where(x > 0.5, torch.nan, x), "holds values in"),
        (lambda x: (x * 255).round().to(torch.uint8), r"holds uint8 pixels; .* pass x.float\(\) / 255"),
    ],
)
def test_images_outside_the_unit_range_are_refused_naming_the_fix(scale, fragment):
    model, x, y = _digits(16)
    bad = scale(x)
    calls = [
        lambda: pgd(model, bad, y, eps=8 / 255),
        lambda: fgsm(model, bad, y, eps=8 / 255),
        lambda: single_step(model, bad, y, step_size=0.1, eps=0.1),
        lambda: autoattack(model, bad, y, eps=8 / 255, version="apgd"),
        lambda: evaluate_attacks(model, bad, y, attack_specs(["clean", "pgd"], [8 / 255], steps=2)),
        lambda: next(last_iterate_pgd(model, bad, y, eps=8 / 255)),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=fragment):
            call()


def test_the_config_refuses_linf_eps_in_pixel_units():
    for override, where in [("threat.eps=8", "threat.eps=8"), ("eval.eps=[8/255, 16]", "eval.eps[1]=16"),
                            ("eval.step_size=2", "eval.step_size=2")]:
        fix = f"{where} is in 0..255 pixel units; advtrain uses [0, 1]: write "
        with pytest.raises(UserError, match=re.escape(fix)):
            load_config(None, [override])
    assert load_config(None, ["threat.norm=l2", "threat.eps=8"]).threat.eps == 8  # an L2 radius may exceed 1


def test_the_command_line_refuses_eps_in_pixel_units_in_one_line(capsys, weights, tmp_path):
    fix = "is in 0..255 pixel units; advtrain uses [0, 1]: write 8/255"
    _cli_refuses(capsys, ["eval", "--weights", str(weights), "--data", "digits", "--eps", "8"], f"--eps=8 {fix}")
    _cli_refuses(capsys, ["eval", "--weights", str(weights), "--data", "digits", "--eps", "8/255",
                          "--step-size", "2"], "--step-size=2 is in 0..255 pixel units")
    _cli_refuses(capsys, ["diagnose", "--weights", str(weights), "--data", "digits", "--eps", "8"], f"--eps=8 {fix}")
    _cli_refuses(capsys, ["bench", "--eps", "8"], f"--eps=8 {fix}")
    _cli_refuses(capsys, ["train", "--set", "threat.eps=8", "--out", str(tmp_path / "run")], f"threat.eps=8 {fix}")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------- 3. one evaluation default


def test_pgd_and_fgsm_by_default_count_what_evaluate_counts():
    model, x, y = _digits(360)
    # Steps of 2ε overshoot, so an iterate that fooled the model can be followed by one that does not.
    eps, steps, step_size, seed = 0.1, 10, 0.2, 3
    specs = attack_specs(["pgd", "fgsm"], [eps], steps=steps, step_size=step_size)
    results = evaluate_attacks(model, x, y, specs, batch_size=len(y), seed=seed)
    x_pgd = pgd(model, x, y, eps=eps, steps=steps, step_size=step_size, generator=torch.Generator().manual_seed(seed))
    x_fgsm = fgsm(model, x, y, eps=eps)
    with torch.no_grad():
        correct_pgd, correct_fgsm = (model(adv).argmax(1) == y for adv in (x_pgd, x_fgsm))
    assert torch.equal(correct_pgd, results[0].correct)
    assert torch.equal(correct_fgsm, results[1].correct)
    # The training attack's last iterate is still one keyword away, and here it is a different (weaker) count.
    x_last = pgd(model, x, y, eps=eps, steps=steps, step_size=step_size, keep="last",
                 generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        correct_last = model(x_last).argmax(1) == y
    assert int(correct_last.sum()) > int(correct_pgd.sum())
