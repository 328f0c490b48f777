"""The catastrophic-overfitting monitor (docs/methods.md §7.7): its readings against a hand-written loop, its
two flag rules, and `stop_on_collapse` in the trainer."""

import copy
import json

import pytest
import torch

from advtrain.attacks import bn_policy, fgsm, pgd
from advtrain.checkpoint import load_weights
from advtrain.config import MonitorConfig, ThreatConfig, load_config
from advtrain.train import train
from advtrain.train.monitor import CollapseMonitor
from advtrain.train.state import list_states
from tests.helpers import digits_tensors, trained_digits_cnn

EPS = 0.2


def hand_written_accuracies(model, x, y, seed):
    """PGD-10 (random start, step ε/4) and FGSM accuracy, written out with the attack primitives."""
    with bn_policy(model, "eval"):
        g = torch.Generator().manual_seed(seed)
        x_pgd = pgd(model, x, y, eps=EPS, steps=10, step_size=EPS / 4, generator=g, keep="first_fooling")
        x_fgsm = fgsm(model, x, y, eps=EPS)
        with torch.no_grad():
            return ((model(x_pgd).argmax(1) == y).float().mean().item(),
                    (model(x_fgsm).argmax(1) == y).float().mean().item())


def test_readings_match_a_hand_written_evaluation_and_the_drop_rule_flags():
    _, _, x, y = digits_tensors()
    model = copy.deepcopy(trained_digits_cnn()).eval()  # the cached model is shared with other tests
    monitor = CollapseMonitor(MonitorConfig(size=128), ThreatConfig(eps=0.0), x, y, seed=5)
    first = monitor.read(model, None)
    # At ε = 0 both attacks leave the inputs alone: no gap, no flag, PGD = FGSM = clean accuracy.
    assert first["co_gap"] == 0 and not first["co_collapse"] and first["co_pgd_acc"] > 0.9
    monitor.specs = CollapseMonitor(MonitorConfig(size=128), ThreatConfig(eps=EPS), x, y, seed=5).specs
    second = monitor.read(model, None)
    pgd_acc, fgsm_acc = hand_written_accuracies(model, x[:128], y[:128], seed=5)
    assert second["co_pgd_acc"] == pgd_acc and second["co_fgsm_acc"] == fgsm_acc
    # A standard CNN at ε = 0.2 loses its PGD accuracy: a drop of more than 20 points is a collapse.
    assert pgd_acc < first["co_pgd_acc"] - 0.2 and second["co_collapse"]
    assert monitor.state_dict() == {"previous": pgd_acc}
    assert model.training is False


def test_the_gap_rule_flags_fgsm_far_above_pgd_and_only_then():
    _, _, x, y = digits_tensors()
    model = copy.deepcopy(trained_digits_cnn()).eval()  # the cached model is shared with other tests
    pgd_acc, fgsm_acc = hand_written_accuracies(model, x[:128], y[:128], seed=5)
    gap = fgsm_acc - pgd_acc
    assert gap > 0.02
    for threshold, flagged in [(gap - 0.01, True), (gap + 0.01, False)]:
        monitor = CollapseMonitor(MonitorConfig(size=128, fgsm_gap=threshold), ThreatConfig(eps=EPS), x, y, seed=5)
        assert monitor.read(model, None)["co_collapse"] is flagged


def test_stop_on_collapse_ends_training_after_the_flagged_epoch_and_resume_keeps_it_stopped(tmp_path):
    # Thresholds of 0: any FGSM − PGD gap flags, so a standard-trained model is soon flagged.
    config = load_config(None, [
        "method.name=standard", "train.epochs=3", "train.batch_size=64", "optim.lr=0.05", "train.progress=quiet",
        "threat.eps=0.1",
        "data.val_size=200", "train.val_steps=2", "monitor.fgsm_gap=0", "monitor.pgd_drop=0",
        "monitor.stop_on_collapse=true", "monitor.every_steps=4", "monitor.size=100",
    ])
    logs = []
    result = train(config, tmp_path / "run", log=logs.append)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    readings = [json.loads(line) for line in (tmp_path / "run" / "monitor.jsonl").read_text().splitlines()]
    # Training stopped at the first flagged reading, mid-epoch or at an epoch end; that epoch still gets its row.
    flagged = next(i for i, r in enumerate(readings) if r["co_collapse"])
    stop_epoch = readings[flagged]["epoch"]
    # Nothing was trained after it: at most the epoch-end reading follows, at the same step.
    assert stop_epoch < 3 and all(r["step"] == readings[flagged]["step"] for r in readings[flagged:])
    assert len(rows) == stop_epoch and rows[-1]["co_collapse"] and result.best_epoch <= stop_epoch
    assert all(r["step"] % 4 == 0 or r["step"] % 20 == 0 for r in readings)
    assert any(f"catastrophic overfitting flagged in epoch {stop_epoch}" in line for line in logs)
    assert list_states(tmp_path / "run" / "checkpoints")[0][0].epoch == stop_epoch
    train(config, tmp_path / "run", log=logs.append, resume=True)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == stop_epoch


def test_a_collapsed_epoch_never_becomes_the_best_checkpoint(tmp_path):
    # FGSM-AT at a large ε with only the drop rule, at 0: the first PGD reading below the previous one flags.
    # The case under test is a collapse after epoch 1 at an epoch whose validation PGD accuracy is the highest so
    # far; the run must still keep the epoch before the collapse as best (§7.7). Which seed shows it depends on the
    # CPU's rounding (FMA/AVX-512 change the trajectory), so the first seed that does is taken.
    for seed in range(8):
        run = tmp_path / f"seed{seed}"
        config = load_config(None, [
            f"seed={seed}", "method.name=fgsm", "threat.eps=0.3", "train.epochs=4", "train.batch_size=64",
            "optim.lr=0.05", "train.progress=quiet", "data.val_size=200", "train.val_steps=2", "monitor.size=100",
            "monitor.fgsm_gap=1", "monitor.pgd_drop=0", "monitor.stop_on_collapse=true",
        ])
        result = train(config, run, log=lambda _: None)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        if len(rows) >= 2 and rows[-1]["co_collapse"] and rows[-1]["val_pgd_acc"] > max(
                r["val_pgd_acc"] for r in rows[:-1]):
            break
    else:
        pytest.fail("no seed in 0..7 collapsed after epoch 1 at its best validation epoch")
    stop_epoch = len(rows)
    assert not any(r["co_collapse"] for r in rows[:-1])
    earlier = rows[:-1]
    best = max(earlier, key=lambda r: r["val_pgd_acc"])
    assert result.best_epoch == best["epoch"] < stop_epoch
    checkpoints = run / "checkpoints"
    best_state, best_meta = load_weights(checkpoints / "best.safetensors")
    last_state, last_meta = load_weights(checkpoints / "last.safetensors")
    assert best_meta["epoch"] == best["epoch"] and last_meta["epoch"] == stop_epoch
    assert any(not torch.equal(best_state[k], last_state[k]) for k in best_state)
