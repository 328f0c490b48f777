"""What every dataset source shares: arrays checked into a :class:`Dataset`, the data root, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from advtrain.data.dataset import Dataset
from advtrain.errors import UserError

# The image shape (C, H, W) of each named dataset: a file of another shape given under that name is refused, since
# a model and an evaluation protocol chosen for the name would otherwise run on other images without a word.
DIGITS_SHAPE = (1, 8, 8)
CIFAR_SHAPE = (3, 32, 32)  # CIFAR-10, CIFAR-100 and SVHN's cropped digits


def to_images(x: np.ndarray, what: str) -> np.ndarray:
    """Return ``x`` as contiguous uint8 N×C×H×W, accepting NCHW, NHWC and grayscale N×H×W."""
    if x.dtype != np.uint8:
        raise UserError(
            f"{what} has dtype {x.dtype}; uint8 expected (pixel values 0..255): "
            "convert with (x * 255).round().astype(np.uint8)"
        )
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        # The channel axis is the one of size 1 or 3; NCHW wins when both ends qualify.
        if x.shape[1] not in (1, 3):
            if x.shape[3] not in (1, 3):
                raise UserError(
                    f"{what} has shape {x.shape}: expected N×C×H×W or N×H×W×C with C = 1 or 3, or N×H×W"
                )
            x = x.transpose(0, 3, 1, 2)
    else:
        raise UserError(f"{what} has shape {x.shape}: expected N×C×H×W, N×H×W×C or N×H×W uint8 images")
    return np.ascontiguousarray(x)


def to_labels(y: Any, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:  # column vectors, as MATLAB and some exporters write them
        y = y[:, 0]
    if y.ndim != 1:
        raise UserError(f"{what} has shape {y.shape}: expected one integer label per image (shape N)")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{what} has dtype {y.dtype}: integer class labels expected (0..num_classes-1)")
    return y.astype(np.int64)


def build_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    num_classes: int,
    pixel_max: int,
    class_names: tuple[str, ...],
    where: str,
    shape: tuple[int, int, int] | None = None,
) -> Dataset:
    """Check the arrays from one source and wrap them; ``where`` names the file for the error messages.

    ``shape`` is the C×H×W that dataset ``name`` is defined with; None for the sources that take any shape.
    """
    if shape is not None and x_train.shape[1:] != shape:
        raise UserError(
            f"{where}: images are {_dims(x_train.shape[1:])} but {name} images are {_dims(shape)}; "
            f"give the {name} data, or load other images as dataset npz (data.name=npz, --data npz)"
        )
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y):
            raise UserError(
                f"{where}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels; they must match"
            )
        if len(x) == 0:
            raise UserError(f"{where}: the {split} split is empty; it needs at least one image")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise UserError(
                f"{where}: y_{split} has labels {lo}..{hi} but {name} has {num_classes} classes; "
                f"labels must be in 0..{num_classes - 1}"
            )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(
            f"{where}: train images are {x_train.shape[1:]} but test images are {x_test.shape[1:]} (C×H×W); "
            "both splits need the same image shape"
        )
    if len(class_names) != num_classes:
        class_names = tuple(str(i) for i in range(num_classes))
    return Dataset(
        name=name,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64)),
        num_classes=num_classes,
        pixel_max=pixel_max,
        class_names=tuple(class_names),
    )


def _dims(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, so a wrapped error stays on one line."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def existing_root(root: str | Path | None, name: str, layout: str) -> Path:
    if root is None:
        raise UserError(f"{name} needs --data-root: {layout}")
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"{name} data root {path} does not exist: give {layout}")
    return path


def refuse_root(root: str | Path | None, name: str) -> None:
    if root is not None:
        raise UserError(f"{name} is generated in memory and takes no --data-root; drop --data-root {root}")


def decode_names(raw: Any, count: int) -> tuple[str, ...]:
    if not isinstance(raw, list | tuple | np.ndarray) or len(raw) != count:
        return ()
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw)
