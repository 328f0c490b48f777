"""The public face: `import advtrain` gives what `__all__` names, the attacks are callables, the methods are
validated option objects, models come from `advtrain.models.create`, and the registries behave as one helper."""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys

import pytest
import torch
from torch import nn

import advtrain
from advtrain.attacks import ThreatModel
from advtrain.data import list_datasets, load_dataset
from advtrain.errors import UserError
from advtrain.methods import registry as method_registry
from advtrain.models import registry as model_registry

METHOD_NAMES = ("ARAT", "AWP", "FGSM", "FGSMRS", "GradAlign", "IGD", "ISEAT", "MART", "NFGSM", "PGDAT", "SATR1",
                "SATR2", "SATR3", "Standard", "TRADES")  # fmt: skip


def test_import_advtrain_exposes_exactly_all_and_stays_cheap() -> None:
    # A fresh interpreter: this test process has imported most submodules already.
    code = "import sys, advtrain; print(sorted(n for n in dir(advtrain) if n[0] != '_')); print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = run.stdout.splitlines()
    assert lines == [str(sorted(n for n in advtrain.__all__ if not n.startswith("_"))), "False"]
    assert set(advtrain.__all__) == {"UserError", "__version__", "attacks", "audit", "evaluate", "fit", "methods",
                                    "models"}


def test_public_names_resolve_and_others_do_not() -> None:
    from advtrain import attacks, methods, model_audit, models
    from advtrain.eval import public

    assert (advtrain.attacks, advtrain.methods, advtrain.models) == (attacks, methods, models)
    assert advtrain.evaluate is public.evaluate
    assert advtrain.audit is model_audit.audit
    assert issubclass(advtrain.UserError, Exception) and isinstance(advtrain.__version__, str)
    with pytest.raises(AttributeError, match="no attribute 'trainer'"):
        advtrain.trainer  # noqa: B018


def test_attacks_are_callables_and_autoattack_runs() -> None:
    for name in ("pgd", "fgsm", "single_step", "autoattack"):
        assert inspect.isfunction(getattr(advtrain.attacks, name)), name
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    x_adv = advtrain.attacks.autoattack(model, x, y, eps=8 / 255, version="apgd", batch_size=8)
    assert x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    # the attack found something: a linear model on random images is not robust at 8/255
    assert (model(x_adv).argmax(1) != y).sum() >= (model(x).argmax(1) != y).sum()


def test_every_method_is_a_validated_public_object() -> None:
    public = {name: getattr(advtrain.methods, name) for name in METHOD_NAMES}
    assert set(METHOD_NAMES) <= set(advtrain.methods.__all__)
    # every registered method has its public options class, and the names build the methods they name
    # (methods other tests register in this process, e.g. tests.test_train's probe, are not advtrain's)
    configs = {advtrain.methods.method_class(n).config_class for n in advtrain.methods.list_methods()}
    configs = {c for c in configs if c.__module__.startswith("advtrain.")}
    assert configs == set(public.values())
    threat = ThreatModel(eps=8 / 255)
    with pytest.raises(advtrain.UserError, match="igd needs a standard-trained teacher"):
        advtrain.methods.IGD()  # its one option without a default
    for cls in set(public.values()) - {advtrain.methods.IGD}:
        options = cls()
        assert isinstance(options, advtrain.methods.MethodConfig)
        method = advtrain.methods.build_method(options, threat)
        assert method.config is options and method.name == options.name
    assert advtrain.methods.TRADES(beta=6.0).beta == 6.0
    with pytest.raises(ValueError, match="beta"):
        advtrain.methods.TRADES(beta=-1)


def test_models_create_builds_a_registered_model() -> None:
    model = advtrain.models.create("small_cnn", in_channels=1, input_size=8)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert "small_cnn" in advtrain.models.list_models()


# A notebook cell defining and registering a model and a method; run twice, as a user re-running it does.
CELL = """
from dataclasses import dataclass
import torch.nn.functional as F
from torch import nn
from advtrain.methods import Method, MethodConfig, StepOutput, register_method
from advtrain.models import register_model

@register_model("cell_linear")
def cell_linear(*, num_classes, in_channels, input_size, normalize):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size**2, WIDTH))

@dataclass
class CellConfig(MethodConfig):
    name: str = "cell_ce"

@register_method
class CellCE(Method):
    name = "cell_ce"
    config_class = CellConfig
    width = WIDTH

    def loss(self, model, batch, ctx):
        return StepOutput(F.cross_entropy(model(batch.x), batch.y))
"""


@pytest.fixture
def private_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies of the model and method registries, so the cell's entries do not leak into other tests."""
    monkeypatch.setattr(model_registry, "_REGISTRY", copy.deepcopy(model_registry._REGISTRY))
    monkeypatch.setattr(method_registry, "_METHODS", copy.deepcopy(method_registry._METHODS))


@pytest.mark.usefixtures("private_registries")
def test_rerun_notebook_cell_replaces_its_registrations() -> None:
    for width in (3, 5):  # the second run edits the cell, then re-runs it
        exec(compile(CELL.replace("WIDTH", str(width)), "<cell>", "exec"), {"__name__": "__main__"})
    model = advtrain.models.create("cell_linear", in_channels=1, input_size=4)
    assert model(torch.rand(2, 1, 4, 4)).shape == (2, 5)
    assert advtrain.methods.method_class("cell_ce").width == 5


@pytest.mark.usefixtures("private_registries")
def test_a_different_definition_cannot_take_a_registered_name() -> None:
    exec(compile(CELL.replace("WIDTH", "3"), "<cell>", "exec"), {"__name__": "__main__"})
    other = CELL.replace("def cell_linear", "def other_linear").replace("WIDTH", "3")
    taken = r"model name 'cell_linear' is already registered \(by __main__\.cell_linear\)"
    with pytest.raises(ValueError, match=taken):
        exec(compile(other, "<other cell>", "exec"), {"__name__": "__main__"})
    with pytest.raises(ValueError, match=r"model name 'small_cnn' is already registered \(by advtrain\.models\."):
        advtrain.models.register_model("small_cnn")(model_registry._REGISTRY.get("resnet18"))


@pytest.mark.parametrize(
    ("lookup", "kind", "typo", "closest", "names"),
    [
        (lambda n: advtrain.models.create(n), "model", "small_cn", "small_cnn", advtrain.models.list_models),
        (advtrain.methods.method_class, "method", "trade", "trades", advtrain.methods.list_methods),
        (load_dataset, "dataset", "cifar", "cifar10", list_datasets),
    ],
)
def test_unknown_names_get_one_did_you_mean_line(lookup, kind, typo, closest, names) -> None:
    with pytest.raises(UserError) as info:
        lookup(typo)
    assert str(info.value) == f"unknown {kind} {typo!r}: did you mean {closest!r}? choose one of {', '.join(names())}"
    with pytest.raises(UserError) as info:
        lookup("zzzz\nx")
    assert str(info.value) == f"unknown {kind} 'zzzz\\nx': choose one of {', '.join(names())}"
