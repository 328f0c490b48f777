"""The settings that keep a GPU busy, checked on CPU: cuDNN autotuning unless deterministic (restored afterwards),
one device read per log interval in training, channels_last evaluation on CUDA only (weights restored), and bf16
evaluation as an opt-in on any device, recorded in the output."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import advtrain
from advtrain.cli import main
from advtrain.methods import PGDAT
from advtrain.runtime import evaluation_layout, torch_settings
from advtrain.train import Callback
from advtrain.train.callbacks import ProgressBar
from advtrain.train.loop import Loop
from tests.helpers import digits_tensors


@pytest.mark.parametrize("before", [False, True])
def test_cudnn_benchmark_is_on_unless_deterministic_and_restored_after(before):
    torch.backends.cudnn.benchmark = before
    try:
        with torch_settings(threads=None, deterministic=False):
            assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark is before
        with torch_settings(threads=None, deterministic=True):
            assert not torch.backends.cudnn.benchmark and torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark is before and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.backends.cudnn.benchmark = False


class Recorder(Callback):
    """What the loop's components see: cuDNN autotuning, and the loop's device reads per epoch."""

    def __init__(self) -> None:
        self.benchmark: list[bool] = []

    def on_fit_start(self, loop: Loop) -> None:
        self.benchmark.append(torch.backends.cudnn.benchmark)


def _small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))


def test_fit_trains_with_cudnn_benchmark_and_restores_it():
    x, y, _, _ = digits_tensors()
    recorder = Recorder()
    torch.backends.cudnn.benchmark = False
    advtrain.fit(_small_cnn(), PGDAT(steps=1), (x[:64], y[:64]), epochs=1, batch_size=32, threat={"eps": 0.1},
                 callbacks=[recorder], device="cpu")
    assert recorder.benchmark == [True] and torch.backends.cudnn.benchmark is False


def test_the_eval_command_runs_with_cudnn_benchmark_and_restores_it(monkeypatch, tmp_path, capsys):
    import advtrain.eval as eval_package

    seen: list[bool] = []
    real = eval_package.evaluate_loaded

    def spy(*args, **kwargs):
        seen.append(torch.backends.cudnn.benchmark)
        return real(*args, **kwargs)

    monkeypatch.setattr(eval_package, "evaluate_loaded", spy)
    torch.backends.cudnn.benchmark = False
    weights = tmp_path / "m.pt"
    torch.save(_digits_model().state_dict(), weights)
    assert main(["eval", "--weights", str(weights), "--model", "small_cnn", "--data", "digits", "--attacks",
                 "clean", "--n", "16", "--device", "cpu", "--quiet"]) == 0
    assert seen == [True] and torch.backends.cudnn.benchmark is False
    assert "16 images, fp32 on cpu" in capsys.readouterr().out


def _digits_model() -> nn.Module:
    from advtrain.models import build_model

    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=10, in_channels=1, input_size=8)


class CountingBar(ProgressBar):
    """The progress bar, with the host reads its own hook makes counted (it must make none)."""

    def __init__(self) -> None:
        super().__init__()
        self.postfixes: list[tuple[int, str]] = []
        self.host_reads = 0

    def on_step_end(self, loop: Loop, epoch: int, step: int) -> None:
        shown = self.shown
        super().on_step_end(loop, epoch, step)
        if self.shown is not shown:
            assert self.shown.batches == loop.progress.batch  # read after this very step
            self.postfixes.append((self.shown.batches, f"{self.shown.sums['loss'] / self.shown.seen:.3f}"))


def test_one_device_read_per_interval_feeds_both_the_nan_check_and_the_progress_bar(monkeypatch):
    reads: list[tuple[int, int]] = []  # (epoch, batch) at each device read
    read_device = Loop.read_device

    def counted(loop: Loop):
        reads.append((loop.progress.epoch, loop.progress.batch))
        return read_device(loop)

    monkeypatch.setattr(Loop, "read_device", counted)
    host = {"n": 0}
    for name in ("item", "cpu", "tolist", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, _original=original, **kwargs):
            host["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    bar = CountingBar()
    bar_reads = {"n": 0}
    on_step_end = bar.on_step_end

    def bar_step(loop, epoch, step):
        before = host["n"]
        on_step_end(loop, epoch, step)
        bar_reads["n"] += host["n"] - before

    bar.on_step_end = bar_step
    x, y, _, _ = digits_tensors()
    # 23 steps per epoch (360 images, batches of 16): reads after batches 10, 20 and the epoch's last, 23.
    advtrain.fit(_small_cnn(), "standard", (x[:360], y[:360]), epochs=2, batch_size=16, callbacks=[bar],
                 device="cpu")
    assert reads == [(0, 10), (0, 20), (0, 23), (1, 10), (1, 20), (1, 23)]
    assert bar_reads["n"] == 0  # the bar shows what the loop read; it never reads the device itself
    assert [b for b, _ in bar.postfixes] == [10, 20, 23, 10, 20, 23]
    assert all(math.isfinite(float(loss)) and float(loss) > 0 for _, loss in bar.postfixes)


def test_evaluation_runs_channels_last_on_cuda_only_and_restores_the_weights():
    model = _digits_model()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    before = conv.weight.data_ptr(), conv.weight.stride()
    with evaluation_layout(model, torch.device("cpu")) as layout:
        assert layout == torch.contiguous_format and (conv.weight.data_ptr(), conv.weight.stride()) == before
    # The layout is chosen by the device's type alone: the conversion and its undoing run on CPU tensors too.
    with evaluation_layout(model, torch.device("cuda")) as layout:
        assert layout == torch.channels_last
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.stride() != before[1]
    assert (conv.weight.data_ptr(), conv.weight.stride()) == before


def test_bf16_evaluation_is_an_opt_in_on_cpu_recorded_in_the_json(tmp_path, capsys):
    weights = tmp_path / "m.pt"
    torch.save(_digits_model().state_dict(), weights)
    reports = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.json"
        args = ["eval", "--weights", str(weights), "--model", "small_cnn", "--data", "digits", "--attacks",
                "clean,pgd", "--steps", "2", "--n", "64", "--device", "cpu", "--quiet", "--out", str(out)]
        assert main(args if precision == "fp32" else [*args, "--precision", "bf16"]) == 0
        assert f"64 images, {precision} on cpu" in capsys.readouterr().out
        reports[precision] = json.loads(out.read_text())
    assert reports["fp32"]["precision"] == "fp32" and reports["bf16"]["precision"] == "bf16"
    assert all(row["total"] == 64 for report in reports.values() for row in report["results"])


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_attacks_run_their_convolutions_in_the_precision_asked_for_on_cpu(precision, dtype):
    model = _digits_model()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    dtypes: set[torch.dtype] = set()
    conv.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
    _, _, x, y = digits_tensors()
    result = advtrain.evaluate(model, x[:32], y[:32], attacks=["clean", "pgd"], eps=[0.1], steps=2, device="cpu",
                               precision=precision)
    assert dtypes == {dtype} and result.precision == precision
