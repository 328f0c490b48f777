"""Training methods: the interface (base.py) and one file per method containing only its math."""

from advtrain.methods import pgd_at, standard  # noqa: F401  (registers the methods)
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
