"""The noise family of CIFAR-10-C / ImageNet-C (docs/methods.md §7.4), and a reader for the pre-made CIFAR-10-C arrays.

Hendrycks & Dietterich (ICLR 2019) corrupt uint8 images with NumPy's global random state; here every draw
comes from an explicit ``torch.Generator`` on the images' device, so a seed reproduces the same corrupted
batch (on the CPU; CUDA streams differ from CPU streams) and a whole batch is corrupted at once. Everything
else follows the reference code (hendrycks/robustness ``make_cifar_c.py`` and ``imagenet_c/corruptions.py``)
element by element: images in [0, 1], noise added or drawn per element (per channel, as the reference does on
an H×W×C array), then clamped to [0, 1].
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from advtrain.attacks import bn_policy
from advtrain.errors import UserError

Constants = Literal["cifar10", "imagenet"]

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# Severity constants, severity 1..5 (docs/methods.md §7.4; identical to the reference code).
_TABLES: dict[str, dict[str, tuple[float, ...]]] = {
    "cifar10": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # σ of the additive normal noise
        "shot_noise": (500, 250, 100, 75, 50),  # photon count c of Poisson(x·c)/c
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # salt-and-pepper amount
        "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),  # σ of the multiplicative normal noise
    },
    "imagenet": {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "speckle_noise": (0.15, 0.20, 0.35, 0.45, 0.60),
    },
}

# The 19 files of the released CIFAR-10-C (and CIFAR-100-C), in the order of make_cifar_c.py.
CIFAR10_C_NAMES: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
)

CIFAR10_C_URL = "https://zenodo.org/record/2535967"


def constant(name: str, severity: int, constants: Constants = "cifar10") -> float:
    """The severity constant of one noise corruption (σ, c or amount), after checking all three arguments."""
    if constants not in _TABLES:
        raise UserError(f"unknown corruption constants {constants!r}: choose cifar10 or imagenet")
    table = _TABLES[constants]
    if name not in table:
        raise UserError(_unknown(name, table, "noise corruption"))
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or severity not in SEVERITIES:
        raise UserError(f"corruption severity must be an integer 1..5, got {severity!r}: pick one of 1, 2, 3, 4, 5")
    return float(table[name][int(severity) - 1])


def _unknown(name: str, choices: Sequence[str], what: str) -> str:
    """The message for a name not in ``choices``, suggesting the closest one.

    Paper spellings ("Elastic", "Gaussian Noise", "shot_noise.npy") are folded to file names first, and a
    unique prefix ("elastic" → "elastic_transform") counts as a match, since difflib alone misses those.
    """
    key = str(name).strip().lower().removesuffix(".npy").replace(" ", "_").replace("-", "_")
    prefixed = [c for c in choices if c.startswith(key)] if key else []
    close = prefixed[:1] if len(prefixed) == 1 else difflib.get_close_matches(key, list(choices), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown {what} {name!r}: {hint}choose from {', '.join(choices)}"


def _check_images(x: Tensor) -> None:
    """Reject integer images and values outside [0, 1]: the constants are in [0, 1] units (docs/methods.md §0)."""
    if not torch.is_floating_point(x):
        raise UserError(f"corruptions take float images in [0, 1], got dtype {x.dtype}: divide uint8 images by 255")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise UserError(
            f"corruptions take images in [0, 1], got values in [{float(x.min()):.4g}, {float(x.max()):.4g}]: "
            "pass unnormalised pixels (any mean/std normalisation belongs inside the model)"
        )


def _work(x: Tensor) -> Tensor:
    """At least float32, so half-precision inputs do not lose the small σ of severity 1."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _finish(out: Tensor, like: Tensor, quantize: bool) -> Tensor:
    out = out.clamp(0.0, 1.0)
    if quantize:
        out = quantize_uint8(out)
    return out.to(like.dtype)


def quantize_uint8(x: Tensor) -> Tensor:
    """Put [0, 1] values on the k/255 grid the way the released arrays were written: ``np.uint8(x * 255)``.

    That cast truncates (it does not round), so a corrupted pixel lands on the grid level at or below it.
    The 1e-4-level guard keeps values that are already on the grid there despite float rounding of k/255.
    """
    return torch.floor(x * 255.0 + 1e-4).clamp(0.0, 255.0) / 255.0


def _noise(x: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _uniform(x: Tensor, generator: torch.Generator) -> Tensor:
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def gaussian_noise(
    x: Tensor, severity: int, generator: torch.Generator, constants: Constants = "cifar10", *, quantize: bool = False
) -> Tensor:
    """``clamp(x + N(0, σ²))``, one independent draw per element.

    The default keeps floats; ``quantize=True`` truncates to the 1/255 grid as the released uint8 arrays do.
    """
    sigma = constant("gaussian_noise", severity, constants)
    _check_images(x)
    w = _work(x)
    return _finish(w + sigma * _noise(w, generator), x, quantize)


def shot_noise(
    x: Tensor, severity: int, generator: torch.Generator, constants: Constants = "cifar10", *, quantize: bool = False
) -> Tensor:
    """``clamp(Poisson(x·c) / c)``: photon noise, whose variance x/c grows with brightness.

    The default keeps floats; ``quantize=True`` truncates to the 1/255 grid as the released uint8 arrays do.
    """
    c = constant("shot_noise", severity, constants)
    _check_images(x)
    w = _work(x)
    return _finish(torch.poisson(w * c, generator=generator) / c, x, quantize)


def impulse_noise(
    x: Tensor, severity: int, generator: torch.Generator, constants: Constants = "cifar10", *, quantize: bool = False
) -> Tensor:
    """Salt-and-pepper noise as ``skimage.util.random_noise(x, mode='s&p', amount=a)`` makes it.

    skimage draws two independent masks over every element: ``flipped`` (probability ``a``) and ``salted``
    (probability ``salt_vs_pepper`` = 0.5); flipped & salted elements become 1, flipped & not salted become 0.
    So each element, in each channel independently, is salt with probability a/2, pepper with a/2 and kept
    otherwise; the salt and pepper counts are random (binomial), not fixed to exactly half each. The same two
    masks are drawn here, in that order, from ``generator``.

    The default keeps floats; ``quantize=True`` truncates to the 1/255 grid as the released uint8 arrays do.
    """
    amount = constant("impulse_noise", severity, constants)
    _check_images(x)
    w = _work(x)
    flipped = _uniform(w, generator) < amount
    salted = _uniform(w, generator) < 0.5
    out = torch.where(flipped, salted.to(w.dtype), w)
    return _finish(out, x, quantize)


def speckle_noise(
    x: Tensor, severity: int, generator: torch.Generator, constants: Constants = "cifar10", *, quantize: bool = False
) -> Tensor:
    """``clamp(x + x·N(0, c²))``: multiplicative noise, so black pixels stay black.

    The default keeps floats; ``quantize=True`` truncates to the 1/255 grid as the released uint8 arrays do.
    """
    c = constant("speckle_noise", severity, constants)
    _check_images(x)
    w = _work(x)
    return _finish(w + w * c * _noise(w, generator), x, quantize)


class Corruption(Protocol):
    def __call__(
        self, x: Tensor, severity: int, generator: torch.Generator, constants: Constants = ..., *, quantize: bool = ...
    ) -> Tensor: ...


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
}


def check_corruption_names(names: Sequence[str]) -> None:
    """Raise a one-line UserError, suggesting the closest name, for the first name that is not in CORRUPTIONS."""
    for name in names:
        if name not in CORRUPTIONS:
            raise UserError(_unknown(name, list(CORRUPTIONS), "noise corruption"))


def corruption_seed(seed: int, name: str, severity: int) -> int:
    """The generator seed of one (corruption, severity) under a user seed.

    The first 8 bytes of ``sha256(f"{seed}:{name}:{severity}")``, masked to 63 bits: stable across processes
    and platforms (unlike ``hash``), and different for every corruption and severity, so no two of them share
    a noise stream; an arithmetic offset such as ``seed + severity`` would make (seed 0, severity 2) and
    (seed 1, severity 1) draw identical noise.
    """
    digest = hashlib.sha256(f"{int(seed)}:{name}:{int(severity)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def corruption_generator(seed: int, name: str, severity: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with :func:`corruption_seed`."""
    return torch.Generator(device=device).manual_seed(corruption_seed(seed, name, severity))


def corrupt(
    x: Tensor, name: str, severity: int, seed: int, constants: Constants = "cifar10", *, quantize: bool = False
) -> Tensor:
    """Corrupt a batch with one named noise at one severity, drawing from a fresh generator on x's device.

    The generator is seeded with ``corruption_seed(seed, name, severity)``: the same (seed, name, severity)
    gives the same images, and different corruptions or severities never reuse one noise stream.
    """
    check_corruption_names([name])
    constant(name, severity, constants)
    return CORRUPTIONS[name](x, severity, corruption_generator(seed, name, severity, x.device), constants,
                             quantize=quantize)


def corruption_mistakes(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    names: Sequence[str] = tuple(CORRUPTIONS),
    severities: Sequence[int] = SEVERITIES,
    *,
    seed: int = 0,
    batch_size: int = 256,
    constants: Constants = "cifar10",
    quantize: bool = False,
) -> dict[tuple[str, int], Tensor]:
    """Per (corruption, severity), a CPU bool per image: misclassified once corrupted (model in eval mode).

    `x`, `y` must be on the model's device. Each (name, severity) gets one generator,
    ``corruption_generator(seed, name, severity, x.device)``, which corrupts the batches of ``batch_size`` in
    order; so with ``batch_size >= len(x)`` the images are exactly ``corrupt(x, name, severity, seed)``, and a
    different batch size draws different (equally distributed) noise. The model's train/eval flags are
    restored afterwards.
    """
    check_corruption_names(names)
    for name in names:
        for severity in severities:
            constant(name, severity, constants)
    if batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size}")
    if len(x) != len(y):
        raise UserError(f"{len(x)} images but {len(y)} labels: give one label per image")
    _check_images(x)
    mistakes: dict[tuple[str, int], Tensor] = {}
    with bn_policy(model, "eval"), torch.no_grad():
        for name in names:
            for severity in severities:
                generator = corruption_generator(seed, name, severity, x.device)
                wrong = [torch.zeros(0, dtype=torch.bool)]  # an empty x runs no batch
                for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True) if len(x) else ():
                    xc = CORRUPTIONS[name](xb, severity, generator, constants, quantize=quantize)
                    wrong.append((model(xc).argmax(1) != yb).cpu())
                mistakes[(name, int(severity))] = torch.cat(wrong)
    return mistakes


def error_among(wrong: Tensor, among: Tensor | None = None) -> float:
    """The share of ``wrong`` (bool per image) that is True, over the images of the bool mask ``among`` (all
    images when None); NaN for an empty set."""
    chosen = wrong if among is None else wrong[among.to(device=wrong.device, dtype=torch.bool)]
    return float(chosen.double().mean()) if chosen.numel() else float("nan")


def corruption_error(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    names: Sequence[str] = tuple(CORRUPTIONS),
    severities: Sequence[int] = SEVERITIES,
    *,
    seed: int = 0,
    batch_size: int = 256,
    constants: Constants = "cifar10",
    quantize: bool = False,
    among: Tensor | None = None,
) -> dict[tuple[str, int], float]:
    """Top-1 error rate on corrupted copies of (x, y), per (corruption, severity): see `corruption_mistakes`.

    ``among`` (a bool mask over the images) counts only those images, e.g. ``commonly_correct(models, x, y)``
    for IGD's protocol (the error over the images every compared model classifies correctly when clean);
    None counts all of them, which mixes in the clean error. Every image is corrupted either way, so both
    protocols see the same noise. An empty set gives NaN.
    """
    if among is not None and among.shape != (len(x),):
        raise UserError(f"among must be a bool mask with one entry per image ({len(x)}), got shape "
                        f"{tuple(among.shape)}")
    mistakes = corruption_mistakes(model, x, y, names, severities, seed=seed, batch_size=batch_size,
                                   constants=constants, quantize=quantize)
    return {key: error_among(wrong, among) for key, wrong in mistakes.items()}


# --------------------------------------------------------------------------------------------- CIFAR-10-C files


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot read {what} {path} as a .npy array ({first}): re-download CIFAR-10-C "
                        f"from {CIFAR10_C_URL}") from exc


def load_cifar10_c(root: str | Path, name: str, severity: int) -> tuple[Tensor, Tensor]:
    """One severity block of a released CIFAR-10-C (or CIFAR-100-C) corruption: uint8 N×3×H×W images, int64 labels.

    The release is a folder with ``<name>.npy`` (50000×32×32×3 uint8: severities 1..5 stacked in blocks of
    10000, each block the test set in order) and ``labels.npy`` (50000 labels, the test labels repeated five
    times; a file with only one block of labels is accepted too). Any of the 19 official names can be read,
    not only the noise family; the file is memory-mapped, so only the selected block is read into memory.
    Convert with ``to_float(x, 255)`` before :func:`corruption_error`-style evaluation.
    """
    if name not in CIFAR10_C_NAMES:
        raise UserError(_unknown(name, CIFAR10_C_NAMES, "CIFAR-10-C corruption"))
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or severity not in SEVERITIES:
        raise UserError(f"corruption severity must be an integer 1..5, got {severity!r}: pick one of 1, 2, 3, 4, 5")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise UserError(f"CIFAR-10-C folder {folder} does not exist: download and extract CIFAR-10-C from "
                        f"{CIFAR10_C_URL} and give the folder that holds {name}.npy and labels.npy")
    files = {"images": folder / f"{name}.npy", "labels": folder / "labels.npy"}
    for what, path in files.items():
        if not path.is_file():
            raise UserError(f"no {path.name} in {folder} (CIFAR-10-C {what}): give the extracted CIFAR-10-C folder "
                            f"from {CIFAR10_C_URL}, which holds {name}.npy and labels.npy")
    images = _load_npy(files["images"], "CIFAR-10-C images")
    labels = _load_npy(files["labels"], "CIFAR-10-C labels")

    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or len(images) % len(SEVERITIES):
        raise UserError(
            f"{files['images']} holds {images.dtype} {images.shape}: expected uint8 (5·N)×H×W×3 "
            "(five severity blocks of N H×W RGB images, 50000×32×32×3 for CIFAR-10-C); re-download it"
        )
    if len(images) == 0:
        raise UserError(f"{files['images']} holds no images: re-download it from {CIFAR10_C_URL}")
    block = len(images) // len(SEVERITIES)
    if labels.ndim != 1 or labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{files['labels']} holds {labels.dtype} {labels.shape}: expected one integer label per "
                        "image (shape 50000 for CIFAR-10-C); re-download it")
    if len(labels) not in (len(images), block):
        raise UserError(f"{files['labels']} has {len(labels)} labels but {files['images'].name} has {len(images)} "
                        f"images ({block} per severity): they come from different releases; re-download both")

    start = (int(severity) - 1) * block
    x = np.ascontiguousarray(images[start:start + block].transpose(0, 3, 1, 2))
    y_block = labels[start:start + block] if len(labels) == len(images) else labels
    y = np.array(y_block, dtype=np.int64)  # a copy: the memory map is read-only
    return torch.from_numpy(x), torch.from_numpy(y)


__all__ = [
    "CIFAR10_C_NAMES",
    "CORRUPTIONS",
    "SEVERITIES",
    "Constants",
    "Corruption",
    "check_corruption_names",
    "constant",
    "corrupt",
    "corruption_error",
    "corruption_generator",
    "corruption_mistakes",
    "corruption_seed",
    "error_among",
    "gaussian_noise",
    "impulse_noise",
    "load_cifar10_c",
    "quantize_uint8",
    "shot_noise",
    "speckle_noise",
]
