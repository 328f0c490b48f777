"""Figures for run reports, drawn off-screen with matplotlib's Agg canvas.

Figures are built with `matplotlib.figure.Figure` directly rather than through pyplot, so no GUI backend
is ever selected and no global figure registry grows; matplotlib itself is imported only when a figure
is drawn, which keeps ``import advtrain.report`` light.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from advtrain.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# metrics.jsonl key → curve label; train_acc's label says which inputs it was measured on (`training_curves`).
_ACC_SERIES = (
    ("train_acc", "train"),
    ("train_clean_acc", "train (clean)"),
    ("val_clean_acc", "val clean"),
    ("val_pgd_acc", "val PGD"),
    ("val_ifgsm_acc", "val I-FGSM-3"),
)


def _series(metrics: Sequence[Mapping[str, object]], key: str) -> list[float]:
    """Values of one metric per epoch as floats, with None/missing/non-numbers as NaN (a gap)."""
    out: list[float] = []
    for m in metrics:
        v = m.get(key)
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        out.append(float(v) if ok else math.nan)  # type: ignore[arg-type]
    return out


def _epochs(metrics: Sequence[Mapping[str, object]]) -> list[float]:
    epochs = _series(metrics, "epoch")
    return [e if not math.isnan(e) else float(i + 1) for i, e in enumerate(epochs)]


def _has_data(values: Sequence[float]) -> bool:
    return any(not math.isnan(v) for v in values)


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")


def training_curves(metrics: Sequence[Mapping[str, object]], train_acc_inputs: str | None = None) -> Figure:
    """Three panels against epoch: training loss, accuracies (%), and LR.

    The accuracies are those the rows hold: train_acc, labelled "train (adversarial)" or "train (clean)" by
    `train_acc_inputs` (the method's `Method.train_acc_inputs`; plain "train" when unknown), the clean training
    accuracy of methods that also report it, and the validation accuracies. Missing or null values leave gaps;
    every point also gets a marker, so a single epoch still shows.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(13.0, 3.8), layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    epochs = _epochs(metrics)
    style = {"marker": "o", "markersize": 3, "linewidth": 1.5}

    loss = _series(metrics, "train_loss")
    if _has_data(loss):
        ax_loss.plot(epochs, loss, label="train", **style)
    else:
        _no_data(ax_loss)
    ax_loss.set_title("Training loss")
    ax_loss.set_ylabel("loss")

    plotted = False
    for key, label in _ACC_SERIES:
        if key == "train_acc" and train_acc_inputs is not None:
            label = f"train ({train_acc_inputs})"
        values = _series(metrics, key)
        if _has_data(values):
            ax_acc.plot(epochs, [100.0 * v for v in values], label=label, **style)
            plotted = True
    if plotted:
        ax_acc.legend(loc="best", fontsize="small")
    else:
        _no_data(ax_acc)
    ax_acc.set_title("Accuracy")
    ax_acc.set_ylabel("accuracy (%)")

    lr = _series(metrics, "lr")
    if _has_data(lr):
        ax_lr.plot(epochs, lr, color="tab:purple", **style)
        positive = [v for v in lr if not math.isnan(v)]
        if min(positive) > 0 and max(positive) / min(positive) > 100:
            ax_lr.set_yscale("log")
    else:
        _no_data(ax_lr)
    ax_lr.set_title("Learning rate")
    ax_lr.set_ylabel("lr")

    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        if epochs and max(epochs) - min(epochs) < 2:  # one or two epochs: keep whole-number ticks visible
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(True, alpha=0.3)
    return fig


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Save ``fig`` as a PNG at ``path`` (atomically, tight bounding box), close it, and return ``path``."""
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        atomic_write_bytes(Path(path), buffer.getvalue())
        return Path(path)
    finally:
        if getattr(fig.canvas, "manager", None) is not None:  # created through pyplot: release it there
            import matplotlib.pyplot as plt

            plt.close(fig)
