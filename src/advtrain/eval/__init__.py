"""Evaluation: robust accuracy under attacks, on checkpoints and run directories. Never imports `train`."""

from advtrain.eval.api import evaluate_loaded, load_for_eval
from advtrain.eval.robustness import ATTACK_ALIASES, AttackResult, AttackSpec, attack_specs, evaluate, run_attack

__all__ = [
    "ATTACK_ALIASES",
    "AttackResult",
    "AttackSpec",
    "attack_specs",
    "evaluate",
    "evaluate_loaded",
    "load_for_eval",
    "run_attack",
]
