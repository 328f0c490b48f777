"""Training methods: the interface (base.py) and one file per method containing only its math."""

# Importing the method modules registers them.
from advtrain.methods import (  # noqa: F401
    arat,
    awp,
    fgsm,
    fgsm_rs,
    grad_align,
    igd,
    iseat,
    mart,
    n_fgsm,
    pgd_at,
    sat_r1,
    sat_r2,
    sat_r3,
    standard,
    trades,
)
from advtrain.methods.base import (
    AdversarialMethod,
    Batch,
    EpochContext,
    Method,
    MethodConfig,
    StepContext,
    StepOutput,
)
from advtrain.methods.registry import build_method, list_methods, method_class

__all__ = [
    "AdversarialMethod",
    "Batch",
    "EpochContext",
    "Method",
    "MethodConfig",
    "StepContext",
    "StepOutput",
    "build_method",
    "list_methods",
    "method_class",
]
