"""Gradient-masking diagnostics (docs/methods.md §7.7): is a model's robust accuracy real, or do the attacks fail?

Every check measures one symptom with the project's own attacks (`advtrain.attacks.pgd` / `fgsm` through
`evaluate`, all in eval mode, seeded) on one set of images, and returns a `Check`: the measured value, the
threshold (None for a report-only reading) and on which side of it a value passes (`pass_if`), PASS / WARN /
INFO / SKIP, and one sentence of meaning.

    probe = Probe(model, x, y, seed=0)             # memoises attack results shared between checks
    check_fgsm_pgd_gap(probe, eps)                 # FGSM − PGD-20 accuracy          WARN if > 0.3
    check_pgd_steps(probe, eps)                    # PGD at 1, 3, 10, 20, 50, 100 steps: must not rise
    check_pgd_eps(probe, eps)                      # PGD-20 up to ε = 1: must reach ≈ 0
    check_restarts(probe, eps)                     # PGD-50 with 10 restarts vs 1
    check_transfer(probe, surrogate, eps)          # black-box from a surrogate vs white-box PGD-20
    check_fgsm_direction_loss(probe, eps)          # CE along x + t·sign ∇ₓCE, t ∈ [0, ε]: must rise
    check_gradalign_cosine(probe, eps)             # cos(∇ₓCE(x), ∇ₓCE(x + η)), report only
    check_zero_gradients(probe)                    # share of all-zero input gradients  WARN if > 0.1
    diagnose(model, x, y, eps=...)                 # all of them: the JSON `advtrain diagnose` writes

Each module measures one family of symptoms: `attack_checks` compares attacks with each other (FGSM, PGD steps,
ε and restarts, black-box transfer), `gradient_checks` reads the input gradient itself; `probe` holds what they
share and `suite` runs them all. The reasons for each threshold are in the two check modules.

All attacks are L∞ (§7.7 is about L∞ single-step AT). Nothing here changes the models' train/eval mode.
"""

from advtrain.eval.diagnose.attack_checks import (
    check_fgsm_pgd_gap,
    check_pgd_eps,
    check_pgd_steps,
    check_restarts,
    check_transfer,
    eps_schedule,
    grey_baseline,
    transfer_accuracy,
)
from advtrain.eval.diagnose.gradient_checks import (
    check_fgsm_direction_loss,
    check_gradalign_cosine,
    check_zero_gradients,
    gradient_alignment,
    loss_along_fgsm,
    zero_gradient_share,
)
from advtrain.eval.diagnose.probe import INFO, PASS, SKIP, WARN, Check, Probe, clean_accuracy, fgsm_spec, pgd_spec
from advtrain.eval.diagnose.suite import CHECK_NAMES, diagnose

__all__ = [
    "CHECK_NAMES",
    "INFO",
    "PASS",
    "SKIP",
    "WARN",
    "Check",
    "Probe",
    "check_fgsm_direction_loss",
    "check_fgsm_pgd_gap",
    "check_gradalign_cosine",
    "check_pgd_eps",
    "check_pgd_steps",
    "check_restarts",
    "check_transfer",
    "check_zero_gradients",
    "clean_accuracy",
    "diagnose",
    "eps_schedule",
    "fgsm_spec",
    "gradient_alignment",
    "grey_baseline",
    "loss_along_fgsm",
    "pgd_spec",
    "transfer_accuracy",
    "zero_gradient_share",
]
