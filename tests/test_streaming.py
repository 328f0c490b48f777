"""Issue 22: image-folder datasets streamed through DataLoader workers: layouts, transforms, the seeded resumable
order, one-line errors, and kill -9 + resume of a JPEG class-folder run (bit-identical on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advtrain.cli import main
from advtrain.config import load_config
from advtrain.data import FolderDataset, load_dataset
from advtrain.data.dataset import channel_moments
from advtrain.data.images import RRC_RATIO, ImageTransform, random_resized_box
from advtrain.data.sources.folders import read_corruption_folder
from advtrain.distributed import Processes
from advtrain.errors import UserError
from advtrain.train import train
from advtrain.train.stream import StreamSource
from tests.test_reliability import ENV, assert_same_weights, cli, metrics, sets, weights

COLOURS = 5  # distinct image contents per class in the synthetic trees

# Runs the CLI, but SIGKILLs itself when it is about to rename a complete file named argv[1] into place.
KILL_AT_FILE = """
import os, signal, sys
real_replace = os.replace
def replace(src, dst, *a, **k):
    if os.path.basename(dst) == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *a, **k)
os.replace = replace
from advtrain.cli import main
sys.exit(main(sys.argv[2:]))
"""


def save(path: Path, pixels: np.ndarray) -> None:
    """Write an H×W×3 uint8 array as the image format its suffix names (PNG: lossless)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def solid(label: int, k: int, size: int = 12) -> np.ndarray:
    """A size×size image whose pixels encode (label, k), so a decoded image names its file."""
    return np.full((size, size, 3), (label * 40, k * 20, 7), dtype=np.uint8)


def class_tree(root: Path, classes: list[str], train: int = 3, val: int = 2, suffix: str = ".png") -> Path:
    for label, name in enumerate(classes):
        for k in range(train):
            save(root / "train" / name / f"{k}{suffix}", solid(label, k))
        for k in range(val):
            save(root / "val" / name / f"{k}{suffix}", solid(label, k + COLOURS))
    return root


def colour_label(x: torch.Tensor) -> list[tuple[int, int]]:
    """(label, k) back from `solid` images N×3×H×W."""
    return [(int(img[0, 0, 0]) // 40, int(img[1, 0, 0]) // 20) for img in x]


# ---------------------------------------------------------------- layouts


def test_image_folder_reads_classes_in_order_and_interleaves_the_test_split(tmp_path):
    root = class_tree(tmp_path / "d", ["cat", "ant", "bee"])
    data = load_dataset("image_folder", root, image_size=12, resize=12, workers=0)
    assert isinstance(data, FolderDataset)
    assert data.class_names == ("ant", "bee", "cat") and data.num_classes == 3 and data.shape == (3, 12, 12)
    assert data.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # val/ is the test split, taken class by class in turn: the first n cover every class.
    assert data.y_test.tolist() == [0, 1, 2, 0, 1, 2]
    # Written as labels cat 0, ant 1, bee 2; read alphabetically: ant, bee, cat, then each class's second image.
    assert colour_label(data.x_test[:4]) == [(1, 5), (2, 5), (0, 5), (1, 6)]


def test_a_class_list_selects_and_orders_a_subset(tmp_path):
    root = class_tree(tmp_path / "d", ["a", "b", "c", "d"])
    listing = tmp_path / "classes.txt"
    listing.write_text("d\n\nb\n")
    data = load_dataset("image_folder", root, classes=str(listing), image_size=12, resize=12, workers=0)
    assert data.class_names == ("d", "b")
    assert data.y_train.tolist() == [0, 0, 0, 1, 1, 1] and data.y_test.tolist() == [0, 1, 0, 1]
    # Label 0 is folder d (written as label 3), label 1 folder b (written as 1).
    assert colour_label(data.x_train[torch.tensor([0, 3])]) == [(3, 0), (1, 0)]
    with pytest.raises(UserError, match=r"no bundled class list is named 'subset'.*imagenet100.*give the path"):
        load_dataset("image_folder", root, classes="subset", workers=0)  # a bare name is a bundled list's


def test_default_sizes_of_the_two_layouts(tmp_path):
    data = load_dataset("image_folder", class_tree(tmp_path / "d", ["a"]))
    assert (data.image_size, data.resize, data.workers, data.random_resized_crop) == (224, 256, 4, False)


def tiny_imagenet_tree(root: Path) -> Path:
    wnids = ["n02", "n01", "n03"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for label, wnid in enumerate(wnids):
        for k in range(2):
            save(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", solid(label, k, 64))
    lines = []
    for i, label in enumerate([2, 0, 0, 1]):
        save(root / "val" / "images" / f"val_{i}.JPEG", solid(label, 5, 64))
        lines.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tiny_imagenet_layout_labels_follow_wnids_and_val_annotations(tmp_path):
    data = load_dataset("tiny_imagenet", tiny_imagenet_tree(tmp_path / "tiny"), workers=0)
    assert data.class_names == ("n02", "n01", "n03") and data.shape == (3, 64, 64) and data.resize == 64
    assert data.y_train.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.y_test.tolist() == [2, 0, 0, 1]  # the annotations' order
    x = data.x_test[:4]
    # JPEG is lossy: the colour that names the class survives to within a few levels.
    assert [round(int(img[0].float().mean()) / 40) for img in x] == [2, 0, 0, 1]


def test_corruption_folder_reads_the_training_classes_in_turn_and_at_most_n(tmp_path):
    data = load_dataset("image_folder", class_tree(tmp_path / "d", ["a", "b"]), image_size=8, resize=12, workers=0)
    c_root = tmp_path / "imagenet-c"
    for name, label in (("b", 1), ("a", 0), ("zz", 7)):  # zz: a class this run did not train on, skipped
        for k in range(3):
            save(c_root / "gaussian_noise" / "3" / name / f"{k}.png", solid(label, k))
    x, y = read_corruption_folder(data, c_root, "gaussian_noise", 3, n=5)
    assert x.dtype == torch.uint8 and x.shape == (5, 3, 8, 8)
    assert y.tolist() == [0, 1, 0, 1, 0]
    assert colour_label(x) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]
    x_all, _ = read_corruption_folder(data, c_root, "gaussian_noise", 3)
    assert len(x_all) == 6
    with pytest.raises(UserError, match=r"gaussian_noise/5 does not exist.*\(found: gaussian_noise\)"):
        read_corruption_folder(data, c_root, "gaussian_noise", 5)


@pytest.mark.slow
def test_eval_corruptions_read_imagenet_c_copies_of_the_test_images(tmp_path, capsys):
    root = class_tree(tmp_path / "d", ["a", "b"], train=6)
    run = tmp_path / "run"
    config = load_config(None, ["data.name=image_folder", f"data.root={root}", "data.val_size=2",
                                "data.options.image_size=12", "data.options.resize=12", "data.options.workers=0",
                                "train.epochs=1", "train.batch_size=5", "train.progress=quiet", "method.name=standard"])
    train(config, run, log=lambda _: None)
    c_root = tmp_path / "imagenet-c"
    for corruption in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"):
        for severity in range(1, 6):
            for label, name in enumerate(("a", "b")):
                for k in range(2):  # unchanged copies of the test images, under their own file names
                    save(c_root / corruption / str(severity) / name / f"{k}.png", solid(label, k + COLOURS))
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--attacks", "corruptions", "--corruptions-root", str(c_root), "--out", str(out),
                 "--quiet"]) == 0
    result = json.loads(out.read_text())["inequality"]
    tables = result["corruptions"]["run"]
    # The "corrupted" images are the test images: no commonly correct image is lost, and the error over all images
    # is the clean error.
    assert result["n"] == 4 and result["n_common_correct"] > 0
    clean_error = 1 - result["n_common_correct"] / result["n"]
    for corruption, by_severity in tables["all_images"].items():
        assert by_severity == {str(s): pytest.approx(clean_error) for s in range(1, 6)}, corruption
        assert tables["commonly_correct"][corruption] == {str(s): 0.0 for s in range(1, 6)}
    (c_root / "shot_noise" / "1" / "b" / "1.png").unlink()
    assert main(["eval", str(run), "--attacks", "corruptions", "--corruptions-root", str(c_root), "--out", str(out),
                 "--quiet"]) == 2
    assert "shot_noise/1 has no b/1.png, the corrupted copy of test image" in capsys.readouterr().err


# ---------------------------------------------------------------- transforms


def test_evaluation_transform_resizes_the_shorter_side_then_crops_the_centre(tmp_path):
    h, w = 6, 10
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    pixels[..., 0] = np.arange(w)[None, :] * 10  # column index
    pixels[..., 1] = np.arange(h)[:, None] * 10  # row index
    save(tmp_path / "grid.png", pixels)
    out = ImageTransform(image_size=4, resize=6)(tmp_path / "grid.png")
    # By hand: no resize (shorter side already 6); left = round((10 - 4) / 2) = 3, top = round((6 - 4) / 2) = 1.
    assert out.shape == (3, 4, 4)
    assert out[0, 0].tolist() == [30, 40, 50, 60] and out[1, :, 0].tolist() == [10, 20, 30, 40]
    # Shorter side 6 → 3: the image becomes 5×3 (10·3/6), then its centred 3×3 square is columns 1..3.
    small = ImageTransform(image_size=3, resize=3)(tmp_path / "grid.png")
    assert small.shape == (3, 3, 3)
    wide = np.asarray(Image.fromarray(pixels).resize((5, 3), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(small, wide[:, :, 1:4])


def test_random_resized_crop_boxes_stay_inside_the_image_with_the_usual_scale_and_ratio():
    for seed in range(300):
        rng = np.random.default_rng(seed)
        width, height = int(rng.integers(20, 300)), int(rng.integers(20, 300))
        left, top, right, bottom = random_resized_box(width, height, rng)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        w, h = right - left, bottom - top
        # Rounding moves each side by at most half a pixel; the fallback is a centred crop of the whole height
        # or width, inside the ratio range.
        assert RRC_RATIO[0] * (h - 1) <= w + 1 and w - 1 <= RRC_RATIO[1] * (h + 1)
        assert (w + 1) * (h + 1) >= 0.08 * width * height


def test_training_transform_is_a_function_of_the_image_seed(tmp_path):
    save(tmp_path / "a.png", np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    rrc = ImageTransform(16, 16, train=True, random_resized_crop=True, flip=True)
    padded = ImageTransform(16, 16, train=True, crop_padding=4, flip=True)
    for transform in (rrc, padded):
        a, b = transform(tmp_path / "a.png", 5), transform(tmp_path / "a.png", 5)
        assert a.shape == (3, 16, 16) and np.array_equal(a, b)
        assert any(not np.array_equal(a, transform(tmp_path / "a.png", s)) for s in range(6, 10))
    # By hand: the draws are (dy, dx), then the flip, from the image's own generator; the crop is a window of the
    # resized image zero-padded by 4.
    plain = ImageTransform(16, 16)(tmp_path / "a.png")
    for seed in range(8):
        rng = np.random.default_rng(seed)
        dy, dx = rng.integers(0, 9, size=2)
        expected = np.pad(plain, ((0, 0), (4, 4), (4, 4)))[:, dy:dy + 16, dx:dx + 16]
        if rng.integers(0, 2):
            expected = expected[:, :, ::-1]
        assert np.array_equal(padded(tmp_path / "a.png", seed), expected)


# ---------------------------------------------------------------- the streaming source


def stream(data: FolderDataset, workers: int, procs: Processes | None = None, batch_size: int = 4) -> StreamSource:
    return StreamSource(data.train, data.train_transform(2, True), data.eval_transform, batch_size=batch_size,
                        seed=11, device=torch.device("cpu"), workers=workers, procs=procs or Processes())


def epoch_batches(source: StreamSource, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    return list(source.epoch(epoch, start))


def test_batches_do_not_depend_on_workers_processes_or_the_start_batch(tmp_path):
    data = load_dataset("image_folder", class_tree(tmp_path / "d", ["a", "b", "c"], train=5), image_size=12,
                        resize=12, workers=0)
    whole = epoch_batches(stream(data, 0), 1)
    assert [n for _, _, n in whole] == [4, 4, 4, 3] and len(stream(data, 0)) == 4
    assert stream(data, 0).smallest_batch == 3
    assert sorted(y for _, ys, _ in whole for y in ys.tolist()) == sorted(data.y_train.tolist())
    for a, b in zip(whole, epoch_batches(stream(data, 2), 1), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Two processes each decode their half; together they are the one-process batch, image for image.
    halves = [epoch_batches(stream(data, 1, Processes(rank, 2)), 1) for rank in (0, 1)]
    for k, (x, y, n) in enumerate(whole):
        assert torch.equal(torch.cat([halves[0][k][0], halves[1][k][0]]), x) and halves[0][k][2] == n
        assert torch.equal(torch.cat([halves[0][k][1], halves[1][k][1]]), y)
    # A resumed epoch starts at any batch with exactly the batches of the uninterrupted one.
    for a, b in zip(whole[2:], epoch_batches(stream(data, 2), 1, start=2), strict=True):
        assert torch.equal(a[0], b[0])
    other = epoch_batches(stream(data, 0), 2)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(whole, other, strict=True))  # a new order each epoch
    assert whole[0][0].dtype == torch.float32 and whole[0][0].min() >= 0 and whole[0][0].max() <= 1


def test_sample_first_and_shuffled_batches(tmp_path):
    data = load_dataset("image_folder", class_tree(tmp_path / "d", ["a", "b"], train=5), image_size=12, resize=12,
                        workers=0)
    source = stream(data, 2)
    x, y = source.first(3)
    assert torch.equal(x, data.x_train[:3].float() / 255) and y.tolist() == [0, 0, 0]
    s1 = source.sample(6, torch.Generator().manual_seed(4))
    s2 = stream(data, 0).sample(6, torch.Generator().manual_seed(4))
    assert torch.equal(s1[0], s2[0]) and torch.equal(s1[1], s2[1]) and len(s1[1]) == 6
    batches = stream(data, 1).shuffled_batches(torch.Generator().manual_seed(0))
    first_pass = [next(batches)[1] for _ in range(3)]  # 10 images in batches of 4: 4, 4, 2
    assert [len(y) for y in first_pass] == [4, 4, 2] and sorted(torch.cat(first_pass).tolist()) == [0] * 5 + [1] * 5
    assert len(next(batches)[1]) == 4  # the next pass


def test_normalisation_moments_come_from_the_training_images(tmp_path):
    data = load_dataset("image_folder", class_tree(tmp_path / "d", ["a", "b"]), image_size=12, resize=12, workers=0)
    # Fewer training images than the sample: the moments are those of every one of them.
    assert (data.mean, data.std) == channel_moments(data.x_train[:], 255)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("setup, options, message", [
    (lambda r: (r / "train" / "a").mkdir(parents=True), {}, r"has no val/ folder: give a folder holding train/"),
    (lambda r: class_tree(r, ["a"]) and (r / "train" / "b").mkdir(), {}, r"train/b holds no \.jpg/\.jpeg/\.png"),
    (lambda r: class_tree(r, ["a"]), {"classes": "LIST"}, r"class zebra of .* is not a folder in .*: fix the class"),
    (lambda r: class_tree(r, ["a"]) and (r / "val" / "q").mkdir(), {}, r"val/q is not a class of"),
    (lambda r: class_tree(r, ["a"]), {"workers": -1}, r"workers must be an integer >= 0"),
    (lambda r: class_tree(r, ["a"]), {"image_size": 32, "resize": 16}, r"resize must be an integer >= image_size"),
    (lambda r: class_tree(r, ["a"]), {"random_resized_crop": "yes"}, r"random_resized_crop must be true or false"),
])
def test_bad_folders_and_options_are_one_line_errors(tmp_path, setup, options, message):
    root = tmp_path / "d"
    setup(root)
    listing = tmp_path / "classes.txt"
    listing.write_text("a\nzebra\n")
    options = {k: str(listing) if v == "LIST" else v for k, v in options.items()}
    with pytest.raises(UserError, match=message) as info:
        load_dataset("image_folder", root, **options)
    assert "\n" not in str(info.value)


def test_an_undecodable_image_names_its_file_from_a_worker(tmp_path):
    root = class_tree(tmp_path / "d", ["a", "b"], train=40)
    bad = root / "train" / "b" / "7.png"
    bad.write_bytes(b"not an image")
    data = load_dataset("image_folder", root, image_size=12, resize=12, workers=2)
    with pytest.raises(UserError) as info:
        data.x_train[:]
    assert str(info.value).startswith(f"cannot decode image {bad} (") and "\n" not in str(info.value)
    with pytest.raises(UserError, match="cannot decode image"):
        epoch_batches(stream(data, 2), 0)


def test_tiny_imagenet_errors_name_the_file_and_the_fix(tmp_path):
    root = tiny_imagenet_tree(tmp_path / "tiny")
    annotations = root / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_9.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match=r"val_annotations.txt line 5 does not name an image and a class of"):
        load_dataset("tiny_imagenet", root)
    (root / "wnids.txt").unlink()
    with pytest.raises(UserError, match=r"wnids.txt does not exist: give the tiny-imagenet-200 folder"):
        load_dataset("tiny_imagenet", root)


def test_evaluation_decodes_only_the_test_images_it_reads(tmp_path):
    root = class_tree(tmp_path / "d", ["a", "b"], val=3)
    (root / "val" / "b" / "2.png").write_bytes(b"broken")  # test image 5 in the interleaved order
    data = load_dataset("image_folder", root, image_size=12, resize=12, workers=0)
    assert data.x_test[:5].shape == (5, 3, 12, 12)
    with pytest.raises(UserError, match=r"cannot decode image .*val/b/2\.png"):
        data.x_test[:6]


def test_idbh_and_two_crops_are_refused_for_folder_data(tmp_path):
    root = class_tree(tmp_path / "d", ["a", "b"], train=6)
    base = ["data.name=image_folder", f"data.root={root}", "data.val_size=2", "data.options.image_size=12",
            "data.options.resize=12", "data.options.workers=0", "train.epochs=1", "train.progress=quiet"]
    config = load_config(None, [*base, "data.idbh=weak"])
    with pytest.raises(UserError, match=r"data.idbh is not supported with image_folder"):
        train(config, tmp_path / "run1", log=lambda _: None)
    config = load_config(None, [*base, "data.crop_padding=2", "data.options.random_resized_crop=true"])
    with pytest.raises(UserError, match=r"two crops: set one of them"):
        train(config, tmp_path / "run2", log=lambda _: None)


# ---------------------------------------------------------------- kill -9 and resume


def jpeg_cifar_folders(npz: Path, root: Path, train_per_class: int, val_per_class: int) -> Path:
    """Class folders of 64×64 JPEGs (bilinear upscales) of the first images of each class of the CIFAR subset."""
    arrays = np.load(npz)
    names = [str(n) for n in arrays["label_names"]]
    for split, x, y, per in (("train", arrays["x_train"], arrays["y_train"], train_per_class),
                             ("val", arrays["x_test"], arrays["y_test"], val_per_class)):
        for label, name in enumerate(names):
            for k, i in enumerate(np.flatnonzero(y == label)[:per]):
                path = root / split / name / f"{k:04d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(x[i].transpose(1, 2, 0)).resize((64, 64), Image.Resampling.BILINEAR).save(path)
    return root


@pytest.mark.slow
def test_jpeg_folder_run_killed_mid_epoch_resumes_bit_identically(cifar_subset, tmp_path):
    root = jpeg_cifar_folders(cifar_subset, tmp_path / "jpegs", train_per_class=15, val_per_class=3)
    # 150 training JPEGs, 20 held out: 13 steps of 10, a state every 3 steps. small_cnn takes 32×32 inputs, so the
    # 64×64 files are resized to 36 and centre-cropped to 32, then padded-cropped and flipped in 2 workers.
    run = ["seed=3", "data.name=image_folder", f"data.root={root}", "data.options.workers=2",
           "data.options.image_size=32", "data.options.resize=36", "data.val_size=20", "data.flip=true",
           "data.crop_padding=4", "model.normalize=dataset", "train.epochs=1", "train.batch_size=10",
           "train.checkpoint_every=3", "train.val_steps=2", "train.progress=quiet", "method.steps=2",
           "eval.attacks=[clean]", "eval.n=20"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    done = subprocess.run(cli("train", *sets(run), "--out", str(reference)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # SIGKILL while the third mid-epoch state (step 9) is being written: those of steps 3 and 6 are complete, and
    # the DataLoader workers are decoding the next batches.
    killed = subprocess.run([sys.executable, "-c", KILL_AT_FILE, "state-e0000-b000009.safetensors", "train",
                             *sets(run), "--out", str(resumed)], env=ENV, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert sorted(p.name for p in (resumed / "checkpoints").glob("state-*.json")) == \
        ["state-e0000-b000003.json", "state-e0000-b000006.json"]
    done = subprocess.run(cli("train", "--resume", str(resumed)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    assert_same_weights(weights(resumed), weights(reference))
    assert metrics(resumed) == metrics(reference)
