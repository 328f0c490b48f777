"""Attacks: one obvious call each. They never change the model's mode or parameter gradients."""

from advtrain.attacks.bn_policy import BN_MODES, BNMode, bn_policy
from advtrain.attacks.losses import ATTACK_LOSSES, AttackLoss, at_least_fp32, attack_loss, cw_margin
from advtrain.attacks.pgd import (
    Keep,
    ScoreTarget,
    ascent_step,
    class_score_gradient,
    default_step_size,
    fgsm,
    input_gradient,
    pgd,
    project,
    random_start,
)
from advtrain.attacks.single_step import (
    SingleStep,
    gradient_cosine,
    single_step,
    uniform_noise,
    zero_gradient_fraction,
)
from advtrain.attacks.threat import MAX_DISTANCE, Norm, ThreatModel

__all__ = [
    "ATTACK_LOSSES",
    "BN_MODES",
    "MAX_DISTANCE",
    "AttackLoss",
    "BNMode",
    "Keep",
    "Norm",
    "ScoreTarget",
    "SingleStep",
    "ThreatModel",
    "ascent_step",
    "at_least_fp32",
    "attack_loss",
    "bn_policy",
    "class_score_gradient",
    "cw_margin",
    "default_step_size",
    "fgsm",
    "gradient_cosine",
    "input_gradient",
    "pgd",
    "project",
    "random_start",
    "single_step",
    "uniform_noise",
    "zero_gradient_fraction",
]
