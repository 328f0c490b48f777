"""The IGD evaluations on one model or a group compared on the same images (docs/methods.md §7.2–7.4).

- `gini`: global and regional Gini (both conventions) of the saliency |∇ₓ z_y|, averaged over all
  evaluated test images and over each model's correctly classified ones (both reported).
- `inductive_noise`, `random_noise`, `inductive_occlusion`: error rates over the images that *every*
  compared model classifies correctly when clean (§7.3), so the models are judged on the same images.
- `corruptions`: error on the noise family of CIFAR-10-C / ImageNet-C generated from the seed, or read from
  a released CIFAR-10-C folder, under two protocols: `commonly_correct`, over the images every compared
  model classifies correctly when clean (IGD's evaluation code: the corruption error of a model alone,
  not its clean error plus it), and `all_images`, over every evaluated test image (the usual CIFAR-10-C
  protocol, which mostly measures clean error). Every image is corrupted once, so both see the same noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.attacks import bn_policy
from advtrain.data import Dataset, FolderDataset
from advtrain.data.sources.folders import corrupted_test_images
from advtrain.eval.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    Constants,
    corruption_mistakes,
    error_among,
    load_cifar10_c,
)
from advtrain.eval.inductive import (
    INDUCTIVE_RHOS,
    NOISE_MODES,
    OCCLUSION_COLORS,
    RANDOM_RHOS,
    commonly_correct,
    inductive_noise_sweep,
    inductive_occlusion,
    predict,
    random_noise_sweep,
)
from advtrain.eval.progress import ProgressHook, TaskProgress
from advtrain.eval.saliency import ATTRIBUTIONS, IGD_BLOCK, gini_report, global_gini, mean_over, saliency

INEQUALITY_EVALS = ("gini", "inductive_noise", "random_noise", "inductive_occlusion", "corruptions")
COLOR_NAMES = {0.5: "grey", 1.0: "white"}
# The two corruption-error protocols (keys of a model's "corruptions" entry) and how the tables name them.
CORRUPTION_PROTOCOLS = {
    "commonly_correct": "over the {n_common_correct} commonly correct images (IGD's protocol)",
    "all_images": "over all {n} images (includes the clean error)",
}


# (corruption, severity) → uint8 images and labels, image i the corrupted copy of evaluated test image i.
CorruptedImages = Callable[[str, int], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class InequalityOptions:
    attribution: str = "saliency"  # the map `gini` measures: a key of ATTRIBUTIONS
    corruption_constants: Constants = "cifar10"  # CIFAR-10-C or ImageNet-C severity constants
    # A released CIFAR-10-C folder: `corruptions` reads its images (the first n of each severity block, which
    # are the test images in order) instead of generating them; None generates them from the seed.
    corruptions_root: Path | None = None
    # How those images are read: None reads CIFAR-10-C arrays; image-folder data reads the corrupted copies of its
    # test images (ImageNet-C folders under corruptions_root; set by advtrain.eval.api).
    corrupted_images: CorruptedImages | None = None
    noise_modes: tuple[str, ...] = NOISE_MODES
    occlusion_n: int = 10  # centres (docs/methods.md §7.3: n ≤ 10)
    occlusion_r: int = 20  # square half-side (r ≤ 20)
    # Fractions ρ of the C·H·W input values perturbed: the paper's grids are for 32×32 RGB; on 8×8 digits ρ = 2%
    # of 64 values is one value, so small inputs need a coarser grid.
    inductive_rhos: tuple[float, ...] = INDUCTIVE_RHOS
    random_rhos: tuple[float, ...] = RANDOM_RHOS

    def __post_init__(self) -> None:
        if self.attribution not in ATTRIBUTIONS:
            raise ValueError(f"attribution must be one of {tuple(ATTRIBUTIONS)}, got {self.attribution!r}")
        for name in ("inductive_rhos", "random_rhos"):
            rhos = getattr(self, name)
            if not rhos or not all(0 <= rho <= 1 for rho in rhos):
                raise ValueError(f"{name} must be a non-empty list of fractions in [0, 1], got {rhos!r}")


def options_for_data(options: InequalityOptions | None, data: Dataset | FolderDataset, n: int
                     ) -> InequalityOptions | None:
    """`options`; for image-folder data with a corruptions root, reading the corrupted copies of its first `n` test
    images from that root (ImageNet-C folders)."""
    if options is None or options.corruptions_root is None or not isinstance(data, FolderDataset):
        return options
    root = options.corruptions_root
    return replace(options, corrupted_images=lambda corruption, severity: corrupted_test_images(
        data, root, corruption, severity, n))


def check_corruptions_root(root: Path, data: Dataset | FolderDataset) -> None:
    """Read one corrupted image from `root` (a CIFAR-10-C folder, or ImageNet-C folders for image-folder data) so
    that a bad folder fails before any attack runs."""
    if isinstance(data, FolderDataset):
        corrupted_test_images(data, root, "gaussian_noise", 1, 1)
    else:
        load_cifar10_c(root, "gaussian_noise", 1)


SALIENCY_FIGURE_IMAGES = 6  # rows of saliency.png: the first images of the commonly correct set


def regional_blocks(size: int) -> dict[str, int]:
    """Block sides for regional Gini: the paper's for CIFAR-sized inputs and up; halved grids below 32 px
    (8×8 digits use 4×4 IGD blocks, since a 16×16 window does not fit)."""
    return {} if size >= 2 * IGD_BLOCK else {"igd": max(1, size // 2)}


def evaluate_inequality(
    models: Mapping[str, nn.Module],
    x: Tensor,
    y: Tensor,
    *,
    evals: Sequence[str],
    seed: int = 0,
    batch_size: int = 256,
    options: InequalityOptions | None = None,
    progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """Run the requested `evals` on every model; the JSON-ready results keyed by eval, then model label.
    `progress` hears each (evaluation, model) stage start and finish."""
    unknown = [e for e in evals if e not in INEQUALITY_EVALS]
    if unknown:
        raise ValueError(f"unknown inequality evaluation(s) {unknown}: choose from {INEQUALITY_EVALS}")
    common = commonly_correct(list(models.values()), x, y, batch_size).to(x.device)
    xc, yc = x[common], y[common]
    o = options or InequalityOptions()
    blocks = regional_blocks(x.shape[-1])
    out: dict[str, Any] = {
        "n": len(y), "n_common_correct": int(common.sum()), "seed": seed, "attribution": o.attribution,
        "regional_blocks": blocks, "noise_modes": list(o.noise_modes),
    }
    task = TaskProgress(progress, "inequality", len(evals) * len(models), "stages")
    for name in evals:
        per_model: dict[str, Any] = {}
        for label, model in models.items():
            task.start_stage(f"{name} ({label})")
            if name == "gini":
                report = gini_report(model, x, y, o.attribution, batch_size, blocks=blocks)
                per_model[label] = {
                    f"{key}_{subset}": mean_over(report[key], mask)
                    for key in ("global", "regional_duan", "regional_igd")
                    for subset, mask in (("all", None), ("correct", report["correct"]))
                }
            elif name == "inductive_noise":
                per_model[label] = {mode: _by_rho(inductive_noise_sweep(
                    model, xc, yc, o.inductive_rhos, mode, seed=seed, batch_size=batch_size)) for mode in o.noise_modes}
            elif name == "random_noise":
                per_model[label] = {mode: _by_rho(random_noise_sweep(
                    model, xc, yc, o.random_rhos, mode, seed=seed, batch_size=batch_size)) for mode in o.noise_modes}
            elif name == "inductive_occlusion":
                broken = inductive_occlusion(model, xc, yc, OCCLUSION_COLORS, o.occlusion_n, o.occlusion_r, batch_size)
                per_model[label] = {
                    f"{COLOR_NAMES.get(c, 'colour')} ({c:g})": int(b.sum()) / len(b) if len(b) else float("nan")
                    for c, b in broken.items()
                }
            elif o.corruptions_root is not None:  # corruptions, released files
                mistakes = released_corruption_mistakes(model, o.corruptions_root, len(y), batch_size,
                                                         o.corrupted_images)
                per_model[label] = _protocol_tables(mistakes, common) | {"source": str(o.corruptions_root)}
            else:  # corruptions, generated
                mistakes = corruption_mistakes(model, x, y, tuple(CORRUPTIONS), SEVERITIES, seed=seed,
                                               batch_size=batch_size, constants=o.corruption_constants)
                per_model[label] = _protocol_tables(mistakes, common) | {"constants": o.corruption_constants}
            task.advance()
        out[name] = per_model
    return out


def released_corruption_mistakes(
    model: nn.Module, root: Path, n: int, batch_size: int, read: CorruptedImages | None = None
) -> dict[tuple[str, int], Tensor]:
    """{(corruption, severity): CPU bool per image, misclassified} on the first `n` images of each severity
    block of a released CIFAR-10-C folder (the noise family, the test images in order), with its own labels;
    `read` reads them instead (image-folder data: ImageNet-C)."""
    device = next(model.parameters()).device
    mistakes: dict[tuple[str, int], Tensor] = {}
    for corruption in CORRUPTIONS:
        for severity in SEVERITIES:
            images, labels = (read or partial(load_cifar10_c, root))(corruption, severity)
            x = images[:n].to(device).float() / 255
            mistakes[(corruption, severity)] = (predict(model, x, batch_size).cpu() != labels[:n])
    return mistakes


def _protocol_tables(mistakes: Mapping[tuple[str, int], Tensor], common: Tensor) -> dict[str, Any]:
    """{protocol: {corruption: {severity: error}}} for both CORRUPTION_PROTOCOLS, from per-image mistakes."""
    among = {"commonly_correct": common.cpu(), "all_images": None}
    tables: dict[str, Any] = {}
    for protocol, mask in among.items():
        table: dict[str, dict[str, float]] = {}
        for (corruption, severity), wrong in mistakes.items():
            table.setdefault(corruption, {})[str(severity)] = error_among(wrong, mask)
        tables[protocol] = table
    return tables


def _by_rho(sweep: Mapping[float, float]) -> dict[str, float]:
    """JSON keys for ρ (a float key would be written with all its binary digits)."""
    return {f"{rho:g}": error for rho, error in sweep.items()}


@dataclass(frozen=True)
class SaliencyExamples:
    """What saliency.png shows: `images` (k×C×H×W, CPU), the first `SALIENCY_FIGURE_IMAGES` that every model
    classifies correctly; each model's saliency `maps` of them (CPU); their global Gini per image (`ginis`);
    and the images' class names (`titles`, or None)."""

    images: Tensor
    maps: dict[str, Tensor]
    ginis: dict[str, list[float]]
    titles: list[str] | None


def saliency_examples(
    models: Mapping[str, nn.Module],
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 256,
    class_names: Sequence[str] | None = None,
) -> SaliencyExamples:
    """The saliency maps and Gini values that saliency.png shows, for the models compared on x, y."""
    common = commonly_correct(list(models.values()), x, y, batch_size).to(x.device)
    xs, ys = x[common][:SALIENCY_FIGURE_IMAGES], y[common][:SALIENCY_FIGURE_IMAGES]
    maps: dict[str, Tensor] = {}
    for label, model in models.items():
        with bn_policy(model, "eval"):
            maps[label] = saliency(model, xs, ys).cpu() if len(xs) else torch.zeros(xs.shape)
    ginis = {label: global_gini(m).tolist() if len(m) else [] for label, m in maps.items()}
    titles = [class_names[int(c)] for c in ys] if class_names else None
    return SaliencyExamples(xs.cpu(), maps, ginis, titles)


def severity_tables(per_model: Mapping[str, Any], protocol: str) -> dict[str, dict[int, float]]:
    """{corruption: {severity (int): error}} under one of CORRUPTION_PROTOCOLS, from one model's JSON entry."""
    return {
        name: {int(severity): error for severity, error in by_severity.items()}
        for name, by_severity in (per_model.get(protocol) or {}).items()
    }
