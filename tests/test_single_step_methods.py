"""Single-step methods (docs/methods.md §2): fgsm, fgsm_rs, n_fgsm, grad_align.

Each loss is checked against an independent hand-written formula in fp64 (own autograd, same noise drawn
from an identically seeded generator), and the input-gradient step is checked under bf16 autocast: it must
never silently be an all-zero sign step (`zero_grad` metric) and must agree with the fp32 step.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advtrain.methods.fgsm
import advtrain.methods.fgsm_rs
import advtrain.methods.grad_align
import advtrain.methods.n_fgsm  # noqa: F401  (registers the methods)
from advtrain.attacks import ThreatModel
from advtrain.config import load_config
from advtrain.errors import UserError
from advtrain.methods import Batch, StepContext, build_method
from advtrain.methods.grad_align import default_lambda
from advtrain.train import train
from tests.helpers import digits_tensors, trained_digits_cnn

METHODS = ["fgsm", "fgsm_rs", "n_fgsm", "grad_align"]
EPS, LAM, SEED = 0.2, 0.7, 5


def _method(name: str, *overrides: str, eps: float = EPS, norm: str = "linf"):
    return build_method(load_config(None, [f"method.name={name}", *overrides]).method, ThreatModel(norm, eps))


def _tiny_fp64_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 8 * 8, 10)).double().train()


def _grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return g


def _expected_loss(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The papers' formulas, written out independently of advtrain (train-mode BN throughout)."""
    gen = torch.Generator().manual_seed(SEED)
    if name == "fgsm":
        x_adv = (x + EPS * _grad(model, x, y).sign()).clamp(0, 1)
    elif name == "fgsm_rs":  # Wong et al. 2020, α = 1.25ε, δ₀ clamped into the image box first
        d0 = (x + torch.empty_like(x).uniform_(-EPS, EPS, generator=gen)).clamp(0, 1) - x
        d = (d0 + 1.25 * EPS * _grad(model, x + d0, y).sign()).clamp(-EPS, EPS)
        x_adv = (x + d).clamp(0, 1)
    elif name == "n_fgsm":  # de Jorge et al. 2022, η ~ U(−2ε, 2ε), step ε, no ε-ball clipping
        eta = (x + torch.empty_like(x).uniform_(-2 * EPS, 2 * EPS, generator=gen)).clamp(0, 1) - x
        x_adv = (x + eta + EPS * _grad(model, x + eta, y).sign()).clamp(0, 1)
    else:  # GradAlign: CE at the FGSM point + λ(1 − mean cos(g₁, g₂)), g₂ by double backprop
        g1 = _grad(model, x, y)
        ce = F.cross_entropy(model((x + EPS * g1.sign()).clamp(0, 1)), y)
        x2 = (x + torch.empty_like(x).uniform_(-EPS, EPS, generator=gen)).requires_grad_(True)
        (g2,) = torch.autograd.grad(F.cross_entropy(model(x2), y), x2, create_graph=True)
        cos = F.cosine_similarity(g1.flatten(1), g2.flatten(1), dim=1)
        return ce + LAM * (1 - cos.mean())
    return F.cross_entropy(model(x_adv.detach()), y)


@pytest.mark.parametrize("name", METHODS)
def test_loss_equals_the_hand_written_formula_in_fp64(name):
    model = _tiny_fp64_model()
    reference = copy.deepcopy(model)
    x, y = digits_tensors()[0][:16].double(), digits_tensors()[1][:16]
    method = _method(name, *([f"method.lam={LAM}"] if name == "grad_align" else []))
    out = method.loss(model, Batch(x, y), StepContext(0, 0, torch.Generator().manual_seed(SEED)))
    expected = _expected_loss(name, reference, x, y)

    assert abs(out.loss.item() - expected.item()) < 1e-6
    assert torch.allclose(model[1].running_mean, reference[1].running_mean)  # same forwards, same BN mode
    assert out.metrics["zero_grad"].item() == 0 and 0 <= out.metrics["acc"].item() <= 1
    if name == "grad_align":  # the parameter gradient goes through g₂: double backprop works
        got = torch.autograd.grad(out.loss, list(model.parameters()))
        want = torch.autograd.grad(expected, list(reference.parameters()))
        for a, b in zip(got, want, strict=True):
            assert torch.allclose(a, b, atol=1e-8, rtol=1e-6)
        assert out.metrics["reg"].item() > 0


def test_grad_align_lambda_follows_the_authors_schedule_and_zero_gradients_give_no_nan():
    assert default_lambda(8 / 255) == pytest.approx(0.2) and default_lambda(16 / 255) == pytest.approx(2.0)
    assert _method("grad_align", eps=8 / 255).metadata()["lam_resolved"] == pytest.approx(0.2)
    with pytest.raises(UserError, match=r"method\.lam"):
        _method("grad_align", eps=0.2)  # outside the range the schedule was run on: λ must be given
    with pytest.raises(UserError, match="L∞"):
        _method("n_fgsm", norm="l2")

    # A constant model has an all-zero input gradient: the regulariser is 0, gradients finite, flagged.
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double()
    with torch.no_grad():
        model[1].weight.zero_()
    x, y = digits_tensors()[0][:8].double(), digits_tensors()[1][:8]
    out = _method("grad_align", "method.lam=1.0").loss(model, Batch(x, y), StepContext(0, 0, torch.Generator()))
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert out.metrics["zero_grad"].item() == 1 and out.metrics["reg"].item() == 0


def _confident_cnn(device: str) -> nn.Module:
    model = copy.deepcopy(trained_digits_cnn()).to(device)
    with torch.no_grad():  # logit margins ×4 (median ≈ 25): bf16 softmax would saturate to one-hot
        model.fc.weight.mul_(4)
        model.fc.bias.mul_(4)
    return model


def _bf16_steps_are_never_silently_zero(device: str) -> None:
    base = _confident_cnn(device)
    x, y = digits_tensors()[2][:256].to(device), digits_tensors()[3][:256].to(device)
    for name in METHODS:
        method = _method(name, *(["method.lam=0.5"] if name == "grad_align" else []))
        results = {}
        for dtype in (torch.float32, torch.bfloat16):
            model = copy.deepcopy(base)
            gen = torch.Generator(device).manual_seed(SEED)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                out = method.loss(model, Batch(x, y), StepContext(0, 0, gen))
                x_adv = None if name == "grad_align" else method.perturb(
                    copy.deepcopy(base), Batch(x, y), StepContext(0, 0, torch.Generator(device).manual_seed(SEED)))
            out.loss.backward()  # the double backprop of grad_align also runs under bf16
            assert torch.isfinite(out.loss), (name, dtype)
            assert out.metrics["zero_grad"].item() == 0, (name, dtype)  # no example got an all-zero step
            results[dtype] = x_adv
        if name != "grad_align":  # same noise, same sign step for the vast majority of pixels
            agree = (results[torch.float32] == results[torch.bfloat16]).float().mean().item()
            assert agree > 0.9, (name, agree)


def test_bf16_autocast_input_gradient_steps_are_never_silently_zero_on_cpu():
    _bf16_steps_are_never_silently_zero("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_input_gradient_steps_are_never_silently_zero_on_cuda():
    _bf16_steps_are_never_silently_zero("cuda")


@pytest.mark.parametrize("name", METHODS)
def test_one_epoch_trains_with_finite_loss(tmp_path, name):
    overrides = ["train.epochs=1", "train.batch_size=128", "train.val_steps=2", "train.progress=quiet",
                 "data.val_size=200", "threat.eps=0.2", f"method.name={name}"]
    if name == "grad_align":
        overrides.append("method.lam=0.5")
    result = train(load_config(None, overrides), tmp_path / "run", log=lambda _: None)
    assert torch.isfinite(torch.tensor(result.last["train_loss"])) and 0 <= result.last["val_pgd_acc"] <= 1
