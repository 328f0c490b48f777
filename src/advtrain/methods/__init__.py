"""Training methods: the interface (base.py) and one file per method containing only its math.

Each method's public name is its paper name bound to its options dataclass, validated on construction:
``advtrain.methods.TRADES(beta=6.0)`` is a ``TRADESConfig`` (``TRADES(beta=-1)`` raises ValueError), and
``build_method(config, threat)`` turns any such object into the method that trains with it. The names are
aliases of the ``*Config`` classes, which keep working; the classes that implement the methods (e.g.
``advtrain.methods.trades.TRADES``) are internal.
"""

# Importing the method modules registers them.
from advtrain.methods import (
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
from advtrain.methods.registry import build_method, list_methods, method_class, register_method

ARAT = arat.ARATConfig
AWP = awp.AWPConfig
FGSM = fgsm.FGSMConfig
FGSMRS = fgsm_rs.FGSMRSConfig
GradAlign = grad_align.GradAlignConfig
IGD = igd.IGDConfig
ISEAT = iseat.ISEATConfig
MART = mart.MARTConfig
NFGSM = n_fgsm.NFGSMConfig
PGDAT = pgd_at.PGDATConfig
SATR1 = sat_r1.SATR1Config
SATR2 = sat_r2.SATR2Config
SATR3 = sat_r3.SATR3Config
Standard = standard.StandardConfig
TRADES = trades.TRADESConfig

__all__ = [
    "ARAT",
    "AWP",
    "FGSM",
    "FGSMRS",
    "IGD",
    "ISEAT",
    "MART",
    "NFGSM",
    "PGDAT",
    "SATR1",
    "SATR2",
    "SATR3",
    "TRADES",
    "AdversarialMethod",
    "Batch",
    "EpochContext",
    "GradAlign",
    "Method",
    "MethodConfig",
    "Standard",
    "StepContext",
    "StepOutput",
    "build_method",
    "list_methods",
    "method_class",
    "register_method",
]
