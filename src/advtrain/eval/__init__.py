"""Evaluation: robust accuracy under attacks, on checkpoints and run directories. Never imports `train`."""

from advtrain.eval.api import (
    EvalSettings,
    compare_runs,
    evaluate_loaded,
    inequality_figures,
    load_for_eval,
    load_group,
    split_attack_names,
)
from advtrain.eval.inequality import INEQUALITY_EVALS, InequalityOptions, evaluate_inequality, inequality_text
from advtrain.eval.robustness import ATTACK_ALIASES, AttackResult, AttackSpec, attack_specs, evaluate, run_attack

__all__ = [
    "ATTACK_ALIASES",
    "INEQUALITY_EVALS",
    "AttackResult",
    "AttackSpec",
    "EvalSettings",
    "InequalityOptions",
    "attack_specs",
    "compare_runs",
    "evaluate",
    "evaluate_inequality",
    "evaluate_loaded",
    "inequality_figures",
    "inequality_text",
    "load_for_eval",
    "load_group",
    "run_attack",
    "split_attack_names",
]
