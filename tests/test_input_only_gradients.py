"""Input-only gradients while crafting (issue 23, item 1): under torch.compile the backward of an attack's
`autograd.grad(loss, x)` is AOT autograd's, traced for every input that requires grad; with the parameters frozen
(`attacks.frozen_parameters`) it computes ∇ₓ alone. A recording backend shows every backward graph each method's
attack and the evaluation attacks compile: no weight or bias gradient in any."""

from __future__ import annotations

import copy
from dataclasses import fields

import pytest
import torch
from functorch.compile import make_boxed_func
from torch import fx, nn
from torch._dynamo.backends.common import aot_autograd

from advtrain.attacks import (
    ThreatModel,
    bn_policy,
    class_score_gradient,
    frozen_parameters,
    input_gradient,
    pgd_unchecked,
    single_step_unchecked,
)
from advtrain.config import load_config
from advtrain.eval.robustness import AttackSpec, evaluate_attacks
from advtrain.methods import AdversarialMethod, Batch, StepContext, build_method, list_methods, method_class
from advtrain.methods.awp import AWP
from advtrain.methods.grad_align import GradAlign
from advtrain.methods.igd import IGDConfig
from advtrain.methods.iseat import ISEAT
from advtrain.methods.pgd_at import PGDATConfig
from advtrain.models import build_model
from advtrain.runtime import compile_checked
from tests.helpers import digits_tensors, trained_digits_cnn


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class RecordingBackend:
    """A torch.compile backend on AOT autograd that runs the traced graphs as they are and keeps every backward
    graph that runs (not every one compiled: with dynamic shapes AOT autograd compiles a forward's backward with
    it, e.g. that of the training forward SAT-R runs after crafting, which no attack runs)."""

    def __init__(self) -> None:
        self.backward_graphs: list[fx.GraphModule] = []
        self.backend = aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm.forward),
                                    bw_compiler=self._record)

    def _record(self, gm: fx.GraphModule, _example) -> object:
        compiled = make_boxed_func(gm.forward)

        def run(args: list) -> object:
            if not any(g is gm for g in self.backward_graphs):
                self.backward_graphs.append(gm)
            return compiled(args)

        run._boxed_call = True  # AOT autograd's calling convention: one list of arguments
        return run

    def weight_gradients(self) -> list[str]:
        """What, in the recorded backward graphs, computes a parameter gradient: a convolution_backward asked for
        its weight or bias gradient, or a graph returning more than one gradient (the input's is the only one an
        attack needs; a linear layer's weight gradient, an mm, would be another output)."""
        found = []
        for i, gm in enumerate(self.backward_graphs):
            for node in gm.graph.nodes:
                conv = node.op == "call_function" and node.target == torch.ops.aten.convolution_backward.default
                if conv and any(node.args[-1][1:]):
                    found.append(f"graph {i}: {node.name} output_mask {node.args[-1]}")
            (outputs,) = gm.graph.find_nodes(op="output")[0].args
            gradients = [o for o in outputs if o is not None]
            if len(gradients) != 1:
                found.append(f"graph {i}: {len(gradients)} gradients returned")
        return found


def _digits_batch(n: int = 32) -> Batch:
    x, y, _, _ = digits_tensors()
    return Batch(x[:n], y[:n])


def _compiled(model: nn.Module, recorder: RecordingBackend) -> nn.Module:
    model.compile(backend=recorder.backend)
    return model


def _craft(method, model: nn.Module, batch: Batch, ctx: StepContext) -> None:
    """The part of `method`'s step that crafts its training input, on its own: the methods whose loss also takes
    weight gradients (AWP's and ISEAT's perturbation directions, GradAlign's and IGD's double backprop) are cut to
    their attack; SAT-R's loss crafts and then only runs forwards (no backward of them runs)."""
    if isinstance(method, AWP):
        method = method.base
    if isinstance(method, AdversarialMethod):  # IGD: its base's PGD
        method.perturb(model, batch, ctx)
    elif isinstance(method, ISEAT):
        method.attack(model, batch, clean_grad=torch.ones_like(batch.x))
    elif isinstance(method, GradAlign):
        with bn_policy(model, method.config.bn_mode):
            input_gradient(model, batch.x, batch.y)
    else:
        method.loss(model, batch, ctx)


# advtrain's own methods (tests register others); standard crafts nothing.
CRAFTING_METHODS = [m for m in list_methods()
                    if method_class(m).__module__.startswith("advtrain.methods.") and m != "standard"]


@pytest.mark.parametrize("name", CRAFTING_METHODS)
def test_no_method_computes_weight_gradients_while_crafting_under_compile(name):
    torch.manual_seed(0)
    batch = _digits_batch()
    if name == "igd":
        options = IGDConfig(teacher=trained_digits_cnn(), base=PGDATConfig(steps=2, bn_mode="eval"))
    else:
        steps = ["method.steps=2"] if "steps" in {f.name for f in fields(method_class(name).config_class)} else []
        options = load_config(None, [f"method.name={name}", *steps]).method
    method = build_method(options, ThreatModel("linf", 8 / 255))
    model = method.prepare_model(build_model("small_cnn", in_channels=1, input_size=8), batch.x[:2])
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    recorder = RecordingBackend()
    _craft(method, _compiled(model, recorder), batch, StepContext(0, 0, torch.Generator().manual_seed(0)))
    assert recorder.backward_graphs, "no compiled backward ran: the test would prove nothing"
    assert recorder.weight_gradients() == []
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires  # restored


def test_the_evaluation_attacks_compute_no_weight_gradients_under_compile():
    recorder = RecordingBackend()
    model = _compiled(copy.deepcopy(trained_digits_cnn()), recorder)
    batch = _digits_batch(64)
    specs = [AttackSpec("fgsm", 0.1), AttackSpec("pgd", 0.1, "linf", 3, 2, 0.03), AttackSpec("cw", 0.1, "linf", 3)]
    evaluate_attacks(model, batch.x, batch.y, specs, seed=0)
    class_score_gradient(model, batch.x, batch.y, "logit")  # saliency, IGD's teacher
    single_step_unchecked(model.train(), batch.x, batch.y, step_size=0.1, eps=0.1)  # train-mode BN too
    assert len(recorder.backward_graphs) >= 2  # eval and train mode at least
    assert recorder.weight_gradients() == []


def test_the_recorder_sees_weight_gradients_when_the_parameters_require_grad():
    # The same input gradient without `frozen_parameters` computes them all: what the tests above rule out.
    recorder = RecordingBackend()
    model = _compiled(build_model("small_cnn", in_channels=1, input_size=8), recorder)
    batch = _digits_batch()
    x = batch.x.clone().requires_grad_(True)
    torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), batch.y), x)
    found = recorder.weight_gradients()
    assert any("output_mask [True, True" in f or "output_mask [False, True" in f for f in found)  # conv weights
    assert any("gradients returned" in f for f in found)


def test_compiled_input_gradients_with_frozen_parameters_equal_eager_ones():
    model = trained_digits_cnn()
    batch = _digits_batch(64)
    compiled, reason = compile_checked(copy.deepcopy(model), "default", batch.x, batch.y)
    assert reason is None
    x_adv = pgd_unchecked(compiled, batch.x, batch.y, eps=0.1, steps=3, keep="last",
                          generator=torch.Generator().manual_seed(1))
    x_ref = pgd_unchecked(model, batch.x, batch.y, eps=0.1, steps=3, keep="last",
                          generator=torch.Generator().manual_seed(1))
    # Sign steps may flip where a gradient entry is ~0; nearly every pixel takes the same path.
    assert (x_adv - x_ref).abs().gt(1e-5).float().mean() < 0.01
    for train_mode in (False, True):  # eval first: a train-mode forward updates the BN running statistics
        expected, _ = input_gradient(copy.deepcopy(model).train(train_mode), batch.x, batch.y)
        got, _ = input_gradient(compiled.train(train_mode), batch.x, batch.y)
        assert expected.abs().max() > 0
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_frozen_parameters_restores_exactly_what_required_grad_even_after_an_error():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)  # frozen by the caller: must stay frozen
    with pytest.raises(RuntimeError, match="inside"), frozen_parameters(model):
        assert not any(p.requires_grad for p in model.parameters())
        with frozen_parameters(model):  # nested: nothing left to freeze, nothing to restore early
            pass
        assert not any(p.requires_grad for p in model.parameters())
        raise RuntimeError("inside")
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True]


def test_a_create_graph_input_gradient_keeps_parameter_gradients():
    # IGD's student gradient and GradAlign's g2 are trained through: the parameters must stay in their graph.
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, input_size=8)
    batch = _digits_batch()
    grad = class_score_gradient(model, batch.x, batch.y, "logit", create_graph=True)
    got = torch.autograd.grad(grad.pow(2).sum(), list(model.parameters()), allow_unused=True)
    x = batch.x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(model(x).gather(1, batch.y[:, None]).sum(), x, create_graph=True)
    expected = torch.autograd.grad(plain.pow(2).sum(), list(model.parameters()), allow_unused=True)
    assert sum(g is not None for g in expected) >= 8  # every weight (the last bias does not move ∇ₓ z_y)
    for g, e in zip(got, expected, strict=True):
        assert (g is None) == (e is None) and (g is None or torch.allclose(g, e))
    detached = class_score_gradient(model, batch.x, batch.y, "logit")
    assert not detached.requires_grad and torch.allclose(detached, grad.detach())
