"""ISEAT (docs/methods.md §4) against a hand-written two-model formulation in fp64: the attack, the weight
perturbation, the gradient, one optimizer step in the AWP convention, the rank weights and the λ stages."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from advtrain.attacks import ThreatModel
from advtrain.config import ScheduleConfig, load_config
from advtrain.errors import UserError
from advtrain.methods.base import Batch, EpochContext, StepContext
from advtrain.methods.iseat import ISEAT, ISEATConfig, rank_weights
from advtrain.train import train
from advtrain.train.schedule import LRSchedule
from tests.test_baseline_methods import tiny_batch, tiny_model

EPS, ALPHA, STEPS, GAMMA, LAM = 0.2, 0.05, 3, 0.05, 0.5
PERTURBED = ("0.weight", "4.weight")  # the conv kernel and the linear weight of tiny_model


def make_method() -> ISEAT:
    method = ISEAT(ISEATConfig(gamma=GAMMA, lam=LAM, steps=STEPS, step_size=ALPHA), ThreatModel("linf", EPS))
    method.stage_lam = LAM
    return method


def hand_attack(model, x, y):
    """PGD with no random start, train-mode BN, the first step from the clean CE gradient (written out)."""
    x_adv = x.clone()
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + ALPHA * g.sign(), x - EPS), x + EPS).clamp(0, 1)
    return x_adv


def hand_ranks(values: list[float]) -> list[float]:
    """Average ranks, ascending, written out with sorted(): ties share the mean of the positions they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def two_model_reference(reference, x, y):
    """Clean logits from an unperturbed copy, adversarial ones from a copy at θ + γv; returns the loss, the
    two copies and v."""
    x_adv = hand_attack(copy.deepcopy(reference), x, y)
    proxy = copy.deepcopy(reference)
    loss = F.cross_entropy(proxy(x_adv), y)
    weights = [proxy.get_parameter(n) for n in PERTURBED]
    grads = torch.autograd.grad(loss, weights)
    v = {n: w.detach().norm() * g / (g.norm() + 1e-20) for n, w, g in zip(PERTURBED, weights, grads, strict=True)}
    clean, adv = copy.deepcopy(reference), copy.deepcopy(reference)
    with torch.no_grad():
        for n in PERTURBED:
            adv.get_parameter(n).add_(GAMMA * v[n])
    z_clean, z_adv = clean(x), adv(x_adv)
    ce_adv = F.cross_entropy(z_adv, y, reduction="none")
    av = (ce_adv - F.cross_entropy(z_clean, y, reduction="none")).tolist()
    w = torch.tensor([r / len(av) for r in hand_ranks(av)], dtype=x.dtype)
    total = ce_adv.mean() + LAM * (w * ((z_adv - z_clean) ** 2).sum(1)).mean()
    return total, clean, adv, v


def test_gradient_equals_the_two_model_formulation_in_fp64():
    model, (x, y) = tiny_model(), tiny_batch()
    reference = copy.deepcopy(model)
    out = make_method().loss(model, Batch(x, y), StepContext(0, 0, torch.Generator().manual_seed(0)))
    names = [n for n, _ in model.named_parameters()]
    ours = dict(zip(names, torch.autograd.grad(out.loss, list(model.parameters())), strict=True))

    total, clean, adv, _ = two_model_reference(reference, x, y)
    assert abs(out.loss.item() - total.item()) < 1e-10
    grads_clean = torch.autograd.grad(total, list(clean.parameters()), retain_graph=True)
    grads_adv = torch.autograd.grad(total, list(adv.parameters()))
    for name, gc, ga in zip(names, grads_clean, grads_adv, strict=True):
        assert torch.allclose(ours[name], gc + ga, atol=1e-6, rtol=0), name
        assert gc.abs().sum() > 0 and ga.abs().sum() > 0  # both branches carry gradient
    # The weights stay perturbed until after_step; then they are θ again, bit for bit.
    out.after_step()
    assert all(torch.allclose(p, q, atol=1e-15) for p, q in zip(model.parameters(), reference.parameters(),
                                                                   strict=True))


def test_one_step_is_the_awp_convention_optimizer_step_at_the_perturbed_point_then_minus_gamma_v():
    model, (x, y) = tiny_model(), tiny_batch()
    reference = copy.deepcopy(model)
    settings = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
    opt = torch.optim.SGD(model.parameters(), **settings)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = make_method().loss(model, Batch(x, y), StepContext(0, 0, torch.Generator().manual_seed(0)))
    during = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    out.after_step()

    total, clean, adv, v = two_model_reference(reference, x, y)
    for n in during:  # only the multi-dimensional weights were moved, BN parameters and biases never
        assert torch.equal(during[n], before[n]) is (n not in PERTURBED), n
    grads = [a + b for a, b in zip(torch.autograd.grad(total, list(clean.parameters()), retain_graph=True),
                                   torch.autograd.grad(total, list(adv.parameters())), strict=True)]
    ref_opt = torch.optim.SGD(adv.parameters(), **settings)  # stepping at θ + γv: weight decay sees it
    for p, g in zip(adv.parameters(), grads, strict=True):
        p.grad = g
    ref_opt.step()
    with torch.no_grad():
        for n in PERTURBED:
            adv.get_parameter(n).sub_(GAMMA * v[n])
    for (n, p), q in zip(model.named_parameters(), adv.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-12, rtol=0), n


def test_rank_weights_with_ties_are_average_ascending_ranks_over_the_batch():
    av = torch.tensor([0.3, 0.1, 0.3, 0.5, -1.0])
    # ascending: −1.0 → 1, 0.1 → 2, the two 0.3 → (3 + 4)/2, 0.5 → 5; divided by B = 5
    assert torch.allclose(rank_weights(av), torch.tensor([0.7, 0.4, 0.7, 1.0, 0.2]))
    assert torch.allclose(rank_weights(torch.full((4,), 2.0)), torch.full((4,), 2.5 / 4))
    values = torch.randn(33, generator=torch.Generator().manual_seed(1)).double()
    assert rank_weights(values).tolist() == [r / 33 for r in hand_ranks(values.tolist())]
    assert rank_weights(values).max() == 1 and math.isclose(rank_weights(values).min(), 1 / 33)


def released_stage_lam(epoch: int, annealing: list[float], lams: list[float]) -> float:
    """The released code's λ, written out: the LR stage counts the milestones with epoch >= int(milestone)
    (stopping at the first one not reached), and λ is the stage's entry of `--lam` (its last past the end)."""
    stage = 0
    for milestone in annealing:
        if epoch < int(milestone):
            break
        stage += 1
    return lams[stage] if stage < len(lams) else lams[-1]


def stage_lams(method: ISEAT, schedule: ScheduleConfig, epochs: int) -> list[float]:
    """method.stage_lam at the start of every epoch, with the LR and milestones the trainer passes."""
    lrs = LRSchedule(schedule, 0.1, epochs)
    out = []
    for epoch in range(epochs):
        ctx = EpochContext(epoch, epochs, lrs.lr_at(epoch), 0.1, lambda n: (None, None), None,
                           schedule.lr_milestones())
        method.on_epoch_start(None, ctx)
        out.append(method.stage_lam)
    return out


@pytest.mark.parametrize("milestones", [[100, 150], [150, 100], [0, 150], [99.5, 150], [201]])
def test_lambda_follows_the_released_codes_lr_stage(milestones):
    schedule = ScheduleConfig(name="multistep", milestones=milestones)
    method = ISEAT(ISEATConfig(), ThreatModel("linf", 8 / 255))
    assert method.stage_lam == 0.0
    expected = [released_stage_lam(e, sorted(milestones), [0.0, 0.1]) for e in range(200)]
    assert stage_lams(method, schedule, 200) == expected
    again = ISEAT(ISEATConfig(), ThreatModel("linf", 8 / 255))
    again.load_state_dict(method.state_dict())  # a mid-epoch resume keeps the stage's λ
    assert again.stage_lam == expected[-1]


def test_lambda_under_a_schedule_without_milestones_needs_an_explicit_epoch():
    # Cosine is below its base LR from epoch 1: "λ on once the LR has dropped" switched it on there.
    cosine = ScheduleConfig(name="cosine")
    explicit = ISEAT(ISEATConfig(lam_start_epoch=120), ThreatModel("linf", 8 / 255))
    assert stage_lams(explicit, cosine, 200) == [0.0] * 120 + [0.1] * 80
    # The explicit epoch also overrides the milestone of a multistep schedule.
    early = ISEAT(ISEATConfig(lam_start_epoch=3), ThreatModel("linf", 8 / 255))
    assert stage_lams(early, ScheduleConfig(name="multistep", milestones=[100, 150]), 6) == [0.0] * 3 + [0.1] * 3
    # Without one, no schedule but multistep is accepted: refused at load time, and by the method itself.
    for name in ("cosine", "cyclic", "plateau", "constant"):
        with pytest.raises(UserError, match=rf"schedule {name} has none: set method\.lam_start_epoch"):
            load_config(None, ["method.name=iseat", f"schedule.name={name}"])
        with pytest.raises(UserError, match=r"method\.lam_start_epoch"):
            stage_lams(ISEAT(ISEATConfig(), ThreatModel("linf", 8 / 255)), ScheduleConfig(name=name), 2)
    with pytest.raises(UserError, match="schedule multistep has none"):
        load_config(None, ["method.name=iseat", "schedule.milestones=[]"])
    config = load_config(None, ["method.name=iseat", "schedule.name=cosine", "method.lam_start_epoch=100"])
    assert config.method.lam_start_epoch == 100
    load_config(None, ["method.name=pgd_at", "schedule.name=cosine"])  # other methods take any schedule


def test_a_cosine_iseat_config_at_the_cli_is_one_line_exit_2(tmp_path, capsys):
    from advtrain.cli import main

    config = Path(__file__).parents[1] / "configs" / "digits_iseat.yaml"
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"),
                 "--set", "schedule.name=cosine"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method.lam_start_epoch" in err[0] and "multistep" in err[0], err
    assert not (tmp_path / "run").exists()


def test_iseat_trains_on_digits_and_records_its_options(tmp_path):
    config = load_config(None, ["method.name=iseat", "method.steps=2", "threat.eps=0.2", "train.epochs=2",
                                "schedule.milestones=[1]", "train.batch_size=64", "train.val_steps=2",
                                "monitor.enabled=false", "train.progress=quiet", "data.val_size=100"])
    result = train(config, tmp_path / "run", log=lambda _: None)
    assert math.isfinite(result.last["train_loss"]) and result.last["train_smooth"] > 0
    from advtrain.checkpoint import load_weights

    meta = load_weights(tmp_path / "run" / "checkpoints" / "last.safetensors")[1]["method"]
    assert meta["gamma"] == 7e-3 and meta["lam"] == 0.1 and meta["random_start"] is False
