"""The datasets that need no files: scikit-learn's digits and synthetic class prototypes plus noise."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from advtrain.data.dataset import Dataset
from advtrain.data.sources.checks import DIGITS_SHAPE, build_dataset, is_int, refuse_root
from advtrain.errors import UserError


def load_digits(root: str | Path | None) -> Dataset:
    refuse_root(root, "digits")
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = bunch.images.astype(np.uint8)[:, None]  # values are whole numbers 0..16
    labels = bunch.target.astype(np.int64)
    # A fixed split (seed 0) so that test accuracy means the same thing in every run, whatever the run seed.
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=360, stratify=labels, random_state=0
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)  # keep sklearn's row order within a split
    return build_dataset(
        "digits", images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
        num_classes=10, pixel_max=16, class_names=tuple(str(i) for i in range(10)), where="sklearn digits",
        shape=DIGITS_SHAPE,
    )  # fmt: skip


# The most pixel values of one generated part (prototypes, train or test split): 8 GiB of float64.
_SYNTHETIC_MAX_VALUES = 2**30


def load_synthetic(
    root: str | Path | None,
    shape: tuple[int, int, int] | list[int] = (3, 32, 32),
    num_classes: int = 10,
    n_train: int = 1000,
    n_test: int = 200,
    seed: int = 0,
    noise: float = 0.25,
) -> Dataset:
    """Each class is a fixed random prototype image; a sample is its prototype plus Gaussian noise."""
    refuse_root(root, "synthetic")
    if not isinstance(shape, list | tuple):  # tuple() of a string or a number would fail or mislead
        raise UserError(f"synthetic: shape must be three positive integers (C, H, W), got {shape!r}")
    shape = tuple(shape)
    if len(shape) != 3 or not all(is_int(s) and s > 0 for s in shape):
        raise UserError(f"synthetic: shape must be three positive integers (C, H, W), got {shape!r}")
    for opt, value, low in (("num_classes", num_classes, 2), ("n_train", n_train, 1), ("n_test", n_test, 1)):
        if not is_int(value) or value < low:
            raise UserError(f"synthetic: {opt} must be an integer >= {low}, got {value!r}")
    if not is_int(seed) or seed < 0:  # numpy's seed sequences refuse negative entries
        raise UserError(f"synthetic: seed must be an integer >= 0, got {seed!r}")
    if not (isinstance(noise, int | float) and 0 <= noise < math.inf):
        raise UserError(f"synthetic: noise must be a number >= 0 (std in [0, 1] pixel units), got {noise!r}")
    # Generation holds float64 temporaries of every image: refuse sizes that could never fit rather than fail
    # with a MemoryError (or be killed) halfway.
    values = max(num_classes, n_train, n_test) * math.prod(shape)
    if values > _SYNTHETIC_MAX_VALUES:
        raise UserError(
            f"synthetic: {max(num_classes, n_train, n_test)} images of shape {shape} need {values * 8 / 2**30:.3g} GiB "
            f"while generated (at most {_SYNTHETIC_MAX_VALUES * 8 / 2**30:g} GiB): lower n_train, n_test or shape"
        )

    # Separate streams per part, so changing n_test does not change the training images.
    protos = np.random.default_rng([seed, 0]).uniform(0.0, 1.0, size=(num_classes, *shape))

    def draw(n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, stream])
        y = rng.permutation(np.arange(n) % num_classes)  # balanced classes
        x = protos[y] + rng.normal(0.0, noise, size=(n, *shape))
        return np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = draw(n_train, 1)
    x_test, y_test = draw(n_test, 2)
    return build_dataset(
        "synthetic", x_train, y_train, x_test, y_test,
        num_classes=num_classes, pixel_max=255, class_names=tuple(str(i) for i in range(num_classes)),
        where="synthetic",
    )  # fmt: skip
