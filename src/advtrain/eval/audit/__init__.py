"""`run_audit`: one model audited for the four failure modes of the seed papers (gradient masking, unequal saliency,
uneven vulnerability, invariance / trade-off) plus its robust accuracy, each with a verdict by explicit rules and
a 95% interval. Computes numbers and JSON; `advtrain.report.audit_card` presents them."""

from advtrain.eval.audit.budget import BUDGETS, Budget, get_budget
from advtrain.eval.audit.confidence import bootstrap_interval, wilson_interval
from advtrain.eval.audit.run import SECTIONS, AuditResult, run_audit
from advtrain.eval.audit.verdicts import FAILURE_MODES

__all__ = ["BUDGETS", "FAILURE_MODES", "SECTIONS", "AuditResult", "Budget", "bootstrap_interval", "get_budget",
           "run_audit", "wilson_interval"]
