"""Evaluate a checkpoint or a run directory on a dataset's test split and build the eval JSON."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advtrain.data import Dataset, load_dataset, to_float
from advtrain.distributed import Processes
from advtrain.errors import UserError
from advtrain.eval.batching import out_of_memory_as_user_error, resolve_eval_batch
from advtrain.eval.checkpoints import LoadedModel, checkpoint_path, load_checkpoint_model
from advtrain.eval.inequality import (
    INEQUALITY_EVALS,
    SaliencyExamples,
    evaluate_inequality,
    options_for_data,
    saliency_examples,
)
from advtrain.eval.invariance import evaluate_invariance, invariance_eps
from advtrain.eval.parts import EvalParts
from advtrain.eval.progress import ProgressHook, TaskProgress, labelled
from advtrain.eval.public import attack_model
from advtrain.eval.robustness import AttackResult
from advtrain.eval.settings import EvalSettings
from advtrain.eval.tradeoff import tradeoff_scores
from advtrain.eval.vulnerability import evaluate_vulnerability, first_eps
from advtrain.models.spec import ModelSpec
from advtrain.rundir import read_config
from advtrain.runtime import autocast_dtype, resolve_device

_FIT_FIX = "pass the dataset it was trained on with --data"


def check_fits(loaded: LoadedModel, data: Dataset, fix: str = _FIT_FIX) -> None:
    """Refuse a dataset whose image shape or class count differs from the model's, with a one-line UserError.

    A wrong shape would fail deep inside a convolution, and a wrong class count would either index past the
    logits or silently score a model on classes it never learnt. `fix` ends the message.
    """
    spec = loaded.spec
    c, h, w = data.shape
    expected = (spec.in_channels, spec.input_size, spec.input_size)
    if (c, h, w) != expected:
        raise UserError(
            f"{data.name} images are {c}×{h}×{w} but the model {spec.name} from {loaded.source} expects "
            f"{'×'.join(map(str, expected))}: {fix}"
        )
    if data.num_classes != spec.num_classes:
        raise UserError(
            f"{data.name} has {data.num_classes} classes but the model {spec.name} from {loaded.source} predicts "
            f"{spec.num_classes}: {fix}"
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
    data: Dataset | None = None,
) -> tuple[LoadedModel, Dataset]:
    """The model and dataset to evaluate: from a run directory, or from --model/--weights/--data.

    Both are checked to fit each other (image shape, class count) before anything is evaluated or written.
    `data` (run directories only) is an already-loaded dataset to evaluate on instead of the run's own: the
    dataset of a `--compare` group, which every run in it must fit.
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
        if data is not None:
            check_fits(loaded, data, "compare runs that fit one dataset (or pass --data NAME that all of them fit)")
            return loaded, data
        data = load_dataset(
            data_name or run_data,
            data_root if data_root is not None else data_cfg.get("root"),
            **(options if isinstance(options, dict) else {}),
        )
        check_fits(loaded, data)
        return loaded, data
    if data is not None:
        raise ValueError("load_for_eval: a pre-loaded dataset only goes with a run directory")
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


def eval_images(
    data: Dataset, n: int | None, device: torch.device, split: str = "test"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` images of `split` (test or train; floats in [0, 1], no augmentation) and labels, on `device`."""
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    return to_float(x[:n], data.pixel_max).to(device), y[:n].to(device)


def evaluate_analyses(
    models: Mapping[str, nn.Module], data: Dataset, settings: EvalSettings, device: torch.device,
    progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """The "inequality", "vulnerability" and "invariance" parts of the eval JSON (those `settings.inequality`
    asks for), for one model or a group, in fp32. Inequality: the first `settings.n` test images; vulnerability:
    the first `settings.n` images of `settings.vulnerability_split`, PGD-`steps` at the first ε (see
    `evaluate_vulnerability`); invariance (docs/methods.md §7.6): the first `settings.n` test images, PGD-`steps`
    on CE at the first ε with the eval's step size (`settings.step_size`, default 2.5·ε/steps; see
    `evaluate_invariance`). A `settings.batch_size` of "auto" is resolved for each model in fp32 on the test
    images (`resolve_eval_batch`) and the smallest is used; the batch size that ran goes under "batch_size".
    `progress` hears each analysis stage by stage (inequality: per evaluation and model)."""
    st = settings
    if not st.inequality:
        return {}
    x, y = eval_images(data, st.n, device)
    batch = min(resolve_eval_batch(model, x, y, len(y), st.batch_size, None) for model in models.values())
    out: dict[str, Any] = {"batch_size": batch}
    inequality = [e for e in st.inequality if e in INEQUALITY_EVALS]
    with out_of_memory_as_user_error(min(batch, len(y))):
        if inequality:
            options = options_for_data(st.inequality_options, data, len(y))
            out["inequality"] = evaluate_inequality(models, x, y, evals=inequality, seed=st.seed,
                                                    batch_size=batch, options=options, progress=progress)
        if st.vulnerability:
            task = TaskProgress(progress, "vulnerability", len(models), "models")
            xv, yv = eval_images(data, st.n, device, st.vulnerability_split)
            out["vulnerability"] = evaluate_vulnerability(
                models, xv, yv, eps=first_eps(st.eps), norm=st.norm, steps=st.steps, step_size=st.step_size,
                seed=st.seed, batch_size=batch, split=st.vulnerability_split,
            )
            task.advance(len(models))
        if st.invariance:
            task = TaskProgress(progress, "invariance", len(models), "models")
            out["invariance"] = evaluate_invariance(
                models, x, y, eps=invariance_eps(st.eps), norm=st.norm, steps=st.steps, step_size=st.step_size,
                seed=st.seed, batch_size=batch,
            )
            task.advance(len(models))
    return out


def tradeoff_part(evals: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """{"tradeoff": `tradeoff_scores(evals)`} (docs/methods.md §6, §7.6: clean + AutoAttack accuracy, or clean + the
    strongest attack run, flagged as not being the sum), or {} when no run has a clean and a robust accuracy."""
    scores = tradeoff_scores(evals)
    return {} if scores is None else {"tradeoff": scores}


def evaluate_loaded(
    loaded: LoadedModel,
    data: Dataset,
    settings: EvalSettings,
    *,
    checkpoint: str | None = None,
    label: str | None = None,
    on_result: Callable[[AttackResult], None] | None = None,
    procs: Processes | None = None,
    parts: EvalParts | None = None,
    progress: ProgressHook | None = None,
) -> tuple[dict[str, Any], list[AttackResult]]:
    """Run the attacks on the first `settings.n` test images; return the eval JSON and per-example results.

    The inequality evaluations (see `INEQUALITY_EVALS`) run on the same images, fp32, and their results go
    under the JSON's "inequality" key, keyed by `label` (default: the model's name); `vulnerability` goes under
    "vulnerability" (on `settings.vulnerability_split`, see `evaluate_analyses`), `invariance` under
    "invariance". With a clean and a robust accuracy, "tradeoff" holds the trade-off score (`tradeoff_part`).
    A `settings.batch_size` of "auto" is resolved once, before the first attack (`resolve_eval_batch`: under
    the attacks' precision, or in fp32 when analyses run, as they do), and "batch_size" records what ran.
    The settings were checked when built (`EvalSettings`), so a bad one fails before anything is printed or
    written.

    Under torchrun (`procs`) the attacks are split across the processes by chunk (see `evaluate`), every process
    using the smallest batch size any of them resolved, and every process returns the merged results; the
    analyses run in rank 0 only (the others return without them). With `parts` (see `advtrain.eval.parts`), a
    killed evaluation resumes: "parts" in the JSON counts the parts read back ("reused") out of all ("total").
    `progress` hears the attacks chunk by chunk and the analyses stage by stage (`advtrain.eval.progress`).
    """
    procs = procs or Processes()
    st = settings
    st.check_complete()
    check_fits(loaded, data)
    dev = resolve_device(st.device)
    model = loaded.model.to(dev)
    x, y = eval_images(data, st.n, dev)
    amp = autocast_dtype(st.precision, dev)
    before = (parts.reused, parts.computed) if parts is not None else (0, 0)
    st, results = attack_model(model, x, y, st, on_result=on_result, procs=procs, parts=parts, progress=progress)
    report = {
        "model": loaded.spec.name,
        "data": data.name,
        "n": len(y),
        "source": str(loaded.source),
        "checkpoint": checkpoint,
        "epoch": loaded.metadata.get("epoch"),
        "seed": st.seed,
        "batch_size": st.batch_size,
        "precision": "bf16" if amp is not None else "fp32",
        "device": str(dev),
        "torch_version": torch.__version__,
        "results": [r.as_dict() for r in results],
    }
    if parts is not None and results:
        counts = procs.sum(torch.tensor([parts.reused - before[0], parts.computed - before[1]], device=procs.device))
        reused, computed = (int(c) for c in counts.tolist())
        report["parts"] = {"reused": reused, "total": reused + computed}
    report |= tradeoff_part({label or loaded.spec.name: report})
    if procs.main:
        report |= evaluate_analyses({label or loaded.spec.name: model}, data, st, dev, progress)
    return report, results


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """One label per run: its directory name, prefixed with the parent folder's name where two names collide
    (the whole path where even that collides). A run listed twice is a one-line UserError."""
    resolved = [Path(r).resolve() for r in run_dirs]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise UserError(f"--compare lists {run_dirs[i]} twice: give each run directory once")
    names = [p.name for p in resolved]
    labels = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in resolved]
    return [str(p) if labels.count(label) > 1 else label for p, label in zip(resolved, labels, strict=True)]


def _trained_on(run_dir: Path) -> tuple[Any, Any]:
    data_cfg = read_config(run_dir).get("data")
    data_cfg = data_cfg if isinstance(data_cfg, dict) else {}
    return data_cfg.get("name", "digits"), data_cfg.get("options") or None


def load_group(
    run_dirs: Sequence[Path],
    *,
    data_name: str | None,
    data_root: str | None,
    checkpoint: str = "best",
    normalize: str = "none",
) -> tuple[dict[str, LoadedModel], Dataset]:
    """The runs of a `--compare` group, by label (see `run_labels`), and the one dataset they are evaluated on.

    That is the first run's dataset, unless `data_name` is given; without it every run must have been trained
    on the same dataset (name and options). Every model must fit it. One-line UserError naming the run
    otherwise, raised before any image is evaluated.
    """
    if not run_dirs:
        raise UserError("--compare needs at least one RUN_DIR")
    labels = run_labels(run_dirs)
    if data_name is None:
        first = _trained_on(run_dirs[0])
        for run in run_dirs[1:]:
            if (trained := _trained_on(run)) != first:
                raise UserError(
                    f"--compare: {run} was trained on {_describe(*trained)} but {run_dirs[0]} on "
                    f"{_describe(*first)}: compare runs trained on one dataset, or pass --data NAME to "
                    "evaluate all of them on it"
                )
    models: dict[str, LoadedModel] = {}
    data: Dataset | None = None
    for label, run in zip(labels, run_dirs, strict=True):
        models[label], data = load_for_eval(
            run_dir=run, weights=None, model_name=None, data_name=data_name, data_root=data_root,
            checkpoint=checkpoint, normalize=normalize, data=data,
        )
    assert data is not None
    return models, data


def _describe(name: Any, options: Any) -> str:
    return f"{name} {options}" if options else str(name)


def compare_runs(
    models: Mapping[str, LoadedModel],
    data: Dataset,
    settings: EvalSettings,
    *,
    checkpoint: str | None = None,
    on_result: Callable[[str, AttackResult], None] | None = None,
    procs: Processes | None = None,
    parts: EvalParts | None = None,
    progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """Evaluate a group of models on the same first `settings.n` test images; return the comparison JSON.

    The robustness attacks run for every model (`evaluate_loaded`); the inequality evaluations run once on
    the whole group, so the noise and occlusion error rates are over the images every model classifies
    correctly. Layout: {"models": {label: {"model", "source", "checkpoint", "epoch", "batch_size", "results"}},
    "tradeoff": {...} (`tradeoff_part`: one point per run with a clean and a robust accuracy),
    "inequality": {...}, "vulnerability": {...}, "invariance": {...}, "batch_size" (when they ran; with "auto",
    the smallest of the models', see `evaluate_analyses`), "n", "data", "seed", ...}. A model's "batch_size" is
    the one its attacks ran with (None without attacks).
    `on_result(label, result)` reports each attack as it finishes. `procs` and `parts`: as in `evaluate_loaded`
    (the attacks split across torchrun's processes, the analyses in rank 0 only; finished parts on disk).
    `progress`: as in `evaluate_loaded`, each attack's task prefixed with its model's label.
    """
    procs = procs or Processes()
    st = settings
    st.check_complete()
    for loaded in models.values():
        check_fits(loaded, data)
    dev = resolve_device(st.device)
    attacks_only = replace(st, inequality=()) if st.attacks else st
    entries: dict[str, dict[str, Any]] = {}
    for label, loaded in models.items():
        results: list[dict[str, Any]] = []
        batch: int | None = None
        report: dict[str, Any] = {}
        if st.attacks:
            report, _ = evaluate_loaded(
                loaded, data, attacks_only, checkpoint=checkpoint,
                on_result=None if on_result is None else lambda r, label=label: on_result(label, r),
                procs=procs, parts=parts, progress=labelled(progress, label),
            )
            results, batch = report["results"], report["batch_size"]
        entries[label] = {
            "model": loaded.spec.name, "source": str(loaded.source), "checkpoint": checkpoint,
            "epoch": loaded.metadata.get("epoch"), "batch_size": batch, "results": results,
        } | ({"parts": report["parts"]} if "parts" in report else {})
    out: dict[str, Any] = {"models": entries}
    out |= tradeoff_part(entries)
    if procs.main:
        out |= evaluate_analyses({label: loaded.model.to(dev) for label, loaded in models.items()}, data, st, dev,
                                 progress)
    amp = autocast_dtype(st.precision, dev)
    return out | {
        "n": len(data.y_test[: st.n]), "data": data.name, "seed": st.seed,
        "precision": "bf16" if amp is not None else "fp32", "device": str(dev), "torch_version": torch.__version__,
    }


def inequality_saliency(
    models: Mapping[str, LoadedModel],
    data: Dataset,
    result: Mapping[str, Any],
    *,
    n: int | None = None,
    device: str = "auto",
    batch_size: int = 256,
) -> SaliencyExamples | None:
    """The saliency maps that saliency.png shows (`saliency_examples`) for an "inequality" result measured on the
    first `n` test images of `data`, or None when the result has no gini (no saliency.png to draw)."""
    if "gini" not in result:
        return None
    dev = resolve_device(device)
    x, y = eval_images(data, n, dev)
    modules = {label: loaded.model.to(dev) for label, loaded in models.items()}
    return saliency_examples(modules, x, y, batch_size=batch_size, class_names=data.class_names)
