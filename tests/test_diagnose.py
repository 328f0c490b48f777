"""`advtrain diagnose` and `advtrain.eval.diagnose` (docs/methods.md §7.7): gradient-masking checks.

Every check is run on constructed models whose answer is known: a binary linear model (no masking: every
attack finds the same optimal corner, the loss along the FGSM direction is a known convex curve, the input
gradient has one direction), one-pixel piecewise-linear models built to trap small-step PGD, to lead PGD
away from a reachable adversarial region and to bend the loss along the FGSM direction, and a CNN behind a
rounding layer (zero input gradient). Then the whole `diagnose` must WARN on the masked CNN and PASS on a
PGD-AT CNN trained by the real trainer, and the CLI must write the JSON and figures or refuse bad input.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.cli import main
from advtrain.config import load_config
from advtrain.eval import CHECK_NAMES, evaluate_attacks, transfer_accuracy
from advtrain.eval.diagnose import (
    INFO,
    PASS,
    SKIP,
    WARN,
    Probe,
    check_fgsm_direction_loss,
    check_fgsm_pgd_gap,
    check_gradalign_cosine,
    check_pgd_eps,
    check_pgd_steps,
    check_restarts,
    check_transfer,
    check_zero_gradients,
    diagnose,
    eps_schedule,
    grey_baseline,
    pgd_spec,
)
from advtrain.report.analysis_tables import diagnose_text
from advtrain.train import train
from tests.helpers import digits_tensors, trained_digits_cnn

# ----------------------------------------------------------------------------------------- constructed models


class Quantise(nn.Module):
    """x → round(4x)/4 before the model: torch.round has a zero gradient, so ∇ₓ is zero everywhere."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 4) / 4)


class BinaryLinear(nn.Module):
    """Two logits W(x − 0.5): ∇ₓCE = p_other·(w_other − w_y) always points the same way (for a given label)."""

    def __init__(self, d: int, seed: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, d, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - 0.5) @ self.weight.T


class Piecewise(nn.Module):
    """Logits [h(p), 0] with p = the first pixel and h piecewise linear through `knots` (p, h): class 0 iff h > 0.

    Every other pixel is ignored, so L∞ attacks act on p alone: a one-dimensional loss surface drawn by hand.
    """

    def __init__(self, knots: list[tuple[float, float]]) -> None:
        super().__init__()
        self.knots = knots

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.flatten(1)[:, 0]
        h = torch.full_like(p, self.knots[0][1])
        for (p0, h0), (p1, h1) in zip(self.knots, self.knots[1:], strict=False):
            h = h + (h1 - h0) / (p1 - p0) * (p.clamp(p0, p1) - p0)
        return torch.stack([h, torch.zeros_like(h)], 1)


def _images(value: float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n copies of a constant 1×2×2 image, all labelled 0."""
    return torch.full((n, 1, 2, 2), value), torch.zeros(n, dtype=torch.long)


def _trap() -> Piecewise:
    """A loss with local maxima (h minima, h = 0.5 > 0) at |u| = 0.025 around p = 0.5 + u, walled in by barriers
    (h = 1) at |u| = 0.05; the adversarial region (h < 0) lies beyond |u| = 0.07. The clean image sits at
    u = 0.04: its gradient points into the trap, where small PGD steps stay; a 2.5ε step jumps past the wall."""
    half = [(0.0, 1.0), (0.025, 0.5), (0.05, 1.0), (0.09, -1.0), (0.5, -1.0)]
    return Piecewise([(0.5 - u, h) for u, h in reversed(half[1:])] + [(0.5 + u, h) for u, h in half])


def _band() -> Piecewise:
    """Adversarial only in the band p ∈ (0.45, 0.55) (grey is inside it), behind steep ramps; outside, the loss
    grows away from the band, so gradient ascent walks away from the only adversarial inputs."""
    return Piecewise([(0.0, 0.5), (0.43, 1.0), (0.45, -1.0), (0.55, -1.0), (0.57, 1.0), (1.0, 0.5)])


def _bend() -> Piecewise:
    """From p = 0.5 the loss rises to t = 0.05 along the gradient's sign, then falls below its start by t = 0.1."""
    return Piecewise([(0.0, 2.0), (0.5, 1.0), (0.55, 0.2), (0.6, 2.0), (1.0, 2.0)])


@pytest.fixture(scope="module")
def linear():
    """A binary linear model on 4×4 inputs in [0.3, 0.7] (ε ≤ 0.3 never clamps), labelled by its own prediction,
    and the exact robust accuracy at ε = 0.02: margin m = (w_y − w_o)·(x − 0.5) must exceed ε‖w_y − w_o‖₁."""
    model = BinaryLinear(16)
    x = 0.3 + 0.4 * torch.rand(200, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
        delta = model.weight[y] - model.weight[1 - y]
        margin = (delta * (x.flatten(1) - 0.5)).sum(1)
    eps = 0.02
    robust = float((margin > eps * delta.abs().sum(1)).float().mean())
    assert 0.2 < robust < 0.8  # both kinds of example are present
    return model, x, y, eps, robust, margin, delta


# ------------------------------------------------------------------------------------------- one check each


def test_fgsm_pgd_gap_is_zero_on_a_linear_model_and_warns_on_the_trap(linear):
    model, x, y, eps, robust, _, _ = linear
    check = check_fgsm_pgd_gap(Probe(model, x, y), eps)
    # On a linear model FGSM's step is the optimal corner: FGSM = PGD = the exact robust accuracy.
    assert check.details["fgsm_accuracy"] == pytest.approx(robust)
    assert check.details["pgd_accuracy"] == pytest.approx(robust)
    assert check.value == pytest.approx(0.0) and check.verdict == PASS and check.threshold == 0.3

    # The trap: FGSM's gradient points inward, its full step lands on the safe side (accuracy 1); PGD-20 from
    # a random start past the wall (|u| > 0.05: about half the starts) walks out and breaks the example.
    trap = check_fgsm_pgd_gap(Probe(_trap(), *_images(0.54, 200)), 0.1)
    assert trap.details["fgsm_accuracy"] == 1.0
    assert 0.4 < trap.details["pgd_accuracy"] < 0.7
    assert trap.verdict == WARN and trap.value > 0.3


def test_pgd_steps_is_flat_on_a_linear_model_and_warns_when_small_steps_get_trapped(linear):
    model, x, y, eps, robust, _, _ = linear
    check = check_pgd_steps(Probe(model, x, y), eps)
    # Every step count travels ≥ 2.5ε in total, so every run reaches the same optimal corner.
    assert check.details["steps"] == [1, 3, 10, 20, 50, 100]
    assert check.details["accuracy"] == pytest.approx([robust] * 6)
    assert check.value == 0.0 and check.verdict == PASS

    trap = check_pgd_steps(Probe(_trap(), *_images(0.54, 200)), 0.1, steps=(1, 10, 20))
    one, ten, twenty = trap.details["accuracy"]
    assert one < 0.4 < ten and twenty > 0.4  # one 2.5ε step jumps the wall, small steps stay in the trap
    assert trap.value == pytest.approx(max(ten, twenty) - one)
    assert trap.verdict == WARN


def test_one_step_pgd_above_eps_0_4_caps_its_step_at_1_and_reaches_the_same_corner(linear):
    """PGD-1's 2.5·ε step is above 1 (refused as 0..255 units) for ε > 0.4: capped at 1, which still lands on the
    corner a 2.5·ε step reaches, so the check runs and the linear model's accuracy is the 1-step one."""
    model, x, y, _, _, _, _ = linear
    assert pgd_spec(0.45, 1).step_size == 1.0 and pgd_spec(0.3, 1).step_size == pytest.approx(0.75)
    probe = Probe(model, x, y)
    capped = probe.accuracy(pgd_spec(0.45, 1))
    uncapped = probe.accuracy(replace(pgd_spec(0.45, 1), step_size=0.9))  # 2ε: the corner too
    assert capped == uncapped
    assert check_pgd_steps(probe, 0.45, steps=(1, 3)).details["steps"] == [1, 3]


def test_pgd_eps_reaches_zero_on_a_linear_model_and_warns_when_gradients_lead_away(linear):
    model, x, y, eps, robust, _, _ = linear
    check = check_pgd_eps(Probe(model, x, y), eps)
    assert check.details["eps"] == eps_schedule(eps) == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.64, 1.0])
    assert check.details["accuracy"][0] == pytest.approx(robust)
    # At ε = 1 the corner of [0, 1]^d against the label is reachable from every image: nothing survives.
    assert check.value == 0.0 and check.verdict == PASS
    baseline, _ = grey_baseline(model, x, y)
    assert check.threshold == max(0.1, baseline)

    # The band: grey (0.5) is adversarial, so the blind baseline is 0; PGD only breaks the examples whose random
    # start lands in the band or on its ramps (about 7% at ε = 1), the gradient leads every other one away.
    band = check_pgd_eps(Probe(_band(), *_images(0.2, 200)), 0.1)
    assert band.details["grey_baseline"] == 0.0 and band.threshold == 0.1
    assert band.details["accuracy"][0] == 1.0 and band.value > 0.8
    assert band.verdict == WARN


def test_eps_schedule_doubles_up_to_one():
    assert eps_schedule(8 / 255) == pytest.approx([8 / 255, 16 / 255, 32 / 255, 64 / 255, 0.5, 128 / 255, 1.0])
    assert eps_schedule(0.2) == pytest.approx([0.2, 0.4, 0.5, 0.8, 1.0])
    assert eps_schedule(0.7) == pytest.approx([0.7, 1.0])
    assert eps_schedule(1.0) == [1.0]


def test_restarts_change_nothing_on_a_linear_model_and_warn_on_the_trap(linear):
    model, x, y, eps, robust, _, _ = linear
    check = check_restarts(Probe(model, x, y), eps, restarts=3)
    assert check.details["accuracy_1"] == check.details["accuracy_3"] == pytest.approx(robust)
    assert check.value == 0.0 and check.verdict == PASS

    # One start is trapped with probability ≈ 1/2; ten restarts all trapped with ≈ 1/1000.
    trap = check_restarts(Probe(_trap(), *_images(0.54, 200)), 0.1, steps=20)
    assert trap.details["accuracy_1"] > 0.4 and trap.details["accuracy_10"] < 0.05
    assert trap.verdict == WARN


def test_transfer_from_a_model_to_itself_is_the_white_box_attack():
    cnn = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    x, y = x[:64], y[:64]
    spec = pgd_spec(0.2, steps=5)
    # Same seeds per batch (seed + batch index) and the same "first fooling iterate" rule: identical examples.
    white = evaluate_attacks(cnn, x, y, [spec], batch_size=32, seed=3)[0]
    same = transfer_accuracy(cnn, cnn, x, y, spec, seed=3, batch_size=32, keep="first_fooling")
    assert same == int(white.correct.sum()) / 64
    # The final iterate (the default for transfer) can only be classified correctly more often.
    assert transfer_accuracy(cnn, cnn, x, y, spec, seed=3, batch_size=32) >= same


def test_transfer_check_passes_on_self_transfer_warns_through_a_mask_and_skips_without_surrogate(linear):
    model, x, y, eps, robust, _, _ = linear
    check = check_transfer(Probe(model, x, y), model, eps)
    assert check.value == pytest.approx(robust) and check.details["white_box_accuracy"] == pytest.approx(robust)
    assert check.verdict == PASS

    # Crafted on the plain CNN, the examples also break the CNN behind the rounding layer, which its own
    # (zero) gradient cannot attack at all.
    cnn = trained_digits_cnn()
    _, _, xd, yd = digits_tensors()
    masked = check_transfer(Probe(Quantise(cnn), xd[:100], yd[:100]), cnn, 0.2)
    assert masked.details["white_box_accuracy"] > 0.8 and masked.value < 0.2
    assert masked.verdict == WARN

    skipped = check_transfer(Probe(model, x, y), None, eps)
    assert skipped.verdict == SKIP and skipped.value is None


def test_fgsm_direction_loss_is_the_exact_convex_curve_on_a_linear_model(linear):
    model, x, y, eps, _, margin, delta = linear
    check = check_fgsm_direction_loss(Probe(model, x, y), eps)
    t = torch.tensor(check.details["t"], dtype=torch.float64)
    assert t.tolist() == pytest.approx(torch.linspace(0, eps, 11).tolist())
    # The sign step lowers the margin by t‖w_y − w_o‖₁: CE = softplus(−(m − t‖Δ‖₁)), averaged.
    expected = F.softplus(-(margin.double()[None] - t[:, None] * delta.abs().sum(1).double()[None])).mean(1)
    assert check.details["loss"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert check.value == 1.0 and check.verdict == PASS


def test_fgsm_direction_loss_warns_when_the_loss_bends_back_or_stays_flat():
    bend = check_fgsm_direction_loss(Probe(_bend(), *_images(0.5, 4)), 0.1)
    start, peak, end = (F.softplus(torch.tensor(-h)).item() for h in (1.0, 0.2, 2.0))
    assert bend.details["loss"][0] == pytest.approx(start, rel=1e-4)
    assert max(bend.details["loss"]) == pytest.approx(peak, rel=1e-4)  # at t = 0.05
    assert bend.value == pytest.approx((end - start) / (peak - start), rel=1e-3)
    assert bend.verdict == WARN

    cnn = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    flat = check_fgsm_direction_loss(Probe(Quantise(cnn), x[:50], y[:50]), 0.2)
    assert len(set(flat.details["loss"])) == 1  # sign(0) = 0: the "step" does not move
    assert flat.value == 0.0 and flat.verdict == WARN


def test_gradalign_cosine_is_one_for_a_binary_linear_model_and_undefined_without_gradients(linear):
    model, x, y, eps, _, _, _ = linear
    check = check_gradalign_cosine(Probe(model, x, y), eps)
    assert check.value == pytest.approx(1.0, abs=1e-6) and check.details["examples"] == len(y)
    assert check.verdict == INFO and check.threshold is None

    cnn = trained_digits_cnn()
    _, _, xd, yd = digits_tensors()
    masked = check_gradalign_cosine(Probe(Quantise(cnn), xd[:50], yd[:50]), 0.2)
    assert masked.value is None and masked.details["examples"] == 0 and masked.verdict == INFO
    assert json.loads(json.dumps(masked.as_dict()))["value"] is None  # valid JSON, no NaN


def test_zero_gradients_none_on_a_linear_model_all_behind_rounding(linear):
    model, x, y, _, _, _, _ = linear
    check = check_zero_gradients(Probe(model, x, y))
    assert check.value == 0.0 and check.verdict == PASS

    cnn = trained_digits_cnn()
    _, _, xd, yd = digits_tensors()
    masked = check_zero_gradients(Probe(Quantise(cnn), xd[:50], yd[:50]))
    assert masked.value == 1.0 and masked.verdict == WARN


def test_checks_leave_the_model_mode_alone(linear):
    cnn = trained_digits_cnn().train()
    _, _, x, y = digits_tensors()
    probe = Probe(cnn, x[:16], y[:16])
    check_fgsm_direction_loss(probe, 0.2)
    check_gradalign_cosine(probe, 0.2)
    check_fgsm_pgd_gap(probe, 0.2)
    assert cnn.training and all(m.training for m in cnn.modules())


# ---------------------------------------------------------------------------------------- whole diagnosis


def test_diagnose_warns_on_the_masked_cnn():
    cnn = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    report = diagnose(Quantise(cnn), x[:100], y[:100], eps=0.2, surrogate=cnn, steps=(1, 3, 10, 20),
                      restart_steps=20)
    checks = report["checks"]
    assert list(checks) == list(CHECK_NAMES)
    # Fires: the gradient is zero (zero_gradients), so the FGSM direction carries nothing (flat loss); PGD
    # only ever tries its random start, so at ε = 1 it leaves far more than the grey baseline correct, and ten
    # random starts break many more examples than one; the plain CNN's examples transfer where its own
    # gradients fail.
    assert set(report["warnings"]) == {"zero_gradients", "fgsm_direction_loss", "pgd_eps", "restarts", "transfer"}
    # Silent, and why: FGSM does nothing but neither does PGD, so FGSM − PGD is only the random start's effect;
    # every PGD run of the steps curve is that same random start, so the curve is flat.
    assert checks["fgsm_pgd_gap"]["verdict"] == PASS and checks["fgsm_pgd_gap"]["value"] < 0.1
    assert checks["pgd_steps"]["value"] == 0.0 and len(set(checks["pgd_steps"]["details"]["accuracy"])) == 1
    assert checks["gradalign_cosine"]["value"] is None
    assert "5 warning(s)" in diagnose_text(report)


# ----------------------------------------------------------------------------------- the CLI, on real runs

COMMON = ["train.batch_size=64", "train.val_steps=2", "monitor.enabled=false", "train.progress=quiet",
          "threat.eps=0.2"]


def _train(out: Path, *overrides: str) -> Path:
    train(load_config(None, [*COMMON, *overrides]), out, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnose")
    at = _train(root / "pgd_at", "method.name=pgd_at", "train.epochs=3")
    standard = _train(root / "standard", "method.name=standard", "train.epochs=2")
    # 3×8×8 synthetic images: a surrogate that does not fit digits.
    other = _train(root / "synthetic", "method.name=standard", "train.epochs=1", "data.name=synthetic",
                   "data.options={shape: [3, 8, 8], n_train: 64, n_test: 16}")
    return at, standard, other


@pytest.fixture(scope="module")
def cli_report(runs):
    at, standard, _ = runs
    # 300 images: the restarts check's 5-point threshold needs more than 100 (one example is a point there).
    assert main(["diagnose", str(at), "--n", "300", "--surrogate", str(standard)]) == 0
    return json.loads((at / "diagnose.json").read_text())


def test_cli_writes_every_check_and_the_figures(runs, cli_report, capsys):
    at, standard, _ = runs
    assert list(cli_report["checks"]) == list(CHECK_NAMES)
    assert cli_report["n"] == 300 and cli_report["eps"] == 0.2  # the run's threat ε
    assert cli_report["model"] == "small_cnn" and cli_report["checkpoint"] == "best"
    assert cli_report["surrogate"].startswith(str(standard))
    for check in cli_report["checks"].values():
        assert set(check) == {"name", "value", "threshold", "pass_if", "rule", "verdict", "meaning", "details"}
    for name in ("diagnose_pgd_steps.png", "diagnose_pgd_eps.png", "diagnose_fgsm_direction.png"):
        assert (at / "figures" / name).stat().st_size > 1000


def test_the_pgd_at_model_passes_every_check_with_a_threshold(cli_report):
    checks = cli_report["checks"]
    thresholded = [name for name, c in checks.items() if c["threshold"] is not None]
    assert set(thresholded) == set(CHECK_NAMES) - {"gradalign_cosine"}
    assert {name: checks[name]["verdict"] for name in thresholded} == dict.fromkeys(thresholded, PASS)
    assert cli_report["warnings"] == []
    # The readings behind the verdicts are those of a working attack on a robust-ish model.
    assert checks["pgd_eps"]["details"]["accuracy"][-1] == 0.0
    assert 0 < checks["fgsm_pgd_gap"]["details"]["pgd_accuracy"] < cli_report["clean_accuracy"]
    assert checks["gradalign_cosine"]["value"] > 0.5


def test_cli_on_weights_writes_next_to_out(runs, tmp_path, capsys):
    at, _, _ = runs
    out = tmp_path / "w.json"
    assert main(["diagnose", "--weights", str(at / "checkpoints" / "last.safetensors"), "--data", "digits",
                 "--n", "10", "--eps", "0.1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["eps"] == 0.1 and report["checkpoint"] is None and report["n"] == 10
    assert report["checks"]["transfer"]["verdict"] == SKIP
    assert sorted(p.name for p in (tmp_path / "w-figures").iterdir()) == [
        "diagnose_fgsm_direction.png", "diagnose_pgd_eps.png", "diagnose_pgd_steps.png"]
    text = capsys.readouterr().out
    assert "fgsm_pgd_gap" in text and "zero_gradients" in text and f"wrote {out}" in text


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--out", "{tmp}"], "is a folder"),
        (["--eps", "0"], "--eps must be"),
        (["--eps", "2"], "--eps=2 is in 0..255 pixel units; advtrain uses [0, 1]: write 2/255"),
        (["--n", "0"], "--n must be >= 1"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--surrogate", "{tmp}/missing"], "is not a run directory"),
        (["--surrogate", "{other}"], "pass a --surrogate trained on digits"),
        (["--device", "gpu0"], "unknown device"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, capsys, args, fragment):
    at, _, other = runs
    args = [a.format(tmp=tmp_path, other=other) for a in args]
    out = ["--out", str(tmp_path / "d.json")] if "--out" not in args else []
    assert main(["diagnose", str(at), *out, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_bad_run_or_weights_is_one_line_exit_2(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert main(["diagnose", "--weights", str(tmp_path / "w.safetensors")]) == 2
    assert "--weights needs --data" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_json_has_no_nan(cli_report):
    text = json.dumps(cli_report, allow_nan=False)  # raises on NaN / inf
    assert not math.isnan(json.loads(text)["clean_accuracy"])
