import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from advtrain.attacks import ThreatModel
from advtrain.checkpoint import load_weights, save_weights
from advtrain.config import load_config
from advtrain.methods import Batch, Method, MethodConfig, StepContext, StepOutput, build_method
from advtrain.methods.registry import register_method
from advtrain.train import train
from tests.helpers import digits_tensors

FAST = ["train.epochs=2", "train.batch_size=128", "train.val_steps=2", "train.progress=quiet",
        "method.steps=2", "data.val_size=200", "threat.eps=0.2"]


def test_a_run_writes_the_run_directory_contract(tmp_path):
    config = load_config(None, FAST)
    result = train(config, tmp_path / "run", log=lambda _: None)
    run = result.run_dir
    assert yaml.safe_load((run / "config.yaml").read_text()) == config.to_dict()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("lr", "train_loss", "train_acc", "val_clean_acc", "val_pgd_acc", "seconds", "images_per_s"):
            assert row[key] is not None
        assert 0 <= row["val_pgd_acc"] <= row["val_clean_acc"] <= 1
    best = max(rows, key=lambda r: r["val_pgd_acc"])
    _, meta = load_weights(run / "checkpoints" / "best.safetensors")
    assert meta["epoch"] == best["epoch"] and meta["metric"] == "val_pgd_acc"
    assert meta["value"] == best["val_pgd_acc"] and meta["config_hash"] == config.digest()
    assert meta["model"]["name"] == "small_cnn" and meta["method"]["name"] == "pgd_at"
    _, last = load_weights(run / "checkpoints" / "last.safetensors")
    assert last["epoch"] == 2


def test_same_seed_same_weights_and_other_seed_other_weights(tmp_path):
    def weights(seed: int, name: str) -> dict:
        config = load_config(None, [*FAST, "train.epochs=1", f"seed={seed}"])
        train(config, tmp_path / name, log=lambda _: None)
        return load_weights(tmp_path / name / "checkpoints" / "last.safetensors")[0]

    a, b, c = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@dataclass
class ProbeConfig(MethodConfig):
    name: str = "test_probe"


@register_method
class Probe(Method):
    """A method using every hook of the contract, to show the trainer needs no special case."""

    name = "test_probe"
    config_class = ProbeConfig
    calls: ClassVar[list[str]] = []

    def __init__(self, config, threat):
        super().__init__(config, threat)
        self.head = nn.Linear(10, 10)
        self.epochs_seen = 0

    def extra_modules(self):
        return {"head": self.head}

    def on_epoch_start(self, model, ctx):
        x, _ = ctx.sample_train(32)
        assert x.shape[0] == 32 and float(x.min()) >= 0 and float(x.max()) <= 1
        self.epochs_seen += 1
        Probe.calls.append(f"epoch{ctx.epoch}")

    def loss(self, model, batch, ctx):
        logits = self.head(model(batch.x))
        saved = [p.detach().clone() for p in model.parameters()]

        def after():
            Probe.calls.append("after")
            assert any(not torch.equal(p, s) for p, s in zip(model.parameters(), saved, strict=True))

        return StepOutput(F.cross_entropy(logits, batch.y), {"acc": (logits.argmax(1) == batch.y).float().mean()},
                          after_step=after)

    def state_dict(self):
        return {"epochs_seen": self.epochs_seen}


def test_the_trainer_honours_every_hook_of_the_method_contract(tmp_path):
    Probe.calls = []
    config = load_config(None, [o for o in FAST if not o.startswith("method.")] + ["method.name=test_probe"])
    torch.manual_seed(0)
    result = train(config, tmp_path / "run", log=lambda _: None)
    steps_per_epoch = -(-(1437 - 200) // 128)
    assert Probe.calls.count("after") == 2 * steps_per_epoch
    assert Probe.calls[0] == "epoch0" and Probe.calls[steps_per_epoch + 1] == "epoch1"
    assert result.last["train_loss"] < 2.5


def test_pgd_at_loss_equals_the_hand_written_formula_in_fp64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 8 * 8, 10)).double().train()
    reference = copy.deepcopy(model)
    x, y = digits_tensors()[0][:16].double(), digits_tensors()[1][:16]
    eps, alpha = 0.2, 0.05
    method = build_method(load_config(None, ["method.steps=3"]).method, ThreatModel("linf", eps))
    out = method.loss(model, Batch(x, y), StepContext(0, 0, torch.Generator().manual_seed(5)))

    # Independent: Madry's PGD in train mode (BN batch statistics, running stats updated), then CE.
    delta = torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(5))
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(3):
        x_adv = x_adv.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(reference(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    expected = F.cross_entropy(reference(x_adv.detach()), y)
    assert abs(out.loss.item() - expected.item()) < 1e-6
    assert torch.allclose(model[1].running_mean, reference[1].running_mean)


# The paper recipes, written out independently of the YAML files (docs/methods.md §2 and each method's code):
# (model, method, epochs, lr, weight decay, schedule, milestones, method options).
PAPER_RECIPES = {
    "cifar10_preact_resnet18_pgd_at.yaml": ("preact_resnet18", "pgd_at", 200, 0.1, 5e-4, "multistep", [100, 150],
                                            {"steps": 10, "step_size": 2 / 255}),
    "cifar10_wrn34_10_pgd_at.yaml": ("wrn34_10", "pgd_at", 200, 0.1, 5e-4, "multistep", [100, 150],
                                     {"steps": 10, "step_size": 2 / 255}),
    "cifar10_wrn34_10_trades.yaml": ("wrn34_10", "trades", 76, 0.1, 2e-4, "multistep", [74],
                                     {"beta": 6.0, "steps": 10, "init_std": 0.001, "bn_mode": "eval"}),
    "cifar10_resnet18_mart.yaml": ("resnet18", "mart", 120, 0.01, 3.5e-3, "multistep", [74, 89, 99],
                                   {"beta": 5.0, "steps": 10}),  # train_resnet.py's β (WRN script: 6)
    "cifar10_preact_resnet18_awp.yaml": ("preact_resnet18", "awp", 200, 0.1, 5e-4, "multistep", [100, 150],
                                         {"gamma": 1e-2, "warmup_epochs": 0}),
    "cifar10_wrn34_10_trades_awp.yaml": ("wrn34_10", "awp", 200, 0.1, 5e-4, "multistep", [100, 150],
                                         {"gamma": 5e-3, "warmup_epochs": 9}),
    "cifar10_preact_resnet18_fgsm.yaml": ("preact_resnet18", "fgsm", 15, 0.2, 5e-4, "cyclic", None, {}),
    "cifar10_preact_resnet18_fgsm_rs.yaml": ("preact_resnet18", "fgsm_rs", 15, 0.2, 5e-4, "cyclic", None,
                                             {"alpha_factor": 1.25}),
    "cifar10_preact_resnet18_n_fgsm.yaml": ("preact_resnet18", "n_fgsm", 30, 0.2, 5e-4, "cyclic", None,
                                            {"noise_factor": 2.0, "step_factor": 1.0}),
    "cifar10_preact_resnet18_grad_align.yaml": ("preact_resnet18", "grad_align", 30, 0.2, 5e-4, "cyclic", None,
                                                {"lam": None}),
    "cifar10_preact_resnet18_iseat.yaml": ("preact_resnet18", "iseat", 200, 0.1, 5e-4, "multistep", [100, 150],
                                           {"gamma": 7e-3, "lam": 0.1, "lam_before_decay": 0.0, "steps": 10,
                                            "step_size": 2 / 255, "bn_mode": "train"}),
    **{f"cifar10_wrn28_10_sat_r{r}.yaml": ("wrn28_10", f"sat_r{r}", 100, 0.1, 5e-4, "multistep", [25, 50, 75],
                                          {"bn_mode": "eval"}) for r in (1, 2, 3)},
    "cifar10_resnet18_standard.yaml": ("resnet18", "standard", 150, 0.1, 5e-4, "plateau", None, {}),
    "cifar10_resnet18_igd.yaml": ("resnet18", "igd", 150, 0.1, 5e-4, "plateau", None,
                                  {"lam": 1.0, "point": "clean", "target": "logit", "distance": "cos"}),
    **{name: ("resnet18", "arat", 100, 0.1, 5e-4, "multistep", [75, 90],
              {"gamma": 30.0, "layers": ["layer4.0.bn1", "layer4.0.bn2", "layer4.1.bn1", "layer4.1.bn2"],
               "predictor": True, "stop_gradient": True, "split_bn": True, "auto_balance": True, "steps": 10,
               "step_size": 2 / 255, "official_noise": True})
       for name in ("cifar10_resnet18_arat.yaml", "cifar10_resnet18_arat_swa.yaml")},
    "cifar10_wrn34_10_arat.yaml": ("wrn34_10", "arat", 100, 0.1, 5e-4, "multistep", [75, 90],
                                   {"gamma": 100.0, "predictor": True, "stop_gradient": True, "steps": 10,
                                    "layers": [f"block3.layer.{i}.relu{j}" for i in range(5) for j in (1, 2)]
                                    + ["avgpool"]}),
}
CONFIG_DIR = Path(__file__).parents[1] / "configs"


def test_every_shipped_cifar10_config_has_its_paper_recipe(tmp_path):
    shipped = {p.name for p in CONFIG_DIR.glob("cifar10_*.yaml")}
    assert shipped == set(PAPER_RECIPES)
    teacher = tmp_path / "teacher.safetensors"  # igd refuses to load without one; any weights file will do
    save_weights(teacher, {"w": torch.zeros(1)}, {})
    for name, (model, method, epochs, lr, wd, schedule, milestones, options) in PAPER_RECIPES.items():
        config = load_config(CONFIG_DIR / name, [f"method.teacher={teacher}"] if method == "igd" else [])
        assert (config.model.name, config.method.name, config.train.epochs) == (model, method, epochs), name
        assert (config.optim.lr, config.optim.weight_decay, config.optim.momentum) == (lr, wd, 0.9), name
        assert config.schedule.name == schedule, name
        assert config.train.batch_size == (64 if method.startswith("sat_r") else 128), name
        if milestones is not None:
            assert config.schedule.milestones == milestones, name
        if schedule == "plateau":  # the IGD code's ReduceLROnPlateau(min, threshold 1e-2, patience 10)
            assert (config.schedule.patience, config.schedule.threshold, config.schedule.factor) == (10, 1e-2, 0.1)
        assert config.threat.eps == 8 / 255 and config.data.val_size == 1000, name  # selection on validation
        for key, value in options.items():
            assert getattr(config.method, key) == value, (name, key)
        base = getattr(config.method, "base", None)
        if base is not None:  # AWP and IGD: the wrapped method runs PGD-10 with step ε/4
            assert base.steps == 10 and base.step_size == 2 / 255, name
    assert load_config(CONFIG_DIR / "cifar10_wrn34_10_trades_awp.yaml").method.base.name == "trades"
    swa = load_config(CONFIG_DIR / "cifar10_resnet18_arat_swa.yaml")  # AR-AT + SWA: from epoch 76, every 500 steps
    assert (swa.averaging.swa_start, swa.averaging.swa_every_steps, swa.eval.checkpoint) == (75, 500, "swa")


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("digits*.yaml")), ids=lambda p: p.stem)
def test_every_digits_config_trains_above_chance_in_three_epochs(path, tmp_path):
    overrides = ["train.epochs=3", "train.val_steps=2", "monitor.size=64", "train.progress=quiet"]
    if path.stem == "digits_igd":  # its teacher: the digits recipe trained with `standard`, as the file says
        teacher = load_config(CONFIG_DIR / "digits.yaml", ["method.name=standard", *overrides])
        train(teacher, tmp_path / "teacher", log=lambda _: None)
        overrides.append(f"method.teacher={tmp_path / 'teacher'}")
    config = load_config(path, overrides)
    result = train(config, tmp_path / "run", log=lambda _: None)
    assert math.isfinite(result.last["train_loss"]) and result.last["val_clean_acc"] > 0.3  # chance is 0.1
    adversarial = result.last.get("val_pgd_acc", result.last.get("val_ifgsm_acc"))  # SAT-R validates on I-FGSM-3
    assert 0 <= adversarial <= result.last["val_clean_acc"] <= 1


@pytest.mark.parametrize("method", ["pgd_at", "arat"])  # arat: split BN, feature taps and predictors under bf16
def test_bf16_autocast_and_channels_last_train_on_any_device(tmp_path, method):
    # The CUDA defaults (bf16 autocast, channels_last) are forced here so the same code path runs on CPU.
    config = load_config(None, [*FAST, "train.epochs=1", "train.precision=bf16", "train.channels_last=true",
                                f"method.name={method}"])
    result = train(config, tmp_path / "run", log=lambda _: None)
    assert math.isfinite(result.last["train_loss"]) and 0 <= result.last["val_pgd_acc"] <= 1
    if method == "pgd_at":
        assert result.last["train_loss"] < 2.4
    state, _ = load_weights(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())  # fp32 master weights


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_the_fused_optimizer_takes_the_for_loop_step(name):
    from advtrain.config import OptimConfig
    from advtrain.models import build_model
    from advtrain.train.schedule import build_optimizer

    x, y, _, _ = digits_tensors()
    torch.manual_seed(0)
    start = build_model("small_cnn", in_channels=1, input_size=8).to(memory_format=torch.channels_last)
    final = {}
    for kernel in ("fused", "foreach", "for-loop"):  # foreach is the default
        model = copy.deepcopy(start)
        config = OptimConfig(name=name, lr=0.05, nesterov=name == "sgd", fused=kernel == "fused")
        optimizer = build_optimizer(list(model.parameters()), config)
        if kernel == "for-loop":
            optimizer = type(optimizer)(model.parameters(), **(optimizer.defaults | {"foreach": False}))
        assert bool(optimizer.defaults["fused"]) is (kernel == "fused")
        assert bool(optimizer.defaults["foreach"]) is (kernel == "foreach")
        for idx in torch.arange(320).split(64):
            optimizer.zero_grad()
            # Gradients from backward share their parameter's (channels_last) strides, which the fused CPU kernel
            # of torch 2.13 needs: a contiguous .grad set by hand on a channels_last weight gives wrong updates.
            F.cross_entropy(model(x[idx].contiguous(memory_format=torch.channels_last)), y[idx]).backward()
            optimizer.step()
        final[kernel] = model.state_dict()
    origin = start.state_dict()
    for key, reference in final["for-loop"].items():
        if name == "sgd":
            assert torch.equal(final["foreach"][key], reference), key  # the default kernel: bit for bit
        # Vectorised kernels may round differently where the CPU has FMA / AVX-512 (Adam's 1/sqrt(v) most), and five
        # steps compound it; a wrong update (the strides case above) is off by the size of the steps themselves.
        moved = (reference - origin[key]).abs().max()
        tolerance = 1e-6 if name == "sgd" else 2e-2
        for kernel in ("fused", "foreach"):
            assert (final[kernel][key] - reference).abs().max() <= tolerance * moved, (kernel, key)


def test_a_loaded_fused_optimizer_state_takes_the_same_steps():
    from advtrain.config import OptimConfig
    from advtrain.models import build_model
    from advtrain.train.schedule import build_optimizer, match_state_layout

    x, y, _, _ = digits_tensors()
    x = x[:64].contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, input_size=8).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(list(model.parameters()), OptimConfig(fused=True))

    def step(m: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        F.cross_entropy(m(x), y[:64]).backward()
        opt.step()

    step(model, optimizer)
    # A saved state comes back with contiguous momentum buffers, as from a checkpoint file.
    saved = copy.deepcopy(optimizer.state_dict())  # not the live momentum tensors
    saved["state"] = {k: {n: t.contiguous() if isinstance(t, torch.Tensor) else t for n, t in v.items()}
                      for k, v in saved["state"].items()}
    resumed = copy.deepcopy(model)
    resumed_opt = build_optimizer(list(resumed.parameters()), OptimConfig(fused=True))
    resumed_opt.load_state_dict(saved)
    match_state_layout(resumed_opt)
    for _ in range(3):
        step(model, optimizer)
        step(resumed, resumed_opt)
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
