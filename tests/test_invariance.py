"""Representation invariance and the robustness–accuracy trade-off (docs/methods.md §6, §7.6): the cosine of clean
and adversarial penultimate features, `advtrain eval --attacks invariance`, the clean + AA "sum" and the
`--compare` scatter. Real models and data, no mocks; the oracles are written here independently."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import pgd
from advtrain.cli import main
from advtrain.config import load_config
from advtrain.errors import UserError
from advtrain.eval.checkpoints import load_checkpoint_model
from advtrain.eval.invariance import evaluate_invariance, invariance_summary, representation_invariance
from advtrain.eval.tradeoff import tradeoff_scores
from advtrain.report.tables import comparison_table, tradeoff_line
from advtrain.report.tradeoff_figures import tradeoff_scatter
from advtrain.train import train
from tests.helpers import digits_tensors, trained_digits_cnn

# ------------------------------------------------------------------------------------------- the cosine


def _hand_invariance(model, x, y, *, eps, steps, seed, batch_size):
    """Eval mode; chunk i attacked by advtrain's PGD on CE with a generator seeded seed + i (random start, last
    iterate); the features are the input of `model.fc`, read with a forward pre-hook; cosine by F."""
    model.eval()
    seen: list[torch.Tensor] = []
    handle = model.fc.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach()))
    out = []
    try:
        for i, (xb, yb) in enumerate(zip(x.split(batch_size), y.split(batch_size), strict=True)):
            x_adv = pgd(model, xb, yb, eps=eps, steps=steps, keep="last",
                        generator=torch.Generator().manual_seed(seed + i))
            with torch.no_grad():
                seen.clear()
                model(xb)
                model(x_adv)
                clean, adv = seen
            out.append(F.cosine_similarity(clean.flatten(1), adv.flatten(1), dim=1))
    finally:
        handle.remove()
    return torch.cat(out)


def test_matches_a_hand_written_loop_exactly_in_eval_mode():
    model = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    x, y = x[:40], y[:40]
    running = model.bn1.running_mean.clone()
    model.train()  # the evaluation must switch to eval mode itself, and put train mode back
    try:
        ours = representation_invariance(model, x, y, eps=0.2, steps=3, seed=5, batch_size=16)
        assert model.training and model.bn1.training
    finally:
        model.eval()
    assert torch.equal(model.bn1.running_mean, running)  # no BatchNorm statistic moved
    expected = _hand_invariance(model, x, y, eps=0.2, steps=3, seed=5, batch_size=16)
    assert ours.dtype == torch.float32 and ours.shape == (40,)
    assert torch.equal(ours, expected)
    assert float(ours.max()) <= 1 + 1e-6 and float(ours.min()) < 0.99  # the attack did change the features
    # Another seed draws other random starts; the same seed the same values.
    assert not torch.equal(representation_invariance(model, x, y, eps=0.2, steps=3, seed=6, batch_size=16), ours)
    assert torch.equal(representation_invariance(model, x, y, eps=0.2, steps=3, seed=5, batch_size=16), ours)


def test_eps_zero_gives_cosine_one_for_every_example():
    model = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    cos = representation_invariance(model, x[:30], y[:30], eps=0.0, steps=2)
    assert cos.shape == (30,)
    assert torch.allclose(cos, torch.ones(30), atol=1e-6)


class _Mean(nn.Module):
    """Features built from m = the mean pixel: `invariant` (1 + m, 0), a fixed direction; else (1, m − 0.5)."""

    def __init__(self, invariant: bool) -> None:
        super().__init__()
        self.invariant = invariant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True)
        if self.invariant:
            return torch.cat([1 + m, torch.zeros_like(m)], 1)
        return torch.cat([torch.ones_like(m), m - 0.5], 1)


def _mean_model(invariant: bool) -> nn.Module:
    fc = nn.Linear(2, 2, bias=False)
    with torch.no_grad():  # logits ±(feature used): CE of class 0 falls as it grows, so PGD pushes it down
        fc.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]] if invariant else [[0.0, 1.0], [0.0, -1.0]]))
    return nn.Sequential(_Mean(invariant), fc)


def test_constructed_models_give_the_known_value():
    x = torch.full((6, 1, 4, 4), 0.5)
    y = torch.zeros(6, dtype=torch.long)
    # Features in a fixed direction whatever the input: perfectly invariant, although PGD moves x.
    cos = representation_invariance(_mean_model(True), x, y, eps=0.25, steps=5, seed=3)
    assert torch.allclose(cos, torch.ones(6), atol=1e-6)
    # Every pixel's gradient has one sign, so 5 steps of 2.5·ε/5 reach x' = x − ε = 0.25 from any random start:
    # f(x) = (1, 0), f(x') = (1, −0.25), cos = 1/√(1 + 0.25²).
    cos = representation_invariance(_mean_model(False), x, y, eps=0.25, steps=5, seed=3, batch_size=4)
    assert torch.allclose(cos, torch.full((6,), 1 / math.sqrt(1.0625)), atol=1e-6)
    result = evaluate_invariance({"m": _mean_model(False)}, x, y, eps=0.25, steps=5)
    s = result["models"]["m"]
    assert s["mean"] == pytest.approx(1 / math.sqrt(1.0625), abs=1e-6) and s["std"] == pytest.approx(0, abs=1e-6)
    assert result["eps"] == 0.25 and result["steps"] == 5 and result["step_size"] == pytest.approx(0.125)
    assert result["n"] == 6 and result["restarts"] == 1 and result["keep"] == "last"


def test_summary_by_hand():
    cos = torch.tensor([1.0, 0.5, 0.0, -0.5])
    s = invariance_summary(cos, torch.tensor([True, True, False, False]))
    assert s["count"] == 4 and s["n_correct"] == 2 and s["clean_accuracy"] == 0.5
    assert s["mean"] == pytest.approx(0.25) and s["mean_correct"] == pytest.approx(0.75)
    assert s["min"] == -0.5 and s["median"] == pytest.approx(0.25) and s["std"] == pytest.approx(math.sqrt(0.3125))
    assert invariance_summary(cos, torch.zeros(4, dtype=torch.bool))["mean_correct"] is None
    empty = invariance_summary(torch.zeros(0), torch.zeros(0, dtype=torch.bool))
    assert empty["count"] == 0 and empty["mean"] is None and empty["clean_accuracy"] is None
    with pytest.raises(ValueError):
        invariance_summary(cos, torch.ones(3, dtype=torch.bool))


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 8)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x).flatten(1)


def test_a_model_without_linear_is_a_one_line_error_before_any_attack():
    model = _Counting()
    _, _, x, y = digits_tensors()
    with pytest.raises(UserError) as e:
        representation_invariance(model, x[:4], y[:4], eps=0.1, steps=2)
    assert "\n" not in str(e.value) and "nn.Linear" in str(e.value)
    assert model.calls == 0
    with pytest.raises(UserError, match=r"^conv: .*nn\.Linear"):
        evaluate_invariance({"conv": model}, x[:4], y[:4], eps=0.1, steps=2)
    with pytest.raises(ValueError):
        representation_invariance(trained_digits_cnn(), x[:4], y[:3], eps=0.1)
    with pytest.raises(ValueError):
        representation_invariance(trained_digits_cnn(), x[:4], y[:4], eps=-0.1)


# ------------------------------------------------------------------------------------------ the trade-off


def _ev(clean, **robust):
    results = [{"attack": "clean", "eps": 0, "accuracy": clean}]
    for name, acc in robust.items():
        if name == "aa":
            results.append({"attack": "autoattack", "version": "standard", "eps": 0.1, "accuracy": acc})
        elif name == "apgd":
            results.append({"attack": "autoattack", "version": "apgd", "eps": 0.1, "accuracy": acc})
        else:
            results.append({"attack": name, "eps": 0.1, "steps": 10, "restarts": 1, "step_size": 0.025,
                            "accuracy": acc})
    return {"results": results}


def test_tradeoff_is_the_aa_sum_when_autoattack_ran():
    scores = tradeoff_scores({"a": _ev(0.9, pgd=0.5, aa=0.45), "b": _ev(0.8, pgd=0.55, aa=0.5, apgd=0.52)})
    assert scores["autoattack"] is True and scores["attack"] == "AutoAttack (standard)"
    assert scores["points"]["a"] == {"clean": 0.9, "robust": 0.45, "score": pytest.approx(1.35)}
    assert scores["points"]["b"]["score"] == pytest.approx(1.3)
    assert scores["score_name"] == "sum = clean + AutoAttack (standard) @ 0.1"
    assert tradeoff_line(_ev(0.9, pgd=0.5, aa=0.45)).endswith("= 90.00 + 45.00 = 135.00")
    table = comparison_table({"a": _ev(0.9, pgd=0.5, aa=0.45), "b": _ev(0.8, fgsm=0.6)}, tradeoff=True)
    header, _, row_a, row_b = (line.split(" | ") for line in table.splitlines())
    assert header[-1].startswith("sum = clean + AutoAttack") and row_a[-1] == "135.00 |" and row_b[-1] == "– |"
    # Without tradeoff=True the table is unchanged.
    assert "sum" not in comparison_table({"a": _ev(0.9, pgd=0.5, aa=0.45)})


def test_without_autoattack_the_strongest_attack_is_used_and_not_called_the_sum():
    scores = tradeoff_scores({"a": _ev(0.9, fgsm=0.6, pgd=0.5, cw=0.52), "b": _ev(0.8, fgsm=0.7, pgd=0.6, cw=0.5)})
    # Mean accuracy over the runs: FGSM 0.65, PGD 0.55, CW 0.51: CW is the strongest attack present.
    assert scores["autoattack"] is False and scores["attack"] == "CW-PGD-10"
    assert "not the sum" in scores["score_name"] and not scores["score_name"].startswith("sum")
    assert scores["points"]["a"]["score"] == pytest.approx(1.42)
    # One evaluation without AutoAttack states no trade-off: clean + PGD is not the sum, and its table shows both.
    assert tradeoff_line(_ev(0.9, pgd=0.5)) is None and tradeoff_line(_ev(0.9, fgsm=0.6, cw=0.52)) is None
    assert tradeoff_scores({"a": _ev(0.9)}) is None and tradeoff_line({"results": []}) is None
    fig, coords = tradeoff_scatter(scores)
    assert coords == {"a": (pytest.approx(90.0), pytest.approx(52.0)), "b": (pytest.approx(80.0), pytest.approx(50.0))}
    assert "AutoAttack not run" in fig.axes[0].get_ylabel() and "CW-PGD-10" in fig.axes[0].get_ylabel()


# -------------------------------------------------------------------------------------------- the CLI

COMMON = ["train.batch_size=64", "train.val_steps=2", "monitor.enabled=false", "train.progress=quiet",
          "threat.eps=0.2", "train.epochs=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("invariance")
    out = []
    for name, method in (("std", ["method.name=standard"]), ("pgd", ["method.name=pgd_at", "method.steps=2"])):
        train(load_config(None, [*COMMON, *method]), root / name, log=lambda _: None)
        out.append(root / name)
    return out


def _model(run: Path):
    return load_checkpoint_model(run / "checkpoints" / "best.safetensors").model.eval()


def test_cli_single_run_writes_invariance_and_tradeoff(runs, capsys):
    run, _ = runs
    assert main(["eval", str(run), "--attacks", "clean,pgd,invariance", "--n", "40", "--steps", "2",
                 "--eps", "0.1"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert [r["attack"] for r in report["results"]] == ["clean", "pgd"]
    inv = report["invariance"]
    assert inv["n"] == 40 and inv["eps"] == pytest.approx(0.1) and inv["steps"] == 2 and inv["seed"] == 0
    assert inv["step_size"] == pytest.approx(2.5 * 0.1 / 2) and list(inv["models"]) == ["std"]
    # The same numbers, recomputed from the checkpoint on the first 40 test images by the hand-written loop.
    _, _, xt, yt = digits_tensors()
    cos = _hand_invariance(_model(run), xt[:40], yt[:40], eps=0.1, steps=2, seed=0, batch_size=256)
    assert inv["models"]["std"]["mean"] == pytest.approx(float(cos.double().mean()), abs=1e-7)
    assert inv["models"]["std"]["clean_accuracy"] == pytest.approx(report["results"][0]["accuracy"])
    tradeoff = report["tradeoff"]
    assert tradeoff["autoattack"] is False and tradeoff["attack"].startswith("PGD-2")
    (point,) = tradeoff["points"].values()
    assert point["score"] == pytest.approx(report["results"][0]["accuracy"] + report["results"][1]["accuracy"])
    out = capsys.readouterr().out
    assert "representation invariance" in out and "PGD-2 on CE" in out and "ε 0.1" in out
    # Without AutoAttack there is no trade-off sum: the JSON keeps the score, the table and report state none.
    assert "trade-off" not in out
    text = (run / "report.md").read_text()
    assert "### Representation invariance" in text and "PGD-2 on CE" in text and "rade-off" not in text


def test_cli_compare_writes_the_scatter_with_one_point_per_run(runs, tmp_path, capsys):
    a, b = runs
    out = tmp_path / "c.json"
    assert main(["eval", "--compare", str(a), str(b), "--attacks", "clean,pgd,apgd,invariance", "--n", "24",
                 "--steps", "2", "--eps", "0.1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["invariance"]["models"]) == ["std", "pgd"] and report["invariance"]["n"] == 24
    tradeoff = report["tradeoff"]
    assert tradeoff["autoattack"] is True and tradeoff["attack"].startswith("AutoAttack (apgd")
    for label in ("std", "pgd"):
        results = {r["attack"]: r["accuracy"] for r in report["models"][label]["results"]}
        assert tradeoff["points"][label] == {"clean": results["clean"], "robust": results["autoattack"],
                                             "score": pytest.approx(results["clean"] + results["autoattack"])}
    figure = tmp_path / "c-figures" / "tradeoff.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 5000
    # What the figure plots: one point per run at (clean %, AA %), read back from the drawn scatter itself.
    fig, coords = tradeoff_scatter(tradeoff)
    offsets = fig.axes[0].collections[0].get_offsets()
    assert len(offsets) == 2 == len(coords)
    for (x, y), label in zip(offsets, ("std", "pgd"), strict=True):
        assert (x, y) == (pytest.approx(100 * tradeoff["points"][label]["clean"]),
                          pytest.approx(100 * tradeoff["points"][label]["robust"]))
    assert "AutoAttack (apgd" in fig.axes[0].get_ylabel()
    assert {t.get_text() for t in fig.axes[0].texts} >= {"std", "pgd"}
    printed = capsys.readouterr().out
    assert "sum = clean + AutoAttack (apgd" in printed and str(figure) in printed


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--attacks", "invariace"], "did you mean 'invariance'"),
        (["--attacks", "invariance", "--n", "0"], "--n"),
        (["--attacks", "invariance", "--steps", "0"], "--steps"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(runs, capsys, args, fragment):
    _, run = runs
    before = sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*"))
    assert main(["eval", str(run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*")) == before
