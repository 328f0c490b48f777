"""advtrain.attacks.autoattack must return exactly what the reference pyautoattack returns."""

import logging

import pytest
import torch
from pyautoattack import AutoAttack
from torch import nn

from advtrain.attacks.reference_autoattack import AUTOATTACK_PRESETS, autoattack
from advtrain.errors import UserError

N_CLASSES = 10
# For the tiny model below: at EPS_MIXED APGD-CE breaks some points, APGD-T some more, and a few survive
# both (so later stages have work); there 5 APGD-CE restarts (pyautoattack's default outside the standard
# version) break more than the standard version's 1, so a preset with the wrong settings is caught.
# At EPS_ALL_BROKEN the two APGD stages break every point, which keeps
# the full standard version fast because FAB-T and Square are skipped.
EPS_MIXED = 0.1
EPS_ALL_BROKEN = 0.15


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, N_CLASSES),
    ).eval()


@pytest.fixture
def data(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % N_CLASSES  # a few misclassified points, which AutoAttack leaves untouched
    return x, y


@pytest.fixture
def model() -> nn.Module:
    return tiny_model()


def changed(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_adv != x).flatten(1).any(1)


def test_standard_equals_reference(model, data):
    x, y = data
    ours = autoattack(model, x, y, eps=EPS_ALL_BROKEN, version="standard", seed=0)
    reference = AutoAttack(model, eps=EPS_ALL_BROKEN, norm="Linf", version="standard", seed=0, device="cpu")
    expected, _ = reference.run_standard_evaluation(x, y, batch_size=500)
    assert torch.equal(ours, expected)
    assert changed(ours, x).sum() == 12  # the 12 correctly classified points were all attacked


def test_apgd_preset_equals_custom_reference_with_standard_settings(model, data):
    x, y = data
    ours = autoattack(model, x, y, eps=EPS_MIXED, version="apgd", seed=0)

    reference = AutoAttack(
        model, attacks=["apgd-ce", "apgd-t"], eps=EPS_MIXED, norm="Linf", version="custom", seed=0
    )
    # What pyautoattack's _set_version('standard') sets for these two attacks under Linf/L2.
    reference.apgd.n_restarts = 1
    reference.apgd_targeted.n_restarts = 1
    reference.apgd_targeted.n_target_classes = 9
    expected, _ = reference.run_standard_evaluation(x, y, batch_size=500)

    assert torch.equal(ours, expected)
    assert 0 < changed(ours, x).sum() < 12  # both stages had work and some points survived


def test_reference_standard_settings_are_the_ones_assumed_above(model):
    standard = AutoAttack(model, eps=EPS_MIXED, version="standard", seed=0)
    assert tuple(standard.attacks_to_run) == AUTOATTACK_PRESETS["standard"]
    assert AUTOATTACK_PRESETS["apgd"] == AUTOATTACK_PRESETS["standard"][:2]
    assert (standard.apgd.n_restarts, standard.apgd_targeted.n_restarts) == (1, 1)
    assert standard.apgd_targeted.n_target_classes == 9


def test_apgd_preset_is_the_first_two_stages_of_standard(model, data):
    x, y = data
    standard = autoattack(model, x, y, eps=EPS_ALL_BROKEN, version="standard")
    preset = autoattack(model, x, y, eps=EPS_ALL_BROKEN, version="apgd")
    assert torch.equal(preset, standard)


def test_within_eps_ball_and_image_range(model, data):
    x, y = data
    x_adv = autoattack(model, x, y, eps=EPS_MIXED, version="apgd")
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= EPS_MIXED + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_l2_norm_spelling_accepted(model, data):
    x, y = data
    x_adv = autoattack(model, x, y, eps=0.5, norm="l2", version="apgd")
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()


def test_runs_in_eval_mode_and_restores_training_flags(model, data):
    x, y = data
    model.train()
    model[0].eval()  # a deliberately frozen submodule must stay frozen, the others in training mode
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.training))

    autoattack(model, x, y, eps=EPS_ALL_BROKEN, version="apgd")

    assert seen and not any(seen)
    assert model.training
    assert [m.training for m in model] == [False, True, True, True, True]


def test_logger_quiet_unless_verbose(model, data, caplog):
    x, y = data
    caplog.set_level(logging.DEBUG)
    logger = logging.getLogger("auto-attack")
    level_before = logger.level

    autoattack(model, x, y, eps=EPS_ALL_BROKEN, version="apgd")
    assert not [r for r in caplog.records if r.name == "auto-attack"]
    assert logger.level == level_before

    autoattack(model, x, y, eps=EPS_ALL_BROKEN, version="apgd", verbose=True)
    assert [r for r in caplog.records if r.name == "auto-attack"]
    assert logger.level == level_before


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"version": "plus"}, "unknown AutoAttack version 'plus'"),
        ({"version": "custom"}, "unknown AutoAttack version"),
        ({"norm": "L1"}, "unknown norm 'L1'"),
        ({"eps": 0.0}, "eps must be a positive number"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise_user_error(model, data, kwargs, fragment):
    x, y = data
    with pytest.raises(UserError, match=fragment) as info:
        autoattack(model, x, y, **{"eps": EPS_MIXED, **kwargs})
    assert "\n" not in str(info.value)


def test_mismatched_labels_raise_user_error(model, data):
    x, y = data
    with pytest.raises(UserError, match="labels y of shape"):
        autoattack(model, x, y[:3], eps=EPS_MIXED)


@pytest.mark.slow
def test_standard_with_all_four_stages_leaves_parameter_grads_alone(model, data):
    x, y = data
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)  # e.g. gradients of a training step in progress
    preset = autoattack(model, x, y, eps=EPS_MIXED, version="apgd")
    standard = autoattack(model, x, y, eps=EPS_MIXED, version="standard")  # FAB-T and Square run here

    # FAB calls .backward(); the caller's gradients must come back untouched.
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    # Points the first two stages broke are broken identically by the standard version.
    broken = changed(preset, x)
    assert torch.equal(standard[broken], preset[broken])
