"""Evaluate a checkpoint or a run directory on a dataset's test split and build the eval JSON."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from advtrain.attacks import Norm
from advtrain.data import Dataset, load_dataset, to_float
from advtrain.errors import UserError
from advtrain.eval.checkpoints import LoadedModel, checkpoint_path, load_checkpoint_model
from advtrain.eval.robustness import AttackResult, attack_specs, evaluate
from advtrain.models.spec import ModelSpec
from advtrain.rundir import read_config
from advtrain.runtime import autocast_dtype, resolve_device


def load_for_eval(
    *,
    run_dir: Path | None,
    weights: Path | None,
    model_name: str | None,
    data_name: str | None,
    data_root: str | None,
    checkpoint: str = "best",
    normalize: str = "none",
) -> tuple[LoadedModel, Dataset]:
    """The model and dataset to evaluate: from a run directory, or from --model/--weights/--data."""
    if run_dir is not None:
        if weights is not None or model_name is not None:
            raise UserError("pass either a RUN_DIR or --weights (with --model), not both")
        raw = read_config(run_dir)
        data_cfg = raw.get("data") or {}
        data = load_dataset(
            data_name or data_cfg.get("name", "digits"),
            data_root if data_root is not None else data_cfg.get("root"),
            **(data_cfg.get("options") or {}),
        )
        return load_checkpoint_model(checkpoint_path(run_dir, checkpoint)), data
    if weights is None:
        raise UserError("nothing to evaluate: pass a RUN_DIR or --weights FILE (with --model NAME for .pt files)")
    if data_name is None:
        raise UserError("--weights needs --data NAME (and --data-root PATH for on-disk datasets)")
    data = load_dataset(data_name, data_root)
    spec = ModelSpec.for_dataset(model_name, data, normalize) if model_name is not None else None
    return load_checkpoint_model(weights, spec), data


def evaluate_loaded(
    loaded: LoadedModel,
    data: Dataset,
    *,
    attacks: Sequence[str],
    eps: Sequence[float],
    norm: Norm = "linf",
    steps: int = 20,
    restarts: int = 1,
    step_size: float | None = None,
    n: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
    checkpoint: str | None = None,
    on_result: Callable[[AttackResult], None] | None = None,
) -> tuple[dict[str, Any], list[AttackResult]]:
    """Run the attacks on the first `n` test images; return the eval JSON and per-example results."""
    if n is not None and n < 1:
        raise UserError(f"--n must be >= 1, got {n}")
    dev = resolve_device(device)
    model = loaded.model.to(dev)
    x = to_float(data.x_test[:n], data.pixel_max).to(dev)
    y = data.y_test[:n].to(dev)
    c, h, _ = data.shape
    if (c, h) != (loaded.spec.in_channels, loaded.spec.input_size):
        raise UserError(
            f"{data.name} images are {c}×{h}×{h} but the model expects "
            f"{loaded.spec.in_channels}×{loaded.spec.input_size}×{loaded.spec.input_size}: pass the matching --data"
        )
    amp = autocast_dtype(precision, dev)
    specs = attack_specs(attacks, eps, norm=norm, steps=steps, restarts=restarts, step_size=step_size)
    results = evaluate(
        model, x, y, specs, batch_size=batch_size, seed=seed, autocast_dtype=amp,
        on_result=on_result,
    )
    report = {
        "model": loaded.spec.name,
        "data": data.name,
        "n": len(y),
        "source": str(loaded.source),
        "checkpoint": checkpoint,
        "epoch": loaded.metadata.get("epoch"),
        "seed": seed,
        "precision": "bf16" if amp is not None else "fp32",
        "device": str(dev),
        "torch_version": torch.__version__,
        "results": [r.as_dict() for r in results],
    }
    return report, results
