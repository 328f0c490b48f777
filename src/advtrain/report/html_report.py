"""One self-contained HTML page comparing methods over seeds: `write_html_report(groups, path, title=...)`.

The page needs nothing but itself: the CSS is inline, every image is a base64 ``data:image/png`` URI and there
is no JavaScript, so it can be mailed, archived or opened offline. Sections: the evaluation protocol, the summary
table (`advtrain.report.grid.summarize`), clean-vs-robust accuracy, accuracy against ε, training curves, training
cost and, where some run has them, saliency and noise figures with Gini values, vulnerability histograms and the
gradient-masking verdicts of `advtrain diagnose`.

Figures are drawn with `matplotlib.figure.Figure` directly (the Agg canvas, never pyplot, as in
`advtrain.report.figures`): nothing registers them, so once encoded they are freed with their last reference.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import advtrain
from advtrain.fileio import atomic_write_text
from advtrain.report.figures import _no_data
from advtrain.report.grid import (
    Cell,
    Column,
    ResultKey,
    Summary,
    accuracies,
    family,
    mean_curve,
    strongest_attack,
    summarize,
    summary_rows,
    validation_robust_key,
)
from advtrain.report.html_parts import CSS, escape, figure_uri, html_figure, html_section, html_table, png_uri
from advtrain.report.tables import MISSING, fmt_eps, fmt_float

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Line style per checkpoint in the ε curves; in the scatter "last" is filled and every other checkpoint hollow.
_LINESTYLES = {"last": "-", "best": "--"}

def _colour(i: int) -> tuple[float, ...]:
    # tab20: a grid of every method has up to 15 rows, beyond the 10 colours of the default cycle.
    from matplotlib import colormaps

    return tuple(colormaps["tab20"](i % 20))


# ----------------------------------------------------------------------------------------------------- figures


def _clean_result(summary: Summary) -> ResultKey | None:
    return next((r for r in summary.protocol.results if r.attack == "clean"), None)


def _legend(fig: Figure, groups: Sequence[str], styles: Mapping[str, dict[str, Any]]) -> None:
    """One legend entry per group (its colour) and per checkpoint (its marker or line style, in grey), outside
    the axes: group labels can be long and must not hide points."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_colour(i), marker="o", linestyle="none", label=g) for i, g in enumerate(groups)]
    handles += [Line2D([], [], color="0.4", label=name, **style) for name, style in styles.items()]
    fig.legend(handles=handles, fontsize="small", loc="outside right upper")


def clean_robust_scatter(summary: Summary, groups: Mapping[str, Sequence[Cell]]) -> Figure | None:
    """One point per cell and checkpoint: x = clean accuracy (%), y = the strongest robust accuracy (%)
    (`strongest_attack`); one colour per group, "last" filled, "best" hollow. None without both accuracies."""
    from matplotlib.figure import Figure

    clean, robust = _clean_result(summary), strongest_attack(summary)
    if clean is None or robust is None:
        return None
    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    ax = fig.subplots()
    styles = {c: {"marker": "o", "linestyle": "none", "markerfacecolor": None if c == "last" else "none"}
              for c in summary.protocol.checkpoints}
    for i, cells in enumerate(groups.values()):
        for checkpoint in summary.protocol.checkpoints:
            points = [accuracies(cell, checkpoint) for cell in cells]
            ax.scatter([100 * p[clean] for p in points], [100 * p[robust] for p in points], s=48, zorder=3,
                       edgecolors=_colour(i), facecolors=_colour(i) if checkpoint == "last" else "none")
    _legend(fig, list(groups), styles)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"{robust.name} accuracy (%)")
    ax.set_title("Clean vs robust test accuracy (one point per run)")
    ax.grid(True, alpha=0.3)
    return fig


def accuracy_vs_eps(summary: Summary) -> Figure | None:
    """One panel per attack: test accuracy (%) against ε, mean ± std over seeds per group and checkpoint, with the
    clean accuracy at ε = 0 when it was measured. None without a robust attack."""
    from matplotlib.figure import Figure

    families = [f for f in summary.protocol.attacks if f != "clean"]
    if not families:
        return None
    clean = _clean_result(summary)
    fig = Figure(figsize=(5.5 * len(families), 4.2), layout="constrained")
    axes = fig.subplots(1, len(families), squeeze=False)[0]
    styles = {c: {"linestyle": _LINESTYLES.get(c, ":")} for c in summary.protocol.checkpoints}
    for ax, name in zip(axes, families, strict=True):
        results = sorted((r for r in summary.protocol.results if family(r) == name), key=lambda r: r.eps)
        results = ([clean] if clean is not None else []) + results
        for i, group in enumerate(summary.groups):
            for checkpoint, style in styles.items():
                stats = [group.accuracy[Column(checkpoint, r)] for r in results]
                ax.errorbar([r.eps for r in results], [100 * s.mean for s in stats],
                            yerr=[100 * (s.std or 0.0) for s in stats], color=_colour(i), marker="o", markersize=4,
                            capsize=3, **style)
        ax.set_title(f"{name} (mean ± std over seeds)")
        ax.set_xlabel("ε")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
    _legend(fig, [g.label for g in summary.groups], styles)
    return fig


def training_curves_by_group(groups: Mapping[str, Sequence[Cell]]) -> Figure:
    """Training loss, validation clean and validation robust accuracy (%) against epoch; one line per group,
    the mean over its seeds."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = (
        ("Training loss", "loss", lambda _: "train_loss", 1.0),
        ("Validation clean accuracy", "accuracy (%)", lambda _: "val_clean_acc", 100.0),
        ("Validation robust accuracy", "accuracy (%)", validation_robust_key, 100.0),
    )
    fig = Figure(figsize=(15.0, 4.0), layout="constrained")
    handles: dict[str, Any] = {}
    for ax, (title, ylabel, key_of, scale) in zip(fig.subplots(1, 3), panels, strict=True):
        for i, (label, cells) in enumerate(groups.items()):
            epochs, means = mean_curve(cells, key_of)
            if epochs:
                (handles[label],) = ax.plot(epochs, [scale * m for m in means], color=_colour(i), marker="o",
                                            markersize=3, label=label)
        if not ax.lines:
            _no_data(ax)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(True, alpha=0.3)
    if handles:  # one legend for the three panels, beside them
        fig.legend(handles=list(handles.values()), fontsize="small", loc="outside right upper")
    return fig


# ---------------------------------------------------------------------------------------------------- sections


def _header(summary: Summary, title: str, notes: Sequence[str]) -> str:
    p = summary.protocol
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    norms = ", ".join(sorted({r.norm for r in p.results if r.norm})) or MISSING
    eps = ", ".join(fmt_eps(e) for e in p.eps) or MISSING
    paragraphs = [
        f"Generated {now} · advtrain {advtrain.__version__} · torch {version('torch')}",
        f"Dataset: {p.data}. One evaluation protocol for every run and checkpoint: {', '.join(p.attacks)}; "
        f"ε {eps} ({norms}); the first {p.n} test images; attack seed "
        f"{', '.join(map(str, summary.attack_seeds))}.",
        f"Checkpoints evaluated: {', '.join(p.checkpoints)}. “last” is the model after the final epoch; “best” is "
        "the one selected on the validation split, never on the test set. Accuracies are on the test set.",
        *notes,
    ]
    body = "\n".join(f'<p class="meta">{escape(paragraphs[0])}</p>' if i == 0 else f"<p>{escape(text)}</p>"
                     for i, text in enumerate(paragraphs))
    return f"<header><h1>{escape(title)}</h1>\n{body}\n</header>"


def _runs(groups: Mapping[str, Sequence[Cell]]) -> str:
    items = "".join(f"<li><b>{escape(label)}</b>: "
                    + "; ".join(f"seed {escape(c.seed)} <code>{escape(c.run_dir)}</code>" for c in cells) + "</li>\n"
                    for label, cells in groups.items())
    return html_section("Runs", f"<ul>\n{items}</ul>")


def _summary_section(summary: Summary) -> str:
    headers, rows = summary_rows(summary)
    caption = ("Test accuracy (%), mean ± sample standard deviation over n seeds (the mean alone when n=1); "
               "one row per method, columns per attack, ε and checkpoint.")
    return html_section("Summary", html_table(headers, rows, caption, table_id="summary"))


def _scatter_section(summary: Summary, groups: Mapping[str, Sequence[Cell]]) -> str:
    fig = clean_robust_scatter(summary, groups)
    robust = strongest_attack(summary)
    if fig is None or robust is None:
        return ""
    how = "AutoAttack" if robust.attack == "autoattack" else "the attack with the lowest accuracy at the largest ε"
    caption = (f"Clean against robust test accuracy, one point per run: robust = {robust.name} ({how}). "
               "Filled: last checkpoint; hollow: best.")
    return html_section("Clean vs robust accuracy", html_figure(figure_uri(fig), caption))


def _eps_section(summary: Summary) -> str:
    fig = accuracy_vs_eps(summary)
    if fig is None:
        return ""
    caption = "Test accuracy against ε per attack: mean ± std over seeds; solid: last checkpoint, dashed: best."
    return html_section("Robust accuracy vs ε", html_figure(figure_uri(fig), caption))


def _curves_section(groups: Mapping[str, Sequence[Cell]]) -> str:
    caption = ("Per-epoch training loss and validation accuracies (clean; robust against the attack each method "
               "selects its best checkpoint on), mean over seeds.")
    return html_section("Training curves", html_figure(figure_uri(training_curves_by_group(groups)), caption))


def _cost_section(summary: Summary) -> str:
    headers = ["method", "seeds", "epochs", "s/epoch", "images/s", "peak memory (MiB)", "total (min)"]
    rows = [[g.label, len(g.seeds), fmt_float(g.cost.epochs, 3), fmt_float(g.cost.seconds_per_epoch, 3),
             fmt_float(g.cost.images_per_s, 4), fmt_float(g.cost.peak_memory_mb, 4),
             fmt_float(None if g.cost.train_seconds is None else g.cost.train_seconds / 60, 3)]
            for g in summary.groups]
    caption = ("Training cost per method, means over seeds: wall seconds per epoch (training and validation), "
               "training images per second, the largest peak memory recorded, and total training time.")
    return html_section("Cost per method", html_table(headers, rows, caption))


def _read_png(path: Path) -> bytes | None:
    # Only real PNGs are embedded: anything else would show as a broken image.
    data = path.read_bytes() if path.is_file() else b""
    return data if data.startswith(_PNG_SIGNATURE) else None


def _gallery(groups: Mapping[str, Sequence[Cell]], captions: Mapping[str, str]) -> str:
    """The PNGs named in `captions` ({file name in RUN_DIR/figures: what it shows}) of every cell that has them."""
    figures = [
        html_figure(png_uri(data), f"{label}, seed {cell.seed}: {what}")
        for label, cells in groups.items() for cell in cells for name, what in captions.items()
        if (data := _read_png(cell.run_dir / "figures" / name)) is not None
    ]
    return "\n".join(figures)


def _run_head(label: str, cell: Cell, checkpoint: object) -> str:
    return f"{label}, seed {cell.seed}" + (f" ({checkpoint})" if checkpoint else "")


def _gini_rows(groups: Mapping[str, Sequence[Cell]]) -> tuple[list[str], list[list[object]]]:
    """One row per evaluation with Gini values (each eval JSON holds one model's, under its label)."""
    found = [(_run_head(label, cell, checkpoint), next(iter(gini.values())))
             for label, cells in groups.items() for cell in cells for checkpoint, ev in cell.evals.items()
             if isinstance(gini := (ev.get("inequality") or {}).get("gini"), Mapping) and gini]
    keys = list(dict.fromkeys(k for _, values in found for k in values))
    rows: list[list[object]] = [[head, *(fmt_float(values.get(k), 3) for k in keys)] for head, values in found]
    return ["run (checkpoint)", *(k.replace("_", " ") for k in keys)], rows


def _inequality_section(groups: Mapping[str, Sequence[Cell]]) -> str:
    headers, rows = _gini_rows(groups)
    table = html_table(headers, rows, "Gini coefficient of the saliency |∇ₓ z_y| (mean over all test images / over the "
                   "correctly classified ones; higher = more concentrated).") if rows else ""
    gallery = _gallery(groups, {"saliency.png": "saliency maps with their Gini",
                                "noise.png": "error rate under inductive/random noise",
                                "occlusion.png": "error rate under inductive occlusion"})
    return html_section("Saliency and noise", table, gallery) if table or gallery else ""


def _vulnerability_section(groups: Mapping[str, Sequence[Cell]]) -> str:
    gallery = _gallery(groups, {"vulnerability.png": "histogram of the adversarial vulnerability CE(x') − CE(x)"})
    return html_section("Adversarial vulnerability", gallery) if gallery else ""


def _verdict(check: Mapping[str, Any]) -> tuple[str, str]:
    verdict = str(check.get("verdict", "?"))
    text = verdict if check.get("value") is None else f"{verdict} ({fmt_float(check.get('value'), 3)})"
    return text, "warn" if verdict == "WARN" else ""


def _diagnose_section(groups: Mapping[str, Sequence[Cell]]) -> str:
    found = [(_run_head(label, cell, cell.diagnose.get("checkpoint")), cell.diagnose)
             for label, cells in groups.items() for cell in cells if cell.diagnose is not None]
    if not found:
        return ""
    names = list(dict.fromkeys(name for _, report in found for name in report.get("checks") or {}))
    rows: list[list[object]] = [
        [head, *(_verdict((report.get("checks") or {}).get(name) or {}) for name in names),
         len(report.get("warnings") or [])] for head, report in found
    ]
    caption = ("Gradient-masking checks of advtrain diagnose (docs/methods.md §7.7): verdict (measured value); "
               "WARN cells are shaded.")
    gallery = _gallery(groups, {"diagnose_pgd_steps.png": "PGD accuracy vs steps",
                                "diagnose_pgd_eps.png": "PGD accuracy vs ε",
                                "diagnose_fgsm_direction.png": "loss along the FGSM direction"})
    return html_section("Gradient-masking diagnostics",
                    html_table(["run (checkpoint)", *names, "warnings"], rows, caption), gallery)


def render_html_report(groups: Mapping[str, Sequence[Cell]], *, title: str, notes: Sequence[str] = ()) -> str:
    """The report's HTML text (see the module docstring); one-line UserError for mixed evaluation protocols."""
    summary = summarize(groups)
    sections = [
        _header(summary, title, notes),
        _summary_section(summary),
        _scatter_section(summary, groups),
        _eps_section(summary),
        _curves_section(groups),
        _cost_section(summary),
        _inequality_section(groups),
        _vulnerability_section(groups),
        _diagnose_section(groups),
        _runs(groups),
    ]
    body = "\n".join(s for s in sections if s)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_html_report(
    groups: Mapping[str, Sequence[Cell]], path: Path, *, title: str, notes: Sequence[str] = ()
) -> Path:
    """Write the self-contained HTML comparison of `groups` ({label: cells}) to `path`, atomically; its path."""
    atomic_write_text(Path(path), render_html_report(groups, title=title, notes=notes))
    return Path(path)
