"""Tests for the model registry and the model architectures in advtrain.models."""

from __future__ import annotations

import copy
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.errors import UserError
from advtrain.models import Normalize, build_model, list_models, register_model
from advtrain.models import registry as registry_module
from advtrain.models.wide_resnet import wide_resnet

_AUTOATTACK_SPEC = importlib.util.find_spec("pyautoattack")
AUTOATTACK_CHECKPOINT = (
    Path(_AUTOATTACK_SPEC.origin).parent / "examples" / "model_test.pt"
    if _AUTOATTACK_SPEC is not None and _AUTOATTACK_SPEC.origin is not None
    else Path("pyautoattack-not-installed/examples/model_test.pt")
)

ALL_MODELS = ["preact_resnet18", "resnet18", "resnet34", "resnet50", "small_cnn", "wrn28_10", "wrn34_10"]
# Models small enough to run forwards and backwards repeatedly in tests.
CHEAP_MODELS = ["small_cnn", "resnet18", "preact_resnet18"]
CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))


def _inputs(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _on_meta(fn: Callable[[], nn.Module]) -> nn.Module:
    # Builds the big WRNs without allocating or initialising 46M real parameters.
    with torch.device("meta"):
        return fn()


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- registry -------------------------------------------------------------------------------------------


def test_list_models_is_sorted_and_complete() -> None:
    names = list_models()
    assert names == sorted(names)
    assert set(ALL_MODELS) <= set(names)


def test_unknown_model_suggests_closest_name() -> None:
    with pytest.raises(UserError) as info:
        build_model("resnet19")
    message = str(info.value)
    assert "\n" not in message
    assert "'resnet19'" in message
    assert "did you mean 'resnet18'" in message
    for name in list_models():
        assert name in message


def test_unknown_model_without_close_match_still_lists_valid_names() -> None:
    with pytest.raises(UserError) as info:
        build_model("zzzz")
    message = str(info.value)
    assert "\n" not in message and "did you mean" not in message
    assert "small_cnn" in message and "wrn34_10" in message


def test_unknown_option_raises_one_line_user_error() -> None:
    with pytest.raises(UserError) as info:
        build_model("small_cnn", depth=3)
    message = str(info.value)
    assert "\n" not in message and "depth" in message and "small_cnn" in message
    with pytest.raises(UserError, match="bogus") as info:
        _on_meta(lambda: build_model("wrn34_10", bogus=1))
    assert "sub_block1" in str(info.value)  # lists the options that do exist


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_bad_num_classes_rejected(bad: object) -> None:
    with pytest.raises(UserError, match="num_classes"):
        build_model("small_cnn", num_classes=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [4, 7, 33, 64])
def test_small_cnn_rejects_unsupported_input_size(size: int) -> None:
    with pytest.raises(UserError, match=r"input sizes 8\.\.32"):
        build_model("small_cnn", input_size=size)


def test_register_model_adds_builder_and_rejects_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    # A private copy so the test's model does not leak into the real registry (builders are shared, not copied).
    monkeypatch.setattr(registry_module, "_REGISTRY", copy.deepcopy(registry_module._REGISTRY))

    @register_model("tiny_linear")
    def tiny_linear(
        *, num_classes: int, in_channels: int, input_size: int, normalize: object, bias: bool = True
    ):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size**2, num_classes, bias=bias))

    assert "tiny_linear" in list_models()
    model = build_model("tiny_linear", num_classes=4, in_channels=1, input_size=8, bias=False)
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 4)
    assert model[1].bias is None
    with pytest.raises(ValueError, match="already registered"):  # another builder claiming the name
        register_model("tiny_linear")(lambda *, num_classes, in_channels, input_size, normalize: nn.Identity())
    with pytest.raises(TypeError, match="must accept"):
        register_model("no_common_args")(lambda: nn.Identity())


# --- shapes, memory formats, autocast -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "channels", "size", "num_classes"),
    [
        ("small_cnn", 1, 8, 10),
        ("small_cnn", 3, 32, 7),
        ("small_cnn", 3, 16, 10),
        ("preact_resnet18", 3, 32, 10),
        ("resnet18", 3, 32, 100),
        ("resnet34", 3, 32, 10),
        ("resnet50", 3, 32, 10),
        ("wrn28_10", 3, 32, 10),
        ("wrn34_10", 3, 32, 10),
    ],
)
def test_output_shape(name: str, channels: int, size: int, num_classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, in_channels=channels, input_size=size).eval()
    with torch.no_grad():
        out = model(_inputs((2, channels, size, size)))
    assert out.shape == (2, num_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_every_registered_model_has_a_shape_test() -> None:
    assert set(list_models()) == set(ALL_MODELS)


def test_resnet18_works_on_other_input_sizes_and_channels() -> None:
    model = build_model("resnet18", in_channels=1, input_size=64).eval()
    with torch.no_grad():
        assert model(_inputs((2, 1, 64, 64))).shape == (2, 10)


@pytest.mark.parametrize("name", CHEAP_MODELS)
def test_channels_last_and_bf16_autocast(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = _inputs((2, 3, 32, 32))
    with torch.no_grad():
        reference = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out_cl = model_cl(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, reference, rtol=1e-4, atol=1e-5)
    assert out_bf16.dtype == torch.bfloat16
    # bf16 has ~3 significant digits; compare relative to the logit scale.
    scale = reference.abs().max().item()
    assert (out_bf16.float() - reference).abs().max().item() < 0.05 * scale + 1e-3


def test_relus_are_modules_and_not_inplace() -> None:
    for name in ALL_MODELS:
        model = _on_meta(lambda n=name: build_model(n))
        relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
        assert relus, name
        assert not any(m.inplace for m in relus), name


def test_small_cnn_relu_hooks_fire() -> None:
    model = build_model("small_cnn").eval()
    seen: list[tuple[int, ...]] = []
    for relu in (model.relu1, model.relu2, model.relu3):
        relu.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        model(_inputs((2, 3, 16, 16)))
    assert seen == [(2, 32, 16, 16), (2, 64, 16, 16), (2, 128, 8, 8)]


def test_small_cnn_layout() -> None:
    model = build_model("small_cnn", in_channels=1, num_classes=5)
    assert model.conv1.bias is None and model.conv1.in_channels == 1
    assert [model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels] == [32, 64, 128]
    assert model.fc.in_features == 128 and model.fc.out_features == 5


# --- normalisation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODELS)
def test_normalize_does_not_change_state_dict_keys(name: str) -> None:
    plain = _on_meta(lambda: build_model(name))
    normed = _on_meta(lambda: build_model(name, normalize=CIFAR_STATS))
    assert isinstance(plain.normalize, nn.Identity)
    assert isinstance(normed.normalize, Normalize)
    assert list(normed.state_dict()) == list(plain.state_dict())
    assert not any(k.startswith("normalize") for k in plain.state_dict())


@pytest.mark.parametrize("name", [*CHEAP_MODELS, "wrn16_2"])
def test_normalize_equals_manual_normalisation(name: str) -> None:
    def make(normalize: object) -> nn.Module:
        torch.manual_seed(0)
        if name == "wrn16_2":  # a small WRN through the generic helper stands in for the big ones
            return wide_resnet(16, 2, normalize=normalize)  # type: ignore[arg-type]
        return build_model(name, normalize=normalize)  # type: ignore[arg-type]

    plain, normed = make(None).eval(), make(CIFAR_STATS).eval()
    normed.load_state_dict(plain.state_dict(), strict=True)
    x = _inputs((2, 3, 32, 32))
    mean = torch.tensor(CIFAR_STATS[0]).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STATS[1]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = plain((x - mean) / std)
        actual = normed(x)
        unnormalised = plain(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(actual, unnormalised, atol=1e-3)  # the layer really does something


def test_normalize_module() -> None:
    layer = Normalize([0.5, 0.25], [0.5, 2.0])
    assert layer.state_dict() == {}
    x = torch.tensor([1.0, 0.25]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    torch.testing.assert_close(layer(x), torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2))
    assert layer.double().mean.dtype == torch.float64  # buffers follow dtype/device moves


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [([0.5], [0.5, 0.5], "one mean and one std"), ([0.5], [0.0], "positive"), ([], [], "one mean")],
)
def test_normalize_rejects_bad_stats(mean: list[float], std: list[float], match: str) -> None:
    with pytest.raises(UserError, match=match):
        Normalize(mean, std)


def test_normalize_must_match_in_channels() -> None:
    with pytest.raises(UserError, match="3 input channels"):
        build_model("small_cnn", normalize=((0.5,), (0.5,)))
    model = build_model("small_cnn", in_channels=1, input_size=8, normalize=((0.5,), (0.5,)))
    assert model(_inputs((2, 1, 8, 8))).shape == (2, 10)


# --- reference layouts ----------------------------------------------------------------------------------


def _reference_resnet18_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Eval-mode forward of the pytorch-cifar ResNet-18 written directly against the state_dict."""

    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(
            t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False
        )

    out = F.relu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"))
    for stage, first_stride in zip(range(1, 5), (1, 2, 2, 2), strict=True):
        for block in range(2):
            p = f"layer{stage}.{block}"
            stride = first_stride if block == 0 else 1
            branch = F.relu(bn(F.conv2d(out, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            branch = bn(F.conv2d(branch, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if f"{p}.shortcut.0.weight" in sd:
                skip = bn(F.conv2d(out, sd[f"{p}.shortcut.0.weight"], stride=stride), f"{p}.shortcut.1")
            else:
                skip = out
            out = F.relu(branch + skip)
    out = F.avg_pool2d(out, 4).flatten(1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


@pytest.fixture(scope="module")
def autoattack_state_dict() -> dict[str, torch.Tensor]:
    if not AUTOATTACK_CHECKPOINT.exists():
        pytest.skip(f"AutoAttack example checkpoint not found at {AUTOATTACK_CHECKPOINT}")
    return torch.load(AUTOATTACK_CHECKPOINT, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("reference", ["pyautoattack_class", "functional"])
def test_resnet18_loads_autoattack_checkpoint_and_matches_reference(
    autoattack_state_dict: dict[str, torch.Tensor], reference: str
) -> None:
    model = build_model("resnet18")
    result = model.load_state_dict(autoattack_state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model.eval()
    x = _inputs((4, 3, 32, 32), seed=1)
    with torch.no_grad():
        ours = model(x)
        if reference == "pyautoattack_class":
            try:
                ref_module = importlib.import_module("pyautoattack.examples.resnet")
            except ImportError as exc:  # e.g. if it ever starts needing torchvision
                pytest.skip(f"reference resnet does not import: {exc}")
            ref_model = ref_module.ResNet18()
            ref_model.load_state_dict(autoattack_state_dict, strict=True)
            expected = ref_model.eval()(x)
        else:
            expected = _reference_resnet18_forward(autoattack_state_dict, x)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    # A trained checkpoint gives confident, non-constant predictions; guards against comparing two zeros.
    assert ours.std() > 0.1


def test_resnet18_with_normalize_still_loads_checkpoint(
    autoattack_state_dict: dict[str, torch.Tensor],
) -> None:
    model = build_model("resnet18", normalize=CIFAR_STATS)
    model.load_state_dict(autoattack_state_dict, strict=True)


WRN34_10_EXPECTED_KEYS = [
    "conv1.weight",
    "block1.layer.0.bn1.weight",
    "block1.layer.0.bn1.running_mean",
    "block1.layer.0.conv1.weight",
    "block1.layer.0.bn2.bias",
    "block1.layer.0.conv2.weight",
    "block1.layer.0.convShortcut.weight",
    "block1.layer.4.conv2.weight",
    "block2.layer.0.convShortcut.weight",
    "block2.layer.4.bn2.num_batches_tracked",
    "block3.layer.0.convShortcut.weight",
    "block3.layer.4.conv2.weight",
    "bn1.weight",
    "bn1.running_var",
    "fc.weight",
    "fc.bias",
]


@pytest.fixture(scope="module")
def wrn34_10_meta() -> nn.Module:
    return _on_meta(lambda: build_model("wrn34_10"))


def test_wrn34_10_has_trades_key_layout(wrn34_10_meta: nn.Module) -> None:
    keys = set(wrn34_10_meta.state_dict())
    missing = [k for k in WRN34_10_EXPECTED_KEYS if k not in keys]
    assert not missing
    # convShortcut exists only where the width changes (first block of each stage).
    assert "block1.layer.1.convShortcut.weight" not in keys
    assert not any(k.startswith(("block4", "sub_block1", "normalize")) for k in keys)
    assert wrn34_10_meta.fc.in_features == 640
    assert wrn34_10_meta.conv1.bias is None


def test_wrn34_10_parameter_count(wrn34_10_meta: nn.Module) -> None:
    assert _num_params(wrn34_10_meta) == 46_160_474


def test_wrn28_10_parameter_count() -> None:
    assert _num_params(_on_meta(lambda: build_model("wrn28_10"))) == 36_479_194


def test_wrn_sub_block1_adds_only_sub_block1_keys(wrn34_10_meta: nn.Module) -> None:
    with_sub = _on_meta(lambda: build_model("wrn34_10", sub_block1=True))
    base_keys = set(wrn34_10_meta.state_dict())
    extra = set(with_sub.state_dict()) - base_keys
    assert base_keys <= set(with_sub.state_dict())
    assert extra and all(k.startswith("sub_block1.") for k in extra)
    assert "sub_block1.layer.0.convShortcut.weight" in extra
    assert "sub_block1.layer.4.conv2.weight" in extra


def test_wrn_sub_block1_is_unused_in_forward() -> None:
    torch.manual_seed(0)
    model = wide_resnet(16, 1, sub_block1=True).eval()
    x = _inputs((2, 3, 32, 32))
    with torch.no_grad():
        before = model(x)
        for p in model.sub_block1.parameters():
            p.add_(1.0)
        after = model(x)
    torch.testing.assert_close(before, after)


def test_wide_resnet_rejects_bad_depth() -> None:
    with pytest.raises(UserError, match="6n\\+4"):
        wide_resnet(30, 10)


def test_wrn_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = wide_resnet(10, 1, drop_rate=0.5)
    x = _inputs((2, 3, 16, 16))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))


PREACT_EXPECTED_KEYS = [
    "conv1.weight",
    "layer1.0.bn1.weight",
    "layer1.0.conv1.weight",
    "layer1.0.bn2.running_var",
    "layer1.0.conv2.weight",
    "layer2.0.shortcut.0.weight",
    "layer4.1.conv2.weight",
    "bn.weight",
    "bn.running_mean",
    "linear.weight",
    "linear.bias",
]


def test_preact_resnet18_layout_and_parameter_count() -> None:
    model = _on_meta(lambda: build_model("preact_resnet18"))
    keys = set(model.state_dict())
    assert not [k for k in PREACT_EXPECTED_KEYS if k not in keys]
    assert "bn1.weight" not in keys  # the stem conv has no BN of its own
    assert "layer1.0.shortcut.0.weight" not in keys  # identity shortcut: no keys
    assert not any(".shortcut.1." in k for k in keys)  # the 1×1 shortcut has no BN
    # 11,171,146 is often quoted for pytorch-cifar's PreActResNet18, which has no final BN; the Wong et al.
    # / Rice et al. model adds `bn` over 512 channels (+1,024 parameters).
    assert _num_params(model) == 11_172_170
    assert _num_params(model) - model.bn.weight.numel() - model.bn.bias.numel() == 11_171_146


def test_resnet18_parameter_count_and_empty_shortcuts() -> None:
    model = _on_meta(lambda: build_model("resnet18"))
    assert _num_params(model) == 11_173_962
    assert len(model.layer1[0].shortcut) == 0
    assert len(model.layer2[0].shortcut) == 2


def test_conv_init_is_kaiming_fan_out() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18")
    w = model.layer3[0].conv1.weight  # 256 out channels × 3 × 3: fan_out 2304, std sqrt(2 / 2304)
    assert abs(w.std().item() - (2 / 2304) ** 0.5) < 0.1 * (2 / 2304) ** 0.5
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)
    assert torch.all(model.linear.bias == 0)


# --- double backprop ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small_cnn", "preact_resnet18"])
def test_double_backprop_through_input_gradient(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, normalize=CIFAR_STATS).train()
    x = _inputs((2, 3, 32, 32)).requires_grad_(True)
    y = torch.tensor([1, 7])
    loss = F.cross_entropy(model(x), y)
    (grad_x,) = torch.autograd.grad(loss, x, create_graph=True)
    penalty = grad_x.pow(2).sum()
    assert penalty.requires_grad
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(penalty, params, allow_unused=True)
    conv1_grad = grads[next(i for i, p in enumerate(params) if p is model.conv1.weight)]
    assert conv1_grad is not None and conv1_grad.abs().sum() > 0
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(params) // 2
