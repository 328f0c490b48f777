"""Models by name: ``create(name, ...)`` (alias ``build_model``) builds a registered classifier taking inputs in
[0, 1]; ``list_models()`` names them and ``register_model`` adds one.

Also the pieces AR-AT is built from, usable with any model: split BatchNorm (``to_split_bn``, ``bn_route``,
``merge_split_bn``) and feature taps by layer name (``feature_taps``, ``penultimate_features``).
"""

# Importing the model modules registers their builders.
from . import preact_resnet, resnet, small_cnn, wide_resnet  # noqa: F401
from .features import feature_taps, penultimate_features
from .normalize import Normalize
from .registry import build_model, list_models, register_model
from .split_bn import SplitBatchNorm, bn_route, merge_split_bn, to_split_bn

create = build_model

__all__ = [
    "Normalize",
    "SplitBatchNorm",
    "bn_route",
    "build_model",
    "create",
    "feature_taps",
    "list_models",
    "merge_split_bn",
    "penultimate_features",
    "register_model",
    "to_split_bn",
]
