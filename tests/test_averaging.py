"""Weight averaging (EMA, SWA) and BatchNorm recalibration against hand-written formulas, and in the trainer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advtrain.checkpoint import load_weights
from advtrain.config import AveragingConfig, load_config
from advtrain.data import load_dataset, split_validation, to_float
from advtrain.errors import UserError
from advtrain.models import build_model
from advtrain.models.split_bn import recompute_bn_statistics as recalibrate_bn
from advtrain.train import train
from advtrain.train.averaging import WeightAverages, shuffled_passes


def tiny() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.BatchNorm2d(2), nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 4)]
    return nn.Sequential(*layers).double()


def test_bn_recalibration_is_the_image_weighted_average_of_the_batch_statistics():
    """The SWA reference code's BN update, by hand in fp64: momentum b/(n + b) after n images, so each batch's
    statistics count by its size (here a pass of 21 images in batches of 8, 8 and the 5 left)."""
    model = tiny().eval()
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([8.0, 8.0, 5.0], dtype=torch.float64)
    batches = [torch.randn(int(b), 2, 4, 4, generator=g, dtype=torch.float64) * (i + 1) + i
               for i, b in enumerate(sizes)]
    assert recalibrate_bn(model, batches)
    bn = model[0]
    means = torch.stack([b.mean((0, 2, 3)) for b in batches])
    variances = torch.stack([b.transpose(0, 1).flatten(1).var(1, unbiased=True) for b in batches])
    weights = (sizes / sizes.sum())[:, None]
    assert torch.allclose(bn.running_mean, (weights * means).sum(0), atol=1e-12)
    assert torch.allclose(bn.running_var, (weights * variances).sum(0), atol=1e-12)
    assert bn.momentum == 0.1 and not model.training  # restored
    assert not recalibrate_bn(nn.Linear(2, 2), batches)


def test_recalibration_batches_are_shuffled_passes_over_the_training_set():
    batches = shuffled_passes(21, 8, torch.Generator().manual_seed(0))
    first = [next(batches) for _ in range(3)]
    assert [len(b) for b in first] == [8, 8, 5]  # ⌈21/8⌉ batches, the last one short
    assert torch.equal(torch.cat(first).sort().values, torch.arange(21))  # every index exactly once
    second = torch.cat([next(batches) for _ in range(3)])
    assert torch.equal(second.sort().values, torch.arange(21)) and not torch.equal(second, torch.cat(first))


def test_ema_and_swa_follow_their_formulas():
    model = tiny()
    averages = WeightAverages(AveragingConfig(ema_decay=0.9, swa_start=1), model)
    theta0 = [p.detach().clone() for p in model.parameters()]
    ema = [t.clone() for t in theta0]
    snapshots = []
    for epoch in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (epoch + 1))
        averages.after_step(model, epoch, epoch)
        ema = [0.9 * e + 0.1 * p.detach() for e, p in zip(ema, model.parameters(), strict=True)]
        averages.after_epoch(model, epoch)
        if epoch >= 1:
            snapshots.append([p.detach().clone() for p in model.parameters()])
    for avg, expected in zip(averages.models["ema"].parameters(), ema, strict=True):
        assert torch.allclose(avg, expected, atol=1e-12)
    for i, avg in enumerate(averages.models["swa"].parameters()):
        assert torch.allclose(avg, (snapshots[0][i] + snapshots[1][i]) / 2, atol=1e-12)
    assert averages.swa_count == 2 and not any(p.requires_grad for p in averages.models["swa"].parameters())
    again = WeightAverages(AveragingConfig(ema_decay=0.9, swa_start=1), copy.deepcopy(model))
    again.load_state_dict(averages.state_dict())
    assert again.swa_count == 2


COMMON = ["train.batch_size=64", "train.val_steps=2", "monitor.enabled=false", "train.progress=quiet",
          "threat.eps=0.2", "method.name=standard", "schedule.name=constant", "data.val_size=100"]


def test_the_trainer_keeps_validates_and_saves_the_averages(tmp_path):
    one = load_config(None, [*COMMON, "train.epochs=1"])
    train(one, tmp_path / "one", log=lambda _: None)
    two = load_config(None, [*COMMON, "train.epochs=2", "averaging.swa_start=0", "averaging.ema_decay=0.99",
                             "averaging.bn_batches=3"])
    result = train(two, tmp_path / "two", log=lambda _: None)
    w1 = load_weights(tmp_path / "one" / "checkpoints" / "last.safetensors")[0]  # epoch 1: the same run so far
    w2 = load_weights(tmp_path / "two" / "checkpoints" / "last.safetensors")[0]
    swa, meta = load_weights(tmp_path / "two" / "checkpoints" / "swa.safetensors")
    for key in w1:
        if "running" not in key and "num_batches" not in key:  # BN statistics are recomputed, not averaged
            assert torch.allclose(swa[key], (w1[key] + w2[key]) / 2, atol=1e-6), key
    assert meta["averaging"] == "swa" and meta["epoch"] == 2
    assert not torch.equal(swa["bn1.running_mean"], w2["bn1.running_mean"])
    assert (tmp_path / "two" / "checkpoints" / "ema.safetensors").is_file()
    assert 0 <= result.last["val_swa_clean_acc"] <= 1 and 0 <= result.last["val_ema_pgd_acc"] <= 1
    # The averages are part of the resumable state: resuming the finished run restores them without complaint.
    again = train(two, tmp_path / "two", log=lambda _: None, resume=True)
    assert again.best_epoch == result.best_epoch


def test_with_one_pass_of_batches_the_swa_statistics_are_those_of_the_whole_training_set(tmp_path):
    """bn_batches = ⌈N/B⌉ recalibrates on every training image once (the reference code's pass over its
    loader): without augmentation the first BN's running mean is then that of conv1 over the training set."""
    config = load_config(None, [*COMMON, "train.epochs=1", "averaging.swa_start=0", "averaging.bn_batches=21"])
    data = load_dataset("digits")
    train_idx, _ = split_validation(len(data.y_train), 100, config.seed, labels=data.y_train)
    assert -(-len(train_idx) // 64) == 21  # 1,337 training images: 20 batches of 64 and one of 57
    train(config, tmp_path / "run", log=lambda _: None)
    swa = load_weights(tmp_path / "run" / "checkpoints" / "swa.safetensors")[0]
    model = build_model("small_cnn", in_channels=1, input_size=8)
    model.load_state_dict(swa)
    with torch.no_grad():
        x = to_float(data.x_train[train_idx], data.pixel_max).double()
        expected = model.double().conv1(model.normalize(x)).mean((0, 2, 3))
    assert torch.allclose(swa["bn1.running_mean"].double(), expected, atol=1e-5)


def test_averaging_options_are_checked_when_the_config_loads():
    with pytest.raises(UserError, match=r"needs averaging\.ema_decay"):
        load_config(None, ["eval.checkpoint=ema"])
    with pytest.raises(UserError, match="swa_start"):
        load_config(None, ["train.epochs=3", "averaging.swa_start=3"])
    with pytest.raises(UserError, match=r"averaging\.ema_decay"):
        load_config(None, ["averaging.ema_decay=1"])


def test_swa_every_n_steps_averages_the_weights_after_every_nth_step_from_the_start_epoch():
    model = tiny()
    averages = WeightAverages(AveragingConfig(swa_start=1, swa_every_steps=3), model)
    snapshots, step = [], 0
    for epoch in range(3):
        for _ in range(4):  # 4 steps per epoch
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * (step + 1))
            averages.after_step(model, epoch, step)
            if epoch >= 1 and (step + 1) % 3 == 0:
                snapshots.append([p.detach().clone() for p in model.parameters()])
            step += 1
        averages.after_epoch(model, epoch)  # no epoch-end average when averaging by steps
    assert len(snapshots) == 3 and averages.swa_count == 3  # steps 6, 9 and 12 (1-based) of epochs 2 and 3
    for i, avg in enumerate(averages.models["swa"].parameters()):
        assert torch.allclose(avg, sum(s[i] for s in snapshots) / 3, atol=1e-12)


def test_swa_every_steps_without_swa_start_is_refused():
    with pytest.raises(UserError, match=r"swa_every_steps needs averaging\.swa_start"):
        load_config(None, ["averaging.swa_every_steps=10"])
