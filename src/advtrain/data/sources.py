"""Dataset sources: load a named image dataset into uint8 tensors, or fail with a one-line UserError.

Every source returns the same :class:`Dataset`: uint8 images N×C×H×W and int64 labels on the CPU. Images stay
uint8 until a batch is drawn (see ``batcher.py``) so that a whole dataset fits on the device cheaply and the
[0, 1] scaling happens in exactly one place.
"""

from __future__ import annotations

import importlib
import math
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advtrain.errors import UserError
from advtrain.registry import Registry

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_NPZ_LAYOUT = "an .npz with x_train, y_train, x_test, y_test (uint8 images NCHW, NHWC or NHW; integer labels)"

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
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")

# The image shape (C, H, W) of each named dataset: a file of another shape given under that name is refused, since
# a model and an evaluation protocol chosen for the name would otherwise run on other images without a word.
DIGITS_SHAPE = (1, 8, 8)
CIFAR_SHAPE = (3, 32, 32)  # CIFAR-10, CIFAR-100 and SVHN's cropped digits

# The first bytes of an .npz (a zip archive; an empty one starts with its end record) and of a single .npy array.
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value, so compare datasets by identity
class Dataset:
    """An image classification dataset held as uint8 tensors on the CPU.

    ``x / pixel_max`` is the image in [0, 1]; ``pixel_max`` is 255 for 8-bit images and 16 for sklearn digits.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    pixel_max: int
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise UserError(
                    f"{self.name}: x_{split} must be a uint8 N×C×H×W tensor, got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
                raise UserError(
                    f"{self.name}: y_{split} must be int64 with one label per image ({len(x)}), "
                    f"got {y.dtype} {tuple(y.shape)}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise UserError(
                f"{self.name}: train images are {tuple(self.x_train.shape[1:])} but test images are "
                f"{tuple(self.x_test.shape[1:])}; both splits need the same C×H×W"
            )
        if not 1 <= self.pixel_max <= 255:
            raise UserError(f"{self.name}: pixel_max must be in 1..255, got {self.pixel_max}")
        if not self.class_names:  # default names are the class indices
            object.__setattr__(self, "class_names", tuple(str(i) for i in range(self.num_classes)))
        elif len(self.class_names) != self.num_classes:
            raise UserError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes; "
                "give one name per class or none"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape (C, H, W)."""
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))

    @cached_property
    def _moments(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        # Integer sums are exact, so mean/std do not depend on chunking or summation order.
        x = self.x_train
        sums = torch.zeros(x.shape[1], dtype=torch.int64)
        squares = torch.zeros(x.shape[1], dtype=torch.int64)
        for start in range(0, len(x), 1024):  # chunks bound the int64 temporary to ~25 MB for 32×32×3
            chunk = x[start : start + 1024].to(torch.int64)
            sums += chunk.sum(dim=(0, 2, 3))
            squares += (chunk * chunk).sum(dim=(0, 2, 3))
        count = len(x) * x.shape[2] * x.shape[3]
        means, stds = [], []
        for s, q in zip(sums.tolist(), squares.tolist(), strict=True):
            means.append(float(Fraction(s, count * self.pixel_max)))
            var = Fraction(count * q - s * s, count * count * self.pixel_max**2)
            stds.append(math.sqrt(var))
        return tuple(means), tuple(stds)

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the training images in [0, 1]."""
        return self._moments[0]

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel population standard deviation of the training images in [0, 1]."""
        return self._moments[1]


# --------------------------------------------------------------------------------------------- helpers


def _to_images(x: np.ndarray, what: str) -> np.ndarray:
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


def _to_labels(y: Any, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:  # column vectors, as MATLAB and some exporters write them
        y = y[:, 0]
    if y.ndim != 1:
        raise UserError(f"{what} has shape {y.shape}: expected one integer label per image (shape N)")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{what} has dtype {y.dtype}: integer class labels expected (0..num_classes-1)")
    return y.astype(np.int64)


def _build(
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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, so a wrapped error stays on one line."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _existing(root: str | Path | None, name: str, layout: str) -> Path:
    if root is None:
        raise UserError(f"{name} needs --data-root: {layout}")
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"{name} data root {path} does not exist: give {layout}")
    return path


def _no_root(root: str | Path | None, name: str) -> None:
    if root is not None:
        raise UserError(f"{name} is generated in memory and takes no --data-root; drop --data-root {root}")


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
        raise UserError(f"cannot read {path} ({_first_line(exc)}); expected {layout}") from exc
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
    return _to_images(data.reshape(-1, 3, 32, 32), f"{path} b'data'")


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


def _decode_names(raw: Any, count: int) -> tuple[str, ...]:
    if not isinstance(raw, list | tuple | np.ndarray) or len(raw) != count:
        return ()
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw)


def _read_npz(path: Path, name: str, layout: str) -> dict[str, np.ndarray]:
    """Read the four arrays (and ``label_names`` when present) from an .npz without allowing pickles."""
    try:
        with path.open("rb") as f:
            head = f.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise UserError(f"{name}: cannot read {path} ({_first_line(exc)}); give {layout}") from exc
    # numpy takes any other file for a pickle and suggests allow_pickle=True, which would be wrong advice here.
    if not head.startswith(_ZIP_MAGICS) and head != _NPY_MAGIC:
        found = f"starts with {head!r}" if head else "is empty"
        raise UserError(
            f"{name}: {path} is not an .npz archive (np.savez writes a zip file; this file {found}); give {layout}"
        )
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:  # zip, header and pickle errors all mean a corrupt or foreign file
        raise UserError(f"{name}: cannot read {path} ({_first_line(exc)}); give {layout}") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise UserError(f"{name}: {path} is a single .npy array, not an .npz archive; give {layout}")
    with npz:
        missing = [k for k in NPZ_KEYS if k not in npz.files]
        if missing:
            raise UserError(
                f"{name}: {path} lacks {', '.join(missing)} "
                f"(has {', '.join(npz.files) or 'nothing'}); give {layout}"
            )
        wanted = [*NPZ_KEYS, *(["label_names"] if "label_names" in npz.files else [])]
        try:
            arrays = {k: npz[k] for k in wanted}
        except Exception as exc:  # a damaged member fails only when it is read
            raise UserError(f"{name}: cannot read {path} ({_first_line(exc)}); give {layout}") from exc
    return arrays


def _from_npz(
    path: Path,
    name: str,
    layout: str,
    num_classes: int | None,
    default_names: tuple[str, ...],
    shape: tuple[int, int, int] | None = None,
) -> Dataset:
    a = _read_npz(path, name, layout)
    x_train = _to_images(a["x_train"], f"{path} x_train")
    x_test = _to_images(a["x_test"], f"{path} x_test")
    y_train = _to_labels(a["y_train"], f"{path} y_train")
    y_test = _to_labels(a["y_test"], f"{path} y_test")
    if num_classes is None:
        top = max((int(y.max()) for y in (y_train, y_test) if len(y)), default=0)
        num_classes = max(top + 1, 1)
    names = default_names
    if "label_names" in a:
        names = _decode_names(list(a["label_names"].reshape(-1)), num_classes) or default_names
    return _build(
        name, x_train, y_train, x_test, y_test,
        num_classes=num_classes, pixel_max=255, class_names=names, where=str(path), shape=shape,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- sources


def _load_digits(root: str | Path | None) -> Dataset:
    _no_root(root, "digits")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, None]  # values are whole numbers 0..16
    labels = bunch.target.astype(np.int64)
    # A fixed split (seed 0) so that test accuracy means the same thing in every run, whatever the run seed.
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=360, stratify=labels, random_state=0
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)  # keep sklearn's row order within a split
    return _build(
        "digits", images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
        num_classes=10, pixel_max=16, class_names=tuple(str(i) for i in range(10)), where="sklearn digits",
        shape=DIGITS_SHAPE,
    )  # fmt: skip


def _load_cifar10(root: str | Path | None) -> Dataset:
    layout = f"the cifar-10-batches-py folder (data_batch_1..data_batch_5, test_batch) or {_NPZ_LAYOUT}"
    path = _existing(root, "cifar10", layout)
    if path.is_file() and path.suffix == ".npz":
        return _from_npz(path, "cifar10", layout, 10, CIFAR10_NAMES, CIFAR_SHAPE)
    folder = _cifar_folder(
        path, "cifar-10-batches-py", CIFAR10_FILES, "cifar10", layout, "cifar-10-python.tar.gz"
    )
    xs, ys = [], []
    for fname in CIFAR10_FILES:
        batch = _unpickle(folder / fname, layout)
        data = _pickle_field(batch, b"data", folder / fname, layout)
        xs.append(_cifar_images(data, folder / fname, layout))
        labels = _pickle_field(batch, b"labels", folder / fname, layout)
        ys.append(_to_labels(labels, f"{folder / fname} b'labels'"))
    names = CIFAR10_NAMES
    if (folder / "batches.meta").is_file():
        meta = _unpickle(folder / "batches.meta", layout)
        names = _decode_names(meta.get(b"label_names"), 10) or CIFAR10_NAMES
    return _build(
        "cifar10", np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5],
        num_classes=10, pixel_max=255, class_names=names, where=str(folder), shape=CIFAR_SHAPE,
    )  # fmt: skip


def _load_cifar100(root: str | Path | None) -> Dataset:
    layout = f"the cifar-100-python folder (train, test, meta) or {_NPZ_LAYOUT}"
    path = _existing(root, "cifar100", layout)
    if path.is_file() and path.suffix == ".npz":
        return _from_npz(path, "cifar100", layout, 100, CIFAR100_NAMES, CIFAR_SHAPE)
    folder = _cifar_folder(
        path, "cifar-100-python", CIFAR100_FILES, "cifar100", layout, "cifar-100-python.tar.gz"
    )
    splits = []
    for fname in CIFAR100_FILES:
        batch = _unpickle(folder / fname, layout)
        x = _cifar_images(_pickle_field(batch, b"data", folder / fname, layout), folder / fname, layout)
        labels = _pickle_field(batch, b"fine_labels", folder / fname, layout)
        splits.append((x, _to_labels(labels, f"{folder / fname} b'fine_labels'")))
    names = CIFAR100_NAMES
    if (folder / "meta").is_file():
        meta = _unpickle(folder / "meta", layout)
        names = _decode_names(meta.get(b"fine_label_names"), 100) or CIFAR100_NAMES
    (x_train, y_train), (x_test, y_test) = splits
    return _build(
        "cifar100", x_train, y_train, x_test, y_test,
        num_classes=100, pixel_max=255, class_names=names, where=str(folder), shape=CIFAR_SHAPE,
    )  # fmt: skip


def _load_svhn(root: str | Path | None) -> Dataset:
    layout = "the SVHN folder with train_32x32.mat and test_32x32.mat (format 2, cropped digits)"
    path = _existing(root, "svhn", layout)
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
            raise UserError(f"svhn: cannot read {path / fname} ({_first_line(exc)}); give {layout}") from exc
        if "X" not in mat or "y" not in mat:
            raise UserError(f"svhn: {path / fname} lacks the X and y variables; give {layout}")
        x = mat["X"]
        if x.ndim != 4 or x.shape[2] != 3:
            raise UserError(f"svhn: {path / fname} X has shape {x.shape}; expected 32×32×3×N uint8")
        x = _to_images(x.transpose(3, 2, 0, 1), f"{path / fname} X")  # H×W×C×N -> N×C×H×W
        y = _to_labels(mat["y"], f"{path / fname} y")
        y = np.where(y == 10, 0, y)  # SVHN writes digit 0 as label 10
        splits.append((x, y))
    (x_train, y_train), (x_test, y_test) = splits
    return _build(
        "svhn", x_train, y_train, x_test, y_test,
        num_classes=10, pixel_max=255, class_names=tuple(str(i) for i in range(10)), where=str(path),
        shape=CIFAR_SHAPE,
    )  # fmt: skip


def _load_npz(root: str | Path | None, num_classes: int | None = None) -> Dataset:
    path = _existing(root, "npz", _NPZ_LAYOUT)
    if not path.is_file():
        raise UserError(f"npz: {path} is a folder; give {_NPZ_LAYOUT}")
    if num_classes is not None and not (_is_int(num_classes) and num_classes >= 1):
        raise UserError(f"npz: num_classes must be a positive integer, got {num_classes!r}")
    return _from_npz(path, "npz", _NPZ_LAYOUT, num_classes, ())


# The most pixel values of one generated part (prototypes, train or test split): 8 GiB of float64.
_SYNTHETIC_MAX_VALUES = 2**30


def _load_synthetic(
    root: str | Path | None,
    shape: tuple[int, int, int] | list[int] = (3, 32, 32),
    num_classes: int = 10,
    n_train: int = 1000,
    n_test: int = 200,
    seed: int = 0,
    noise: float = 0.25,
) -> Dataset:
    """Each class is a fixed random prototype image; a sample is its prototype plus Gaussian noise."""
    _no_root(root, "synthetic")
    if not isinstance(shape, list | tuple):  # tuple() of a string or a number would fail or mislead
        raise UserError(f"synthetic: shape must be three positive integers (C, H, W), got {shape!r}")
    shape = tuple(shape)
    if len(shape) != 3 or not all(_is_int(s) and s > 0 for s in shape):
        raise UserError(f"synthetic: shape must be three positive integers (C, H, W), got {shape!r}")
    for opt, value, low in (("num_classes", num_classes, 2), ("n_train", n_train, 1), ("n_test", n_test, 1)):
        if not _is_int(value) or value < low:
            raise UserError(f"synthetic: {opt} must be an integer >= {low}, got {value!r}")
    if not _is_int(seed) or seed < 0:  # numpy's seed sequences refuse negative entries
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
    return _build(
        "synthetic", x_train, y_train, x_test, y_test,
        num_classes=num_classes, pixel_max=255, class_names=tuple(str(i) for i in range(num_classes)),
        where="synthetic",
    )  # fmt: skip


@dataclass(frozen=True)
class _Source:
    loader: Callable[..., Dataset]
    options: tuple[str, ...]


_SOURCES: Registry[_Source] = Registry("dataset", {
    "digits": _Source(_load_digits, ()),
    "cifar10": _Source(_load_cifar10, ()),
    "cifar100": _Source(_load_cifar100, ()),
    "svhn": _Source(_load_svhn, ()),
    "npz": _Source(_load_npz, ("num_classes",)),
    "synthetic": _Source(_load_synthetic, ("shape", "num_classes", "n_train", "n_test", "seed", "noise")),
})


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return _SOURCES.names()


def _source(name: str, options: Mapping[str, Any]) -> _Source:
    source = _SOURCES.get(name)
    # str(): sorting names of mixed types (from a hand-written YAML mapping) would fail; repr() keeps the message
    # on one line when a name holds a line break.
    unknown = sorted({str(o) if str(o).isprintable() else repr(o) for o in options} - set(source.options))
    if unknown:
        valid = ", ".join(source.options) if source.options else "none"
        raise UserError(f"dataset {name} does not take option {', '.join(unknown)}; valid options: {valid}")
    return source


def check_dataset_args(name: str, options: Mapping[str, Any] | None = None) -> None:
    """Raise UserError if ``name`` or an option name is unknown, without loading anything.

    The config loader calls this so that a typo fails at load time rather than when training starts.
    """
    _source(name, options or {})


def load_dataset(name: str, root: str | Path | None = None, **options: Any) -> Dataset:
    """Load dataset ``name`` (see :func:`list_datasets`) from ``root``; raise UserError on any bad input."""
    return _source(name, options).loader(root, **options)
