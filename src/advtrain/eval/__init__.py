"""Evaluation: robust accuracy under attacks, on checkpoints and run directories. Computes numbers and JSON;
`advtrain.report` presents them (tables, figures). Never imports `train` or `report`."""

from advtrain.eval.api import (
    compare_runs,
    evaluate_analyses,
    evaluate_loaded,
    inequality_saliency,
    load_for_eval,
    load_group,
    tradeoff_part,
)
from advtrain.eval.batching import batch_for_memory, resolve_eval_batch
from advtrain.eval.diagnose import (
    CHECK_NAMES,
    Check,
    Probe,
    diagnose,
    transfer_accuracy,
)
from advtrain.eval.inequality import (
    INEQUALITY_EVALS,
    InequalityOptions,
    SaliencyExamples,
    evaluate_inequality,
    saliency_examples,
)
from advtrain.eval.invariance import (
    INVARIANCE_EVALS,
    evaluate_invariance,
    invariance_summary,
    representation_invariance,
)
from advtrain.eval.public import Evaluation
from advtrain.eval.robustness import (
    ATTACK_ALIASES,
    AttackResult,
    AttackSpec,
    attack_specs,
    evaluate_attacks,
    run_attack,
)
from advtrain.eval.settings import ANALYSIS_EVALS, EvalSettings, split_attack_names
from advtrain.eval.tradeoff import tradeoff_scores
from advtrain.eval.vulnerability import (
    VULNERABILITY_EVALS,
    adversarial_vulnerability,
    compare_vulnerability,
    evaluate_vulnerability,
    read_training_vulnerability,
    vulnerability_history,
    vulnerability_stats,
)

__all__ = [
    "ANALYSIS_EVALS",
    "ATTACK_ALIASES",
    "CHECK_NAMES",
    "INEQUALITY_EVALS",
    "INVARIANCE_EVALS",
    "VULNERABILITY_EVALS",
    "AttackResult",
    "AttackSpec",
    "Check",
    "EvalSettings",
    "Evaluation",
    "InequalityOptions",
    "Probe",
    "SaliencyExamples",
    "adversarial_vulnerability",
    "attack_specs",
    "batch_for_memory",
    "compare_runs",
    "compare_vulnerability",
    "diagnose",
    "evaluate_analyses",
    "evaluate_attacks",
    "evaluate_inequality",
    "evaluate_invariance",
    "evaluate_loaded",
    "evaluate_vulnerability",
    "inequality_saliency",
    "invariance_summary",
    "load_for_eval",
    "load_group",
    "read_training_vulnerability",
    "representation_invariance",
    "resolve_eval_batch",
    "run_attack",
    "saliency_examples",
    "split_attack_names",
    "tradeoff_part",
    "tradeoff_scores",
    "transfer_accuracy",
    "vulnerability_history",
    "vulnerability_stats",
]
