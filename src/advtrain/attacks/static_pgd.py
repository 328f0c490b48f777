"""The PGD-k training attack on static buffers, captured once as a CUDA graph and replayed per batch.

Eager PGD-10 on PreActResNet-18 launches about 160 kernels per forward and input backward, 11 times per batch;
at a large batch on a fast GPU the launches, not the arithmetic, set the pace. The loop has a fixed step count and
no data-dependent Python branch, so it can be recorded once (`torch.cuda.graph`) and replayed.

`StaticPGD` keeps the batch x, the labels y, the iterate x' and (TRADES) the clean logits in static buffers and
runs the loop with in-place updates: k times input gradient (parameters frozen), ascent step, projection into
x'. The start (a random point of the ε-ball drawn from the step's generator, or the method's explicit start) is
drawn eagerly into the x' buffer before each replay, with the very calls eager PGD makes, so the loop computes
what `pgd_unchecked(..., keep="last")` computes. Without capture (any device) the same loop simply runs;
capture needs CUDA.

BatchNorm in train mode: the captured kernels include each forward's in-place running-statistics update, so a
replay updates them once per forward, k times, as eager PGD does. The warm-up runs before capture would update
them too, so every buffer of the model is saved before and restored after them. A BatchNorm with momentum=None
(a cumulative average, whose factor is read on the host each forward) cannot be captured and is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from advtrain.attacks.losses import AttackLoss
from advtrain.attacks.pgd import ascent_step, default_step_size, input_gradient, pgd_unchecked, project
from advtrain.attacks.pgd import random_start as ball_point
from advtrain.attacks.threat import Norm, parse_norm
from advtrain.errors import UserError

_WARMUP_RUNS = 3  # before capture, on a side stream (torch.cuda.graph's documented recipe: cuDNN, allocator)


class StaticPGD:
    """A drop-in for `pgd_unchecked` in a training method's `perturb` (one run, `keep="last"`).

    The first call sets up the static buffers (and, with `capture`, records the CUDA graph) for its batch shape,
    model, training flags, autocast state and attack settings. A later call with another batch shape (the short
    last batch of an epoch) runs eager `pgd_unchecked`; one with other settings sets up anew. Calls it cannot
    serve (restarts, `keep="first_fooling"`) go to `pgd_unchecked` as well. Returns a fresh tensor each call.

    Checked against eager like `compile_checked` checks a compiled model: the first replay of each recording runs
    next to eager PGD from the same start (the model's buffers restored in between); if more than 1% of the pixels
    differ (a sign step may flip on a gradient entry near zero), or recording fails, `refused` says why in one
    line, `log` gets it, and every later call crafts eagerly.
    """

    def __init__(self, capture: bool, log: Callable[[str], None] = lambda _: None) -> None:
        self.capture = capture
        self.log = log
        self.refused: str | None = None
        self._key: tuple | None = None
        self._shape: tuple[torch.Size, torch.Size] | None = None
        self._buffers: dict[str, Tensor] = {}
        self._graph: torch.cuda.CUDAGraph | None = None
        self._verified = False

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, keep: str, steps: int = 10,
                 step_size: float | None = None, norm: Norm = "linf", loss: AttackLoss = "ce",
                 random_start: bool = True, restarts: int = 1, clean_logits: Tensor | None = None,
                 kappa: float = math.inf, generator: torch.Generator | None = None,
                 x_init: Tensor | None = None) -> Tensor:
        plain = dict(eps=eps, keep=keep, steps=steps, step_size=step_size, norm=norm, loss=loss,
                     random_start=random_start, restarts=restarts, clean_logits=clean_logits, kappa=kappa,
                     generator=generator, x_init=x_init)
        unserved = keep != "last" or restarts != 1 or steps < 1 or (x_init is not None and x_init.shape != x.shape)
        if unserved or self.refused is not None:
            return pgd_unchecked(model, x, y, **plain)
        norm = parse_norm(norm)
        step_size = default_step_size(eps, steps) if step_size is None else step_size
        key = _setup_key(model, x, clean_logits, eps, steps, step_size, norm, loss, kappa)
        if key == self._key and (x.shape, y.shape) != self._shape:
            return pgd_unchecked(model, x, y, **plain)
        x = x.detach()
        # The start pgd_unchecked takes, with its very draws from `generator`.
        if x_init is not None:
            start = x_init.detach()
        elif random_start:
            start = ball_point(x, eps, norm, generator)
        else:
            start = x
        from_start = plain | {"x_init": start}
        if key != self._key:
            self._set_up(model, x, y, start, clean_logits, key,
                         lambda: self._loop(model, eps, steps, step_size, norm, loss, kappa))
            if self.refused is not None:
                return pgd_unchecked(model, x, y, **from_start)
        b = self._buffers
        for name, value in (("x", x), ("y", y), ("x_adv", start), ("clean_logits", clean_logits)):
            if value is not None:
                b[name].copy_(value.detach())
        if self._graph is None:
            self._loop(model, eps, steps, step_size, norm, loss, kappa)
        elif self._verified:
            self._graph.replay()
        elif not self._first_replay(model, lambda: pgd_unchecked(model, x, y, **from_start)):
            return pgd_unchecked(model, x, y, **from_start)
        return b["x_adv"].clone()

    def _loop(self, model: nn.Module, eps: float, steps: int, step_size: float, norm: Norm, loss: AttackLoss,
              kappa: float) -> None:
        b = self._buffers
        for _ in range(steps):
            grad, _ = input_gradient(model, b["x_adv"], b["y"], loss, clean_logits=b.get("clean_logits"),
                                     kappa=kappa)
            with torch.no_grad():
                b["x_adv"].copy_(project(ascent_step(b["x_adv"], grad, step_size, norm), b["x"], eps, norm))

    def _set_up(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, clean_logits: Tensor | None,
                key: tuple, run: Callable[[], None]) -> None:
        self._key, self._shape, self._graph, self._verified = key, (x.shape, y.shape), None, False
        self._buffers = {"x": x.clone(), "y": y.clone(), "x_adv": start.clone()}
        if clean_logits is not None:
            self._buffers["clean_logits"] = clean_logits.detach().clone()
        if self.capture:
            try:
                self._graph = capture_graph(model, x.device, run)
            except Exception as e:  # an op that cannot be captured, no CUDA, ...: eager from now on
                first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                self._refuse(f"recording the attack failed: {first_line}")

    def _first_replay(self, model: nn.Module, eager: Callable[[], Tensor]) -> bool:
        """Replay the new recording next to eager PGD from the same start; False (and refused) on a mismatch,
        with the model's buffers as before both (the caller then crafts eagerly)."""
        assert self._graph is not None
        saved = [t.detach().clone() for t in model.buffers()]
        expected = eager()
        _restore_buffers(model, saved)
        self._graph.replay()
        differ = float(((self._buffers["x_adv"] - expected).abs() > 1e-6).float().mean())
        self._verified = differ <= 0.01
        if not self._verified:
            _restore_buffers(model, saved)
            self._refuse(f"the recorded attack differs from eager PGD in {differ:.1%} of the pixels")
        return self._verified

    def _refuse(self, reason: str) -> None:
        self.refused, self._graph, self._buffers = reason, None, {}
        self.log(f"{reason}; crafting eagerly")


def _restore_buffers(model: nn.Module, saved: list[Tensor]) -> None:
    with torch.no_grad():
        for t, value in zip(model.buffers(), saved, strict=True):
            t.copy_(value)


def capture_graph(model: nn.Module, device: torch.device, run: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """`run` recorded as a CUDA graph after warm-up runs on a side stream; the model's buffers (BatchNorm
    statistics) are as before. Refused in one line off CUDA and for a BatchNorm that cannot be captured."""
    cumulative = [name for name, m in model.named_modules()
                  if isinstance(m, _BatchNorm) and m.training and m.track_running_stats and m.momentum is None]
    if cumulative:
        raise UserError(f"the graph-captured attack cannot record BatchNorm {cumulative[0]!r} with momentum=None "
                        "(its update factor is read on the host each forward): give it a momentum or craft eagerly")
    if device.type != "cuda":
        raise UserError(f"the graph-captured attack (train.attack_graph, bench --attack-graph) needs CUDA, the "
                        f"batch is on {device.type}: turn it off there")
    saved = [t.detach().clone() for t in model.buffers()]
    # Autocast's weight-cast cache would keep casts made during capture alive outside the graph's memory pool.
    amp = (torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
           if torch.is_autocast_enabled("cuda") else nullcontext())
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), amp:
        for _ in range(_WARMUP_RUNS):
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), amp:
        run()
    _restore_buffers(model, saved)
    return graph


def _setup_key(model: nn.Module, x: Tensor, clean_logits: Tensor | None, eps: float, steps: int, step_size: float,
               norm: Norm, loss: AttackLoss, kappa: float) -> tuple:
    """Everything a recorded loop depends on besides the batch size: a change sets it up anew."""
    amp = (torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type))
    logits = None if clean_logits is None else (clean_logits.shape[1:], clean_logits.dtype)
    modes = tuple((m.training, getattr(m, "track_running_stats", None)) for m in model.modules())  # bn_policy's
    return (id(model), modes, x.shape[1:], x.dtype, x.device, x.stride()[1:],
            logits, amp, eps, steps, step_size, norm, loss, kappa)
