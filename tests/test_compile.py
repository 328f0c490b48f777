"""Opt-in torch.compile (issue 9): a compiled model is used only once it gives eager gradients; otherwise, and
for double-backprop methods, training runs eagerly and says why."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advtrain.config import load_config
from advtrain.eval.robustness import AttackSpec, evaluate_attacks
from advtrain.runtime import compile_checked
from advtrain.train.trainer import train
from tests.helpers import digits_tensors, trained_digits_cnn

FAST = ["train.epochs=1", "train.batch_size=128", "train.val_steps=2", "train.progress=quiet", "data.val_size=200",
        "threat.eps=0.2"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    # Dynamo caches compiled code per Python function for the whole process; each test starts from none.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_a_compiled_model_keeps_eager_input_gradients_and_pgd_accuracy():
    x, y, _, _ = digits_tensors()
    x, y = x[:512], y[:512]
    eager = trained_digits_cnn()
    model, reason = compile_checked(copy.deepcopy(eager), "default", x[:64], y[:64])
    assert reason is None
    assert model.state_dict().keys() == eager.state_dict().keys()  # compiled in place: same names
    spec = [AttackSpec("pgd", 0.1, "linf", 10, 1, 0.025)]
    (expected,) = evaluate_attacks(eager, x, y, spec, seed=3)
    (got,) = evaluate_attacks(model, x, y, spec, seed=3)
    assert 0.2 < expected.accuracy < 0.8
    assert abs(got.accuracy - expected.accuracy) <= 0.01
    # The check restored everything it touched: same weights and BN statistics as before it ran.
    for (name, a), b in zip(model.state_dict().items(), eager.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


class CutsInputGradientWhenCompiled(nn.Module):
    """The symptom of torch 2.13's CPU bug (zero input gradients from a compiled Conv→ReLU→MaxPool2d in some
    shapes), injected so the check can be shown to catch it: under compile the input reaches the net with its
    gradient cut."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            x = x * 0 + x.detach()
        return self.net(x)


def test_a_compiled_model_with_zero_input_gradients_falls_back_to_an_eager_copy():
    torch.manual_seed(0)
    model = CutsInputGradientWhenCompiled()
    before = copy.deepcopy(model.state_dict())
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    checked, reason = compile_checked(model, "default", x, y)
    assert reason is not None and "input gradients differ from eager" in reason
    assert checked is not model
    x_req = x.clone().requires_grad_(True)
    checked(x_req).sum().backward()
    assert x_req.grad.abs().max() > 0  # the returned model is eager: gradients reach the input
    for name, value in checked.state_dict().items():
        assert torch.equal(value, before[name]), name


class ChangesLogitsWhenCompiled(CutsInputGradientWhenCompiled):
    """Compiled, its logits are scaled for inputs that need no gradient: check (1), on input gradients, passes;
    only the training loss (a forward on a plain batch) shows the difference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1.5 if torch.compiler.is_compiling() and not x.requires_grad else 1.0
        return scale * self.net(x)


def test_a_training_loss_that_changes_under_compile_falls_back():
    torch.manual_seed(0)
    model = ChangesLogitsWhenCompiled()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    checked, reason = compile_checked(model, "default", x, y, lambda m: nn.functional.cross_entropy(m(x), y))
    assert reason is not None and "training loss under torch.compile differs" in reason
    assert checked is not model


def test_training_with_compile_matches_eager_training(tmp_path):
    logs: list[str] = []
    eager = train(load_config(None, [*FAST, "method.steps=2"]), tmp_path / "eager", log=lambda _: None)
    compiled = train(load_config(None, [*FAST, "method.steps=2", "train.compile=default"]), tmp_path / "compiled",
                     log=logs.append)
    assert not any("training eagerly" in line for line in logs), logs
    assert abs(compiled.last["train_loss"] - eager.last["train_loss"]) < 1e-3
    assert abs(compiled.last["val_clean_acc"] - eager.last["val_clean_acc"]) <= 0.02


def test_a_double_backprop_method_trains_eagerly_under_compile(tmp_path):
    logs: list[str] = []
    overrides = [*FAST, "method.name=grad_align", "method.lam=0.2"]
    eager = train(load_config(None, overrides), tmp_path / "eager", log=lambda _: None)
    compiled = train(load_config(None, [*overrides, "train.compile=default"]), tmp_path / "compiled",
                     log=logs.append)
    assert any("differentiates input gradients twice" in line and "training eagerly" in line for line in logs)
    assert compiled.last["train_loss"] == eager.last["train_loss"]  # the same eager run, bit for bit
