"""The ResNets' ImageNet stem (`stem="imagenet"`: 7×7 stride-2 conv, BN, ReLU, 3×3 stride-2 max-pool), the stem the
IGD paper's ResNet-18 uses on Tiny-ImageNet and ImageNet-100; with split BN and the feature taps AR-AT uses.

A file of its own because tests/test_models.py is already over the 400-line limit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.errors import UserError
from advtrain.models import build_model
from advtrain.models.features import default_invariance_layers, feature_dims, penultimate_features
from advtrain.models.spec import ModelSpec
from advtrain.models.split_bn import bn_route, merge_split_bn, to_split_bn
from tests.test_split_bn import scramble_branches

# torchvision's resnet18(num_classes=1000), counted layer by layer: 7×7 stem conv 9,408 + BN 128; layer1 147,968;
# layer2 525,568; layer3 2,099,712; layer4 8,393,728; fc 513,000.
TORCHVISION_RESNET18_PARAMS = 11_689_512


def _inputs(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _imagenet_resnet18(**kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", stem="imagenet", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("size", "num_classes"), [(64, 200), (224, 100)])
def test_output_shape_on_tiny_imagenet_and_imagenet_sizes(size: int, num_classes: int) -> None:
    model = _imagenet_resnet18(num_classes=num_classes, input_size=size).eval()
    with torch.no_grad():
        out = model(_inputs((2, 3, size, size)))
    assert out.shape == (2, num_classes) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("size", "after_stem", "after_layer4"), [(64, 16, 2), (224, 56, 7)])
def test_the_stem_reduces_the_input_four_times(size: int, after_stem: int, after_layer4: int) -> None:
    model = _imagenet_resnet18(input_size=size).eval()
    shapes: dict[str, tuple[int, ...]] = {}
    for name in ("maxpool", "layer4"):
        getattr(model, name).register_forward_hook(lambda _m, _i, out, n=name: shapes.__setitem__(n, out.shape))
    with torch.no_grad():
        model(_inputs((1, 3, size, size)))
    assert shapes == {"maxpool": (1, 64, after_stem, after_stem), "layer4": (1, 512, after_layer4, after_layer4)}


def test_the_stem_is_conv7_bn_relu_maxpool() -> None:
    model = _imagenet_resnet18(input_size=64).eval()
    conv, pool = model.conv1, model.maxpool
    assert (conv.kernel_size, conv.stride, conv.padding, conv.bias) == ((7, 7), (2, 2), (3, 3), None)
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    with torch.no_grad():  # non-trivial BN statistics, so the order of BN, ReLU and pooling matters
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.bias.uniform_(-0.5, 0.5)
    x = _inputs((2, 3, 64, 64), seed=1)
    seen: list[torch.Tensor] = []
    model.maxpool.register_forward_hook(lambda _m, _i, out: seen.append(out))
    bn = model.bn1
    expected = F.max_pool2d(
        F.relu(F.batch_norm(F.conv2d(x, conv.weight, stride=2, padding=3), bn.running_mean, bn.running_var,
                            bn.weight, bn.bias, False, 0.0, bn.eps)),
        kernel_size=3, stride=2, padding=1,
    )
    with torch.no_grad():
        model(x)
    torch.testing.assert_close(seen[0], expected)


def test_parameter_count_matches_torchvision_resnet18() -> None:
    with torch.device("meta"):
        imagenet = build_model("resnet18", num_classes=1000, input_size=224, stem="imagenet")
        cifar = build_model("resnet18", num_classes=1000, input_size=224)
    assert _num_params(imagenet) == TORCHVISION_RESNET18_PARAMS
    assert _num_params(imagenet) - _num_params(cifar) == (7 * 7 - 3 * 3) * 3 * 64  # only the stem conv differs


def test_both_stems_have_the_same_state_dict_keys() -> None:
    with torch.device("meta"):
        imagenet = build_model("resnet50", input_size=64, stem="imagenet")
        cifar = build_model("resnet50", input_size=64, stem="cifar")
    assert list(imagenet.state_dict()) == list(cifar.state_dict())
    assert imagenet.conv1.weight.shape == (64, 3, 7, 7) and cifar.conv1.weight.shape == (64, 3, 3, 3)
    assert isinstance(cifar.maxpool, nn.Identity)


@pytest.mark.parametrize("stem", ["imagnet", "ImageNet", ["imagenet"]])
def test_an_unknown_stem_is_refused_in_one_line(stem: object) -> None:
    with pytest.raises(UserError) as info:
        build_model("resnet34", stem=stem)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"model 'resnet34' has no stem {stem!r}: ")
    assert "cifar" in message and "imagenet" in message


def test_inputs_too_small_for_the_imagenet_stem_are_refused() -> None:
    with pytest.raises(UserError, match=r"input sizes >= 32; got 16"):
        build_model("resnet18", input_size=16, stem="imagenet")
    assert build_model("resnet18", input_size=16).conv1.kernel_size == (3, 3)  # the CIFAR stem still takes 16


def test_the_stem_option_travels_in_the_model_spec() -> None:
    spec = ModelSpec("resnet18", num_classes=200, in_channels=3, input_size=64, options={"stem": "imagenet"})
    rebuilt = ModelSpec.from_dict(spec.to_dict(), "test sidecar").build()
    assert rebuilt.conv1.kernel_size == (7, 7) and rebuilt.linear.out_features == 200


def test_split_bn_and_feature_taps_work_with_the_max_pool() -> None:
    plain = _imagenet_resnet18(num_classes=5, input_size=64)
    plain_keys = list(plain.state_dict())
    model = to_split_bn(plain).eval()
    scramble_branches(model)
    x = _inputs((2, 3, 64, 64), seed=2)
    with torch.no_grad():
        adv = model(x)
        with bn_route(model, "clean"):
            clean = model(x)
        exported = merge_split_bn(model, keep="adv").eval()
        assert list(exported.state_dict()) == plain_keys
        assert torch.equal(exported(x), adv)
    assert not torch.allclose(adv, clean)
    layers = default_invariance_layers(model)  # AR-AT's ResNet-18 set: the BNs of the last stage
    assert layers == ["layer4.0.bn1", "layer4.0.bn2", "layer4.1.bn1", "layer4.1.bn2"]
    assert feature_dims(model, layers, x) == dict.fromkeys(layers, 512)
    logits, features = penultimate_features(model, x)
    assert logits.shape == (2, 5) and features.shape == (2, 512)


def test_channels_last_and_bf16_autocast() -> None:
    model = _imagenet_resnet18(input_size=64).eval()
    x = _inputs((2, 3, 64, 64))
    with torch.no_grad():
        reference = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        out_cl = model_cl(x_cl)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = model_cl(x_cl)
    torch.testing.assert_close(out_cl, reference, rtol=1e-4, atol=1e-5)
    assert out_bf16.dtype == torch.bfloat16
    assert (out_bf16.float() - reference).abs().max().item() < 0.05 * reference.abs().max().item() + 1e-3


def test_double_backprop_through_the_max_pool() -> None:
    # IGD differentiates the input gradient: the max-pool must pass second-order gradients to the stem conv.
    model = _imagenet_resnet18(input_size=64).train()
    x = _inputs((2, 3, 64, 64)).requires_grad_(True)
    logit = model(x).gather(1, torch.tensor([[1], [7]])).sum()
    (grad_x,) = torch.autograd.grad(logit, x, create_graph=True)
    (conv1_grad,) = torch.autograd.grad(grad_x.pow(2).sum(), model.conv1.weight)
    assert torch.isfinite(conv1_grad).all() and conv1_grad.abs().sum() > 0
