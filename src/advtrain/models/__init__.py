"""Model registry: ``build_model(name, ...)`` maps a name to a classifier taking inputs in [0, 1]."""

# Importing the model modules registers their builders.
from . import preact_resnet, resnet, small_cnn, wide_resnet  # noqa: F401
from .normalize import Normalize
from .registry import build_model, list_models, register_model

__all__ = ["Normalize", "build_model", "list_models", "register_model"]
