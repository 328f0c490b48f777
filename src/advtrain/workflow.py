"""Train → evaluate the selected checkpoint on the test split → write eval.json and report.md."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from advtrain.config import RunConfig, config_from_dict
from advtrain.data import Dataset
from advtrain.distributed import processes
from advtrain.eval import evaluate_loaded
from advtrain.eval.checkpoints import checkpoint_path, load_checkpoint_model
from advtrain.fileio import atomic_write_text
from advtrain.progress_display import shown_progress
from advtrain.report import write_run_report
from advtrain.rundir import read_config
from advtrain.runtime import resolve_device
from advtrain.train import TrainResult, load_run_data, train


def train_and_evaluate(
    config: RunConfig, run_dir: Path, *, log: Callable[[str], None] = print, resume: bool = False,
    overwrite: bool = False, progress: bool = True, log_results: bool = True,
) -> dict[str, Any] | None:
    """The whole `advtrain train` command; returns the eval JSON it wrote (None in the torchrun processes other
    than rank 0: rank 0 alone evaluates, once it has written the checkpoints). `progress`: show the evaluation's
    progress on stderr (`advtrain.progress_display`). `log_results`: log each attack's accuracy as it finishes;
    a caller that prints the results itself turns it off, so that they are shown once."""
    data = load_run_data(config)
    result = train(config, run_dir, data=data, log=log, resume=resume, overwrite=overwrite)
    return _evaluate(config, data, result, log=log, progress=progress, log_results=log_results)


def _evaluate(config: RunConfig, data: Dataset, result: TrainResult, *, log: Callable[[str], None], progress: bool,
              log_results: bool) -> dict[str, Any] | None:
    """Rank 0's evaluation of the trained run on the test split (see `train_and_evaluate`)."""
    if not result.main:
        return None
    e = config.eval
    which = e.checkpoint
    log(f"evaluating the {which} checkpoint on {min(e.n or len(data.y_test), len(data.y_test))} test images")
    loaded = load_checkpoint_model(checkpoint_path(result.run_dir, which))
    settings = replace(e, eps=e.eps if e.eps is not None else [config.threat.eps],
                       device=str(resolve_device(config.train.device)), precision="fp32", seed=config.seed)
    with shown_progress(progress) as chunks:
        report, _ = evaluate_loaded(loaded, data, settings, checkpoint=which, progress=chunks,
                                    on_result=(lambda r: log(r.summary())) if log_results else None)
    atomic_write_text(result.run_dir / "eval.json", json.dumps(report, indent=2) + "\n")
    write_run_report(result.run_dir)
    return report


def resume_and_evaluate(
    run_dir: Path, *, quiet: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any] | None:
    """`advtrain train --resume RUN_DIR`: finish training from the newest intact checkpoint, then evaluate.

    Under torchrun, rank 0 alone reads RUN_DIR (here its config.yaml, in training its newest state) and sends what
    it read to the other processes, so the nodes of a run need not share a file system; the process group starts
    here for that (on the CPU) and training joins it."""
    intact = f"nothing was changed: continue with: advtrain train --resume {run_dir}"
    with processes(torch.device("cpu"), "training", intact) as procs:
        config = config_from_dict(procs.from_main(lambda: read_config(run_dir)))
        if quiet:
            # Presentation only: the progress bar is not part of the math, so the config digest ignores it.
            config.train.progress = "quiet"
        data = load_run_data(config)
        result = train(config, run_dir, data=data, log=log, resume=True)
    return _evaluate(config, data, result, log=log, progress=not quiet, log_results=True)
