"""Figures for the IGD evaluations (docs/methods.md §7.2–7.4): saliency maps with their Gini coefficients,
error rates under inductive / random noise and inductive occlusion, and error rates under the noise
corruptions by severity.

Like `advtrain.report.figures`, every function builds a `matplotlib.figure.Figure` directly (never
pyplot) and imports matplotlib only when called; `write_inequality_figures` saves those of a result as PNGs.
Inputs are plain Python data; error rates are fractions in [0, 1] and are drawn in percent. NaN (or
missing) values leave a gap or an empty bar rather than raising; a panel with nothing to draw says "no data".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from advtrain.eval.inequality import CORRUPTION_PROTOCOLS, SaliencyExamples, severity_tables
from advtrain.report.figures import _no_data, save_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_LINE = {"marker": "o", "markersize": 4, "linewidth": 1.5}
NOISE_FIGURE_MODE = "add"  # the noise mode noise.png draws (the table shows every mode)


def _array(x: Any) -> np.ndarray:
    """A float numpy copy of an array-like or a (possibly CUDA, grad-tracking) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x, dtype=np.float64)


def _num(v: object) -> float:
    """``v`` as a float, with None / non-numbers as NaN."""
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _union(dicts: Mapping[str, Mapping[Any, Any]]) -> list[Any]:
    """The keys of all inner dicts, in first-seen order."""
    return list(dict.fromkeys(k for inner in dicts.values() for k in inner))


def _curve(ax: Axes, points: Mapping[Any, object], scale_x: float, **kwargs: Any) -> bool:
    """Plot one model's {x: error rate} as a line in percent (sorted by x, NaN as gaps); False if all NaN."""
    xy = sorted((_num(x) * scale_x, 100.0 * _num(y)) for x, y in points.items() if not math.isnan(_num(x)))
    if not any(not math.isnan(y) for _, y in xy):
        return False
    ax.plot([x for x, _ in xy], [y for _, y in xy], **_LINE, **kwargs)
    return True


def saliency_grid(
    images: Any,
    maps: Mapping[str, Any],
    ginis: Mapping[str, Sequence[float]],
    labels: Sequence[str] | None = None,
) -> Figure:
    """One row per image: the image itself, then each model's attribution map for it.

    ``images`` is N×C×H×W in [0, 1] (C = 1 grey or 3 RGB); ``maps[model]`` the signed N×C×H×W attributions,
    drawn as |map| summed over channels and scaled to its own maximum ('hot': bright = most attribution);
    ``ginis[model][i]`` the global Gini of image i, shown in the panel title as "<model> G=0.61". Each
    column is headed by its model label; ``labels`` (optional, one per image) title the image panels.
    """
    from matplotlib.figure import Figure

    imgs = _array(images)
    if imgs.ndim == 3:
        imgs = imgs[None]
    if imgs.ndim != 4 or imgs.shape[1] not in (1, 3):
        raise ValueError(f"images must be N×C×H×W with C = 1 or 3, got shape {imgs.shape}")
    n = imgs.shape[0]
    arrays = {model: _array(m) for model, m in maps.items()}
    for model, a in arrays.items():
        if a.ndim == 3:
            a = arrays[model] = a[None]
        if a.ndim != 4 or a.shape[0] != n or a.shape[-2:] != imgs.shape[-2:]:
            raise ValueError(f"maps[{model!r}] has shape {a.shape}, images {imgs.shape}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} images")

    fig = Figure(figsize=(1.9 * (1 + len(arrays)), 2.0 * max(n, 1) + 0.4), layout="constrained")
    if n == 0:
        _no_data(fig.subplots())
        return fig
    columns = fig.subfigures(1, 1 + len(arrays), squeeze=False)[0]
    for col, header in zip(columns, ["image", *arrays], strict=True):
        col.suptitle(header, fontweight="bold")
        axes = col.subplots(n, 1, squeeze=False)[:, 0]
        for i, ax in enumerate(axes):
            ax.set_axis_off()
            if col is columns[0]:
                img = np.nan_to_num(np.clip(imgs[i], 0.0, 1.0))
                if img.shape[0] == 1:
                    ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0)
                else:
                    ax.imshow(img.transpose(1, 2, 0))
                if labels is not None:
                    ax.set_title(str(labels[i]), fontsize="small")
                continue
            heat = np.abs(arrays[header][i]).sum(axis=0)  # a NaN attribution stays NaN: drawn blank
            finite = np.isfinite(heat)
            peak = heat[finite].max() if finite.any() else 0.0
            ax.imshow(heat / peak if peak > 0 else heat, cmap="hot", vmin=0.0, vmax=1.0)
            per_image = ginis.get(header, ())
            g = _num(per_image[i]) if i < len(per_image) else math.nan
            ax.set_title(f"{header} G={g:.2f}" if not math.isnan(g) else f"{header} G=n/a", fontsize="small")
    return fig


def noise_error_curves(
    inductive: Mapping[str, Mapping[float, float]], random: Mapping[str, Mapping[float, float]]
) -> Figure:
    """Error rate (%) against the perturbed share ρ (%), one line per model, for inductive noise (left)
    and the random-noise control (right). Inputs map model → {ρ as a fraction: error rate}."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 3.8), layout="constrained")
    models = list(dict.fromkeys([*inductive, *random]))  # same colour for a model in both panels
    panels = ((inductive, "Inductive noise"), (random, "Random noise"))
    for ax, (data, title) in zip(fig.subplots(1, 2), panels, strict=True):
        plotted = [_curve(ax, points, 100.0, label=m, color=f"C{models.index(m) % 10}") for m, points in data.items()]
        if any(plotted):
            ax.legend(loc="best", fontsize="small")
        else:
            _no_data(ax)
        ax.set_title(title)
        ax.set_xlabel("ρ (% of input elements)")
        ax.set_ylabel("error rate (%)")
        ax.grid(True, alpha=0.3)
    return fig


def occlusion_error_bars(results: Mapping[str, Mapping[str, float]]) -> Figure:
    """Inductive-occlusion error rate (%) as grouped bars: one group per occlusion colour, one bar per
    model, each labelled with its value. Input maps model → {colour name: error rate}; NaN leaves no bar."""
    from matplotlib.figure import Figure

    colours = _union(results)
    fig = Figure(figsize=(max(4.5, 1.2 + 0.6 * len(colours) * max(len(results), 1)), 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(results), 1)
    drawn = False
    for j, (model, by_colour) in enumerate(results.items()):
        pts = [(i, 100.0 * _num(by_colour.get(c))) for i, c in enumerate(colours)]
        pts = [(i, v) for i, v in pts if not math.isnan(v)]
        if not pts:
            continue
        bars = ax.bar([i - 0.4 + width * (j + 0.5) for i, _ in pts], [v for _, v in pts], width, label=model)
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small", padding=2)
        drawn = True
    if drawn:
        ax.set_xticks(range(len(colours)), [str(c) for c in colours])
        ax.margins(y=0.15)  # headroom for the value labels; the bars keep the axis at 0
        ax.legend(loc="best", fontsize="small")
    else:
        _no_data(ax)
        ax.set_xticks([])
    ax.set_title("Inductive occlusion")
    ax.set_xlabel("occlusion colour")
    ax.set_ylabel("error rate (%)")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def corruption_error_curves(
    results: Mapping[str, Mapping[str, Mapping[int, float]]], title: str | None = None
) -> Figure:
    """Error rate (%) against corruption severity 1–5, one panel per corruption (up to 4 per row) and one
    line per model, with one legend for the figure. Input maps model → corruption → {severity: error rate};
    `title` (e.g. which images the error is over) heads the figure."""
    from matplotlib.figure import Figure

    names = _union(results)
    cols = min(max(len(names), 1), 4)
    rows = max(math.ceil(len(names) / cols), 1)
    fig = Figure(figsize=(3.6 * cols + 1.2, 3.3 * rows), layout="constrained")
    if title:
        fig.suptitle(title)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(names) :] if names else ():
        ax.remove()
    if not names:
        _no_data(axes[0])
        axes[0].set_title("Noise corruptions")
        return fig
    for ax, name in zip(axes, names, strict=False):
        plotted = [
            _curve(ax, by_name.get(name, {}), 1.0, label=m, color=f"C{j % 10}")
            for j, (m, by_name) in enumerate(results.items())
        ]
        if not any(plotted):
            _no_data(ax)
        ax.set_title(str(name))
        ax.set_xticks(range(1, 6))
        ax.set_xlim(0.5, 5.5)
        ax.set_xlabel("severity")
        ax.set_ylabel("error rate (%)")
        ax.grid(True, alpha=0.3)
    handles = {label: h for ax in axes[: len(names)] for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize="small")
    return fig


def write_inequality_figures(
    result: Mapping[str, Any], folder: Path, saliency: SaliencyExamples | None = None
) -> list[Path]:
    """Write the PNGs of the evaluations in an `evaluate_inequality` result into `folder`; return their paths.
    saliency.png (gini): `saliency` (`advtrain.eval.inequality.saliency_examples` of the same models and
    images), needed when the result has gini; noise.png (inductive and/or random noise, 'add' mode);
    occlusion.png; corruptions.png (the commonly correct protocol, IGD's)."""
    if "gini" in result and saliency is None:
        raise ValueError("the result has gini: pass saliency=saliency_examples(models, x, y) to draw saliency.png")
    folder = Path(folder)
    written: list[Path] = []
    if "gini" in result and saliency is not None:
        fig = saliency_grid(saliency.images, saliency.maps, saliency.ginis, saliency.titles)
        written.append(save_figure(fig, folder / "saliency.png"))
    if "inductive_noise" in result or "random_noise" in result:
        curves = [
            {label: {float(rho): error for rho, error in per.get(NOISE_FIGURE_MODE, {}).items()}
             for label, per in result.get(name, {}).items()}
            for name in ("inductive_noise", "random_noise")
        ]
        written.append(save_figure(noise_error_curves(*curves), folder / "noise.png"))
    if "inductive_occlusion" in result:
        written.append(save_figure(occlusion_error_bars(result["inductive_occlusion"]), folder / "occlusion.png"))
    if "corruptions" in result:
        tables = {label: severity_tables(per, "commonly_correct") for label, per in result["corruptions"].items()}
        title = f"Noise corruptions, error {CORRUPTION_PROTOCOLS['commonly_correct'].format_map(result)}"
        written.append(save_figure(corruption_error_curves(tables, title), folder / "corruptions.png"))
    return written
