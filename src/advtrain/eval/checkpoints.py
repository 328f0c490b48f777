"""Find and load the model to evaluate: a run directory's checkpoint, or a weights file."""

from __future__ import annotations

from pathlib import Path

from advtrain.errors import UserError
from advtrain.models.loading import LoadedModel, load_checkpoint_model

__all__ = ["LoadedModel", "checkpoint_path", "load_checkpoint_model"]


def checkpoint_path(run_dir: Path, which: str) -> Path:
    path = run_dir / "checkpoints" / f"{which}.safetensors"
    if not path.is_file():
        raise UserError(f"{run_dir} has no {which} checkpoint ({path} missing): pass --checkpoint last")
    return path
