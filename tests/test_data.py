"""Tests for advtrain.data: sources, validation split, augmentation and the device batcher."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from advtrain.data import (
    Augment,
    Dataset,
    DeviceBatcher,
    augment_batch,
    list_datasets,
    load_dataset,
    split_validation,
    to_float,
)
from advtrain.data.batcher import draw_augment_params
from advtrain.errors import UserError

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# ------------------------------------------------------------------------------------------ fake files


def _images(n: int, seed: int, shape: tuple[int, ...] = (3, 32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _dump(path: Path, obj: object, protocol: int) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def make_cifar10(parent: Path, per_batch: int = 4, protocol: int = 2) -> tuple[np.ndarray, ...]:
    """A tiny cifar-10-batches-py in the standard layout; returns (x_train, y_train, x_test, y_test) NCHW."""
    folder = parent / "cifar-10-batches-py"
    folder.mkdir()
    xs, ys = [], []
    for i, fname in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        x = _images(per_batch, i)
        y = [(i + j) % 10 for j in range(per_batch)]
        batch = {b"batch_label": fname.encode(), b"labels": y, b"data": x.reshape(per_batch, 3072)}
        batch[b"filenames"] = [f"{fname}_{j}.png".encode() for j in range(per_batch)]
        _dump(folder / fname, batch, protocol)
        xs.append(x)
        ys.append(np.array(y))
    names = [b"plane", b"car", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072}, protocol)
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def make_npz(path: Path, layout: str = "NCHW", n: int = 6, **overrides: np.ndarray) -> dict[str, np.ndarray]:
    arrays = {
        "x_train": _images(n, 1),
        "y_train": np.arange(n, dtype=np.uint8) % 10,
        "x_test": _images(3, 2),
        "y_test": np.array([9, 0, 4], dtype=np.uint8),
    }
    if layout == "NHWC":
        arrays = {k: v.transpose(0, 2, 3, 1) if k.startswith("x") else v for k, v in arrays.items()}
    arrays.update(overrides)
    np.savez(path, **arrays)
    return arrays


def assert_one_line_error(excinfo: pytest.ExceptionInfo[UserError], *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ------------------------------------------------------------------------------------------ sources


def test_list_datasets_names_every_source() -> None:
    assert list_datasets() == ["cifar10", "cifar100", "digits", "image_folder", "npz", "svhn", "synthetic",
                               "tiny_imagenet"]


def test_digits_shapes_values_and_scaling() -> None:
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert ds.pixel_max == 16 and ds.num_classes == 10 and ds.shape == (1, 8, 8)
    assert int(ds.x_train.max()) == 16 and int(ds.x_train.min()) == 0
    assert ds.x_train.is_contiguous() and ds.x_test.is_contiguous()

    # The split is sklearn's stratified split with seed 0; rows keep sklearn's order within each split.
    bunch = load_digits()
    train_idx, test_idx = train_test_split(
        np.arange(len(bunch.target)), test_size=360, stratify=bunch.target, random_state=0
    )
    for x, y, idx in ((ds.x_train, ds.y_train, train_idx), (ds.x_test, ds.y_test, test_idx)):
        idx = np.sort(idx)
        expected = torch.from_numpy(bunch.data[idx] / 16).float()
        assert torch.equal(to_float(x, ds.pixel_max).reshape(len(idx), 64), expected)
        assert torch.equal(y, torch.from_numpy(bunch.target[idx]).long())


def test_digits_split_is_fixed() -> None:
    a, b = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)


def test_dataset_mean_std_match_numpy() -> None:
    ds = load_dataset("synthetic", shape=(3, 5, 4), n_train=50, n_test=5)
    x = ds.x_train.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(ds.mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(ds.std, x.std(axis=(0, 2, 3)), rtol=1e-12)
    assert isinstance(ds.mean, tuple) and len(ds.std) == 3


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("give_parent", [False, True])
def test_cifar10_pickle_folder(tmp_path: Path, give_parent: bool, protocol: int) -> None:
    x_train, y_train, x_test, y_test = make_cifar10(tmp_path, protocol=protocol)
    root = tmp_path if give_parent else tmp_path / "cifar-10-batches-py"
    ds = load_dataset("cifar10", root)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert torch.equal(ds.x_train, torch.from_numpy(x_train))
    assert torch.equal(ds.y_train, torch.from_numpy(y_train).long())
    assert torch.equal(ds.x_test, torch.from_numpy(x_test))
    assert torch.equal(ds.y_test, torch.from_numpy(y_test).long())
    assert ds.class_names[:2] == ("plane", "car") and ds.num_classes == 10 and ds.pixel_max == 255


def test_cifar100_pickle_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x_train, x_test = _images(5, 7), _images(2, 8)
    for fname, x, labels in (("train", x_train, [0, 99, 50, 1, 2]), ("test", x_test, [98, 3])):
        batch = {b"data": x.reshape(len(x), -1), b"fine_labels": labels, b"coarse_labels": [0] * len(x)}
        _dump(folder / fname, batch, 2)
    fine = [f"name{i}".encode() for i in range(100)]
    _dump(folder / "meta", {b"fine_label_names": fine, b"coarse_label_names": []}, 2)

    for root in (folder, tmp_path):
        ds = load_dataset("cifar100", root)
        assert ds.num_classes == 100 and ds.class_names[99] == "name99"
        assert torch.equal(ds.x_train, torch.from_numpy(x_train))
        assert ds.y_train.tolist() == [0, 99, 50, 1, 2] and ds.y_test.tolist() == [98, 3]


def test_svhn_mat_pair_maps_label_10_to_0(tmp_path: Path) -> None:
    x_train, x_test = _images(4, 3), _images(2, 4)
    y_train, y_test = np.array([[10], [1], [9], [10]], np.uint8), np.array([[5], [10]], np.uint8)
    for fname, x, y in (("train_32x32.mat", x_train, y_train), ("test_32x32.mat", x_test, y_test)):
        scipy.io.savemat(tmp_path / fname, {"X": x.transpose(2, 3, 1, 0), "y": y})  # 32×32×3×N
    ds = load_dataset("svhn", tmp_path)
    assert torch.equal(ds.x_train, torch.from_numpy(x_train))
    assert torch.equal(ds.x_test, torch.from_numpy(x_test))
    assert ds.y_train.tolist() == [0, 1, 9, 0] and ds.y_test.tolist() == [5, 0]


def test_npz_nchw_and_nhwc_give_identical_tensors(tmp_path: Path) -> None:
    make_npz(tmp_path / "a.npz", "NCHW")
    make_npz(tmp_path / "b.npz", "NHWC")
    a, b = load_dataset("cifar10", tmp_path / "a.npz"), load_dataset("cifar10", tmp_path / "b.npz")
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.x_train.shape == (6, 3, 32, 32) and b.x_train.is_contiguous()
    assert a.class_names[0] == "airplane"


def test_npz_grayscale_and_generic_num_classes(tmp_path: Path) -> None:
    gray = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    path = tmp_path / "g.npz"
    np.savez(path, x_train=gray, y_train=np.array([0, 1, 2, 1]), x_test=gray[:2], y_test=np.array([3, 0]))
    ds = load_dataset("npz", path)
    assert ds.x_train.shape == (4, 1, 5, 6) and torch.equal(ds.x_train[:, 0], torch.from_numpy(gray))
    assert ds.num_classes == 4 and ds.class_names == ("0", "1", "2", "3")
    assert load_dataset("npz", path, num_classes=7).num_classes == 7


def test_real_cifar_subset(cifar_subset: Path) -> None:
    ds = load_dataset("cifar10", cifar_subset)
    assert ds.x_train.shape == (4660, 3, 32, 32) and ds.x_test.shape == (846, 3, 32, 32)
    assert ds.x_train.dtype == torch.uint8 and ds.y_test.dtype == torch.int64
    assert set(ds.y_train.unique().tolist()) == set(range(10)) and int(ds.y_test.max()) <= 9
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
    assert all(0.3 < m < 0.7 for m in ds.mean) and all(0.15 < s < 0.35 for s in ds.std)


# ------------------------------------------------------------------------------------------ errors


def test_error_missing_root() -> None:
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar10")
    assert_one_line_error(excinfo, "--data-root", "cifar-10-batches-py", "x_train, y_train, x_test, y_test")
    for name in ("cifar100", "svhn", "npz"):
        with pytest.raises(UserError, match="needs --data-root"):
            load_dataset(name)


def test_error_nonexistent_path(tmp_path: Path) -> None:
    with pytest.raises(UserError) as excinfo:
        load_dataset("svhn", tmp_path / "nowhere")
    assert_one_line_error(excinfo, "does not exist", "train_32x32.mat")


def test_error_folder_without_expected_files(tmp_path: Path) -> None:
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar10", tmp_path)
    assert_one_line_error(excinfo, "data_batch_1", "test_batch", "cifar-10-batches-py")
    (tmp_path / "train_32x32.mat").write_bytes(b"")
    with pytest.raises(UserError) as excinfo:
        load_dataset("svhn", tmp_path)
    assert_one_line_error(excinfo, "lacks test_32x32.mat")


def test_error_npz_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x_train=_images(2, 0), y_train=np.zeros(2, np.uint8))
    with pytest.raises(UserError) as excinfo:
        load_dataset("npz", path)
    assert_one_line_error(excinfo, "lacks x_test, y_test", "x_train, y_train, x_test, y_test")


def test_error_float_images(tmp_path: Path) -> None:
    make_npz(tmp_path / "f.npz", x_train=_images(6, 1).astype(np.float32) / 255)
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar10", tmp_path / "f.npz")
    assert_one_line_error(excinfo, "float32", "uint8 expected")


def test_error_labels_out_of_range_and_length_mismatch(tmp_path: Path) -> None:
    make_npz(tmp_path / "r.npz", y_test=np.array([0, 10, 1], np.uint8))
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar10", tmp_path / "r.npz")
    assert_one_line_error(excinfo, "y_test", "0..9")
    make_npz(tmp_path / "m.npz", y_train=np.zeros(5, np.uint8))
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar10", tmp_path / "m.npz")
    assert_one_line_error(excinfo, "6 images", "5 labels")
    make_npz(tmp_path / "fl.npz", y_train=np.zeros(6, np.float32))
    with pytest.raises(UserError, match="integer class labels"):
        load_dataset("cifar10", tmp_path / "fl.npz")


def test_error_corrupt_files(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])  # truncated
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar10", tmp_path)
    assert_one_line_error(excinfo, "cannot read", "data_batch_3", "cifar-10-batches-py")

    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(UserError) as excinfo:
        load_dataset("npz", bad_npz)
    assert_one_line_error(excinfo, "cannot read", "x_train, y_train, x_test, y_test")

    svhn = tmp_path / "svhn"
    svhn.mkdir()
    for fname in ("train_32x32.mat", "test_32x32.mat"):
        (svhn / fname).write_bytes(b"MATLAB garbage")
    with pytest.raises(UserError) as excinfo:
        load_dataset("svhn", svhn)
    assert_one_line_error(excinfo, "cannot read", "train_32x32.mat")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 64, 64)])
def test_named_dataset_refuses_images_of_another_shape(tmp_path: Path, name: str, shape: tuple[int, ...]) -> None:
    path = tmp_path / "other.npz"
    make_npz(path, x_train=_images(6, 1, shape), x_test=_images(3, 2, shape))
    with pytest.raises(UserError) as excinfo:
        load_dataset(name, path)
    found = "×".join(map(str, shape))
    assert_one_line_error(excinfo, f"images are {found} but {name} images are 3×32×32", "data.name=npz")
    assert load_dataset("npz", path).shape == shape  # the fix the message names loads the same file


def test_svhn_refuses_images_of_another_size(tmp_path: Path) -> None:
    for fname, n in (("train_32x32.mat", 4), ("test_32x32.mat", 2)):
        x = _images(n, n, (3, 28, 28))
        scipy.io.savemat(tmp_path / fname, {"X": x.transpose(2, 3, 1, 0), "y": np.ones((n, 1), np.uint8)})
    with pytest.raises(UserError) as excinfo:
        load_dataset("svhn", tmp_path)
    assert_one_line_error(excinfo, "images are 3×28×28 but svhn images are 3×32×32")


@pytest.mark.parametrize(
    ("content", "found"), [(b"x_train,y_train\n1,2\n", "starts with b'x_trai'"), (b"", "is empty")]
)
def test_a_file_that_is_not_an_npz_archive_is_named_as_such(tmp_path: Path, content: bytes, found: str) -> None:
    path = tmp_path / "table.npz"
    path.write_bytes(content)
    with pytest.raises(UserError) as excinfo:
        load_dataset("npz", path)
    assert_one_line_error(excinfo, f"{path} is not an .npz archive (np.savez writes a zip file; this file {found})")
    assert "pickle" not in str(excinfo.value)  # numpy's advice (allow_pickle=True) does not apply to a non-archive


def test_pickle_with_foreign_globals_is_refused(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    # os.system would run a shell command on load; the loader must refuse instead of executing it.
    evil = pickle.dumps(os.system)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(evil)
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar10", tmp_path)
    assert_one_line_error(excinfo, "refusing", "test_batch")


def test_error_unknown_dataset_and_option() -> None:
    with pytest.raises(UserError) as excinfo:
        load_dataset("cifar-10")
    assert_one_line_error(excinfo, "did you mean 'cifar10'", "digits, image_folder, npz")
    with pytest.raises(UserError, match="does not take option seed"):
        load_dataset("digits", seed=3)
    with pytest.raises(UserError, match="takes no --data-root"):
        load_dataset("digits", "/tmp")


# ------------------------------------------------------------------------------------------ split


def test_split_disjoint_complete_and_seeded() -> None:
    train, val = split_validation(1000, 0.1, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(1000))
    again = split_validation(1000, 0.1, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    assert not torch.equal(split_validation(1000, 0.1, seed=4)[1], val)
    assert split_validation(1000, 37, seed=0)[1].numel() == 37


def test_split_zero_gives_empty_validation() -> None:
    for zero in (0, 0.0):
        train, val = split_validation(50, zero, seed=0)
        assert val.numel() == 0 and torch.equal(train, torch.arange(50))


def test_split_stratified_counts() -> None:
    labels = torch.tensor([0] * 500 + [1] * 300 + [2] * 200)[torch.randperm(1000)]
    train, val = split_validation(1000, 0.1, seed=1, labels=labels)
    assert torch.bincount(labels[val]).tolist() == [50, 30, 20]
    assert torch.bincount(labels[train]).tolist() == [450, 270, 180]
    # Rounding goes by largest remainder: 7 of (5, 3, 2)/10 is (3.5, 2.1, 1.4) -> (4, 2, 1).
    _, val7 = split_validation(1000, 7, seed=1, labels=labels)
    assert torch.bincount(labels[val7]).tolist() == [4, 2, 1]


@pytest.mark.parametrize("bad", [-1, 1.0, 1.5, -0.1, 1000, "0.1", True, float("nan")])
def test_split_invalid_val_size(bad: object) -> None:
    with pytest.raises(UserError) as excinfo:
        split_validation(1000, bad, seed=0)  # type: ignore[arg-type]
    assert_one_line_error(excinfo, "val_size")


def test_split_never_touches_the_test_set() -> None:
    ds = load_dataset("digits")
    train, val = split_validation(len(ds.y_train), 0.2, seed=0, labels=ds.y_train)
    assert len(train) + len(val) == len(ds.x_train) and set(val.tolist()).isdisjoint(train.tolist())
    # Provenance: map positions in x_train back to sklearn's row numbers (the loader keeps them sorted);
    # every validation row must come from sklearn's training rows and none from its test rows.
    target = load_digits().target
    sk_train, sk_test = train_test_split(
        np.arange(len(target)), test_size=360, stratify=target, random_state=0
    )
    val_rows = set(np.sort(sk_train)[val.numpy()].tolist())
    assert val_rows <= set(sk_train.tolist()) and val_rows.isdisjoint(sk_test.tolist())
    counts = torch.bincount(ds.y_train[val], minlength=10).float()
    expected = torch.bincount(ds.y_train, minlength=10).float() * 0.2
    assert torch.all((counts - expected).abs() <= 1)


# ------------------------------------------------------------------------------------------ augmentation


def reference_augment(
    x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """The obvious per-image loop: zero-pad, slice at the drawn corner, then flip."""
    _, _, h, w = x.shape
    out = []
    for i in range(len(x)):
        padded = torch.nn.functional.pad(x[i], (pad, pad, pad, pad))
        crop = padded[:, int(dy[i]) : int(dy[i]) + h, int(dx[i]) : int(dx[i]) + w]
        out.append(crop.flip(-1) if bool(flip[i]) else crop)
    return torch.stack(out)


@pytest.mark.parametrize("augment", [Augment(4, True), Augment(2, False), Augment(0, True), Augment(1, True)])
def test_augment_batch_matches_per_image_loop(augment: Augment) -> None:
    x = torch.from_numpy(_images(64, 5, (3, 9, 7)))
    out = augment_batch(x, augment, torch.Generator().manual_seed(11))
    dy, dx, flip = draw_augment_params(len(x), augment, torch.Generator().manual_seed(11))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, reference_augment(x, augment.crop_padding, dy, dx, flip))
    # The draws are not degenerate: every offset and both flip states occur in 64 images.
    pad = augment.crop_padding
    if pad:
        assert set(dy.tolist()) == set(range(2 * pad + 1)) == set(dx.tolist())
    if augment.flip:
        assert 0 < int(flip.sum()) < len(x)
    assert not torch.equal(out, x)


def test_augment_off_is_identity() -> None:
    x = torch.from_numpy(_images(8, 6))
    out = augment_batch(x, Augment(), torch.Generator().manual_seed(0))
    assert torch.equal(out, x) and out.dtype == torch.uint8


def test_augment_rejects_negative_padding() -> None:
    with pytest.raises(UserError, match="crop_padding"):
        Augment(crop_padding=-1)


def test_to_float_scales_by_pixel_max() -> None:
    x = torch.tensor([0, 8, 16], dtype=torch.uint8)
    assert to_float(x, 16).tolist() == [0.0, 0.5, 1.0] and to_float(x, 16).dtype == torch.float32


# ------------------------------------------------------------------------------------------ batcher


def _batcher(n: int = 103, device: str = "cpu", **kwargs: object) -> DeviceBatcher:
    x = torch.from_numpy(_images(n, 9, (3, 8, 8)))
    options: dict = {"batch_size": 10, "pixel_max": 255, "device": device, "seed": 5} | kwargs
    return DeviceBatcher(x, torch.arange(n), **options)


def test_batcher_visits_every_example_once_per_epoch() -> None:
    batcher = _batcher()
    assert len(batcher) == 11 and batcher.x.dtype == torch.uint8
    batches = list(batcher.epoch(0))
    assert len(batches) == 11 and len(batches[-1][1]) == 3
    ys = torch.cat([y for _, y in batches])
    assert torch.equal(torch.sort(ys).values, torch.arange(103))
    for xb, yb in batches:  # images travel with their labels
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert torch.equal(xb, batcher.x[yb].float() / 255)
    dropped = _batcher(drop_last=True)
    assert len(dropped) == 10 and sum(len(y) for _, y in dropped.epoch(0)) == 100


def test_batcher_epochs_differ_and_seed_repeats() -> None:
    a, b, other = _batcher(), _batcher(), _batcher(seed=6)
    order0 = torch.cat([y for _, y in a.epoch(0)])
    assert not torch.equal(order0, torch.cat([y for _, y in a.epoch(1)]))
    assert torch.equal(order0, torch.cat([y for _, y in b.epoch(0)]))
    assert not torch.equal(order0, torch.cat([y for _, y in other.epoch(0)]))
    assert torch.equal(torch.cat([y for _, y in _batcher(shuffle=False).epoch(3)]), torch.arange(103))


def _assert_resume_identical(batcher: DeviceBatcher, epoch: int) -> None:
    full = list(batcher.epoch(epoch))
    for start in (0, 1, 6, len(batcher) - 1, len(batcher)):
        resumed = list(batcher.epoch(epoch, start_batch=start))
        assert len(resumed) == len(full) - start
        for (xa, ya), (xb, yb) in zip(full[start:], resumed, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batcher_resume_is_bit_identical_with_augmentation() -> None:
    batcher = _batcher(augment=Augment(crop_padding=2, flip=True))
    _assert_resume_identical(batcher, epoch=2)
    # Augmentation is really applied, and differs between epochs for the same image.
    plain = _batcher()
    xa, ya = next(iter(batcher.epoch(2)))
    xp, yp = next(iter(plain.epoch(2)))
    assert torch.equal(ya, yp) and not torch.equal(xa, xp)

    def by_label(epoch: int) -> torch.Tensor:
        xs, ys = zip(*batcher.epoch(epoch), strict=True)
        return torch.cat(xs)[torch.argsort(torch.cat(ys))]

    changed = (by_label(0) != by_label(1)).flatten(1).any(1).float().mean()
    assert changed > 0.5


def test_batcher_rejects_bad_start_batch() -> None:
    with pytest.raises(UserError, match="start_batch"):
        _batcher().epoch(0, start_batch=12)


# ------------------------------------------------------------------------------------------ synthetic


def test_synthetic_deterministic_shape_and_learnable() -> None:
    ds = load_dataset("synthetic", shape=(1, 6, 5), num_classes=7, n_train=700, n_test=140, seed=2)
    again = load_dataset("synthetic", shape=(1, 6, 5), num_classes=7, n_train=700, n_test=140, seed=2)
    other = load_dataset("synthetic", shape=(1, 6, 5), num_classes=7, n_train=700, n_test=140, seed=3)
    assert ds.x_train.shape == (700, 1, 6, 5) and ds.x_test.shape == (140, 1, 6, 5) and ds.num_classes == 7
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)
    assert not torch.equal(ds.x_train, other.x_train)
    assert torch.bincount(ds.y_train).tolist() == [100] * 7
    # Learnable: the nearest class mean of the training set classifies the test set.
    x_train = to_float(ds.x_train, 255).flatten(1)
    means = torch.stack([x_train[ds.y_train == c].mean(0) for c in range(7)])
    predictions = torch.cdist(to_float(ds.x_test, 255).flatten(1), means).argmin(1)
    assert (predictions == ds.y_test).float().mean() > 0.9


def test_synthetic_rejects_bad_options() -> None:
    with pytest.raises(UserError, match="shape"):
        load_dataset("synthetic", shape=(3, 0, 4))
    with pytest.raises(UserError, match="num_classes"):
        load_dataset("synthetic", num_classes=1)


def test_dataset_rejects_wrong_dtype() -> None:
    x = torch.zeros(2, 1, 2, 2)
    y = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(UserError, match="uint8"):
        Dataset("t", x, y, x.byte(), y, num_classes=1, pixel_max=255)


# ------------------------------------------------------------------------------------------ CUDA


@CUDA
def test_augment_batch_on_cuda_matches_loop() -> None:
    augment = Augment(3, True)
    x = torch.from_numpy(_images(32, 5, (3, 10, 10))).cuda()
    out = augment_batch(x, augment, torch.Generator(device="cuda").manual_seed(4))
    dy, dx, flip = draw_augment_params(len(x), augment, torch.Generator(device="cuda").manual_seed(4))
    assert out.is_cuda and torch.equal(out.cpu(), reference_augment(x.cpu(), 3, dy, dx, flip))


@CUDA
def test_batcher_on_cuda_resumes_identically() -> None:
    batcher = _batcher(device="cuda", augment=Augment(crop_padding=2, flip=True))
    assert batcher.x.is_cuda and batcher.x.dtype == torch.uint8
    xb, yb = next(iter(batcher.epoch(0)))
    assert xb.is_cuda and yb.is_cuda
    _assert_resume_identical(batcher, epoch=1)
