"""Robust accuracy under a list of attacks and ε (docs/methods.md §7.1), always in eval mode."""

from __future__ import annotations

import contextlib
import difflib
import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advtrain.attacks import (
    Norm,
    ThreatModel,
    bn_policy,
    check_attack_inputs,
    check_distance,
    check_images,
    default_step_size,
    fgsm_unchecked,
    pgd_unchecked,
)
from advtrain.attacks.reference_autoattack import autoattack
from advtrain.distributed import Processes
from advtrain.errors import UserError
from advtrain.eval.batching import out_of_memory_as_user_error
from advtrain.eval.parts import EvalParts, model_digest, tensor_digest
from advtrain.eval.progress import ProgressHook, TaskProgress
from advtrain.fileio import atomic_write_bytes

# Names accepted on the command line → (attack, AutoAttack version).
ATTACK_ALIASES: dict[str, tuple[str, str | None]] = {
    "clean": ("clean", None),
    "fgsm": ("fgsm", None),
    "pgd": ("pgd", None),
    "ifgsm": ("ifgsm", None),
    "cw": ("cw", None),
    "aa": ("autoattack", "standard"),
    "autoattack": ("autoattack", "standard"),
    "apgd": ("autoattack", "apgd"),
}


@dataclass(frozen=True)
class AttackSpec:
    attack: str  # clean | fgsm | pgd | ifgsm (PGD from x, no random start) | cw | autoattack
    eps: float = 0.0
    norm: Norm = "linf"
    steps: int = 0
    restarts: int = 1
    step_size: float | None = None
    version: str | None = None  # AutoAttack version: standard | apgd

    def __post_init__(self) -> None:
        # The threat model checks ε and the norm (any accepted spelling, "Linf", "L2", becomes the one eval.json
        # records); the step size follows the same pixel-scale rule (see advtrain.attacks.threat).
        object.__setattr__(self, "norm", self.threat.norm)
        if self.step_size is not None:
            check_distance(self.step_size, self.norm, "step_size")

    @property
    def threat(self) -> ThreatModel:
        """The ε-ball this attack searches (raises as `ThreatModel` does for a bad ε or norm)."""
        return ThreatModel(self.norm, self.eps)

    def describe(self) -> dict[str, Any]:
        """The JSON fields of this attack (the eval.json row without the accuracy)."""
        row: dict[str, Any] = {"attack": self.attack, "eps": self.eps}
        if self.attack != "clean":
            row["norm"] = self.norm
        if self.attack in ("pgd", "ifgsm", "cw"):
            row |= {"steps": self.steps, "restarts": self.restarts, "step_size": self.step_size}
        if self.attack == "autoattack":
            row["version"] = self.version
        return row

    def task(self) -> str:
        """How progress names this attack, e.g. `pgd eps 0.0314`."""
        if self.attack == "clean":
            return "clean"
        version = f" ({self.version})" if self.version not in (None, "standard") else ""
        return f"{self.attack}{version} eps {self.eps:.4f}"


@dataclass
class AttackResult:
    spec: AttackSpec
    correct: Tensor  # bool per example, on the CPU

    @property
    def count(self) -> int:
        """How many examples the model still classified correctly under the attack."""
        return int(self.correct.sum())

    @property
    def total(self) -> int:
        """How many examples were attacked."""
        return self.correct.numel()

    @property
    def accuracy(self) -> float:
        """`count / total` in float64 arithmetic (a float32 mean would store 0.34 as 0.3400000035762787); NaN for
        no examples."""
        return self.count / self.total if self.total else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """The eval.json row: the attack's fields, the accuracy and the exact counts it is the ratio of."""
        return self.spec.describe() | {"accuracy": self.accuracy, "correct": self.count, "total": self.total}

    def summary(self) -> str:
        """One progress line, e.g. `  pgd        eps 0.0314  accuracy 47.20%`."""
        return f"  {self.spec.attack:<10} eps {self.spec.eps:.4f}  accuracy {100 * self.accuracy:.2f}%"


# The fields of an eval.json row that are measured, not part of the attack's description.
MEASURED_FIELDS = frozenset({"accuracy", "correct", "total"})


def attack_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """An eval.json row without its measurements: the attack it ran (`AttackSpec.describe()`, through JSON)."""
    return {key: value for key, value in row.items() if key not in MEASURED_FIELDS}


def check_attack_names(names: Sequence[str], where: str = "") -> None:
    """Raise a one-line UserError, suggesting the closest valid name, for the first unknown attack name.

    `where` (e.g. "eval.attacks") prefixes the message when the names come from a config file.
    """
    for name in names:
        if name not in ATTACK_ALIASES:
            close = difflib.get_close_matches(str(name), ATTACK_ALIASES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            prefix = f"{where}: " if where else ""
            raise UserError(f"{prefix}unknown attack {name!r}: {hint}choose from {', '.join(ATTACK_ALIASES)}")


def attack_specs(
    names: Sequence[str],
    eps_list: Sequence[float],
    *,
    norm: Norm = "linf",
    steps: int = 20,
    restarts: int = 1,
    step_size: float | None = None,
) -> list[AttackSpec]:
    """Expand attack names × ε into specs; `clean` appears once, first."""
    check_attack_names(names)
    specs: list[AttackSpec] = []
    if "clean" in names:
        specs.append(AttackSpec("clean"))
    for eps in eps_list:
        for name in names:
            attack, version = ATTACK_ALIASES[name]
            if attack == "clean":
                continue
            if attack in ("pgd", "ifgsm", "cw"):
                size = default_step_size(eps, steps) if step_size is None else step_size
                specs.append(AttackSpec(attack, eps, norm, steps, restarts, size))
            elif attack == "fgsm":
                specs.append(AttackSpec(attack, eps, norm, steps=1, step_size=eps))
            else:
                specs.append(AttackSpec(attack, eps, norm, version=version))
    return specs


def run_attack(
    model: nn.Module, x: Tensor, y: Tensor, spec: AttackSpec, *, seed: int, batch_size: int
) -> Tensor:
    """Adversarial inputs for one batch of float images in [0, 1] (AutoAttack: `batch_size` bounds the batches
    it runs). An example counts as broken at the first iterate that fools the model (keep="first_fooling")."""
    check_images(x)
    return _run_attack(model, x, y, spec, seed=seed, batch_size=batch_size)


def _run_attack(
    model: nn.Module, x: Tensor, y: Tensor, spec: AttackSpec, *, seed: int, batch_size: int,
    on_stage: Callable[[str], None] | None = None,
) -> Tensor:
    """`run_attack` on images already checked (the spec checks its own ε and norm when it is made); `on_stage`
    hears AutoAttack's sub-attacks start."""
    if spec.attack == "clean":
        return x
    if spec.attack == "fgsm":
        return fgsm_unchecked(model, x, y, eps=spec.eps, norm=spec.norm, keep="first_fooling")
    if spec.attack in ("pgd", "ifgsm", "cw"):
        generator = torch.Generator(device=x.device).manual_seed(seed)
        return pgd_unchecked(
            model, x, y, eps=spec.eps, steps=spec.steps, step_size=spec.step_size, norm=spec.norm,
            loss="cw" if spec.attack == "cw" else "ce", restarts=spec.restarts, keep="first_fooling",
            generator=generator, random_start=spec.attack != "ifgsm",
        )
    if spec.attack == "autoattack":
        return autoattack(
            model, x, y, eps=spec.eps, norm=spec.norm, version=spec.version or "standard",
            seed=seed, batch_size=batch_size, on_stage=on_stage,
        )
    raise UserError(f"unknown attack {spec.attack!r}")


def evaluate_attacks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    specs: Sequence[AttackSpec],
    *,
    batch_size: int = 256,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    on_result: Callable[[AttackResult], None] | None = None,
    procs: Processes | None = None,
    parts: EvalParts | None = None,
    progress: ProgressHook | None = None,
) -> list[AttackResult]:
    """Per-example correctness under each attack, with the model in eval mode.

    `x` (float images in [0, 1], else a ValueError naming the fix) and `y` must be on the model's device. Every
    attack, AutoAttack included, runs on chunks of `batch_size` images, chunk i drawing its randomness from
    `seed + i`; so a chunk's result does not depend on which process evaluates it or on the other chunks. PGD/CW
    count an example as broken as soon as any iterate fools the model (keep="first_fooling", `pgd`'s default).

    Under torchrun (`procs`), part (attack j, chunk i) belongs to process (j·chunks + i) mod world; each process
    attacks its own parts and one sum per attack merges them, so every process returns the same results as one
    process would, exactly. With `parts`, a finished part is read from disk instead of attacked again and every
    part attacked here is saved (see `advtrain.eval.parts`). A CUDA out-of-memory error is a one-line UserError
    naming a smaller batch (see `advtrain.eval.batching`). `progress` hears each attack's images done, chunk by
    chunk (this process's chunks only), and AutoAttack's sub-attacks as each starts (see `advtrain.eval.progress`).
    """
    check_images(x)  # once here, not for every chunk
    procs = procs or Processes()
    chunks = list(zip(x.split(batch_size), y.split(batch_size), strict=True))
    if parts is not None:
        weights = model_digest(model)
        chunk_keys = [tensor_digest([("x", xb), ("y", yb)]) for xb, yb in chunks]
        setting = {"batch_size": batch_size, "precision": str(autocast_dtype), "device": x.device.type}
    results = []
    autocast = (
        torch.autocast(x.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    # The batches that run are never larger than the set, so the message halves the size that ran.
    with out_of_memory_as_user_error(min(batch_size, len(y))), bn_policy(model, "eval"), autocast:
        for j, spec in enumerate(specs):
            # 1 + correctness where this process owns the example's part, else 0: the sum over processes is
            # 1 or 2 for every example exactly when each part was evaluated by one process.
            owned = torch.zeros(len(y), dtype=torch.int32, device=procs.device)
            mine = [i for i in range(len(chunks)) if (j * len(chunks) + i) % procs.world == procs.rank]
            task = TaskProgress(progress, spec.task(), sum(len(chunks[i][1]) for i in mine))
            for i in mine:
                xb, yb = chunks[i]
                key = parts.key(weights, chunk_keys[i], spec.describe(), seed + i, setting) if parts is not None else ""
                correct = parts.load(key, len(yb)) if parts is not None else None
                if correct is None:
                    x_adv = _run_attack(model, xb, yb, spec, seed=seed + i, batch_size=batch_size,
                                        on_stage=task.start_stage if progress is not None else None)
                    with torch.no_grad():
                        correct = (model(x_adv).argmax(1) == yb).cpu()
                    if parts is not None:
                        parts.save(key, correct)
                owned[i * batch_size:i * batch_size + len(yb)] = 1 + correct.to(owned.device, torch.int32)
                task.advance(len(yb))
            merged = procs.sum(owned).cpu()
            if not ((merged == 1) | (merged == 2)).all():
                raise RuntimeError(f"{spec.attack}: {int(((merged < 1) | (merged > 2)).sum())} examples were "
                                   "evaluated by no process or by several")
            result = AttackResult(spec, merged == 2)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def write_per_example(path: Path, results: Mapping[str, Sequence[AttackResult]]) -> Path:
    """Save per-example correctness as an .npz (atomically) and return `path`: "labels" (the models), "attacks"
    (each attack's eval.json row without the accuracy, as JSON text) and "correct_K", a bool array
    [attacks, examples] for the K-th label. Every model must have run the same attacks. For paired comparisons
    between models, seeds or shardings of one evaluation."""
    labels = list(results)
    rows = [[json.dumps(r.spec.describe(), sort_keys=True) for r in results[label]] for label in labels]
    if any(row != rows[0] for row in rows):
        raise ValueError("write_per_example: every model needs the same attacks")
    arrays = {f"correct_{k}": torch.stack([r.correct for r in results[label]]).numpy()
              if results[label] else np.zeros((0, 0), dtype=bool) for k, label in enumerate(labels)}
    buffer = io.BytesIO()
    np.savez(buffer, labels=np.array(labels), attacks=np.array(rows[0] if rows else []), **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def last_iterate_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    batch_size: int = 256,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(x, y, x') chunk by chunk for the per-example analyses (vulnerability, invariance): x' = PGD on CE keeping
    the last iterate (it maximises the loss rather than stopping at the first fooling one), the model in eval mode
    while the chunks are drawn. Chunk i of `batch_size` examples draws its random start from a generator seeded
    with `seed + i`, as `evaluate` does, so the same seed and batch size give the same x'. `step_size` defaults
    to 2.5·ε/steps. Inconsistent arguments (and x, ε, norm as `pgd` refuses them) are a ValueError, raised here
    rather than at the first chunk."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 0 and batch_size >= 1; got {steps}, {batch_size}")
    norm = check_attack_inputs(x, eps, norm, step_size)

    def chunks() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        with bn_policy(model, "eval"):
            for i, (xb, yb) in enumerate(zip(x.split(batch_size), y.split(batch_size), strict=True)):
                generator = torch.Generator(device=xb.device).manual_seed(seed + i)
                x_adv = pgd_unchecked(model, xb, yb, eps=eps, steps=steps, step_size=step_size, norm=norm,
                                      loss="ce", random_start=random_start, keep="last", generator=generator)
                yield xb, yb, x_adv

    return chunks()
