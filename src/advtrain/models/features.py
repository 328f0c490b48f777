"""Feature taps by layer name (forward hooks), the penultimate features, and AR-AT's default layer sets.

A tap turns a layer's output into a vector per example: ReLU, then global average pooling (AR-AT, docs/methods.md
§6: "ReLU, then global average pooling"). Taps read whatever the named module outputs, so they work on split-BN
models too (the module at `layer4.0.bn1` is then the `SplitBatchNorm`, and the tap sees the routed branch).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.errors import UserError
from advtrain.models.preact_resnet import PreActResNet
from advtrain.models.resnet import BasicBlock, ResNet
from advtrain.models.small_cnn import SmallCNN
from advtrain.models.wide_resnet import WideResNet


def pooled(feature: Tensor) -> Tensor:
    """ReLU, then the mean over every dimension after the channels: N×C×H×W (or N×C) → N×C."""
    out = F.relu(feature)
    return out.flatten(2).mean(2) if out.dim() > 2 else out


def check_layers(model: nn.Module, layers: Sequence[str]) -> None:
    """A one-line UserError naming the first layer name `model` does not have, with the closest names."""
    names = dict(model.named_modules())
    for layer in layers:
        if layer not in names or layer == "":
            close = difflib.get_close_matches(layer, [n for n in names if n], n=3)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise UserError(
                f"the model has no layer {layer!r} to tap{hint}; list its layers with model.named_modules()"
            )


@contextmanager
def feature_taps(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Within the body, every forward pass of `model` stores `pooled(output)` of each named layer in the yielded
    dict (the newest pass overwrites older ones); the hooks are removed on exit."""
    check_layers(model, layers)
    modules = dict(model.named_modules())
    features: dict[str, Tensor] = {}
    handles = []
    for layer in layers:
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor, layer: str = layer) -> None:
            features[layer] = pooled(output)

        handles.append(modules[layer].register_forward_hook(hook))
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()


def classifier_layer(model: nn.Module) -> str:
    """The name of the model's last `nn.Linear` (the classifier of every built-in model)."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("the model has no nn.Linear classifier whose input could serve as its penultimate features")
    return linears[-1]


def penultimate_features(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, the input of the classifier layer) for `x`: the penultimate features of docs/methods.md §7.6."""
    captured: list[Tensor] = []
    linear = dict(model.named_modules())[classifier_layer(model)]
    handle = linear.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, captured[-1].flatten(1)


def default_invariance_layers(model: nn.Module) -> list[str]:
    """AR-AT's regularised layers S for the built-in models.

    - ResNet (basic blocks): the BN outputs of the last stage, `layer4.{i}.bn{1,2}` (the paper's ResNet-18 set).
    - WideResNet: the ReLUs of the last block group, `block3.layer.{i}.relu{1,2}`, plus the pooled feature
      `avgpool` (the paper's WRN-34-10 set: 10 ReLUs + 1).
    - PreActResNet: the same rule as the WideResNet, which is also pre-activation: `layer4.{i}.relu{1,2}` plus
      `avgpool` (the paper names no PreActResNet set; this is our analogue).
    - SmallCNN: its last BN output `bn3` (ours, for quick experiments).
    Other models need `method.layers`.
    """
    names = [name for name, _ in model.named_modules()]
    if isinstance(model, ResNet) and isinstance(model.layer4[0], BasicBlock):
        return [n for n in names if n.startswith("layer4.") and n.rsplit(".", 1)[-1] in ("bn1", "bn2")]
    if isinstance(model, WideResNet):
        return [n for n in names if n.startswith("block3.layer.") and n.rsplit(".", 1)[-1] in ("relu1", "relu2")] + [
            "avgpool"
        ]
    if isinstance(model, PreActResNet):
        return [n for n in names if n.startswith("layer4.") and n.rsplit(".", 1)[-1] in ("relu1", "relu2")] + [
            "avgpool"
        ]
    if isinstance(model, SmallCNN):
        return ["bn3"]
    raise UserError(
        f"AR-AT has no default layer set for {type(model).__name__}: set method.layers to the names of the layers "
        "to regularise"
    )


def feature_dims(model: nn.Module, layers: Sequence[str], example: Tensor) -> dict[str, int]:
    """The pooled width of each tapped layer, from one eval-mode forward of `example` without gradients (the
    model's mode is restored and no BatchNorm statistic changes)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), feature_taps(model, layers) as features:
            model(example)
    finally:
        model.train(was_training)
    return {layer: int(features[layer].shape[1]) for layer in layers}
