"""CIFAR-10 and CIFAR-100: the python-version batch folders (pickles, read with an allow-list) or an .npz."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from advtrain.data.dataset import Dataset
from advtrain.data.sources.checks import (
    CIFAR_SHAPE,
    build_dataset,
    decode_names,
    existing_root,
    first_line,
    to_images,
    to_labels,
)
from advtrain.data.sources.npz import NPZ_LAYOUT, from_npz
from advtrain.errors import UserError

# fmt: off
CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# The fine label names in the order of the official meta file (alphabetical).
CIFAR100_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
    "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
    "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television",
    "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm",
)
# fmt: on

CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
CIFAR100_FILES = ("train", "test")


# The CIFAR batches are pickles; unpickling may run arbitrary code, so only the globals that a pickled
# numpy array needs are allowed.
_PICKLE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core."):  # pickles written by numpy 1.x name the pre-2.0 module
            module = "numpy._core." + module.removeprefix("numpy.core.")
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return getattr(importlib.import_module(module), name)


def _unpickle(path: Path, layout: str) -> dict[bytes, Any]:
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # any failure here means the file is not a CIFAR batch
        raise UserError(f"cannot read {path} ({first_line(exc)}); expected {layout}") from exc
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a dict; expected {layout}")
    return obj


def _pickle_field(batch: dict[bytes, Any], key: bytes, path: Path, layout: str) -> Any:
    if key not in batch:
        raise UserError(f"{path} has no {key!r} entry; expected {layout}")
    return batch[key]


def _cifar_images(data: Any, path: Path, layout: str) -> np.ndarray:
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", type(data).__name__)
        raise UserError(f"{path}: b'data' is {shape}, expected an N×3072 uint8 array; expected {layout}")
    # Each row holds the red, green and blue 32×32 planes in turn, i.e. C×H×W order.
    return to_images(data.reshape(-1, 3, 32, 32), f"{path} b'data'")


def _cifar_folder(
    path: Path, folder: str, files: tuple[str, ...], name: str, layout: str, archive: str
) -> Path:
    """Accept the batches folder itself or its parent; fail naming the files that are missing."""
    if not path.is_dir():
        raise UserError(f"{name}: {path} is neither a folder nor an .npz file; give {layout}")
    candidates = [path, path / folder]
    for candidate in candidates:
        if all((candidate / f).is_file() for f in files):
            return candidate
    looked = path / folder if (path / folder).is_dir() else path
    missing = [f for f in files if not (looked / f).is_file()]
    hint = f" (extract {archive} first)" if (path / archive).is_file() else ""
    raise UserError(f"{name}: {looked} lacks {', '.join(missing)}{hint}; give {layout}")


def _read_batch(path: Path, layout: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels (under `label_key`) of one pickled CIFAR batch file."""
    batch = _unpickle(path, layout)
    x = _cifar_images(_pickle_field(batch, b"data", path, layout), path, layout)
    return x, to_labels(_pickle_field(batch, label_key, path, layout), f"{path} {label_key!r}")


def load_cifar10(root: str | Path | None) -> Dataset:
    layout = f"the cifar-10-batches-py folder (data_batch_1..data_batch_5, test_batch) or {NPZ_LAYOUT}"
    path = existing_root(root, "cifar10", layout)
    if path.is_file() and path.suffix == ".npz":
        return from_npz(path, "cifar10", layout, 10, CIFAR10_NAMES, CIFAR_SHAPE)
    folder = _cifar_folder(
        path, "cifar-10-batches-py", CIFAR10_FILES, "cifar10", layout, "cifar-10-python.tar.gz"
    )
    xs, ys = zip(*(_read_batch(folder / fname, layout, b"labels") for fname in CIFAR10_FILES), strict=True)
    names = CIFAR10_NAMES
    if (folder / "batches.meta").is_file():
        meta = _unpickle(folder / "batches.meta", layout)
        names = decode_names(meta.get(b"label_names"), 10) or CIFAR10_NAMES
    return build_dataset(
        "cifar10", np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5],
        num_classes=10, pixel_max=255, class_names=names, where=str(folder), shape=CIFAR_SHAPE,
    )  # fmt: skip


def load_cifar100(root: str | Path | None) -> Dataset:
    layout = f"the cifar-100-python folder (train, test, meta) or {NPZ_LAYOUT}"
    path = existing_root(root, "cifar100", layout)
    if path.is_file() and path.suffix == ".npz":
        return from_npz(path, "cifar100", layout, 100, CIFAR100_NAMES, CIFAR_SHAPE)
    folder = _cifar_folder(
        path, "cifar-100-python", CIFAR100_FILES, "cifar100", layout, "cifar-100-python.tar.gz"
    )
    splits = [_read_batch(folder / fname, layout, b"fine_labels") for fname in CIFAR100_FILES]
    names = CIFAR100_NAMES
    if (folder / "meta").is_file():
        meta = _unpickle(folder / "meta", layout)
        names = decode_names(meta.get(b"fine_label_names"), 100) or CIFAR100_NAMES
    (x_train, y_train), (x_test, y_test) = splits
    return build_dataset(
        "cifar100", x_train, y_train, x_test, y_test,
        num_classes=100, pixel_max=255, class_names=names, where=str(folder), shape=CIFAR_SHAPE,
    )  # fmt: skip
