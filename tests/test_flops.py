"""`advtrain.flops`: a training step's FLOPs as autograd runs it (input-only gradients in the attack), checked
against a count by hand, and the datasheet peak table behind `bench`'s fraction of peak."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advtrain.attacks import ThreatModel
from advtrain.bench import BenchSettings, bench_text, run_bench
from advtrain.config import load_config
from advtrain.flops import CPU_PEAK_UNKNOWN, forward_flops_per_image, peak_tflops, step_flops_per_image
from advtrain.methods import Batch

C, H, W = 4, 5, 5


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, C, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(C * H * W, 10))


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_a_pgd_at_step_costs_forward_plus_input_backward_per_attack_step(steps):
    # Multiply-accumulates per image of the conv (1→C, 3×3, H×W outputs) and of the linear layer.
    conv, linear = H * W * C * 9, C * H * W * 10
    forward = 2 * (conv + linear)
    # An attack step differentiates the input only: forward + each layer's input gradient (2F in all); the
    # update's backward: both weight gradients and the linear layer's input gradient, not the image's.
    attack_step = 2 * forward
    update = forward + 2 * (conv + linear) + 2 * linear
    config = load_config(None, ["method.name=pgd_at", f"method.steps={steps}"])
    x, y = torch.rand(6, 1, H, W), torch.randint(0, 10, (6,))
    counted = step_flops_per_image(config.method, ThreatModel("linf", 0.1), _tiny(), Batch(x, y), config.optim,
                                   channels_last=False, amp=None)
    assert counted == steps * attack_step + update
    assert forward_flops_per_image(_tiny(), (1, H, W), torch.device("cpu")) == forward
    # A full backward in every attack step (the old 3(k+1)F formula) would have counted more.
    assert counted < 3 * (steps + 1) * forward


def test_bench_reports_the_counted_step_flops_and_no_peak_on_cpu():
    result = run_bench(BenchSettings(model="small_cnn", methods=["pgd_at", "trades"], batch=8, shape=(1, 8, 8),
                                     attack_steps=10, eval_steps=1, iterations=1, warmup=0, repeats=1),
                       log=lambda _: None)
    forward = result["forward_flops_per_image"]
    pgd_at, trades = result["train"]
    # PGD-10 AT: 10 attack steps of forward + input-backward (2F each) and an update of about 3F, not 33F.
    assert 22.5 * forward < pgd_at["flops_per_image"] <= 23 * forward
    assert trades["flops_per_image"] > pgd_at["flops_per_image"]  # TRADES adds a clean forward and its backward
    for row in result["train"]:
        assert row["tflops"] == pytest.approx(row["images_per_s"] * row["flops_per_image"] / 1e12)
        assert row["peak_fraction"] is None
    assert result["peak_tflops"] is None and result["peak_source"] == CPU_PEAK_UNKNOWN
    text = bench_text(result)
    assert "23.0F" in text and "peak unknown: a CPU's peak" in text


@pytest.mark.parametrize(("name", "precision", "peak", "card"), [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4, "H100 SXM"),
    ("NVIDIA H100 80GB HBM3", "fp32", 67.0, "H100 SXM"),
    ("NVIDIA H100 PCIe", "bf16", 756.0, "H100 PCIe"),
    ("NVIDIA H200", "bf16", 989.4, "H200 SXM"),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0, "A100"),
    ("NVIDIA A100 80GB PCIe", "fp32", 19.5, "A100"),
])
def test_the_peak_table_knows_the_datasheet_gpus(monkeypatch, name, precision, peak, card):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _device=None: name)
    assert peak_tflops(torch.device("cuda"), precision) == (peak, card)


@pytest.mark.parametrize("name", ["NVIDIA H200 NVL", "NVIDIA GH200 480GB", "NVIDIA H100 NVL", "NVIDIA L4",
                                  "NVIDIA GeForce RTX 4090"])
def test_other_gpus_and_cpus_have_an_unknown_peak_with_the_reason(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _device=None: name)
    peak, why = peak_tflops(torch.device("cuda"), "bf16")
    assert peak is None and why == f"unknown: no datasheet peak for {name} here"
    assert peak_tflops(torch.device("cpu"), "fp32") == (None, CPU_PEAK_UNKNOWN)
