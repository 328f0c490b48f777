"""Evaluation: robust accuracy under attacks, on checkpoints and run directories. Never imports `train`."""

from advtrain.eval.api import (
    EvalSettings,
    compare_runs,
    evaluate_analyses,
    evaluate_loaded,
    inequality_figures,
    load_for_eval,
    load_group,
    split_attack_names,
)
from advtrain.eval.inequality import INEQUALITY_EVALS, InequalityOptions, evaluate_inequality, inequality_text
from advtrain.eval.robustness import ATTACK_ALIASES, AttackResult, AttackSpec, attack_specs, evaluate, run_attack
from advtrain.eval.vulnerability import (
    VULNERABILITY_EVALS,
    adversarial_vulnerability,
    compare_vulnerability,
    evaluate_vulnerability,
    read_training_vulnerability,
    vulnerability_history,
    vulnerability_stats,
    vulnerability_text,
    write_vulnerability_figure,
)

__all__ = [
    "ATTACK_ALIASES",
    "INEQUALITY_EVALS",
    "VULNERABILITY_EVALS",
    "AttackResult",
    "AttackSpec",
    "EvalSettings",
    "InequalityOptions",
    "adversarial_vulnerability",
    "attack_specs",
    "compare_runs",
    "compare_vulnerability",
    "evaluate",
    "evaluate_analyses",
    "evaluate_inequality",
    "evaluate_loaded",
    "evaluate_vulnerability",
    "inequality_figures",
    "inequality_text",
    "load_for_eval",
    "load_group",
    "read_training_vulnerability",
    "run_attack",
    "split_attack_names",
    "vulnerability_history",
    "vulnerability_stats",
    "vulnerability_text",
    "write_vulnerability_figure",
]
