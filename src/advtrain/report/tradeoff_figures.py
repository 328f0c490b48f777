"""The robustness–accuracy trade-off across compared runs (docs/methods.md §6, §7.6): a clean-vs-robust scatter.

Like `advtrain.report.figures`, the figure is built with `matplotlib.figure.Figure` directly (Agg, never pyplot)
and matplotlib is imported only when it is drawn. The input is the "tradeoff" part of a `--compare` JSON
(`advtrain.report.tables.tradeoff_scores`)::

    scores = tradeoff_scores({label: eval_json, ...})
    fig, coords = tradeoff_scatter(scores)        # coords: {label: (clean %, robust %)}, what was plotted
    write_tradeoff_figure(scores, folder)         # folder / "tradeoff.png"
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advtrain.report.figures import _no_data, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE_NAME = "tradeoff.png"


def _finite(v: object) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def tradeoff_points(tradeoff: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """{label: (clean accuracy %, robust accuracy %)} of a `tradeoff_scores` result; points without two finite
    accuracies are left out."""
    out: dict[str, tuple[float, float]] = {}
    for label, point in (tradeoff.get("points") or {}).items():
        if not isinstance(point, Mapping):
            continue
        clean, robust = _finite(point.get("clean")), _finite(point.get("robust"))
        if clean is not None and robust is not None:
            out[str(label)] = (100.0 * clean, 100.0 * robust)
    return out


def tradeoff_scatter(
    tradeoff: Mapping[str, Any], *, iso_sums: bool = True, title: str | None = None
) -> tuple[Figure, dict[str, tuple[float, float]]]:
    """(figure, the coordinates it plotted): one point per run, x = clean accuracy (%), y = the robust accuracy
    the trade-off was scored on (%), each labelled with the run's label.

    The y-axis label names the attack and ε (`robust_label`: AutoAttack when it ran, else the strongest attack,
    marked as not AutoAttack). With `iso_sums`, dashed grey lines of equal clean + robust accuracy (the "sum"
    of docs/methods.md §6 when the attack is AutoAttack) at a few round values across the plotted range.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    coords = tradeoff_points(tradeoff)
    autoattack = bool(tradeoff.get("autoattack"))
    robust_label = str(tradeoff.get("robust_label") or "robust")
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.subplots()
    if coords:
        xs = [x for x, _ in coords.values()]
        ys = [y for _, y in coords.values()]
        ax.scatter(xs, ys, s=36, color="tab:blue", zorder=3)
        for label, (x, y) in coords.items():
            ax.annotate(label, (x, y), xytext=(5, 4), textcoords="offset points", fontsize="small", zorder=4)
        pad_x = max(2.0, 0.15 * (max(xs) - min(xs)))
        pad_y = max(2.0, 0.15 * (max(ys) - min(ys)))
        x0, x1 = max(0.0, min(xs) - pad_x), min(100.0, max(xs) + pad_x)
        y0, y1 = max(0.0, min(ys) - pad_y), min(100.0, max(ys) + pad_y)
        x1, y1 = max(x1, x0 + 1.0), max(y1, y0 + 1.0)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        if iso_sums:
            name = "sum" if autoattack else "clean + robust"
            for level in MaxNLocator(nbins=5).tick_values(x0 + y0, x1 + y1):
                if not x0 + y0 < level < x1 + y1:
                    continue
                ax.plot([x0, x1], [level - x0, level - x1], color="0.6", linestyle="--", linewidth=0.8, zorder=1)
                # Label each line inside the plot: where it leaves on the right, else where it enters (top/left).
                if level - x1 >= y0:
                    at, ha, va, offset = (x1, level - x1), "right", "bottom", (-2, 2)
                elif level - y1 >= x0:
                    at, ha, va, offset = (level - y1, y1), "left", "top", (3, -2)
                else:
                    at, ha, va, offset = (x0, level - x0), "left", "bottom", (2, 2)
                ax.annotate(f"{name} {level:g}", at, xytext=offset, textcoords="offset points", ha=ha, va=va,
                            fontsize="x-small", color="0.45")
    else:
        _no_data(ax)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"{robust_label} accuracy (%)" + ("" if autoattack else "\n(AutoAttack not run)"))
    ax.set_title(title or ("Robustness–accuracy trade-off (sum = clean + AA)" if autoattack
                           else "Robustness–accuracy trade-off"))
    ax.grid(True, alpha=0.3)
    return fig, coords


def write_tradeoff_figure(tradeoff: Mapping[str, Any], folder: Path) -> Path:
    """tradeoff.png in `folder` (`tradeoff_scatter` of a `tradeoff_scores` result); its path."""
    fig, _ = tradeoff_scatter(tradeoff)
    return save_figure(fig, Path(folder) / FIGURE_NAME)
