"""Evaluate a checkpoint or a run directory on a dataset's test split and build the eval JSON."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from advtrain.attacks import MAX_DISTANCE, Norm
from advtrain.bounds import Bound, Ge, Gt, Le, Lt
from advtrain.data import Dataset, load_dataset, to_float
from advtrain.errors import UserError
from advtrain.eval.checkpoints import LoadedModel, checkpoint_path, load_checkpoint_model
from advtrain.eval.robustness import AttackResult, attack_specs, check_attack_names, evaluate
from advtrain.models.spec import ModelSpec
from advtrain.rundir import read_config
from advtrain.runtime import SEED_LIMIT, autocast_dtype, resolve_device


def check_fits(loaded: LoadedModel, data: Dataset) -> None:
    """Refuse a dataset whose image shape or class count differs from the model's, with a one-line UserError.

    A wrong shape would fail deep inside a convolution, and a wrong class count would either index past the
    logits or silently score a model on classes it never learnt.
    """
    spec = loaded.spec
    c, h, w = data.shape
    expected = (spec.in_channels, spec.input_size, spec.input_size)
    if (c, h, w) != expected:
        raise UserError(
            f"{data.name} images are {c}×{h}×{w} but the model {spec.name} from {loaded.source} expects "
            f"{'×'.join(map(str, expected))}: pass the dataset it was trained on with --data"
        )
    if data.num_classes != spec.num_classes:
        raise UserError(
            f"{data.name} has {data.num_classes} classes but the model {spec.name} from {loaded.source} predicts "
            f"{spec.num_classes}: pass the dataset it was trained on with --data"
        )


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
    """The model and dataset to evaluate: from a run directory, or from --model/--weights/--data.

    Both are checked to fit each other (image shape, class count) before anything is evaluated or written.
    """
    if normalize != "none" and model_name is None:
        # A checkpoint's sidecar already records its normalisation; silently ignoring the flag would
        # evaluate a different model than the one asked for.
        raise UserError("--normalize only applies with --weights and --model NAME: drop it")
    if run_dir is not None:
        if weights is not None or model_name is not None:
            raise UserError("pass either a RUN_DIR or --weights (with --model), not both")
        raw = read_config(run_dir)
        data_cfg = raw.get("data")
        data_cfg = data_cfg if isinstance(data_cfg, dict) else {}
        run_data = data_cfg.get("name", "digits")
        # The run's source options (e.g. synthetic `shape`) belong to the run's dataset, not to another --data.
        options = data_cfg.get("options") if data_name in (None, run_data) else None
        loaded = load_checkpoint_model(checkpoint_path(run_dir, checkpoint))
        data = load_dataset(
            data_name or run_data,
            data_root if data_root is not None else data_cfg.get("root"),
            **(options if isinstance(options, dict) else {}),
        )
        check_fits(loaded, data)
        return loaded, data
    if weights is None:
        raise UserError("nothing to evaluate: pass a RUN_DIR or --weights FILE (with --model NAME for .pt files)")
    if data_name is None:
        raise UserError("--weights needs --data NAME (and --data-root PATH for on-disk datasets)")
    if model_name is not None:
        # The model is built for the data, so a mismatch shows up as weights that do not fit the model.
        data = load_dataset(data_name, data_root)
        return load_checkpoint_model(weights, ModelSpec.for_dataset(model_name, data, normalize)), data
    loaded = load_checkpoint_model(weights)
    # An .npz infers its class count from the labels it holds; the model's count is the right one, and
    # passing it makes the loader refuse labels outside it.
    options = {"num_classes": loaded.spec.num_classes} if data_name == "npz" else {}
    data = load_dataset(data_name, data_root, **options)
    check_fits(loaded, data)
    return loaded, data


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
    """Run the attacks on the first `n` test images; return the eval JSON and per-example results.

    Every argument is checked before the first attack runs, so a bad one fails with nothing printed or
    written. The messages name the `advtrain eval` flags: a run's config was checked when it was loaded.
    """
    check_attack_names(attacks)
    if not attacks:
        raise UserError("no attack to run: pass e.g. --attacks clean,pgd")
    if not all(math.isfinite(e) for e in eps) or (step_size is not None and not math.isfinite(step_size)):
        raise UserError(f"--eps and --step-size must be finite numbers, got eps {list(eps)}, step size {step_size}")
    checks: list[tuple[Any, tuple[Bound, ...], str]] = [
        (n, (Ge(1), Lt(2**63)), "--n"),
        (steps, (Ge(1),), "--steps"),
        (restarts, (Ge(1),), "--restarts"),
        (batch_size, (Ge(1), Lt(2**63)), "--batch-size"),  # torch splits take 64-bit sizes
        (step_size, (Gt(0), Le(MAX_DISTANCE)), "--step-size"),
        (seed, (Ge(0), Lt(SEED_LIMIT)), "--seed"),
        *((e, (Ge(0), Le(MAX_DISTANCE)), "--eps") for e in eps),
    ]
    for value, bounds, flag in checks:
        for bound in bounds:
            bound.check(value, flag)
    check_fits(loaded, data)
    dev = resolve_device(device)
    model = loaded.model.to(dev)
    x = to_float(data.x_test[:n], data.pixel_max).to(dev)
    y = data.y_test[:n].to(dev)
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
