"""FLOPs of a model's forward pass and of a method's training step as torch really runs them (counted by
`torch.utils.flop_counter.FlopCounterMode`, 2 per multiply-accumulate), and the dense peak TFLOP/s of the GPUs
whose datasheets give one, for `advtrain bench`'s fraction of peak."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from advtrain.attacks import ThreatModel
from advtrain.config import OptimConfig
from advtrain.methods import Batch, MethodConfig, build_method
from advtrain.train.step import standalone_step


def forward_flops_per_image(model: nn.Module, shape: tuple[int, int, int], device: torch.device) -> float:
    """FLOPs of one forward pass per image (torch's FlopCounterMode: 2 per multiply-accumulate)."""
    x = torch.rand(2, *shape, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 2


class _NoModuleTracking:
    """Stands in for FlopCounterMode's ModuleTracker, whose backward hooks on every module's inputs make
    `autograd.grad` with respect to a leaf input fail ("A leaf node was passed to _will_engine_execute_node",
    torch 2.13), as every attack step does; a step's total needs no per-module split."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _NoModuleTracking:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def step_flops_per_image(method_config: MethodConfig, threat: ThreatModel, initial: nn.Module, batch: Batch,
                         optimizer_config: OptimConfig, *, channels_last: bool, amp: torch.dtype | None,
                         seed: int = 0) -> float:
    """FLOPs per image of one training step as autograd really runs it: one eager `train_step` of a fresh copy
    of the method, model and optimizer, counted by FlopCounterMode (2 per multiply-accumulate). It sees the
    backward kernels that run, so an attack step that differentiates the input only costs forward +
    input-backward (about 2F for a forward of F), and the update's backward skips the first layer's input
    gradient. Counted eagerly: the work the step needs, so a compiled step that does more (weight gradients
    inside the attack) gets no credit for the extra."""
    step = standalone_step(build_method(method_config, threat), initial, batch, optimizer_config,
                           channels_last=channels_last, amp=amp, seed=seed)
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()  # type: ignore[assignment]
    with counter:
        step(0)
    return counter.get_total_flops() / len(batch.y)


# Dense (no sparsity) peak TFLOP/s by GPU, from NVIDIA's datasheets: the H100 and H200 Tensor Core GPU datasheets
# (nvidia.com/en-us/data-center/h100/, .../h200/) list BF16 Tensor Core 1,979 (H100 SXM, H200 SXM) and 1,513
# (H100 PCIe) TFLOPS *with sparsity*, i.e. 989.4 and 756 dense, and FP32 67 (SXM) and 51 (PCIe); the A100
# datasheet (nvidia.com/en-us/data-center/a100/) lists BF16 Tensor Core 312 dense (624 with sparsity) and FP32
# 19.5 for both its PCIe and SXM cards. FP32 is the CUDA-core rate: cuDNN may run fp32 convolutions on TF32 tensor
# cores (PyTorch's default, torch.backends.cudnn.allow_tf32), so an fp32 step can exceed it.
# (name test on torch.cuda.get_device_name, card, {precision: TFLOP/s}); the first match wins, so NVL and Grace
# Hopper variants, whose peaks differ, are excluded before the plain names.
GPU_PEAK_TFLOPS: tuple[tuple[Callable[[str], bool], str, dict[str, float]], ...] = (
    (lambda n: "NVL" in n or "GH200" in n, "", {}),
    (lambda n: "H200" in n, "H200 SXM", {"bf16": 989.4, "fp32": 67.0}),
    (lambda n: "H100" in n and "PCIE" in n.upper(), "H100 PCIe", {"bf16": 756.0, "fp32": 51.0}),
    (lambda n: "H100" in n and ("HBM3" in n or "SXM" in n), "H100 SXM", {"bf16": 989.4, "fp32": 67.0}),
    (lambda n: "A100" in n, "A100", {"bf16": 312.0, "fp32": 19.5}),
)
CPU_PEAK_UNKNOWN = ("unknown: a CPU's peak depends on its cores in use, vector units (AVX2, AVX-512, AMX) and clock "
                    "under load, which torch does not report")


def peak_tflops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(dense peak TFLOP/s of `device` at `precision` ("bf16" or "fp32"), the card it is for) from
    `GPU_PEAK_TFLOPS`; (None, why) for a GPU not in the table and for CPUs."""
    if device.type != "cuda":
        return None, CPU_PEAK_UNKNOWN
    name = torch.cuda.get_device_name(device)
    for matches, card, peaks in GPU_PEAK_TFLOPS:
        if matches(name):
            return (peaks[precision], card) if peaks else (None, f"unknown: no datasheet peak for {name} here")
    return None, f"unknown: no datasheet peak for {name} here"
