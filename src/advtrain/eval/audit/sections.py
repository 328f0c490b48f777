"""The measurements of an audit, one function per section, each composed from the evaluation that owns it and
returning JSON-ready numbers with their 95% intervals (`advtrain.eval.audit.confidence`).

- `robustness`: clean, PGD and reference AutoAttack accuracy (`evaluate_attacks`), and the worst case per image;
- `masking`: the gradient-masking checks of `advtrain.eval.diagnose` with their verdicts;
- `saliency`: global and regional saliency Gini, inductive noise / occlusion and the noise corruptions;
- `vulnerability`: the per-example adversarial vulnerability and how unevenly it is spread;
- `invariance`: the cosine between clean and adversarial penultimate features.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from advtrain.errors import UserError
from advtrain.eval.audit.budget import Budget
from advtrain.eval.audit.confidence import bootstrap_interval, wilson_interval
from advtrain.eval.diagnose import diagnose
from advtrain.eval.inductive import predict
from advtrain.eval.inequality import evaluate_inequality, regional_blocks
from advtrain.eval.invariance import invariance_summary, representation_invariance
from advtrain.eval.parts import EvalParts
from advtrain.eval.progress import ProgressHook, TaskProgress
from advtrain.eval.robustness import attack_specs, evaluate_attacks
from advtrain.eval.saliency import gini_index, gini_report
from advtrain.eval.vulnerability import instance_losses, shared_histogram, vulnerability_stats
from advtrain.models.features import classifier_layer

# The inequality evaluations besides Gini (which the saliency section measures per image, for its interval).
NOISE_EVALS = ("inductive_noise", "random_noise", "inductive_occlusion", "corruptions")
LABEL = "model"  # the one model's key in the results of the group evaluations


def _accuracy(correct: Tensor) -> dict[str, Any]:
    count, total = int(correct.sum()), correct.numel()
    return {"accuracy": count / total if total else None, "correct": count, "total": total,
            "ci95": list(wilson_interval(count, total))}


def _mean_with_interval(values: Tensor, budget: Budget) -> dict[str, Any]:
    return {"mean": float(values.double().mean()) if len(values) else None,
            "ci95": list(bootstrap_interval(values, lambda v: v.mean(-1), resamples=budget.bootstrap))}


def robustness(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, budget: Budget, seed: int, batch_size: int,
    parts: EvalParts | None = None, progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """Clean and PGD-k (`budget.pgd_steps`, `pgd_restarts`) accuracy, then AutoAttack (`budget.autoattack`) on the
    images PGD did not break, as AutoAttack itself cascades its stages: an image counts as robust only if neither
    broke it ("robust", the worst case per image). The cascade gives the same worst case as running both on every
    image, and spends nothing on a model PGD already breaks everywhere."""
    specs = attack_specs(["clean", "pgd"], [eps], norm=norm, steps=budget.pgd_steps,  # type: ignore[arg-type]
                         restarts=budget.pgd_restarts)
    clean, pgd = evaluate_attacks(model, x, y, specs, batch_size=batch_size, seed=seed, parts=parts,
                                  progress=progress)
    (aa_spec,) = attack_specs(["apgd" if budget.autoattack == "apgd" else "aa"], [eps], norm=norm)  # type: ignore[arg-type]
    survivors = pgd.correct.nonzero().flatten().to(x.device)
    robust = torch.zeros_like(pgd.correct)
    if len(survivors):
        (aa,) = evaluate_attacks(model, x[survivors], y[survivors], [aa_spec], batch_size=batch_size, seed=seed,
                                 parts=parts, progress=progress)
        robust[survivors.cpu()] = aa.correct
    cascade = aa_spec.describe() | {"after": "pgd", "attacked": len(survivors)} | _accuracy(robust)
    return {
        "n": len(y), "eps": eps, "norm": norm,
        "attacks": [r.spec.describe() | _accuracy(r.correct) for r in (clean, pgd)] + [cascade],
        "clean": _accuracy(clean.correct), "robust": _accuracy(robust),
    }


def masking(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, budget: Budget, seed: int, batch_size: int,
    progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """The diagnose suite's report (`advtrain.eval.diagnose.diagnose`; the transfer check is SKIP, as an audit has
    no surrogate), or not available under another norm than L∞, which the checks are built for."""
    if norm != "linf":
        return {"available": False, "reason": f"the gradient-masking checks search the L∞ ball; this audit is {norm}"}
    task = TaskProgress(progress, "gradient-masking checks", 8, "checks")
    report = diagnose(model, x, y, eps=eps, seed=seed, batch_size=batch_size, steps=budget.diagnose_steps,
                      restarts=budget.diagnose_restarts, restart_steps=budget.diagnose_restart_steps,
                      on_check=lambda check: task.advance())
    gap = report["checks"]["fgsm_pgd_gap"]["details"]
    n = report["n"]
    for key in ("fgsm_accuracy", "pgd_accuracy"):
        if gap.get(key) is not None:
            gap[f"{key}_ci95"] = list(wilson_interval(round(gap[key] * n), n))
    return {"available": True} | report


def saliency(
    model: nn.Module, x: Tensor, y: Tensor, *, budget: Budget, seed: int, batch_size: int,
    progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """Mean global and regional Gini of the saliency |∇ₓ z_y| over the images (with bootstrap intervals), and the
    inductive noise / occlusion and noise-corruption errors of `evaluate_inequality`."""
    per_image = gini_report(model, x, y, batch_size=batch_size, blocks=regional_blocks(x.shape[-1]))
    gini = {key: _mean_with_interval(per_image[key], budget) for key in ("global", "regional_duan", "regional_igd")}
    noise = evaluate_inequality({LABEL: model}, x, y, evals=NOISE_EVALS, seed=seed, batch_size=batch_size,
                                progress=progress)
    return {"n": len(y), "gini": gini} | noise


def vulnerability(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, budget: Budget, seed: int, batch_size: int,
    progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """The distribution of AVᵢ = CE(x'ᵢ) − CE(xᵢ) (PGD on CE, last iterate): `vulnerability_stats`, bootstrap
    intervals of its Gini and top-10% share, and the histogram the card draws."""
    task = TaskProgress(progress, "vulnerability", 1, "stages")
    task.start_stage(f"PGD-{budget.vulnerability_steps} on {len(y)} images")
    clean, adv = instance_losses(model, x, y, eps=eps, norm=norm, steps=budget.vulnerability_steps,  # type: ignore[arg-type]
                                 seed=seed, batch_size=batch_size)
    if not bool(torch.isfinite(clean).all() and torch.isfinite(adv).all()):
        raise UserError("the model gives non-finite losses: its vulnerability cannot be measured")
    av = adv - clean
    positive = av.clamp_min(0)
    k = -(-len(av) // 10)
    intervals = {
        "gini_ci95": list(bootstrap_interval(positive, gini_index, resamples=budget.bootstrap)),
        "top10_share_ci95": list(bootstrap_interval(positive, lambda v: _top_share(v, k), resamples=budget.bootstrap)),
    }
    edges, counts = shared_histogram({LABEL: av})
    task.advance()
    return {"n": len(y), "eps": eps, "norm": norm, "steps": budget.vulnerability_steps,
            "stats": vulnerability_stats(av) | intervals, "histogram": {"edges": edges, "counts": counts}}


def _top_share(rows: Tensor, k: int) -> Tensor:
    """Per row, the share of the row's sum held by its k largest values (k/n where the sum is 0, as in
    `vulnerability_stats`)."""
    total = rows.sum(-1)
    top = rows.topk(k, dim=-1).values.sum(-1)
    return torch.where(total > 0, top / total.clamp_min(1e-300), torch.full_like(total, k / rows.shape[-1]))


def invariance(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, budget: Budget, seed: int, batch_size: int,
    progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """cos(f(x), f(x')) of the penultimate features (`representation_invariance`) with a bootstrap interval of its
    mean; not available, with the reason, for a model without an `nn.Linear` classifier to tap."""
    try:
        classifier_layer(model)
    except UserError as e:
        return {"available": False, "reason": str(e)}
    task = TaskProgress(progress, "invariance", 1, "stages")
    task.start_stage(f"PGD-{budget.vulnerability_steps} on {len(y)} images")
    cos = representation_invariance(model, x, y, eps=eps, norm=norm, steps=budget.vulnerability_steps,  # type: ignore[arg-type]
                                    seed=seed, batch_size=batch_size)
    correct = (predict(model, x, batch_size) == y).cpu()
    task.advance()
    return {"available": True, "n": len(y), "eps": eps, "norm": norm, "steps": budget.vulnerability_steps,
            "features": "input of the last nn.Linear", "summary": invariance_summary(cos, correct),
            "mean_ci95": list(bootstrap_interval(cos, lambda v: v.mean(-1), resamples=budget.bootstrap))}
