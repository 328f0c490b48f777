"""Split BatchNorm (AR-AT, docs/methods.md §6): every BatchNorm of a model becomes two, `clean` and `adv`, with their
own affine parameters and running statistics, while convolutions and the classifier stay shared.

Which branch a forward pass uses is set by a routing context on the model, so no model's forward signature
changes::

    model = to_split_bn(build_model("resnet18"))    # in place; both branches start as copies of each BN
    logits_adv = model(x_adv)                       # the default route is `adv`
    with bn_route(model, "clean"):
        logits_clean = model(x)
    plain = merge_split_bn(model, keep="adv")       # a plain model again: same keys as build_model's

Also the BatchNorm statistics recomputation used after weight averaging (SWA, EMA).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

Route = Literal["clean", "adv"]
ROUTES: tuple[str, ...] = get_args(Route)


class SplitBatchNorm(nn.Module):
    """Two BatchNorms of one shape, `clean` and `adv`; `route` picks the one a forward pass goes through."""

    def __init__(self, norm: _BatchNorm) -> None:
        super().__init__()
        self.clean = copy.deepcopy(norm)
        self.adv = copy.deepcopy(norm)
        self.route: Route = "adv"  # AR-AT uses the adv branch at test time, for clean and robust accuracy

    def forward(self, x: Tensor) -> Tensor:
        return self.clean(x) if self.route == "clean" else self.adv(x)

    def extra_repr(self) -> str:
        return f"route={self.route}"


def split_norms(model: nn.Module) -> list[SplitBatchNorm]:
    return [m for m in model.modules() if isinstance(m, SplitBatchNorm)]


def has_split_bn(model: nn.Module) -> bool:
    return bool(split_norms(model))


def _replace_children(module: nn.Module, convert) -> None:
    for name, child in module.named_children():
        new = convert(child)
        if new is not child:
            setattr(module, name, new)
        else:
            _replace_children(child, convert)


def to_split_bn(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm (any dimension) of `model` in place by a `SplitBatchNorm` whose branches start as
    copies of it (parameters and running statistics); returns `model`. A model already split is refused."""
    if has_split_bn(model):
        raise ValueError("the model already has split BatchNorm layers")
    if isinstance(model, _BatchNorm):
        raise ValueError("convert a model that contains BatchNorm layers, not a BatchNorm layer itself")
    _replace_children(model, lambda m: SplitBatchNorm(m) if isinstance(m, _BatchNorm) else m)
    return model


def merge_split_bn(model: nn.Module, keep: Route = "adv") -> nn.Module:
    """A plain copy of `model` in which every `SplitBatchNorm` is replaced by its `keep` branch; its state dict
    has exactly the keys of the unconverted model. `model` itself is left as it is."""
    if keep not in ROUTES:
        raise ValueError(f"keep must be one of {ROUTES}, got {keep!r}")
    plain = copy.deepcopy(model)
    _replace_children(plain, lambda m: getattr(m, keep) if isinstance(m, SplitBatchNorm) else m)
    return plain


@contextmanager
def bn_route(model: nn.Module, route: Route) -> Iterator[nn.Module]:
    """Send every forward pass in the body through the `route` branch of each split BN; a model without split
    BatchNorm is unaffected (AR-AT's shared-BN ablation runs the same code)."""
    if route not in ROUTES:
        raise ValueError(f"BN route must be one of {ROUTES}, got {route!r}")
    norms = split_norms(model)
    saved = [m.route for m in norms]
    for m in norms:
        m.route = route
    try:
        yield model
    finally:
        for m, previous in zip(norms, saved, strict=True):
            m.route = previous


def recompute_bn_statistics(model: nn.Module, inputs: Iterable[Tensor]) -> bool:
    """Reset every BatchNorm's running statistics (both branches of split ones) and recompute them as the average
    over `inputs`, forwarded in train mode without gradients, each batch weighted by its size (momentum b/(n + b)
    after n images, as the SWA reference code's BN update, Izmailov et al. 2018: a short last batch of a pass counts
    for its images only). With split BN only the branches the forwards are routed through get new statistics; the
    others stay reset. The model's mode and the layers' momenta are restored. Returns whether the model has any
    BatchNorm layer."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not norms:
        return False
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
    model.train()
    seen = 0
    try:
        for x in inputs:  # drawn outside no_grad: producing an input may need gradients (AR-AT crafts PGD)
            for m in norms:
                m.momentum = len(x) / (seen + len(x))
            with torch.no_grad():
                model(x)
            seen += len(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return True
