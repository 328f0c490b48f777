"""SAT-R1/R2/R3 (docs/methods.md §5) against hand-written formulas in fp64: eval-mode crafting, one train-mode
forward over the concatenated variants, and R2's unclamped start and unprojected full-ε step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from advtrain.attacks import ThreatModel
from advtrain.methods.base import Batch, StepContext
from advtrain.methods.sat_r1 import SATR1, SATR1Config
from advtrain.methods.sat_r2 import SATR2, SATR2Config
from advtrain.methods.sat_r3 import SATR3, SATR3Config
from tests.test_baseline_methods import tiny_batch, tiny_model

EPS = 0.2


def ce_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return g


def one_forward(reference, *parts):
    """The train-mode forward over the concatenation, split; and the BN running mean it leaves behind."""
    reference.train()
    logits = reference(torch.cat(parts))
    return logits.split([len(p) for p in parts]), reference[1].running_mean.clone()


def check(method, model, reference, expected, running_mean, seed):
    out = method.loss(model, Batch(*tiny_batch()), StepContext(0, 0, torch.Generator().manual_seed(seed)))
    assert abs(out.loss.item() - expected.item()) < 1e-6
    # One train-mode forward over all variants: BN saw the concatenated batch once (the crafting was in eval).
    assert torch.allclose(model[1].running_mean, running_mean, atol=1e-12)
    assert model.training


@pytest.mark.parametrize("n_iter_samples", [1, 3])
def test_sat_r1_equals_the_hand_written_formula(n_iter_samples):
    model, (x, y) = tiny_model(), tiny_batch()
    reference = copy.deepcopy(model)
    lam, steps, seed = 0.2, 3, 7
    method = SATR1(SATR1Config(lam=lam, iter_steps=steps, n_iter_samples=n_iter_samples), ThreatModel("linf", EPS))

    crafter = copy.deepcopy(reference).eval()
    x_single = (x + EPS * ce_grad(crafter, x, y).sign()).clamp(0, 1)
    picked = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n_iter_samples]
    xm, ym = x[picked], y[picked]
    x_multi = xm.clone()
    for _ in range(steps):  # I-FGSM: step ε/T from x, projected to the ε-ball and [0, 1]
        x_multi = torch.min(torch.max(x_multi + EPS / steps * ce_grad(crafter, x_multi, ym).sign(), xm - EPS),
                            xm + EPS).clamp(0, 1)
    (z_single, z_multi), running_mean = one_forward(reference, x_single, x_multi)
    gap = ((z_single[picked] - z_multi) ** 2).sum(1).mean()  # averaged over the M pairs, not divided by B
    check(method, model, reference, F.cross_entropy(z_single, y) + lam * gap, running_mean, seed)


def test_sat_r2_equals_the_hand_written_formula_without_clamp_or_projection():
    model, (x, y) = tiny_model(), tiny_batch()
    reference = copy.deepcopy(model)
    lam, alpha, seed = 25.0, 2 / 255, 3
    method = SATR2(SATR2Config(lam=lam, alpha=alpha), ThreatModel("linf", EPS))

    crafter = copy.deepcopy(reference).eval()
    x_fgsm = (x + EPS * ce_grad(crafter, x, y).sign()).clamp(0, 1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    x_start = x + alpha * noise.sign()
    assert (x_start < 0).any()  # digits have black pixels: the start leaves [0, 1] and is used as it is
    x_rfgsm = (x_start + EPS * ce_grad(crafter, x_start, y).sign()).clamp(0, 1)
    assert (x_rfgsm - x).abs().max() > EPS  # a full ε step from the start: not projected back to the ball
    (z_fgsm, z_rfgsm), running_mean = one_forward(reference, x_fgsm, x_rfgsm)
    expected = F.cross_entropy(z_fgsm, y) + lam * ((z_fgsm - z_rfgsm) ** 2).sum(1).mean()
    check(method, model, reference, expected, running_mean, seed)


@pytest.mark.parametrize("reduction", ["batch", "per_sample"])
def test_sat_r3_equals_the_hand_written_formula(reduction):
    model, (x, y) = tiny_model(), tiny_batch()
    reference = copy.deepcopy(model)
    lam, eps_lo, eps_hi, tau, alpha, seed = 1.0, 0.05, 0.2, 0.6, 0.01, 5
    method = SATR3(SATR3Config(lam=lam, eps_lo=eps_lo, eps_hi=eps_hi, tau=tau, alpha=alpha, reduction=reduction),
                   ThreatModel("linf", EPS))

    crafter = copy.deepcopy(reference).eval()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    x_start = (x + alpha * noise.sign()).clamp(0, 1)
    s = ce_grad(crafter, x_start, y).sign()  # one direction for both points
    (z_lo, z_hi), running_mean = one_forward(reference, (x_start + eps_lo * s).clamp(0, 1),
                                             (x_start + eps_hi * s).clamp(0, 1))
    l_lo, l_hi = F.cross_entropy(z_lo, y, reduction="none"), F.cross_entropy(z_hi, y, reduction="none")
    if reduction == "batch":
        penalty = torch.relu(l_lo.mean() - tau * l_hi.mean())
    else:
        penalty = torch.relu(l_lo - tau * l_hi).mean()
    check(method, model, reference, l_hi.mean() + lam * penalty, running_mean, seed)


def test_sat_r_runs_select_their_checkpoint_on_validation_i_fgsm_3(tmp_path):
    from advtrain.checkpoint import load_weights
    from advtrain.config import load_config
    from advtrain.data import load_dataset, split_validation, to_float
    from advtrain.eval.checkpoints import load_checkpoint_model
    from advtrain.train import train

    config = load_config(None, ["method.name=sat_r2", "method.lam=5", "method.alpha=0.01", "threat.eps=0.2",
                                "train.epochs=2", "train.batch_size=64", "monitor.enabled=false",
                                "train.progress=quiet", "data.val_size=100"])
    train(config, tmp_path / "run", log=lambda _: None)
    import json

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("val_ifgsm_acc" in r and "val_pgd_acc" not in r for r in rows)
    _, meta = load_weights(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert meta["metric"] == "val_ifgsm_acc" and meta["value"] == rows[-1]["val_ifgsm_acc"]
    # I-FGSM-3 by hand on the validation split: 3 steps of ε/3 from x, projected, in eval mode.
    data = load_dataset("digits")
    _, val_idx = split_validation(len(data.y_train), 100, config.seed, labels=data.y_train)
    x, y = to_float(data.x_train[val_idx], data.pixel_max), data.y_train[val_idx]
    model = load_checkpoint_model(tmp_path / "run" / "checkpoints" / "last.safetensors").model.eval()
    survived = model(x).argmax(1) == y  # evaluate() counts an example broken at the first fooling iterate
    x_adv = x.clone()
    for _ in range(3):
        x_adv = torch.min(torch.max(x_adv + 0.2 / 3 * ce_grad(model, x_adv, y).sign(), x - 0.2), x + 0.2).clamp(0, 1)
        with torch.no_grad():
            survived &= model(x_adv).argmax(1) == y
    assert rows[-1]["val_ifgsm_acc"] == pytest.approx(survived.float().mean().item(), abs=1e-6)
