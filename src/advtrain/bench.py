"""`advtrain bench`: images/s of each method's training step and of the evaluation attack on synthetic data,
next to a reference loop measured in the same process and run.

The reference loop is written the way the published PGD-AT code does it (Madry et al.; Rice et al. 2020):
fp32, NCHW, eager, the batch copied from host memory every step, the attack calling `loss.backward()` (so every
attack step also computes and accumulates the weight gradients, cleared by the optimizer's `zero_grad`), the
for-loop SGD of torch 1.x, and `.item()` on the loss and accuracy every step. Ours is `train.step.train_step`,
exactly what the trainer runs: data resident on the device, input-only gradients inside the attack, bf16
autocast with fp32 master weights on CUDA, channels_last, no host synchronisation in the step.

Both start from the same weights and the same data, and the two are timed in alternating repeats so drift of
the machine's speed hits both; the median of the repeats is reported. The reference is PGD-AT; every method's
ratio is against it (the cost of a method's extra passes shows up there).
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import advtrain
from advtrain.attacks import ThreatModel, bn_policy, check_distance, pgd_unchecked, training_step_size
from advtrain.config import RunConfig, load_config
from advtrain.errors import UserError
from advtrain.flops import forward_flops_per_image, peak_tflops, step_flops_per_image
from advtrain.methods import Batch, build_method, list_methods, method_class
from advtrain.models import build_model
from advtrain.runtime import CompileMode, autocast_dtype, compile_checked, resolve_device, use_channels_last
from advtrain.train.step import (
    autocast_context,
    compile_for_training,
    graph_captured_attack,
    standalone_step,
)


@dataclass
class BenchSettings:
    model: str = "small_cnn"
    methods: list[str] = field(default_factory=lambda: ["pgd_at"])
    batch: int = 32
    shape: tuple[int, int, int] = (3, 32, 32)  # C, H, W
    device: str = "auto"
    eps: float = 8 / 255
    attack_steps: int = 10  # PGD-k of the training attack (reference and ours)
    eval_steps: int = 20  # PGD-k of the evaluation attack
    iterations: int = 5  # timed steps per repeat
    warmup: int = 2
    repeats: int = 3
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    channels_last: bool | None = None  # None: as the trainer (runtime.use_channels_last)
    compile: CompileMode = "eager"  # as train.compile: checked against eager, double-backprop methods stay eager
    attack_graph: bool = False  # also each method with its training attack graph-captured (train.attack_graph)
    seed: int = 0

    def check(self) -> None:
        unknown = [m for m in self.methods if m not in list_methods()]
        if unknown:
            raise UserError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(list_methods())}")
        if not self.methods:
            raise UserError("--methods is empty: name at least one method, e.g. pgd_at")
        for name in ("batch", "attack_steps", "eval_steps", "iterations", "repeats"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise UserError(f"--warmup must be 0 or more, got {self.warmup}")
        check_distance(self.eps, "linf", "--eps")
        if self.compile not in get_args(CompileMode):
            raise UserError(f"--compile must be one of {', '.join(get_args(CompileMode))}, got {self.compile!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")


def parse_shape(text: str) -> tuple[int, int, int]:
    """'3x32x32' (C×H×W) or '32' (3×32×32) → (C, H, W); a one-line UserError otherwise."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = [3, dims[0], dims[0]]
    if len(dims) != 3 or min(dims) < 1:
        raise UserError(f"--shape {text!r} is not C×H×W with positive sizes: use e.g. 3x32x32 or 1x8x8")
    return dims[0], dims[1], dims[2]


# -- the reference loop: the published code's way ----------------------------------------------------------------
def reference_pgd_at_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x_host: Tensor, y_host: Tensor, *, eps: float,
    step_size: float, steps: int, device: torch.device,
) -> tuple[float, float]:
    """One PGD-AT step as the papers' code writes it; returns (loss, accuracy) read with `.item()`."""
    x, y = x_host.to(device), y_host.to(device)  # a host→device copy every step
    model.train()
    delta = torch.zeros_like(x).uniform_(-eps, eps)
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy(model(x + delta), y)
        loss.backward()  # input and weight gradients
        d = (delta + step_size * delta.grad.sign()).clamp(-eps, eps)
        delta.data = (x + d).clamp(0, 1) - x
        delta.grad.zero_()
    output = model((x + delta).detach())
    loss = F.cross_entropy(output, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item(), (output.argmax(1) == y).float().mean().item()


def reference_pgd_eval(
    model: nn.Module, x_host: Tensor, y_host: Tensor, *, eps: float, step_size: float, steps: int,
    device: torch.device,
) -> int:
    """PGD-k evaluation of one batch as the papers' code writes it; returns the correct count (`.item()`)."""
    x, y = x_host.to(device), y_host.to(device)
    model.eval()
    delta = torch.zeros_like(x).uniform_(-eps, eps).requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
        loss.backward()
        delta.data = (delta + step_size * delta.grad.sign()).clamp(-eps, eps)
        delta.grad.zero_()
    with torch.no_grad():
        return int((model((x + delta).clamp(0, 1)).argmax(1) == y).sum().item())


# -- measurement -------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_iteration(run: Callable[[int], object], iterations: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for i in range(iterations):
        run(i)
    _sync(device)
    return (time.perf_counter() - start) / iterations


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:  # Linux names the CPU model here; platform.processor() is often empty
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} thread(s)"


def _rate(images_per_s: float) -> str:
    return f"{images_per_s:.0f}" if images_per_s >= 100 else f"{images_per_s:.2f}"


def _bench_config(name: str, settings: BenchSettings) -> RunConfig:
    """The default run config of method `name` at the bench's ε and attack steps."""
    overrides = [f"method.name={name}", f"threat.eps={settings.eps}"]
    if "steps" in _fields(name):
        overrides.append(f"method.steps={settings.attack_steps}")
    return load_config(None, overrides)


def _training_contender(name: str, config: RunConfig, initial: nn.Module, settings: BenchSettings, batch: Batch,
                        amp: torch.dtype | None, compiled: dict[str, bool], log: Callable[[str], None],
                        attack_graph: bool = False) -> Callable[[int], object]:
    """One timed training step of method `name` (run config `config`) as the trainer runs it, on its own copy of
    the model; whether compiling worked goes into `compiled`. With `attack_graph`, its training attack is
    graph-captured."""
    device = batch.x.device
    method = build_method(config.method, ThreatModel(config.threat.norm, settings.eps))
    graph_attack = graph_captured_attack(method, device, "--attack-graph", log) if attack_graph else None

    def compiled_if_asked(model: nn.Module) -> nn.Module:
        if settings.compile == "eager":
            return model
        model, reason = compile_for_training(model, method, settings.compile, batch,
                                             lambda: torch.Generator(device).manual_seed(settings.seed))
        compiled[name] = reason is None
        if reason is not None:
            log(f"{name}: {reason}; measured eagerly")
        return model

    step = standalone_step(method, initial, batch, config.optim, amp=amp, seed=settings.seed,
                           channels_last=use_channels_last(settings.channels_last), adapt=compiled_if_asked)
    if graph_attack is not None:  # after the compile check, as the trainer does
        method.training_pgd = graph_attack
    return step


def run_bench(settings: BenchSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every method of `settings` and the reference loop; return the JSON the CLI writes."""
    settings.check()
    device = resolve_device(settings.device)
    amp = autocast_dtype(settings.precision, device)
    channels_last = use_channels_last(settings.channels_last)
    c, h, w = settings.shape
    g = torch.Generator().manual_seed(settings.seed)
    x_host = torch.rand(settings.batch, c, h, w, generator=g)
    y_host = torch.randint(0, 10, (settings.batch,), generator=g)
    x_dev, y_dev = x_host.to(device), y_host.to(device)
    if channels_last:
        x_dev = x_dev.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(settings.seed)
    try:
        initial = build_model(settings.model, num_classes=10, in_channels=c, input_size=h).to(device)
    except UserError as e:
        raise UserError(f"--model/--shape: {e}") from None
    eps, alpha, k = settings.eps, training_step_size(settings.eps), settings.attack_steps
    flops = forward_flops_per_image(initial, settings.shape, device)

    # The reference: fp32, NCHW, for-loop SGD.
    ref_model = copy.deepcopy(initial)
    optim = load_config(None, []).optim
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=optim.lr, momentum=optim.momentum,
                              weight_decay=optim.weight_decay, foreach=False)

    def reference(_: int) -> None:
        reference_pgd_at_step(ref_model, ref_opt, x_host, y_host, eps=eps, step_size=alpha, steps=k, device=device)

    contenders: dict[str, Callable[[int], object]] = {"reference": reference}
    compiled: dict[str, bool] = {}  # method → compiled (False: fell back to eager, the reason was logged)
    step_flops: dict[str, float] = {}  # contender → FLOPs per image of its training step (eager count)
    graph_names = []  # "<method> (graph)": the method with its training attack graph-captured (--attack-graph)
    for name in settings.methods:
        config = _bench_config(name, settings)
        contenders[name] = _training_contender(name, config, initial, settings, Batch(x_dev, y_dev), amp, compiled,
                                               log)
        step_flops[name] = step_flops_per_image(config.method, ThreatModel(config.threat.norm, settings.eps), initial,
                                                Batch(x_dev, y_dev), config.optim, channels_last=channels_last,
                                                amp=amp, seed=settings.seed)
        if settings.attack_graph:
            graph_names.append(f"{name} (graph)")
            contenders[graph_names[-1]] = _training_contender(name, config, initial, settings, Batch(x_dev, y_dev),
                                                              amp, compiled, log, attack_graph=True)
            step_flops[graph_names[-1]] = step_flops[name]  # the same arithmetic, replayed from a graph

    # Evaluation attack: ours (eval mode, input gradients only, autocast) against the reference PGD eval.
    eval_model = copy.deepcopy(initial).eval()
    if channels_last:
        eval_model = eval_model.to(memory_format=torch.channels_last)
    if settings.compile != "eager":
        eval_model, reason = compile_checked(eval_model, settings.compile, x_dev, y_dev)
        compiled["eval"] = reason is None
        if reason is not None:
            log(f"eval: {reason}; measured eagerly")
    eval_ref_model = copy.deepcopy(initial).eval()
    eval_alpha = 2.5 * eps / settings.eval_steps
    eval_gen = torch.Generator(device).manual_seed(settings.seed)
    autocast = autocast_context(device, amp)

    def eval_ours(_: int) -> Tensor:
        with autocast(), bn_policy(eval_model, "eval"):
            # The last iterate, as the reference loop scores it; unchecked: x_dev is uniform noise in [0, 1], and
            # checking it would add a device sync to every timed step.
            x_adv = pgd_unchecked(eval_model, x_dev, y_dev, eps=eps, steps=settings.eval_steps, step_size=eval_alpha,
                                  generator=eval_gen, keep="last")
            with torch.no_grad():
                return (eval_model(x_adv).argmax(1) == y_dev).sum()

    def eval_reference(_: int) -> int:
        return reference_pgd_eval(eval_ref_model, x_host, y_host, eps=eps, step_size=eval_alpha,
                                  steps=settings.eval_steps, device=device)

    contenders |= {"eval:reference": eval_reference, "eval:ours": eval_ours}

    if settings.warmup:
        for run in contenders.values():
            seconds_per_iteration(run, settings.warmup, device)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(settings.repeats):  # alternate, so a change of machine speed hits everyone alike
        for name, run in contenders.items():
            times[name].append(seconds_per_iteration(run, settings.iterations, device))
        log(f"repeat {r + 1}/{settings.repeats}: " + ", ".join(
            f"{n} {settings.batch / t[-1]:.0f} img/s" for n, t in times.items()))
    rate = {name: settings.batch / statistics.median(t) for name, t in times.items()}

    precision = "bf16" if amp is not None else "fp32"
    peak, peak_source = peak_tflops(device, precision)
    rows = []
    for name in [*settings.methods, *graph_names]:
        tflops = rate[name] * step_flops[name] / 1e12
        rows.append({"method": name, "images_per_s": rate[name], "reference_images_per_s": rate["reference"],
                     "ratio": rate[name] / rate["reference"], "flops_per_image": step_flops[name],
                     "tflops": tflops, "peak_fraction": None if peak is None else tflops / peak})
    evaluation = {"attack": f"PGD-{settings.eval_steps}", "images_per_s": rate["eval:ours"],
                  "reference_images_per_s": rate["eval:reference"],
                  "ratio": rate["eval:ours"] / rate["eval:reference"]}
    settings_json = asdict(settings) | {"shape": list(settings.shape)}
    return {
        "settings": settings_json, "device": str(device), "hardware": hardware(device),
        "precision": precision, "channels_last": channels_last,
        "torch_version": torch.__version__, "advtrain_version": advtrain.__version__,
        "forward_flops_per_image": flops, "peak_tflops": peak, "peak_source": peak_source,
        "compiled": compiled, "train": rows, "eval": evaluation,
        "reference": "fp32, NCHW, eager, host→device copy per step, loss.backward() in the attack, for-loop SGD, "
                     ".item() per step",
    }


def _fields(method: str) -> set[str]:
    return {f.name for f in fields(method_class(method).config_class)}


def bench_text(result: dict[str, Any]) -> str:
    s = result["settings"]
    c, h, w = s["shape"]
    lines = [
        f"{s['model']}, batch {s['batch']}×{c}×{h}×{w}, ε = {s['eps']:.4g}, PGD-{s['attack_steps']} training attack, "
        f"{result['device']} ({result['hardware']}), {result['precision']}, "
        f"channels_last {'on' if result['channels_last'] else 'off'}, compile {s['compile']}"
        + "".join(f" ({name}: eager fallback)" for name, ok in result["compiled"].items() if not ok)
        + f", torch {result['torch_version']}",
        f"forward FLOPs per image: {result['forward_flops_per_image'] / 1e6:.2f} M; peak "
        + (f"{result['peak_tflops']:g} TFLOP/s {result['precision']} ({result['peak_source']}, dense, datasheet)"
           if result["peak_tflops"] is not None else result["peak_source"]),
        "",
        f"{'method':<14}{'img/s':>10}{'reference img/s':>18}{'× reference':>13}{'step FLOPs':>12}{'TFLOP/s':>10}"
        f"{'% of peak':>11}",
    ]
    for r in result["train"]:
        share = f"{100 * r['peak_fraction']:>11.1f}" if r["peak_fraction"] is not None else f"{'–':>11}"
        forwards = r["flops_per_image"] / result["forward_flops_per_image"]  # in forward passes, e.g. 23.0F
        lines.append(f"{r['method']:<14}{_rate(r['images_per_s']):>10}{_rate(r['reference_images_per_s']):>18}"
                     f"{r['ratio']:>13.2f}{forwards:>11.1f}F{r['tflops']:>10.3g}{share}")
    e = result["eval"]
    lines.append(f"{'eval ' + e['attack']:<14}{_rate(e['images_per_s']):>10}{_rate(e['reference_images_per_s']):>18}"
                 f"{e['ratio']:>13.2f}")
    lines.append("reference: " + result["reference"])
    return "\n".join(lines)
