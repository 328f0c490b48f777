"""Build a model and load a weights file into it (used by evaluation and by IGD's frozen teacher)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from advtrain.checkpoint import load_state_into, load_weights
from advtrain.errors import UserError
from advtrain.models.spec import ModelSpec


@dataclass
class LoadedModel:
    model: nn.Module
    spec: ModelSpec
    source: Path
    metadata: dict[str, Any]


def load_checkpoint_model(path: Path, spec: ModelSpec | None = None) -> LoadedModel:
    """Build the model (from `spec`, else from the checkpoint's sidecar) and load the weights strictly."""
    state, metadata = load_weights(path)
    if spec is None:
        if "model" not in metadata:
            raise UserError(f"{path} has no sidecar describing its model: pass --model NAME")
        spec = ModelSpec.from_dict(metadata["model"], str(path))
    model = spec.build()
    load_state_into(model, state, str(path))
    return LoadedModel(model.eval(), spec, path, metadata)
