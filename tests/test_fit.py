"""`advtrain.fit`: any nn.Module, any method, tensors or a DataLoader; resumable with run_dir; one-line errors on bad
input; and the same loop as `advtrain train` (bit-identical weights on the same config and data)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import advtrain
from advtrain.checkpoint import load_weights
from advtrain.cli import main
from advtrain.config import ScheduleConfig, load_config
from advtrain.data import split_validation
from advtrain.methods import ARAT, IGD, PGDAT, TRADES
from advtrain.models.spec import ModelSpec
from advtrain.models.split_bn import has_split_bn
from advtrain.runtime import seed_everything
from advtrain.train import Callback, load_run_data
from tests.helpers import digits_tensors, trained_digits_cnn

EPS = 0.2
FAST = {"epochs": 2, "batch_size": 64, "lr": 0.05, "threat": {"eps": EPS}, "val_steps": 2}


def data(n: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y, _, _ = digits_tensors()
    return x[:n], y[:n], x[n:n + 128], y[n:n + 128]


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(16 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Block(nn.Module):
    """A residual block with BatchNorm, written here (not from advtrain.models)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.block = Block(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(torch.relu(self.bn(self.stem(x)))).mean((2, 3)))


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> bool:
    after = model.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def check_history(history: list[dict], epochs: int) -> None:
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    for row in history:
        assert torch.isfinite(torch.tensor(row["train_loss"])) and 0 <= row["train_acc"] <= 1


@pytest.mark.parametrize("form", ["float", "uint8", "loader"])
def test_fit_trains_on_float_tensors_uint8_tensors_and_a_dataloader(form):
    x, y, x_val, y_val = data()
    train_data = {
        "float": (x, y),
        "uint8": ((x * 255).round().to(torch.uint8), y),
        "loader": DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True),
    }[form]
    model = SmallNet()
    before = copy.deepcopy(model.state_dict())
    result = advtrain.fit(model, "pgd_at", train_data, val_data=(x_val, y_val), **FAST)
    check_history(result.history, 2)
    assert 0 <= result.history[-1]["val_pgd_acc"] <= result.history[-1]["val_clean_acc"] <= 1
    assert result.run_dir is None and result.best_epoch in (1, 2) and not result.model.training
    assert changed(before, result.model)


def test_trades_on_a_users_module_learns_the_digits():
    x, y, x_val, y_val = data(512)
    result = advtrain.fit(SmallNet(), TRADES(beta=6.0, steps=3), (x, y), val_data=(x_val, y_val),
                          **FAST | {"epochs": 3})
    check_history(result.history, 3)
    assert all(row["train_kl"] >= 0 for row in result.history)  # TRADES's own metric reaches the history
    assert result.history[-1]["val_clean_acc"] > 0.5  # 10 classes: chance is 0.1
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_arat_on_a_users_resnet_returns_the_plain_adv_bn_model_without_predictors():
    x, y, x_val, y_val = data()
    model = TinyResNet()
    names = set(model.state_dict())
    result = advtrain.fit(model, ARAT(layers=["block.bn2"], steps=2, auto_balance_size=64), (x, y),
                          val_data=(x_val, y_val), **FAST | {"epochs": 1})
    check_history(result.history, 1)
    assert not has_split_bn(result.model)
    assert set(result.model.state_dict()) == names  # the user's architecture: no split BN, no predictor
    assert result.model(x_val[:4]).shape == (4, 10)


def test_igd_takes_the_teacher_as_a_module_and_leaves_it_unchanged():
    teacher = trained_digits_cnn()
    before = copy.deepcopy(teacher.state_dict())
    x, y, x_val, y_val = data()
    result = advtrain.fit(SmallNet(), IGD(teacher=teacher, lam=1.0), (x, y), val_data=(x_val, y_val),
                          **FAST | {"epochs": 1})
    check_history(result.history, 1)
    assert result.history[0]["train_igd"] >= 0
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters())  # frozen is a copy, not the caller's module
    assert IGD(teacher=teacher).teacher is None  # the config's fields stay plain values (YAML, metadata)


class InterruptAtStep(Callback):
    """Interrupts training after optimizer step `step` (0-based), before that step's checkpoint could be saved."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, loop, epoch, step):
        if step == self.step:
            raise KeyboardInterrupt


def test_run_dir_writes_checkpoints_and_calling_fit_again_resumes_bit_identically(tmp_path):
    def net() -> SmallNet:
        torch.manual_seed(0)  # every call starts from the same initial weights
        return SmallNet()

    x, y, x_val, y_val = data()
    args = dict(val_data=(x_val, y_val), **FAST | {"checkpoint_every": 3})
    full = advtrain.fit(net(), PGDAT(steps=2), (x, y), run_dir=tmp_path / "full", **args)
    assert (tmp_path / "full" / "checkpoints" / "best.safetensors").is_file()
    assert len((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(KeyboardInterrupt):
        advtrain.fit(net(), PGDAT(steps=2), (x, y), run_dir=tmp_path / "cut", callbacks=[InterruptAtStep(6)],
                     **args)
    # 4 steps per epoch, a state every 3: the newest is epoch 2, batch 2; the resumed run redoes steps 6 and 7.
    states = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").glob("state-*.safetensors"))
    assert states[-1] == "state-e0001-b000002.safetensors"
    resumed = advtrain.fit(SmallNet(), PGDAT(steps=2), (x, y), run_dir=tmp_path / "cut", **args)
    check_history(resumed.history, 2)
    final = full.model.state_dict()
    assert all(torch.equal(final[k], v) for k, v in resumed.model.state_dict().items())
    weights, _ = load_weights(tmp_path / "cut" / "checkpoints" / "last.safetensors")
    assert all(torch.equal(final[k], weights[k]) for k in final)
    with pytest.raises(advtrain.UserError, match="other settings") as info:
        advtrain.fit(SmallNet(), PGDAT(steps=2), (x, y), run_dir=tmp_path / "cut", **args | {"lr": 0.01})
    assert "\n" not in str(info.value)


def test_without_run_dir_nothing_is_written_and_progress_goes_to_the_advtrain_logger(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    x, y, _, _ = data(128)
    with caplog.at_level(logging.INFO, logger="advtrain"):
        advtrain.fit(SmallNet(), "standard", (x, y), **FAST | {"epochs": 1})
    assert list(tmp_path.iterdir()) == []
    assert any(r.name == "advtrain" and "epoch   1/1" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("change", "message"), [
    ({"train_data": "x*255"}, "divide 0..255 pixels by 255"),
    ({"train_data": "int64"}, "float() / 255"),
    ({"train_data": 5}, "train_data must be (x, y) tensors or a DataLoader"),
    ({"train_data": "one-shot"}, "one-shot iterator"),
    ({"val_data": "x*255"}, "divide 0..255 pixels by 255"),
    ({"epochs": 0}, "epochs"),
    ({"threat": {"eps": 8}}, "8/255"),
    ({"threat": {"epsilon": 0.1}}, "unknown keys ['epsilon']"),
    ({"schedule": "cosin"}, "cosine"),
    ({"lr": -1.0}, "lr"),
    ({"method": "no_such_method"}, "no_such_method"),
    ({"method": 3}, "method must be a method config"),
    ({"model": "resnet18"}, "model must be a torch.nn.Module"),
    ({"callbacks": [print]}, "subclass it"),
    ({"optimizer": "lbfgs"}, "lbfgs"),
])
def test_bad_input_is_a_one_line_error_that_names_the_fix(change, message, tmp_path):
    x, y, x_val, y_val = data(128)
    forms = {"x*255": (x * 255, y), "int64": ((x * 255).long(), y), "one-shot": iter([(x, y)])}
    args = {"model": SmallNet(), "method": "pgd_at", "train_data": (x, y), "val_data": (x_val, y_val)} | FAST
    args |= {k: forms.get(v, v) if isinstance(v, str) else v for k, v in change.items()}
    with pytest.raises((advtrain.UserError, ValueError)) as info:
        advtrain.fit(args.pop("model"), args.pop("method"), args.pop("train_data"), **args)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_fit_and_advtrain_train_give_bit_identical_weights_on_the_same_config_and_data(tmp_path):
    overrides = ["train.epochs=2", "train.batch_size=64", "train.val_steps=1", "train.progress=quiet", "method.steps=2",
                 "data.val_size=1400", "threat.eps=0.2", "optim.lr=0.05", "schedule.milestones=[1]",
                 "eval.attacks=[clean]"]
    assert main(["train", *(a for o in overrides for a in ("--set", o)), "--out", str(tmp_path / "cli")]) == 0
    cli, _ = load_weights(tmp_path / "cli" / "checkpoints" / "last.safetensors")
    config = load_config(None, overrides)
    dataset = load_run_data(config)

    train_idx, val_idx = split_validation(len(dataset.y_train), int(config.data.val_size), config.seed,
                                          labels=dataset.y_train)
    seed_everything(config.seed)  # as the trainer does before it builds the model
    model = ModelSpec.for_dataset(config.model.name, dataset, config.model.normalize, config.model.options).build()
    images = dataset.x_train.float() / dataset.pixel_max
    result = advtrain.fit(
        model, config.method, (images[train_idx], dataset.y_train[train_idx]),
        val_data=(images[val_idx], dataset.y_train[val_idx]), epochs=config.train.epochs,
        batch_size=config.train.batch_size, optimizer=config.optim, schedule=config.schedule,
        threat={"eps": config.threat.eps, "norm": config.threat.norm}, val_steps=1, seed=config.seed,
    )
    fitted = result.model.state_dict()
    assert set(fitted) == set(cli)
    assert all(torch.equal(fitted[k], cli[k]) for k in cli)


PUBLIC_METHODS = ["ARAT", "AWP", "FGSM", "FGSMRS", "GradAlign", "IGD", "ISEAT", "MART", "NFGSM", "PGDAT", "SATR1",
                  "SATR2", "SATR3", "Standard", "TRADES"]


@pytest.mark.parametrize("name", PUBLIC_METHODS)
def test_every_public_method_trains_a_users_module(name):
    options = {"ARAT": {"layers": ["body.1"]}, "IGD": {"teacher": trained_digits_cnn()}, "GradAlign": {"lam": 0.2}}.get(
        name, {})
    config = getattr(advtrain.methods, name)(**options)
    if hasattr(config, "steps"):
        config.steps = 2
    x, y, x_val, y_val = data(128)
    torch.manual_seed(0)
    model = SmallNet()
    before = copy.deepcopy(model.state_dict())
    # ISEAT's λ starts at the first LR milestone: one inside the run.
    result = advtrain.fit(model, config, (x, y), val_data=(x_val[:64], y_val[:64]), schedule=ScheduleConfig(
        milestones=[1]), **FAST)
    check_history(result.history, 2)
    assert set(result.model.state_dict()) == set(before) and changed(before, result.model)
