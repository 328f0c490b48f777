"""IGD (docs/methods.md §3): the loss against a hand-written formula, the second-order gradient against central
finite differences (fp64), the frozen teacher, the options and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from advtrain.attacks import ThreatModel
from advtrain.checkpoint import load_weights, save_weights
from advtrain.config import load_config
from advtrain.errors import UserError
from advtrain.methods.base import Batch, StepContext
from advtrain.methods.igd import IGD, IGDConfig
from advtrain.methods.pgd_at import PGDATConfig
from advtrain.methods.trades import TRADESConfig
from advtrain.models.spec import ModelSpec
from advtrain.train import train
from tests.helpers import digits_tensors

EPS = 0.2
SPEC = ModelSpec("small_cnn", 10, 1, 8)


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return SPEC.build().double()


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_weights(path, make_model(1).float().state_dict(), {"model": SPEC.to_dict()})
    return path


def batch(n: int = 12) -> Batch:
    x, y, _, _ = digits_tensors()
    return Batch(x[:n].double(), y[:n])


def method_for(teacher_path: Path, **options) -> IGD:
    base = options.pop("base", PGDATConfig(steps=3, step_size=EPS / 4, bn_mode="eval"))
    return IGD(IGDConfig(teacher=str(teacher_path), base=base, **options), ThreatModel("linf", EPS))


def per_example_gradient(model, x, y, target):
    """∇ₓ of the true-class score for each example on its own (eval mode: no coupling through BN)."""
    grads = []
    for xi, yi in zip(x, y, strict=True):
        xi = xi[None].clone().requires_grad_(True)
        z = model(xi)
        score = z[0, yi] if target == "logit" else F.cross_entropy(z, yi[None])
        grads.append(torch.autograd.grad(score, xi)[0][0])
    return torch.stack(grads)


@pytest.mark.parametrize(("options", "name"), [
    ({}, "paper"),
    ({"point": "adv"}, "point=adv"),
    ({"target": "ce"}, "target=ce"),
    ({"distance": "l2"}, "distance=l2"),
    ({"abs": True}, "abs"),
    ({"lam": 3.0, "base": TRADESConfig(steps=3, step_size=EPS / 4)}, "trades"),
])
def test_igd_loss_equals_the_hand_written_formula(teacher_path, options, name):
    student, b = make_model(0).eval(), batch()  # eval mode: the per-example oracle below is exact
    method = method_for(teacher_path, **dict(options))
    c = method.config
    x_adv = method.perturb(student, b, StepContext(0, 0, torch.Generator().manual_seed(3)))
    out = method.objective(student, b, x_adv)

    teacher = make_model(1)
    teacher.load_state_dict({k: v.double() for k, v in load_weights(teacher_path)[0].items()})
    teacher.eval()
    point = b.x if c.point == "clean" else x_adv
    g_s = per_example_gradient(student, point, b.y, c.target).flatten(1)
    g_t = per_example_gradient(teacher, b.x, b.y, c.target).flatten(1)
    if c.abs:
        g_s, g_t = g_s.abs(), g_t.abs()
    if c.distance == "cos":
        term = 1 - (g_s * g_t).sum(1) / (g_s.norm(dim=1) * g_t.norm(dim=1))
    else:
        term = ((g_s - g_t) ** 2).sum(1)
    with torch.no_grad():
        z_adv = student(x_adv)
        if c.base.name == "trades":
            z = student(b.x)
            p, logp_adv = F.softmax(z, 1), F.log_softmax(z_adv, 1)
            base = F.cross_entropy(z, b.y) + 6.0 * (p * (p.log() - logp_adv)).sum(1).mean()
        else:
            base = F.cross_entropy(z_adv, b.y)
    expected = base + c.lam * term.mean()
    assert abs(out.loss.item() - expected.item()) < 1e-6, name
    assert abs(out.metrics["igd"].item() - term.mean().item()) < 1e-6


def test_the_second_order_gradient_matches_central_finite_differences(teacher_path):
    # Train-mode BN as in training; x' fixed, so the loss is a function of the student's weights only.
    student, b = make_model(0).train(), batch(8)
    method = method_for(teacher_path, lam=2.0)
    x_adv = method.perturb(student, b, StepContext(0, 0, torch.Generator().manual_seed(4)))
    params = [p for p in student.parameters()]
    buffers = {k: v.clone() for k, v in student.named_buffers()}

    def loss_at(shift: list[torch.Tensor] | None = None, scale: float = 0.0) -> torch.Tensor:
        for name, value in buffers.items():  # BN running statistics do not enter a train-mode loss
            student.get_buffer(name).copy_(value)
        if shift is not None:
            with torch.no_grad():
                for p, d in zip(params, shift, strict=True):
                    p.add_(d, alpha=scale)
        loss = method.objective(student, b, x_adv).loss
        if shift is not None:
            with torch.no_grad():
                for p, d in zip(params, shift, strict=True):
                    p.sub_(d, alpha=scale)
        return loss

    analytic = torch.autograd.grad(loss_at(), params)
    # The IGD term's own gradient must be non-zero, or the check would pass for a first-order-only loss.
    term_grads = torch.autograd.grad(_igd_term(method, student, b), params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in term_grads)
    g = torch.Generator().manual_seed(0)
    # ReLU and max-pool make the input gradient piecewise in the weights: a step small enough not to cross
    # an activation-pattern boundary (unit direction, h = 1e-6) keeps the difference quotient exact to ~1e-9.
    h = 1e-6
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        norm = torch.sqrt(sum((d * d).sum() for d in direction))
        direction = [d / norm for d in direction]
        numeric = (loss_at(direction, h) - loss_at(direction, -h)).item() / (2 * h)
        exact = sum((a * d).sum() for a, d in zip(analytic, direction, strict=True)).item()
        assert abs(numeric - exact) <= 1e-6 * max(1.0, abs(exact)), (numeric, exact)


def _igd_term(method: IGD, student, b: Batch) -> torch.Tensor:
    from advtrain.attacks import class_score_gradient
    from advtrain.methods.igd import gradient_distance

    g_s = class_score_gradient(student, b.x, b.y, "logit", create_graph=True)
    g_t = class_score_gradient(method.teacher(student, b.x), b.x, b.y, "logit", create_graph=False)
    return gradient_distance(g_s, g_t, "cos", False).mean()


def test_the_teacher_is_frozen_and_never_part_of_the_students_checkpoint(tmp_path):
    common = ["train.batch_size=64", "train.val_steps=2", "monitor.enabled=false", "train.progress=quiet",
              "data.val_size=100", "threat.eps=0.2"]
    teacher_run = tmp_path / "teacher"
    train(load_config(None, ["method.name=standard", "train.epochs=2", *common]), teacher_run, log=lambda _: None)
    teacher_before = load_weights(teacher_run / "checkpoints" / "best.safetensors")[0]
    config = load_config(None, ["method.name=igd", f"method.teacher={teacher_run}", "method.lam=2",
                                "method.base.steps=2", "train.epochs=1", *common])
    result = train(config, tmp_path / "student", log=lambda _: None)
    assert 0 < result.last["train_igd"] < 2  # 1 − cos lies in [0, 2]
    state, meta = load_weights(tmp_path / "student" / "checkpoints" / "last.safetensors")
    assert set(state) == set(teacher_before)  # the student's keys only: no teacher tensors in it
    assert meta["method"]["teacher_path"] == str((teacher_run / "checkpoints" / "best.safetensors").resolve())
    assert meta["method"]["lam"] == 2 and meta["method"]["point"] == "clean" and meta["method"]["abs"] is False
    after = load_weights(teacher_run / "checkpoints" / "best.safetensors")[0]
    assert all(torch.equal(teacher_before[k], after[k]) for k in after)
    # A changed teacher file is refused on resume instead of silently distilling from another model.
    best = teacher_run / "checkpoints" / "best.safetensors"
    save_weights(best, {k: v + 1 for k, v in after.items()}, load_weights(best)[1])
    with pytest.raises(UserError, match="changed since this run started"):
        train(config, tmp_path / "student", log=lambda _: None, resume=True)


def test_bad_igd_options_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="needs a standard-trained teacher"):
        load_config(None, ["method.name=igd"])
    with pytest.raises(UserError, match="not found"):
        load_config(None, ["method.name=igd", f"method.teacher={tmp_path / 'nope'}"])
    weights = tmp_path / "teacher.pt"
    torch.save(make_model(1).state_dict(), weights)
    with pytest.raises(UserError, match="teacher_model"):
        load_config(None, ["method.name=igd", f"method.teacher={weights}"])
    with pytest.raises(UserError, match="pgd_at or trades"):
        load_config(None, ["method.name=igd", f"method.teacher={weights}", "method.teacher_model=small_cnn",
                           "method.base.name=mart"])


def test_a_sidecar_less_teacher_file_with_its_architecture_named(tmp_path):
    weights = tmp_path / "teacher.pt"
    torch.save(make_model(1).float().state_dict(), weights)
    config = load_config(None, ["method.name=igd", f"method.teacher={weights}", "method.teacher_model=small_cnn",
                                "method.base.steps=2", "threat.eps=0.2"])
    method = IGD(config.method, ThreatModel("linf", 0.2))
    student, b = make_model(0).float(), Batch(digits_tensors()[0][:8], digits_tensors()[1][:8])
    out = method.loss(student, b, StepContext(0, 0, torch.Generator().manual_seed(0)))
    assert torch.isfinite(out.loss) and 0 <= out.metrics["igd"] <= 2
    assert not any(p.requires_grad for p in method.teacher(student, b.x).parameters())


def test_the_pyautoattack_example_resnet18_is_a_working_cifar10_teacher(cifar_subset):
    # A real, externally trained standard CIFAR-10 ResNet-18 (.pt, no sidecar): IGD builds it as `resnet18`
    # for the batch's shape; it must classify the subset as the data README states (about 94%).
    import numpy as np
    import pyautoattack

    weights = Path(pyautoattack.__file__).parent / "examples" / "model_test.pt"
    config = load_config(None, ["method.name=igd", f"method.teacher={weights}", "method.teacher_model=resnet18",
                                "method.base.steps=1"])
    method = IGD(config.method, ThreatModel("linf", 8 / 255))
    arrays = np.load(cifar_subset)
    x = torch.from_numpy(arrays["x_test"][:200]).float() / 255
    y = torch.from_numpy(arrays["y_test"][:200]).long()
    student = SPEC.build()  # any student with a 10-way linear head; the teacher takes its shape from x
    teacher = method.teacher(student, x)
    with torch.no_grad():
        assert (teacher(x).argmax(1) == y).float().mean() > 0.9
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
