"""Figures for the gradient-masking diagnostics (docs/methods.md §7.7, `advtrain.eval.diagnose`): PGD accuracy
against the number of steps, PGD accuracy against ε, and the loss along the FGSM direction.

Like `advtrain.report.figures`, every function builds a `matplotlib.figure.Figure` directly (never pyplot)
and imports matplotlib only when called; `write_diagnose_figures` saves all three as PNGs. Each takes one
check of a `diagnose` report (`Check.as_dict()`, with its curve under "details"); None/NaN values leave a
gap, and a panel with nothing to draw says "no data". The title carries the check's verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advtrain.report.figures import _no_data, save_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["fgsm_direction_figure", "pgd_eps_figure", "pgd_steps_figure", "write_diagnose_figures"]

_LINE = {"marker": "o", "markersize": 4, "linewidth": 1.5}


def _num(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _floats(values: Any) -> list[float]:
    return [_num(v) for v in values] if isinstance(values, Sequence) and not isinstance(values, str) else []


def _panel(title: str, check: Mapping[str, Any]) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    verdict = check.get("verdict")
    ax.set_title(f"{title} ({verdict})" if verdict else title, color="tab:red" if verdict == "WARN" else "black")
    ax.grid(True, alpha=0.3)
    return fig, ax


def _plot(ax: Axes, xs: list[float], ys: list[float], **style: Any) -> bool:
    if not xs or len(xs) != len(ys) or all(math.isnan(v) for v in ys):
        _no_data(ax)
        return False
    ax.plot(xs, ys, **(_LINE | style))
    return True


def pgd_steps_figure(check: Mapping[str, Any]) -> Figure:
    """PGD accuracy (%) against the number of steps (log scale), from the `pgd_steps` check."""
    details = check.get("details") or {}
    fig, ax = _panel("PGD accuracy vs steps", check)
    steps = _floats(details.get("steps"))
    if _plot(ax, steps, [100 * v for v in _floats(details.get("accuracy"))]):
        ax.set_xscale("log")
        ax.set_xticks(steps, [f"{s:g}" for s in steps])
        ax.minorticks_off()
    ax.set_xlabel("PGD steps (step size 2.5·ε/steps)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    return fig


def pgd_eps_figure(check: Mapping[str, Any]) -> Figure:
    """PGD-20 accuracy (%) against ε (log scale), with the threshold it must fall below at the largest ε."""
    details = check.get("details") or {}
    fig, ax = _panel("PGD-20 accuracy vs ε", check)
    eps = _floats(details.get("eps"))
    if _plot(ax, eps, [100 * v for v in _floats(details.get("accuracy"))], label="PGD-20"):
        ax.set_xscale("log")
        ax.set_xticks(eps, [f"{e:.3g}" for e in eps])
        ax.minorticks_off()
        threshold = _num(check.get("threshold"))
        if not math.isnan(threshold):
            ax.plot([eps[-1]], [100 * threshold], linestyle="none", marker="v", markersize=9, color="tab:red",
                    label="most allowed at the largest ε")
        ax.legend(loc="best", fontsize="small")
    ax.set_xlabel("ε (L∞)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    return fig


def fgsm_direction_figure(check: Mapping[str, Any]) -> Figure:
    """Mean cross-entropy along the FGSM direction, CE(x + t·sign ∇ₓCE(x)) against t ∈ [0, ε]."""
    details = check.get("details") or {}
    fig, ax = _panel("Loss along the FGSM direction", check)
    _plot(ax, _floats(details.get("t")), _floats(details.get("loss")))
    ax.set_xlabel("t (step along sign ∇ₓCE)")
    ax.set_ylabel("mean cross-entropy")
    return fig


def write_diagnose_figures(report: Mapping[str, Any], folder: Path) -> list[Path]:
    """diagnose_pgd_steps.png, diagnose_pgd_eps.png and diagnose_fgsm_direction.png in `folder`; their paths."""
    folder = Path(folder)
    checks = report["checks"]
    return [
        save_figure(pgd_steps_figure(checks["pgd_steps"]), folder / "diagnose_pgd_steps.png"),
        save_figure(pgd_eps_figure(checks["pgd_eps"]), folder / "diagnose_pgd_eps.png"),
        save_figure(fgsm_direction_figure(checks["fgsm_direction_loss"]), folder / "diagnose_fgsm_direction.png"),
    ]
