"""advtrain: adversarial training and robustness diagnosis of image classifiers.

The public API is what ``__all__`` names: ``fit``, ``evaluate`` and ``audit``, the packages ``attacks`` (``pgd``,
``fgsm``, ``autoattack``, ...), ``methods`` (``TRADES(beta=6.0)``, ``ARAT(...)``, ...) and ``models`` (``create``,
``list_models``), and ``UserError``, the one-line error bad input raises. Everything else is internal.
Names are imported on first use (PEP 562), so ``import advtrain`` does not import torch.
"""

from __future__ import annotations

import importlib

from advtrain.errors import UserError

__version__ = "0.1.0"

# public name → (module, attribute of it; None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "attacks": ("advtrain.attacks", None),
    "audit": ("advtrain.model_audit", "audit"),
    "evaluate": ("advtrain.eval.public", "evaluate"),
    "fit": ("advtrain.train.fit", "fit"),
    "methods": ("advtrain.methods", None),
    "models": ("advtrain.models", None),
}

__all__ = ["UserError", "__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'advtrain' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:  # a missing dependency of an existing module is not ours to hide
            raise
        raise AttributeError(f"module 'advtrain' has no attribute {name!r} ({module_name} is missing)") from error
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return list(__all__)
