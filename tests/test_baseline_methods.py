"""TRADES, MART and the AWP wrapper against hand-written formulas (docs/methods.md §2, §4.3), in fp64."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import ThreatModel
from advtrain.config import load_config
from advtrain.errors import UserError
from advtrain.methods.awp import AWP, AWPConfig
from advtrain.methods.base import Batch, StepContext
from advtrain.methods.mart import MART, MARTConfig
from advtrain.methods.pgd_at import PGDATConfig
from advtrain.methods.trades import TRADES, TRADESConfig
from advtrain.train import train
from tests.helpers import digits_tensors

EPS, ALPHA, STEPS = 0.2, 0.05, 3


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 8 * 8, 10)).double().train()


def tiny_batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return digits_tensors()[0][:n].double(), digits_tensors()[1][:n]


def softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(1, keepdim=True).values)
    return e / e.sum(1, keepdim=True)


def ctx(seed: int, epoch: int = 0) -> StepContext:
    return StepContext(epoch, 0, torch.Generator().manual_seed(seed))


def param_grads(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters())))


def test_trades_attack_and_loss_equal_the_hand_written_formulas():
    model = tiny_model()
    reference = copy.deepcopy(model)
    x, y = tiny_batch()
    method = TRADES(TRADESConfig(steps=STEPS, step_size=ALPHA), ThreatModel("linf", EPS))
    x_adv = method.perturb(model, Batch(x, y), ctx(5))
    assert model.training and model[1].training  # the eval-mode attack restores train mode

    # Independent: the TRADES code's attack, in eval mode, from x + 0.001·N(0, 1), on Σ KL(p(x) ‖ p(x')).
    reference.eval()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    xa = x + 0.001 * noise
    for _ in range(STEPS):
        xa = xa.detach().requires_grad_(True)
        p = softmax(reference(x)).detach()
        kl = (p * (torch.log(p) - torch.log(softmax(reference(xa))))).sum()
        (g,) = torch.autograd.grad(kl, xa)
        xa = torch.min(torch.max(xa + ALPHA * g.sign(), x - EPS), x + EPS).clamp(0, 1)
    assert torch.allclose(x_adv, xa, rtol=0, atol=1e-12)
    assert torch.equal(model[1].running_mean, reference[1].running_mean)  # eval attack: stats untouched

    # Loss in train mode: CE(z(x), y) + β·(1/B)·Σᵢ Σₖ p_k(xᵢ)(log p_k(xᵢ) − log p_k(x'ᵢ)), p(x) not detached.
    reference.train()
    out = method.objective(model, Batch(x, y), x_adv)
    p, q = softmax(reference(x)), softmax(reference(x_adv))
    ce = -torch.log(p[torch.arange(len(y)), y]).mean()
    expected = ce + 6.0 * (p * (torch.log(p) - torch.log(q))).sum() / len(y)
    assert abs(out.loss.item() - expected.item()) < 1e-6
    for a, b in zip(param_grads(model, out.loss), param_grads(reference, expected), strict=True):
        assert torch.allclose(a, b, atol=1e-6)  # the methods compute losses in fp32 (the project convention)


def test_mart_attack_and_loss_equal_the_hand_written_formulas():
    model = tiny_model()
    reference = copy.deepcopy(model)
    x, y = tiny_batch()
    method = MART(MARTConfig(steps=STEPS, step_size=ALPHA), ThreatModel("linf", EPS))
    x_adv = method.perturb(model, Batch(x, y), ctx(7))

    # The MART code's attack: eval mode, start x + 0.001·N(0, 1), PGD on CE.
    reference.eval()
    xa = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
    for _ in range(STEPS):
        xa = xa.detach().requires_grad_(True)
        nll = -torch.log(softmax(reference(xa))[torch.arange(len(y)), y]).mean()
        (g,) = torch.autograd.grad(nll, xa)
        xa = torch.min(torch.max(xa + ALPHA * g.sign(), x - EPS), x + EPS).clamp(0, 1)
    assert torch.allclose(x_adv, xa, rtol=0, atol=1e-12)

    # −log p_y(x') − log(1.0001 − max_{k≠y} p_k(x') + 1e-12) + β·mean_i[KL(p(xᵢ) ‖ p(x'ᵢ))·(1.0000001 − p_y(xᵢ))]
    reference.train()
    out = method.objective(model, Batch(x, y), x_adv)
    rows = torch.arange(len(y))
    p, q = softmax(reference(x)), softmax(reference(x_adv))
    top2 = torch.argsort(q, dim=1)[:, -2:]
    other = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    bce = -torch.log(q[rows, y]) - torch.log(1.0001 - q[rows, other] + 1e-12)
    kl = (p * (torch.log(p) - torch.log(q + 1e-12))).sum(1)
    expected = bce.mean() + 6.0 * (kl * (1.0000001 - p[rows, y])).mean()
    assert abs(out.loss.item() - expected.item()) < 1e-6
    for a, b in zip(param_grads(model, out.loss), param_grads(reference, expected), strict=True):
        assert torch.allclose(a, b, atol=1e-6)  # the methods compute losses in fp32 (the project convention)


def test_awp_step_equals_a_hand_written_perturb_step_restore():
    model = tiny_model()
    reference = copy.deepcopy(model)
    x, y = tiny_batch(32)
    gamma = 0.05  # larger than the paper's so a wrong perturbation could not hide in the tolerance
    method = AWP(AWPConfig(base=PGDATConfig(steps=2, step_size=ALPHA), gamma=gamma), ThreatModel("linf", EPS))
    settings = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
    opt = torch.optim.SGD(model.parameters(), **settings)
    opt_ref = torch.optim.SGD(reference.parameters(), **settings)
    untouched = {n for n, _ in model.named_parameters()} - {"0.weight", "4.weight"}

    for step, seed in enumerate((11, 12)):  # two steps: the momentum buffers carry the perturbed gradient
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        out = method.loss(model, Batch(x, y), ctx(seed))
        during = dict(model.named_parameters())
        assert all(torch.equal(during[n], before[n]) for n in untouched)  # BN weights and all biases
        assert not torch.equal(during["0.weight"], before["0.weight"])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        assert out.after_step is not None
        out.after_step()

        # Reference: the same x' (pgd_at's perturb, train-mode BN), then v by hand on a throwaway copy.
        x_adv = method.base.perturb(reference, Batch(x, y), ctx(seed))
        proxy = copy.deepcopy(reference).train()
        # pgd_at's objective (CE); the AWP mechanics are what is checked.
        unperturbed = F.cross_entropy(proxy(x_adv), y)
        weights = {"0.weight": proxy[0].weight, "4.weight": proxy[4].weight}
        grads = torch.autograd.grad(unperturbed, list(weights.values()))
        v = {n: w.detach().norm() * g / (g.norm() + 1e-20) for (n, w), g in zip(weights.items(), grads, strict=True)}
        assert set(method.weight_perturbation(copy.deepcopy(reference), Batch(x, y), x_adv, ctx(seed))) == set(v)
        params = dict(reference.named_parameters())
        with torch.no_grad():
            for n, d in v.items():
                params[n].add_(gamma * d)
        perturbed = F.cross_entropy(reference(x_adv), y)
        assert abs(out.loss.item() - perturbed.item()) < 1e-10
        assert abs(perturbed.item() - unperturbed.item()) > 1e-4
        opt_ref.zero_grad()
        perturbed.backward()
        opt_ref.step()
        with torch.no_grad():
            for n, d in v.items():
                params[n].sub_(gamma * d)

        for (n, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
            assert torch.allclose(a, b, rtol=0, atol=1e-10), (step, n)  # parameters and BN running stats


def test_awp_defaults_warmup_and_refusals():
    threat = ThreatModel("linf", EPS)
    at = AWP(AWPConfig(), threat)
    assert (at.gamma, at.warmup_epochs) == (1e-2, 0)
    assert (AWP(AWPConfig(base=TRADESConfig()), threat).gamma, AWP(AWPConfig(base=TRADESConfig()), threat)
            .warmup_epochs) == (5e-3, 9)
    assert AWP(AWPConfig(base=MARTConfig()), threat).gamma == 5e-3
    assert AWP(AWPConfig(gamma=0.02, warmup_epochs=3), threat).metadata()["gamma"] == 0.02
    assert at.metadata()["base"]["name"] == "pgd_at" and at.selection_metric == "val_pgd_acc"

    # During warm-up the loss is exactly the base method's and the weights are never touched.
    model, (x, y) = tiny_model(), tiny_batch()
    warm = AWP(AWPConfig(base=TRADESConfig(steps=2), warmup_epochs=2), threat)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = warm.loss(model, Batch(x, y), ctx(3, epoch=1))
    assert out.after_step is None
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    base = warm.base.loss(copy.deepcopy(tiny_model()), Batch(x, y), ctx(3, epoch=1))
    assert out.loss.item() == pytest.approx(base.loss.item(), abs=1e-12)

    with pytest.raises(UserError, match="pgd_at"):
        load_config(None, ["method.name=awp", "method.base.name=standard"])
    config = load_config(None, ["method.name=awp", "method.base.name=trades", "method.gamma=0.01"])
    assert isinstance(config.method, AWPConfig) and isinstance(config.method.base, TRADESConfig)


TINY = ["train.epochs=1", "train.batch_size=256", "train.val_steps=1", "train.val_max=64", "train.progress=quiet",
        "data.val_size=200", "threat.eps=0.2"]


@pytest.mark.parametrize("method", [
    ["method.name=trades", "method.steps=2"],
    ["method.name=mart", "method.steps=2"],
    ["method.name=awp", "method.base.name=trades", "method.base.steps=2", "method.warmup_epochs=0"],
])
def test_one_epoch_trains_with_finite_losses(tmp_path, method):
    result = train(load_config(None, [*TINY, *method]), tmp_path / "run", log=lambda _: None)
    assert math.isfinite(result.last["train_loss"]) and 0 <= result.last["train_acc"] <= 1
