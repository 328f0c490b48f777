"""The .npz source: four arrays x_train, y_train, x_test, y_test (and optional label_names), read without pickles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advtrain.data.dataset import Dataset
from advtrain.data.sources.checks import (
    build_dataset,
    decode_names,
    existing_root,
    first_line,
    is_int,
    to_images,
    to_labels,
)
from advtrain.errors import UserError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_LAYOUT = "an .npz with x_train, y_train, x_test, y_test (uint8 images NCHW, NHWC or NHW; integer labels)"

# The first bytes of an .npz (a zip archive; an empty one starts with its end record) and of a single .npy array.
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


def _read_npz(path: Path, name: str, layout: str) -> dict[str, np.ndarray]:
    """Read the four arrays (and ``label_names`` when present) from an .npz without allowing pickles."""
    try:
        with path.open("rb") as f:
            head = f.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise UserError(f"{name}: cannot read {path} ({first_line(exc)}); give {layout}") from exc
    # numpy takes any other file for a pickle and suggests allow_pickle=True, which would be wrong advice here.
    if not head.startswith(_ZIP_MAGICS) and head != _NPY_MAGIC:
        found = f"starts with {head!r}" if head else "is empty"
        raise UserError(
            f"{name}: {path} is not an .npz archive (np.savez writes a zip file; this file {found}); give {layout}"
        )
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:  # zip, header and pickle errors all mean a corrupt or foreign file
        raise UserError(f"{name}: cannot read {path} ({first_line(exc)}); give {layout}") from exc
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
            raise UserError(f"{name}: cannot read {path} ({first_line(exc)}); give {layout}") from exc
    return arrays


def from_npz(
    path: Path,
    name: str,
    layout: str,
    num_classes: int | None,
    default_names: tuple[str, ...],
    shape: tuple[int, int, int] | None = None,
) -> Dataset:
    a = _read_npz(path, name, layout)
    x_train = to_images(a["x_train"], f"{path} x_train")
    x_test = to_images(a["x_test"], f"{path} x_test")
    y_train = to_labels(a["y_train"], f"{path} y_train")
    y_test = to_labels(a["y_test"], f"{path} y_test")
    if num_classes is None:
        top = max((int(y.max()) for y in (y_train, y_test) if len(y)), default=0)
        num_classes = max(top + 1, 1)
    names = default_names
    if "label_names" in a:
        names = decode_names(list(a["label_names"].reshape(-1)), num_classes) or default_names
    return build_dataset(
        name, x_train, y_train, x_test, y_test,
        num_classes=num_classes, pixel_max=255, class_names=names, where=str(path), shape=shape,
    )  # fmt: skip



def load_npz(root: str | Path | None, num_classes: int | None = None) -> Dataset:
    path = existing_root(root, "npz", NPZ_LAYOUT)
    if not path.is_file():
        raise UserError(f"npz: {path} is a folder; give {NPZ_LAYOUT}")
    if num_classes is not None and not (is_int(num_classes) and num_classes >= 1):
        raise UserError(f"npz: num_classes must be a positive integer, got {num_classes!r}")
    return from_npz(path, "npz", NPZ_LAYOUT, num_classes, ())
