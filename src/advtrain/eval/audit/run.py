"""`run_audit`: every section of an audit on one model and its images, resumable, with progress; an `AuditResult`.

Resuming: with a `parts` folder, the attacks of the robustness section keep their finished chunks as `evaluate`
does (`advtrain.eval.parts.EvalParts`), and every finished section is kept as a JSON file named by a digest of
everything that decides it (weights, images, labels, budget, ε, norm, seed, batch size). A rerun after a kill reads
them back instead of measuring again; anything that changes a result changes the name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.attacks import check_distance, parse_norm
from advtrain.eval.audit import sections
from advtrain.eval.audit.budget import Budget, get_budget
from advtrain.eval.audit.verdicts import FAILURE_MODES, verdicts
from advtrain.eval.batching import out_of_memory_as_user_error
from advtrain.eval.parts import EvalParts, model_digest, tensor_digest
from advtrain.eval.progress import ProgressHook, TaskProgress, labelled
from advtrain.eval.public import _images
from advtrain.fileio import atomic_write_text
from advtrain.runtime import resolve_device

log = logging.getLogger(__name__)

SECTIONS = ("robustness", "masking", "saliency", "vulnerability", "invariance")


@dataclass(frozen=True)
class AuditResult:
    """An audit: the budget it ran under, each section's numbers, each failure mode's verdict and paragraph
    (`advtrain.eval.audit.verdicts`), and how it ran (`meta`: eps, norm, seed, device, seconds, parts reused)."""

    budget: Budget
    sections: dict[str, dict[str, Any]]
    verdicts: dict[str, dict[str, Any]]
    meta: dict[str, Any]

    def verdict(self, mode: str) -> str:
        """The verdict of one of `FAILURE_MODES`, e.g. "no robustness" or "gradient masking"."""
        if mode not in self.verdicts:
            raise ValueError(f"unknown failure mode {mode!r}: choose from {', '.join(FAILURE_MODES)}")
        return str(self.verdicts[mode]["verdict"])

    def as_dict(self) -> dict[str, Any]:
        """The audit JSON: meta, budget, sections and verdicts; an undefined number (NaN: e.g. the spread of a
        vulnerability whose mean is 0) is None, so the JSON stays standard."""
        return _json_ready({**self.meta, "budget": self.budget.as_dict(), **self.sections, "verdicts": self.verdicts})


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


class SectionParts:
    """Finished sections of an audit kept as JSON files (and the attack chunks, in `attacks`), for resuming."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.attacks = EvalParts(self.folder / "attacks")
        self.reused = 0
        self.computed = 0

    def get(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.folder / f"{key}.json"
        if path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:  # cut short outside atomic_write_text, or not ours: measure again
                value = None
            if isinstance(value, dict):
                self.reused += 1
                return value
        value = compute()
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(value, allow_nan=True))
        self.computed += 1
        return value


def _section_key(name: str, common: dict[str, Any]) -> str:
    text = json.dumps({"section": name, **common}, sort_keys=True)
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def run_audit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    budget: str | Budget = "quick",
    seed: int = 0,
    batch_size: int = 256,
    device: str = "auto",
    parts: Path | None = None,
    progress: ProgressHook | None = None,
) -> AuditResult:
    """Audit `model` on the first images of (x, y) (float in [0, 1] or uint8) for the four failure modes, in fp32 and
    eval mode, each section on the first `budget`-sized share of the images. `parts`: a folder for finished parts
    (resuming after a kill; the caller removes it once the results are written). `progress` hears each section
    start and its evaluation's own progress. Bad input is a one-line ValueError/UserError raised before any attack.
    """
    b = get_budget(budget)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x, y = _images(x, y)
    norm = parse_norm(norm)
    check_distance(eps, norm, "eps")
    dev = resolve_device(device)
    model = model.to(dev)
    x, y = x.to(dev), y.to(dev)
    store = SectionParts(parts) if parts is not None else None
    used = max(b.n, b.diagnose_n, b.saliency_n, b.vulnerability_n, b.invariance_n)  # every image a section reads
    common = {"model": model_digest(model), "images": tensor_digest([("x", x[:used]), ("y", y[:used])]),
              "budget": b.as_dict(), "eps": eps, "norm": norm, "seed": seed, "batch_size": batch_size,
              "device": dev.type}
    args = {"budget": b, "seed": seed, "batch_size": batch_size}
    attack_args = args | {"eps": eps, "norm": norm}
    # Each section's own progress (attacks image by image, checks, stages) is labelled "audit 2/5 masking: ...",
    # so the display's rate and ETA of the running task say where in the audit it is.
    runs: dict[str, Callable[[ProgressHook | None], dict[str, Any]]] = {
        "robustness": lambda hook: sections.robustness(model, x[:b.n], y[:b.n], **attack_args, progress=hook,
                                                       parts=store.attacks if store else None),
        "masking": lambda hook: sections.masking(model, x[:b.diagnose_n], y[:b.diagnose_n], **attack_args,
                                                 progress=hook),
        "saliency": lambda hook: sections.saliency(model, x[:b.saliency_n], y[:b.saliency_n], **args, progress=hook),
        "vulnerability": lambda hook: sections.vulnerability(model, x[:b.vulnerability_n], y[:b.vulnerability_n],
                                                             **attack_args, progress=hook),
        "invariance": lambda hook: sections.invariance(model, x[:b.invariance_n], y[:b.invariance_n], **attack_args,
                                                       progress=hook),
    }
    task = TaskProgress(progress, "audit", len(runs), "sections")
    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with out_of_memory_as_user_error(min(batch_size, len(y))):
        for i, (name, run) in enumerate(runs.items()):
            task.start_stage(name)
            began = time.perf_counter()
            measure = partial(run, labelled(progress, f"audit {i + 1}/{len(runs)} {name}"))
            results[name] = store.get(_section_key(name, common), measure) if store is not None else measure()
            seconds[name] = round(time.perf_counter() - began, 3)
            log.info("audit: %s done in %.1f s", name, seconds[name])
            task.advance()
    meta = {"n": len(y[:b.n]), "eps": eps, "norm": norm, "seed": seed, "batch_size": batch_size, "device": str(dev),
            "precision": "fp32", "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
            "seconds": seconds, "total_seconds": round(time.perf_counter() - start, 3)}
    if store is not None:
        meta["parts"] = {"reused": store.reused, "total": store.reused + store.computed}
    return AuditResult(b, results, verdicts({**results, "budget": b.as_dict()}), meta)
