"""SVHN (format 2, cropped digits): the MATLAB files train_32x32.mat and test_32x32.mat."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advtrain.data.dataset import Dataset
from advtrain.data.sources.checks import CIFAR_SHAPE, build_dataset, existing_root, first_line, to_images, to_labels
from advtrain.errors import UserError

SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def load_svhn(root: str | Path | None) -> Dataset:
    layout = "the SVHN folder with train_32x32.mat and test_32x32.mat (format 2, cropped digits)"
    path = existing_root(root, "svhn", layout)
    if not path.is_dir():
        raise UserError(f"svhn: {path} is not a folder; give {layout}")
    missing = [f for f in SVHN_FILES if not (path / f).is_file()]
    if missing:
        raise UserError(f"svhn: {path} lacks {', '.join(missing)}; give {layout}")
    from scipy.io import loadmat

    splits = []
    for fname in SVHN_FILES:
        try:
            mat = loadmat(path / fname)
        except Exception as exc:  # scipy raises several unrelated types for a truncated or foreign file
            raise UserError(f"svhn: cannot read {path / fname} ({first_line(exc)}); give {layout}") from exc
        if "X" not in mat or "y" not in mat:
            raise UserError(f"svhn: {path / fname} lacks the X and y variables; give {layout}")
        x = mat["X"]
        if x.ndim != 4 or x.shape[2] != 3:
            raise UserError(f"svhn: {path / fname} X has shape {x.shape}; expected 32×32×3×N uint8")
        x = to_images(x.transpose(3, 2, 0, 1), f"{path / fname} X")  # H×W×C×N -> N×C×H×W
        y = to_labels(mat["y"], f"{path / fname} y")
        y = np.where(y == 10, 0, y)  # SVHN writes digit 0 as label 10
        splits.append((x, y))
    (x_train, y_train), (x_test, y_test) = splits
    return build_dataset(
        "svhn", x_train, y_train, x_test, y_test,
        num_classes=10, pixel_max=255, class_names=tuple(str(i) for i in range(10)), where=str(path),
        shape=CIFAR_SHAPE,
    )  # fmt: skip
