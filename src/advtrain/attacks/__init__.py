"""Attacks: one obvious call each. They never change the model's mode or parameter gradients.

`pgd`, `fgsm`, `single_step` and `autoattack` check their input once per call (float images in [0, 1], ε and step
sizes in [0, 1] pixel units, a known norm name); the `*_unchecked` forms skip the pixel-scale checks (the image
check costs a device sync) for the training methods, which attack every step on data checked when it was loaded.
`autoattack` runs the reference implementation; its module is `reference_autoattack`, so that
`advtrain.attacks.autoattack` is the function, not a module.
"""

from advtrain.attacks.bn_policy import BN_MODES, BNMode, bn_policy
from advtrain.attacks.frozen import frozen_parameters
from advtrain.attacks.losses import ATTACK_LOSSES, AttackLoss, at_least_fp32, attack_loss, cw_margin
from advtrain.attacks.pgd import (
    Keep,
    ScoreTarget,
    ascent_step,
    class_score_gradient,
    default_step_size,
    fgsm,
    fgsm_unchecked,
    input_gradient,
    pgd,
    pgd_unchecked,
    project,
    random_start,
)
from advtrain.attacks.reference_autoattack import AUTOATTACK_PRESETS, autoattack
from advtrain.attacks.single_step import (
    SingleStep,
    gradient_cosine,
    single_step,
    single_step_unchecked,
    uniform_noise,
    zero_gradient_fraction,
)
from advtrain.attacks.static_pgd import StaticPGD
from advtrain.attacks.threat import (
    MAX_DISTANCE,
    NORM_SPELLINGS,
    Norm,
    ThreatModel,
    check_attack_inputs,
    check_distance,
    check_images,
    check_radius,
    parse_norm,
    training_step_size,
)

__all__ = [
    "ATTACK_LOSSES",
    "AUTOATTACK_PRESETS",
    "BN_MODES",
    "MAX_DISTANCE",
    "NORM_SPELLINGS",
    "AttackLoss",
    "BNMode",
    "Keep",
    "Norm",
    "ScoreTarget",
    "SingleStep",
    "StaticPGD",
    "ThreatModel",
    "ascent_step",
    "at_least_fp32",
    "attack_loss",
    "autoattack",
    "bn_policy",
    "check_attack_inputs",
    "check_distance",
    "check_images",
    "check_radius",
    "class_score_gradient",
    "cw_margin",
    "default_step_size",
    "fgsm",
    "fgsm_unchecked",
    "frozen_parameters",
    "gradient_cosine",
    "input_gradient",
    "parse_norm",
    "pgd",
    "pgd_unchecked",
    "project",
    "random_start",
    "single_step",
    "single_step_unchecked",
    "training_step_size",
    "uniform_noise",
    "zero_gradient_fraction",
]
