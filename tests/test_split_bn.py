"""Split BatchNorm, its routing context and export, and feature taps (models/split_bn.py, models/features.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.errors import UserError
from advtrain.models import build_model, list_models
from advtrain.models.features import (
    default_invariance_layers,
    feature_dims,
    feature_taps,
    penultimate_features,
)
from advtrain.models.split_bn import SplitBatchNorm, bn_route, merge_split_bn, to_split_bn


def scramble_branches(model: nn.Module, seed: int = 0) -> None:
    """Give the two branches of every split BN different, non-trivial parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SplitBatchNorm):
                for branch, shift in ((m.clean, 0.0), (m.adv, 0.5)):
                    n = branch.num_features
                    branch.weight.copy_(1 + 0.3 * torch.randn(n, generator=g) + shift)
                    branch.bias.copy_(0.2 * torch.randn(n, generator=g) - shift)
                    branch.running_mean.copy_(0.1 * torch.randn(n, generator=g) + shift)
                    branch.running_var.copy_(1 + torch.rand(n, generator=g) + shift)


@pytest.mark.parametrize("name", list_models())
def test_export_keeps_the_adv_branch_bit_identically_for_every_built_in_model(name):
    torch.manual_seed(0)
    plain_keys = list(build_model(name, input_size=8).state_dict())
    model = to_split_bn(build_model(name, input_size=8)).eval()
    scramble_branches(model)
    x = torch.rand(3, 3, 8, 8)
    exported = merge_split_bn(model, keep="adv").eval()
    assert list(exported.state_dict()) == plain_keys  # loads into build_model's model, strictly
    assert not any(isinstance(m, SplitBatchNorm) for m in exported.modules())
    with torch.no_grad():
        split_adv = model(x)
        assert torch.equal(split_adv, exported(x))
        with bn_route(model, "clean"):
            split_clean = model(x)
        assert torch.equal(split_clean, merge_split_bn(model, keep="clean").eval()(x))
    assert not torch.allclose(split_adv, split_clean)  # the branches really differ, so the checks mean something
    assert any(isinstance(m, SplitBatchNorm) for m in model.modules())  # export left the split model alone


def test_every_batchnorm_is_split_and_both_branches_start_as_copies():
    model = build_model("resnet18", input_size=8)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        model.bn1.running_mean.fill_(0.25)
    to_split_bn(model)
    splits = [m for m in model.modules() if isinstance(m, SplitBatchNorm)]
    assert len(splits) == n_bn == 20  # stem, 16 in blocks, 3 shortcuts
    assert torch.equal(model.bn1.clean.running_mean, model.bn1.adv.running_mean)
    assert model.bn1.clean.weight is not model.bn1.adv.weight
    with pytest.raises(ValueError, match="already has split"):
        to_split_bn(model)


def test_the_two_branches_keep_separate_running_statistics():
    bn = to_split_bn(nn.Sequential(nn.BatchNorm2d(2)))[0]
    x_clean = torch.randn(16, 2, 3, 3) + 3.0
    x_adv = torch.randn(16, 2, 3, 3) - 2.0
    bn.train()
    with bn_route(bn, "clean"):
        bn(x_clean)
    assert torch.allclose(bn.clean.running_mean, 0.1 * x_clean.mean((0, 2, 3)))  # momentum 0.1 from 0
    assert torch.equal(bn.adv.running_mean, torch.zeros(2)) and int(bn.adv.num_batches_tracked) == 0
    bn(x_adv)  # the default route
    assert torch.allclose(bn.adv.running_mean, 0.1 * x_adv.mean((0, 2, 3)))
    assert torch.allclose(bn.clean.running_mean, 0.1 * x_clean.mean((0, 2, 3)))  # untouched by the adv pass
    assert bn.route == "adv"  # the context restored the route


def test_bn_route_restores_the_route_on_errors_and_rejects_unknown_routes():
    model = to_split_bn(build_model("small_cnn", input_size=8))
    with pytest.raises(RuntimeError), bn_route(model, "clean"):
        assert model.bn1.route == "clean"
        raise RuntimeError
    assert model.bn1.route == "adv"
    with pytest.raises(ValueError, match="route"), bn_route(model, "test"):  # type: ignore[arg-type]
        pass
    with bn_route(nn.Linear(2, 2), "clean"):  # no split BN: nothing to route (the shared-BN ablation)
        pass


def test_feature_taps_pool_the_relu_of_each_named_output():
    model = build_model("small_cnn", input_size=8).eval()
    x = torch.rand(4, 3, 8, 8)
    seen = {}
    handle = model.bn2.register_forward_hook(lambda _m, _i, out: seen.setdefault("bn2", out))
    with torch.no_grad(), feature_taps(model, ["bn2", "relu3"]) as features:
        model(x)
    handle.remove()
    assert torch.allclose(features["bn2"], F.relu(seen["bn2"]).mean((2, 3)))
    assert features["relu3"].shape == (4, 128)
    assert not model._forward_hooks and not model.bn2._forward_hooks  # removed on exit
    assert feature_dims(model, ["bn1", "bn3"], x) == {"bn1": 32, "bn3": 128}
    with pytest.raises(UserError, match=r"no layer 'bn9'.*close names: bn"), feature_taps(model, ["bn9"]):
        pass


def test_feature_dims_changes_no_statistic_and_keeps_the_mode():
    model = to_split_bn(build_model("small_cnn", input_size=8)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    feature_dims(model, ["bn3"], torch.rand(2, 3, 8, 8))
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_penultimate_features_are_the_classifier_input():
    model = build_model("resnet18", input_size=8).eval()
    x = torch.rand(2, 3, 8, 8)
    logits, features = penultimate_features(model, x)
    assert features.shape == (2, 512)
    assert torch.allclose(model.linear(features), logits, atol=1e-6)


def test_default_layer_sets_match_the_paper_and_refuse_unknown_models():
    assert default_invariance_layers(build_model("resnet18")) == [
        "layer4.0.bn1", "layer4.0.bn2", "layer4.1.bn1", "layer4.1.bn2"]  # docs/methods.md §6, ResNet-18
    wrn = default_invariance_layers(build_model("wrn34_10"))
    assert len(wrn) == 11 and wrn[-1] == "avgpool" and wrn[0] == "block3.layer.0.relu1"  # 10 ReLUs + pooled
    assert default_invariance_layers(to_split_bn(build_model("resnet18")))[0] == "layer4.0.bn1"  # names survive
    with pytest.raises(UserError, match=r"set method\.layers"):
        default_invariance_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
