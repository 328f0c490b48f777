"""Image-folder layouts: ImageNet-style class folders (optionally a listed class subset, e.g. ImageNet-100),
Tiny-ImageNet's own layout, and ImageNet-C style corruption folders. Only file lists are read here; the images
are decoded when a batch needs them (advtrain.data.folders).

Test images (the layout's val/) are ordered class by class in turn (the first file of every class, then the
second, ...), so the first n of them, which an evaluation reads, cover the classes evenly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from advtrain.data.folders import FileList, FolderDataset, load_images
from advtrain.data.images import ImageTransform
from advtrain.data.sources.checks import existing_root, is_int
from advtrain.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_FOLDER_LAYOUT = "a folder holding train/<class>/*.jpg and val/<class>/*.jpg (jpg, jpeg or png)"
TINY_LAYOUT = "the tiny-imagenet-200 folder (wnids.txt, train/<wnid>/images/, val/images/, val/val_annotations.txt)"
CORRUPTION_LAYOUT = "a folder holding <corruption>/<severity>/<class>/*.jpg (the ImageNet-C layout)"


def _images_in(folder: Path) -> list[str]:
    """Names of the image files directly in `folder`, sorted."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file())


def _subfolders(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _class_images(folder: Path, what: str) -> list[str]:
    """The images of one class folder; a missing or empty one is a UserError."""
    if not folder.is_dir():
        raise UserError(f"{what}: class folder {folder} does not exist: add it, or leave the class out")
    names = _images_in(folder)
    if not names:
        raise UserError(f"{what}: {folder} holds no .jpg/.jpeg/.png image: add its images or remove the folder")
    return names


def _interleaved(per_class: list[list[str]]) -> tuple[list[str], list[int]]:
    """Paths and labels taking the classes in turn: file 0 of every class, then file 1, ..."""
    paths, labels = [], []
    for k in range(max((len(files) for files in per_class), default=0)):
        for label, files in enumerate(per_class):
            if k < len(files):
                paths.append(files[k])
                labels.append(label)
    return paths, labels


# Class lists shipped with advtrain, named by `data.options.classes: NAME` (the file advtrain/configs/NAME_classes.txt).
BUNDLED_CLASS_LISTS = Path(__file__).parents[2] / "configs"


def class_list_path(classes: str | Path) -> Path:
    """The file `data.options.classes` names: a bundled list's name (`imagenet100`), or a path (relative to the
    working folder). A bundled name has no folder and no suffix, so it is never mistaken for a path."""
    bundled = sorted(p.name.removesuffix("_classes.txt") for p in BUNDLED_CLASS_LISTS.glob("*_classes.txt"))
    text = str(classes)
    if "/" not in text and "." not in text and os.sep not in text:
        if text not in bundled:
            raise UserError(f"image_folder: no bundled class list is named {text!r} (bundled: {', '.join(bundled)}): "
                            "name one of them, or give the path of a class-list file")
        return BUNDLED_CLASS_LISTS / f"{text}_classes.txt"
    return Path(classes).expanduser()


def read_class_list(path: str | Path, what: str) -> list[str]:
    """Class folder names, one a line (blank lines skipped); their order is the label order."""
    file = Path(path).expanduser()
    try:
        names = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{what}: cannot read the class list {file} ({type(exc).__name__}): give a text file "
                        "with one class folder name a line") from None
    if not names:
        raise UserError(f"{what}: the class list {file} is empty: give one class folder name a line")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{what}: the class list {file} names {', '.join(repeated[:3])} twice: list each class once")
    return names


def _image_folder_files(root: Path, classes: str | Path | None) -> tuple[FileList, FileList, tuple[str, ...]]:
    what = "image_folder"
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(f"{what}: {root} has no {split}/ folder: give {IMAGE_FOLDER_LAYOUT}")
    found = _subfolders(root / "train")
    if classes is not None:
        classes = class_list_path(classes)
    names = read_class_list(classes, what) if classes is not None else found
    if not names:
        raise UserError(f"{what}: {root / 'train'} holds no class folder: give {IMAGE_FOLDER_LAYOUT}")
    missing = [n for n in names if n not in found]
    if missing:
        raise UserError(f"{what}: class {missing[0]} of {classes} is not a folder in {root / 'train'}"
                        f"{f' (nor {len(missing) - 1} more)' if len(missing) > 1 else ''}: fix the class list")
    if classes is None:
        strays = [n for n in _subfolders(root / "val") if n not in names]
        if strays:
            raise UserError(f"{what}: {root / 'val' / strays[0]} is not a class of {root / 'train'}: every val/ "
                            "class needs training images (or list the classes to use with data.options.classes)")
    train_paths, train_labels = [], []
    for label, name in enumerate(names):
        files = _class_images(root / "train" / name, what)
        train_paths += [f"train/{name}/{f}" for f in files]
        train_labels += [label] * len(files)
    val = [[f"val/{name}/{f}" for f in _images_in(root / "val" / name)] if (root / "val" / name).is_dir() else []
           for name in names]
    if not any(val):
        raise UserError(f"{what}: {root / 'val'} holds no image of the training classes: give {IMAGE_FOLDER_LAYOUT}")
    return (FileList.of(root, train_paths, train_labels), FileList.of(root, *_interleaved(val)), tuple(names))


def _tiny_imagenet_files(root: Path) -> tuple[FileList, FileList, tuple[str, ...]]:
    what = "tiny_imagenet"
    wnids, annotations = root / "wnids.txt", root / "val" / "val_annotations.txt"
    for needed in (wnids, annotations, root / "train", root / "val" / "images"):
        if not needed.exists():
            raise UserError(f"{what}: {needed} does not exist: give {TINY_LAYOUT}")
    names = read_class_list(wnids, what)
    label_of = {name: label for label, name in enumerate(names)}
    train_paths, train_labels = [], []
    for label, name in enumerate(names):
        files = _class_images(root / "train" / name / "images", what)
        train_paths += [f"train/{name}/images/{f}" for f in files]
        train_labels += [label] * len(files)
    val_paths, val_labels = [], []
    for number, line in enumerate(annotations.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in label_of:
            raise UserError(f"{what}: {annotations} line {number} does not name an image and a class of {wnids} "
                            "(FILE<tab>WNID<tab>box...): fix or restore the file")
        val_paths.append(f"val/images/{fields[0]}")
        val_labels.append(label_of[fields[1]])
    if not val_paths:
        raise UserError(f"{what}: {annotations} lists no image: restore it from the dataset's archive")
    return FileList.of(root, train_paths, train_labels), FileList.of(root, val_paths, val_labels), tuple(names)


def folder_options(what: str, image_size: Any, resize: Any, workers: Any, random_resized_crop: Any,
                   default_size: int, resize_ratio: float) -> dict[str, Any]:
    """The checked image_size, resize, workers and random_resized_crop of a folder source (FolderDataset's
    keywords); `resize` defaults to round(image_size / `resize_ratio`)."""
    size = default_size if image_size is None else image_size
    if not is_int(size) or size < 1:
        raise UserError(f"{what}: data.options.image_size must be a positive integer (pixels), got {image_size!r}")
    resize = round(size / resize_ratio) if resize is None else resize
    if not is_int(resize) or resize < size:
        raise UserError(f"{what}: data.options.resize must be an integer >= image_size ({size}): the shorter side "
                        f"is resized to it before the centre crop; got {resize!r}")
    if not is_int(workers) or workers < 0:
        raise UserError(f"{what}: data.options.workers must be an integer >= 0 (0 decodes in the training process), "
                        f"got {workers!r}")
    if not isinstance(random_resized_crop, bool):
        raise UserError(f"{what}: data.options.random_resized_crop must be true or false, got {random_resized_crop!r}")
    return {"image_size": size, "resize": resize, "workers": workers, "random_resized_crop": random_resized_crop}


def load_image_folder(root: str | Path | None, classes: str | Path | None = None, image_size: int | None = None,
                      resize: int | None = None, workers: int = 4, random_resized_crop: bool = False) -> FolderDataset:
    """ROOT/train/<class>/* and ROOT/val/<class>/* (the test split); `classes`: a class-list file choosing and
    ordering the classes (ImageNet-100). Images 224 pixels, resized to 256 for the centre crop, by default."""
    options = folder_options("image_folder", image_size, resize, workers, random_resized_crop, 224, 0.875)
    path = existing_root(root, "image_folder", IMAGE_FOLDER_LAYOUT)
    train, test, names = _image_folder_files(path, classes)
    return FolderDataset("image_folder", train, test, names, **options)


def load_tiny_imagenet(root: str | Path | None, image_size: int | None = None, resize: int | None = None,
                       workers: int = 4, random_resized_crop: bool = False) -> FolderDataset:
    """Tiny-ImageNet (200 classes of 64×64 images); the test split is its val/. Not resized by default."""
    options = folder_options("tiny_imagenet", image_size, resize, workers, random_resized_crop, 64, 1.0)
    path = existing_root(root, "tiny_imagenet", TINY_LAYOUT)
    train, test, names = _tiny_imagenet_files(path)
    return FolderDataset("tiny_imagenet", train, test, names, **options)


def _corruption_folder(root: str | Path, corruption: str, severity: int) -> Path:
    folder = Path(root).expanduser() / corruption / str(severity)
    if not folder.is_dir():
        kinds = _subfolders(Path(root).expanduser()) if Path(root).expanduser().is_dir() else []
        found = f" (found: {', '.join(kinds[:8])})" if kinds else ""
        raise UserError(f"corruption folder {folder} does not exist: give {CORRUPTION_LAYOUT}{found}")
    return folder


def _corrupted_transform(data: FolderDataset, resize: int | None) -> ImageTransform:
    """Corrupted images are stored at the model's size (ImageNet-C: 224×224 centre crops of the resized val
    images), so by default their shorter side is resized to `image_size` (no change at that size) before the
    centre crop; `resize` chooses another shorter side."""
    if resize is not None and (not is_int(resize) or resize < data.image_size):
        raise UserError(f"resize must be an integer >= the image size {data.image_size}, got {resize!r}")
    return ImageTransform(data.image_size, data.image_size if resize is None else resize)


def read_corruption_folder(data: FolderDataset, root: str | Path, corruption: str, severity: int,
                           n: int | None = None, resize: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """At most `n` images of ROOT/<corruption>/<severity>/<class>/* as uint8 N×3×S×S and int64 labels, with the
    classes and labels of `data` (class folders `data` lacks are skipped: a class subset reads its own), taken
    class by class in turn so that any n covers the classes evenly (`_corrupted_transform` sizes them)."""
    folder = _corruption_folder(root, corruption, severity)
    if n is not None and (not is_int(n) or n < 1):
        raise UserError(f"the number of corrupted images must be a positive integer, got {n!r}")
    present = set(_subfolders(folder))
    per_class = [[f"{name}/{f}" for f in _images_in(folder / name)] if name in present else []
                 for name in data.class_names]
    if not any(per_class):
        raise UserError(f"{folder} holds no image of {data.name}'s classes ({data.class_names[0]}, ...): give "
                        f"{CORRUPTION_LAYOUT} with the training data's class folder names")
    files = FileList.of(folder, *_interleaved(per_class))
    count = len(files) if n is None else min(n, len(files))
    return load_images(files, _corrupted_transform(data, resize), [(i, None) for i in range(count)], data.workers)


def corrupted_test_images(data: FolderDataset, root: str | Path, corruption: str, severity: int,
                          n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The corrupted copies of `data`'s first `n` test images, image for image: ROOT/<corruption>/<severity>/
    <class>/<the test image's file name> (ImageNet-C, Tiny-ImageNet-C), as uint8 images and the test labels."""
    folder = _corruption_folder(root, corruption, severity)
    count = len(data.test) if n is None else min(n, len(data.test))
    names = []
    for i in range(count):
        name = f"{data.class_names[data.test.labels[i]]}/{data.test.path(i).name}"
        if not (folder / name).is_file():
            raise UserError(f"{folder} has no {name}, the corrupted copy of test image {data.test.path(i)}: give "
                            f"{CORRUPTION_LAYOUT} made from this dataset's test images")
        names.append(name)
    files = FileList.of(folder, names, data.test.labels[:count].tolist())
    return load_images(files, _corrupted_transform(data, None), [(i, None) for i in range(count)], data.workers)
