"""Dataset sources: load a named image dataset into uint8 tensors, or fail with a one-line UserError.

Every in-memory source returns the same :class:`~advtrain.data.dataset.Dataset`; one module per format: ``npz``,
``cifar`` (CIFAR-10/100 batches), ``svhn`` (.mat files) and ``builtin`` (digits and synthetic, no files). The image
folder layouts (``folders``) return a :class:`~advtrain.data.folders.FolderDataset`, which stays on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advtrain.data.dataset import Dataset
from advtrain.data.folders import FolderDataset
from advtrain.data.sources.builtin import load_digits, load_synthetic
from advtrain.data.sources.cifar import load_cifar10, load_cifar100
from advtrain.data.sources.folders import load_image_folder, load_tiny_imagenet
from advtrain.data.sources.npz import load_npz
from advtrain.data.sources.svhn import load_svhn
from advtrain.errors import UserError
from advtrain.registry import Registry


@dataclass(frozen=True)
class _Source:
    loader: Callable[..., Dataset | FolderDataset]
    options: tuple[str, ...]


_FOLDER_OPTIONS = ("image_size", "resize", "workers", "random_resized_crop")
_SOURCES: Registry[_Source] = Registry("dataset", {
    "digits": _Source(load_digits, ()),
    "cifar10": _Source(load_cifar10, ()),
    "cifar100": _Source(load_cifar100, ()),
    "svhn": _Source(load_svhn, ()),
    "npz": _Source(load_npz, ("num_classes",)),
    "synthetic": _Source(load_synthetic, ("shape", "num_classes", "n_train", "n_test", "seed", "noise")),
    "image_folder": _Source(load_image_folder, ("classes", *_FOLDER_OPTIONS)),
    "tiny_imagenet": _Source(load_tiny_imagenet, _FOLDER_OPTIONS),
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


def load_dataset(name: str, root: str | Path | None = None, **options: Any) -> Dataset | FolderDataset:
    """Load dataset ``name`` (see :func:`list_datasets`) from ``root``; raise UserError on any bad input.

    The image-folder sources (image_folder, tiny_imagenet) return a FolderDataset: file lists, images decoded
    when read; the others an in-memory Dataset."""
    return _source(name, options).loader(root, **options)
