"""Representation invariance: how much of a model's penultimate representation survives an attack
(docs/methods.md §7.6, the analysis AR-AT rests on, §6).

    cosᵢ = cos(f(xᵢ), f(x'ᵢ)),   x' = PGD on CE (random start, keep the last iterate), model in eval mode,

where f(x) is the input of the model's last `nn.Linear` (`advtrain.models.features.penultimate_features`).
1 = the attack leaves the direction of the representation unchanged; AR-AT's invariance regulariser pushes it
towards 1.

- `representation_invariance`: the per-example cosine of one model.
- `invariance_summary`: mean, std, min, median, and the mean over the correctly classified clean examples.
- `evaluate_invariance`: the `advtrain eval --attacks invariance` JSON for one model or a group (shown by
  `advtrain.report.analysis_tables.invariance_text`).

The trade-off score of §7.6 ("sum" = clean + AutoAttack accuracy) is computed from an eval's attack results,
not here: see `advtrain.eval.tradeoff.tradeoff_scores`.

Everything returned is fp32/fp64 on the CPU; the functions never leave the model in another mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import Norm, check_attack_inputs, default_step_size
from advtrain.errors import UserError
from advtrain.eval.robustness import last_iterate_pgd
from advtrain.models.features import classifier_layer, penultimate_features

INVARIANCE_EVALS = ("invariance",)  # the name `advtrain eval --attacks` takes


def _invariance_parts(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm,
    steps: int,
    step_size: float | None,
    seed: int,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """(per-example cosine, clean-correct mask), both on the CPU; see `representation_invariance`."""
    batches = last_iterate_pgd(model, x, y, eps=eps, norm=norm, steps=steps, step_size=step_size, seed=seed,
                               batch_size=batch_size)
    classifier_layer(model)  # a model without nn.Linear fails here, before any attack runs
    if x.shape[0] == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    cosines: list[Tensor] = []
    correct: list[Tensor] = []
    for xb, yb, x_adv in batches:
        with torch.no_grad():
            logits, clean_features = penultimate_features(model, xb)
            _, adv_features = penultimate_features(model, x_adv)
            cosines.append(F.cosine_similarity(clean_features.float(), adv_features.float(), dim=1).cpu())
            correct.append((logits.argmax(1) == yb).cpu())
    return torch.cat(cosines), torch.cat(correct)


def representation_invariance(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = 10,
    step_size: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> Tensor:
    """Per-example cos(f(x), f(x')) of the penultimate features, fp32 on the CPU (docs/methods.md §7.6).

    f = the input of the model's last `nn.Linear` (`penultimate_features`); x' = `advtrain.attacks.pgd` on CE
    with a random start, keeping the last iterate (it maximises the loss rather than stopping at the first
    fooling one), one restart. The model runs in eval mode (`bn_policy(model, "eval")`; its modes are
    restored afterwards). Chunk i of `batch_size` examples draws its random start from a generator seeded
    with `seed + i`, the convention of `advtrain.eval.robustness.evaluate_attacks`, so the same seed and batch size
    give the same values. `step_size` defaults to 2.5·ε/steps. The cosine is `F.cosine_similarity` of the
    fp32 features (a zero feature vector gives 0). At ε = 0, x' = x and every cosine is 1 (up to rounding).

    A model without an `nn.Linear` is a one-line UserError, raised before any attack runs; inconsistent
    arguments (lengths, a negative ε or steps) are a ValueError.
    """
    cos, _ = _invariance_parts(model, x, y, eps=eps, norm=norm, steps=steps, step_size=step_size, seed=seed,
                               batch_size=batch_size)
    return cos


def invariance_summary(cos: Tensor, correct: Tensor | None = None) -> dict[str, Any]:
    """The distribution of per-example cosines (docs/methods.md §7.6 reports the mean), JSON-ready.

    {"count", "mean", "std" (population, ddof = 0), "min", "median", and with `correct` (a bool mask of the
    clean examples the model classifies correctly) "n_correct", "clean_accuracy", "mean_correct" (the mean
    over those examples)}. Undefined values (no examples, none correct) are None.
    """
    c = cos.detach().to("cpu", torch.float64).flatten()
    n = len(c)
    out: dict[str, Any] = {
        "count": n,
        "mean": float(c.mean()) if n else None,
        "std": float(c.std(correction=0)) if n else None,
        "min": float(c.min()) if n else None,
        "median": float(c.quantile(0.5)) if n else None,
    }
    if correct is not None:
        mask = correct.detach().to("cpu", torch.bool).flatten()
        if len(mask) != n:
            raise ValueError(f"{n} cosines but {len(mask)} correctness flags")
        k = int(mask.sum())
        out |= {"n_correct": k, "clean_accuracy": k / n if n else None,
                "mean_correct": float(c[mask].mean()) if k else None}
    return out


def invariance_eps(eps: Sequence[float]) -> float:
    """The ε `advtrain eval` measures invariance at: the first of the list (as for `vulnerability`)."""
    if not eps:
        raise UserError("invariance needs an ε: pass --eps, e.g. --eps 8/255")
    return float(eps[0])


def evaluate_invariance(
    models: Mapping[str, nn.Module],
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = 10,
    step_size: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """The representation invariance of every model on the same images (docs/methods.md §7.6); JSON-ready.

    {"n", "eps", "norm", "steps", "step_size", "restarts": 1, "random_start": True, "keep": "last", "seed",
     "features": "input of the last nn.Linear", "models": {label: invariance_summary(cos, clean correct)}}.
    A model without an `nn.Linear`, or one whose features are not finite, is a one-line UserError naming it.
    """
    norm = check_attack_inputs(x, eps, norm, step_size)  # the spelling recorded below is the canonical one
    size = default_step_size(eps, steps) if step_size is None else step_size
    out: dict[str, Any] = {
        "n": len(y), "eps": eps, "norm": norm, "steps": steps, "step_size": size, "restarts": 1,
        "random_start": True, "keep": "last", "seed": seed, "features": "input of the last nn.Linear",
    }
    per_model: dict[str, dict[str, Any]] = {}
    for label, model in models.items():
        try:
            cos, correct = _invariance_parts(model, x, y, eps=eps, norm=norm, steps=steps, step_size=size,
                                             seed=seed, batch_size=batch_size)
        except UserError as e:
            raise UserError(f"{label}: {e}") from None
        if not bool(torch.isfinite(cos).all()):
            raise UserError(f"{label} gives non-finite penultimate features: its invariance cannot be measured")
        per_model[label] = invariance_summary(cos, correct)
    return out | {"models": per_model}


