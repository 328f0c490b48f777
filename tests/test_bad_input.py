"""Every class of bad input ends in one line on stderr, exit code 2, no traceback, and no file changed.

Each case runs `advtrain.cli.main` in-process inside a workspace that already holds a real run directory
(trained here on digits), an eval JSON written by an earlier `advtrain eval`, data files and weights. The
workspace is snapshotted byte for byte before and after; a `train` case must not even create its new --out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from advtrain.checkpoint import save_weights
from advtrain.cli import main
from advtrain.models.spec import ModelSpec

# Put before the bad input of every train case, so that if a bad value were ever accepted the run would still
# be tiny (1 epoch on 40 synthetic 1×8×8 images) instead of the 200-epoch default.
TINY = [
    "--set", "data.name=synthetic", "--set", "data.options={shape: [1, 8, 8], n_train: 40, n_test: 10}",
    "--set", "train.epochs=1", "--set", "train.val_steps=0", "--set", "method.steps=1",
    "--set", "eval.attacks=[clean]", "--quiet",
]
NPZ = ["--set", "data.name=npz", "--set", "data.options={}"]  # drops TINY's synthetic-only options


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes, and every folder (None), so that a new empty folder counts as a change too."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def _npz(path: Path, *, shape: tuple[int, ...] = (1, 8, 8), dtype: type = np.uint8, **arrays: np.ndarray | None) -> str:
    rng = np.random.default_rng(0)
    content: dict[str, np.ndarray | None] = {
        "x_train": rng.integers(0, 256, (20, *shape)).astype(dtype),
        "y_train": np.arange(20) % 10,
        "x_test": rng.integers(0, 256, (10, *shape)).astype(dtype),
        "y_test": np.arange(10) % 10,
    }
    content.update(arrays)
    np.savez(path, **{k: v for k, v in content.items() if v is not None})
    return str(path)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with a previous run, an earlier eval JSON, weights of two models and data files."""
    root = tmp_path_factory.mktemp("bad_input")
    run = root / "run"
    assert main([
        "train", "--set", "method.name=standard", "--set", "train.epochs=1", "--set", "train.val_steps=0",
        "--set", "eval.attacks=[clean]", "--set", "eval.n=50", "--quiet", "--out", str(run),
    ]) == 0
    weights = run / "checkpoints" / "best.safetensors"  # small_cnn for digits: 1×8×8, 10 classes
    assert main(["eval", "--weights", str(weights), "--data", "digits", "--attacks", "clean", "--n", "20",
                 "--out", str(root / "earlier" / "eval.json")]) == 0
    # Same input shape as digits but 4 classes, as the trainer would describe it in the sidecar.
    spec = ModelSpec("small_cnn", num_classes=4, in_channels=1, input_size=8)
    torch.manual_seed(0)
    save_weights(root / "four_classes.safetensors", spec.build().state_dict(), {"model": spec.to_dict()})
    data = root / "data"
    data.mkdir()
    _npz(data / "ok.npz")
    _npz(data / "cifar_like.npz", shape=(3, 32, 32))
    _npz(data / "no_test_labels.npz", y_test=None)
    _npz(data / "float_images.npz", dtype=np.float32)
    _npz(data / "negative_label.npz", y_train=np.where(np.arange(20) == 0, -1, np.arange(20) % 10))
    _npz(data / "label_12.npz", y_test=np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 12]))
    (data / "empty_cifar").mkdir()
    (data / "empty_cifar" / "README.txt").write_text("not the cifar-10-batches-py folder\n")
    return root


def _run(ws: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> None:
    """Run the CLI in `ws`; assert exit 2, one line containing `fragment`, no traceback, nothing changed."""
    argv = [a.replace("{ws}", str(ws)) for a in argv]
    before = _snapshot(ws)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and fragment in lines[0], err
    assert lines[0].startswith("advtrain") and "Traceback" not in err
    assert _snapshot(ws) == before
    # Validation happens before the trainer creates anything: a bad train command leaves no --out behind.
    assert not (ws / "new_run").exists()


def _train(*args: str) -> list[str]:
    return ["train", *TINY, *args, "--out", "{ws}/new_run"]


def _eval_weights(*args: str, weights: str = "{ws}/run/checkpoints/best.safetensors") -> list[str]:
    # --out names the earlier eval JSON: a failed eval must leave it as it was.
    return ["eval", "--weights", weights, "--n", "10", "--steps", "2", "--out", "{ws}/earlier/eval.json", *args]


def _eval_run(*args: str) -> list[str]:
    # Without --out an eval of a run rewrites RUN_DIR/eval.json and report.md; a failed one must not.
    return ["eval", "{ws}/run", "--n", "10", "--steps", "2", *args]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (_train("--set", "method.name=pgd_att"), "unknown method 'pgd_att': did you mean 'pgd_at'?"),
        (_train("--set", "model.name=small_cn"), "unknown model 'small_cn': did you mean 'small_cnn'?"),
        (_train("--set", "data.name=digit"), "unknown dataset 'digit': did you mean 'digits'?"),
        (_train("--set", "eval.attacks=[clean, pgdd]"), "eval.attacks: unknown attack 'pgdd': did you mean 'pgd'?"),
        (_train("--set", "optim.name=sdg"), "optim.name: 'sdg' is not allowed: did you mean 'sgd'?"),
        (_eval_weights("--data", "digits", "--model", "resnet19"),
         "unknown model 'resnet19': did you mean 'resnet18'?"),
        (_eval_weights("--data", "cifar"), "unknown dataset 'cifar': did you mean 'cifar10'?"),
        (_eval_run("--attacks", "clean,fgsn"), "unknown attack 'fgsn': did you mean 'fgsm'?"),
    ],
)
def test_unknown_names_suggest_the_closest(ws, capsys, argv, fragment):
    _run(ws, capsys, argv, fragment)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (_train("--set", "train.epoch=1"), "unknown option 'train.epoch': did you mean 'train.epochs'?"),
        (_train("--set", "trian.epochs=1"), "unknown option 'trian': did you mean 'train'?"),
        (_train("--set", "method.step=2"), "unknown option 'method.step': did you mean 'method.steps'?"),
        (_train("--set", "data.options.noize=0.1"), "dataset synthetic does not take option noize"),
        (_train("--set", "model.options={depth: 5}"), "model 'small_cnn' has no option(s) depth"),
    ],
)
def test_unknown_config_keys(ws, capsys, argv, fragment):
    _run(ws, capsys, argv, fragment)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (_train("--set", "train.epochs=2.5"), "train.epochs: expected an integer, got 2.5"),
        (_train("--set", "threat.eps=abc"), "threat.eps: expected a number such as 0.03 or 8/255, got 'abc'"),
        (_train("--set", "threat.eps=8/0"), "threat.eps: expected a number"),
        (_train("--set", "optim.lr=.nan"), "optim.lr: expected a finite number"),
        (_train("--set", "data.flip=maybe"), "data.flip: expected true or false, got 'maybe'"),
        (_train("--set", "eval.attacks=pgd"), "eval.attacks: expected a list, got 'pgd'"),
        (_train("--set", "eval=[clean]"), "eval: expected a mapping, got ['clean']"),
        (_train("--set", "seed.value=1"), "seed: expected an integer, got {'value': 1}"),
        (_train("--set", "noequals"), "expected key=value"),
        (_eval_weights("--data", "digits", "--steps", "many"), "argument --steps: invalid int value: 'many'"),
        (_eval_weights("--data", "digits", "--eps", "8/zero"), "argument --eps"),
        (_eval_weights("--data", "digits", "--norm", "l3"), "argument --norm: unknown norm 'l3'; use linf"),
    ],
)
def test_wrong_types(ws, capsys, argv, fragment):
    _run(ws, capsys, argv, fragment)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (_train("--set", "threat.eps=-0.1"), "threat.eps must be >= 0, got -0.1"),
        (_train("--set", "method.steps=0"), "method.steps must be >= 1, got 0"),
        (_train("--set", "method.step_size=0"), "method.step_size must be > 0, got 0.0"),
        (_train("--set", "train.batch_size=0"), "train.batch_size must be >= 1, got 0"),
        (_train("--set", "train.epochs=0"), "train.epochs must be >= 1, got 0"),
        (_train("--set", "optim.lr=0"), "optim.lr must be > 0, got 0.0"),
        (_train("--set", "optim.weight_decay=-1e-4"), "optim.weight_decay must be >= 0"),
        (_train("--set", "data.val_size=-0.1"), "data.val_size must be >= 0 (a fraction < 1 or a count of images)"),
        (_train("--set", "data.val_size=40"), "val_size 40 takes 40 of 40 training examples"),
        (_train("--set", "eval.eps=[0.1, -0.1]"), "eval.eps[1] must be >= 0, got -0.1"),
        (_train("--set", "seed=-1"), "seed must be >= 0, got -1"),
        (_eval_weights("--data", "digits", "--batch-size", "0"), "--batch-size must be >= 1, got 0"),
        (_eval_weights("--data", "digits", "--eps=-0.1"), "--eps must be >= 0, got -0.1"),
        (_eval_weights("--data", "digits", "--restarts", "-1"), "--restarts must be >= 1, got -1"),
        (_eval_run("--n", "-5"), "--n must be >= 1, got -5"),
    ],
)
def test_out_of_range_values(ws, capsys, argv, fragment):
    _run(ws, capsys, argv, fragment)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (_train(*NPZ, "--set", "data.root={ws}/data/missing.npz"),
         "npz data root {ws}/data/missing.npz does not exist"),
        (_train("--set", "data.name=cifar10", "--set", "data.options={}"), "cifar10 needs --data-root"),
        (_train("--config", "{ws}/missing.yaml"), "config file {ws}/missing.yaml not found"),
        (_eval_weights("--data", "cifar10", "--data-root", "{ws}/data/nowhere"), "cifar10 data root {ws}/data/nowhere"),
        (_eval_weights("--data", "digits", weights="{ws}/missing.safetensors"),
         "{ws}/missing.safetensors does not exist"),
        (["eval", "{ws}/no_run"], "run directory not found: {ws}/no_run"),
        (_eval_run("--out="), "--out . is a folder: give a file name such as eval.json"),
        (_eval_run("--out", "{ws}"), "is a folder: give a file name such as eval.json"),
    ],
)
def test_missing_paths(ws, capsys, argv, fragment):
    _run(ws, capsys, argv, fragment.replace("{ws}", str(ws)))


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (_train(*NPZ, "--set", "data.root={ws}/data/no_test_labels.npz"), "no_test_labels.npz lacks y_test"),
        (_train(*NPZ, "--set", "data.root={ws}/data/float_images.npz"), "has dtype float32; uint8 expected"),
        (_train(*NPZ, "--set", "data.root={ws}/data"), "npz: {ws}/data is a folder"),
        (_eval_weights("--data", "cifar10", "--data-root", "{ws}/data/empty_cifar"), "lacks data_batch_1"),
        (_eval_weights("--data", "npz", "--data-root", "{ws}/data/no_test_labels.npz"), "lacks y_test"),
    ],
)
def test_wrong_data_layouts(ws, capsys, argv, fragment):
    _run(ws, capsys, argv, fragment.replace("{ws}", str(ws)))


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        # The digits model (1×8×8, 10 classes) against data of another shape...
        (_eval_weights("--data", "synthetic"), "synthetic images are 3×32×32 but the model small_cnn from"),
        (_eval_weights("--data", "npz", "--data-root", "{ws}/data/cifar_like.npz"), "npz images are 3×32×32"),
        (_eval_weights("--data", "cifar10", "--data-root", "{ws}/data/cifar_like.npz"), "expects 1×8×8"),
        (_eval_run("--data", "synthetic"), "synthetic images are 3×32×32 but the model small_cnn from"),
        # ...a model with another class count against digits...
        (_eval_weights("--data", "digits", weights="{ws}/four_classes.safetensors"),
         "digits has 10 classes but the model small_cnn from {ws}/four_classes.safetensors predicts 4"),
        (_eval_weights("--data", "digits", "--model", "resnet18"), "does not fit model ResNet"),
        # ...and training data that no model of the config can take.
        (_train("--set", "data.options={shape: [1, 4, 4]}"), "model 'small_cnn' supports input sizes 8..32; got 4"),
        (_train("--set", "data.options={shape: [1, 8, 9]}"), "synthetic images are 8×9: advtrain models expect square"),
        (_train("--set", "model.normalize=[[0.5, 0.5, 0.5], [0.2, 0.2, 0.2]]"),
         "normalize has 3 values per statistic but the model takes 1 input channels"),
    ],
)
def test_data_that_does_not_fit_the_model(ws, capsys, argv, fragment):
    _run(ws, capsys, argv, fragment.replace("{ws}", str(ws)))


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (_train(*NPZ, "--set", "data.root={ws}/data/negative_label.npz"), "y_train has labels -1..9"),
        (_train(*NPZ, "--set", "data.root={ws}/data/ok.npz", "--set", "data.options={num_classes: 5}"),
         "y_train has labels 0..9 but npz has 5 classes; labels must be in 0..4"),
        (_eval_weights("--data", "npz", "--data-root", "{ws}/data/label_12.npz"),
         "y_test has labels 0..12 but npz has 10 classes; labels must be in 0..9"),
    ],
)
def test_labels_out_of_range(ws, capsys, argv, fragment):
    _run(ws, capsys, argv, fragment)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["eval", "{ws}/run", "--checkpoint", "worst"], "argument --checkpoint: invalid choice: 'worst'"),
        (["train", "--out", "{ws}/new_run", "--epochs", "3"], "unrecognized arguments: --epochs 3"),
        (["evaluate", "{ws}/run"], "invalid choice: 'evaluate'"),
        (_eval_weights("--data", "digits", "--step-size="), "argument --step-size: expected numbers"),
        (_eval_weights("--data", "digits", "--step-size", "1,2"), "argument --step-size: expected one number"),
        (_eval_weights("--data", "digits", "--steps", "0"), "--steps must be >= 1, got 0"),
        (["train", "\n"], "unrecognized arguments: \\n"),
    ],
)
def test_command_line_syntax_errors(ws, capsys, argv, fragment):
    _run(ws, capsys, argv, fragment)


def test_the_workspace_is_usable(ws, capsys):
    """The cases above fail because of their one bad input: the same commands with good input succeed."""
    ok = [
        _eval_weights("--data", "npz", "--data-root", f"{ws}/data/ok.npz", "--attacks", "clean,pgd"),
        # The run's own evaluation protocol (its eval.n): evaluated again in place, not refused.
        _eval_run("--data", "digits", "--attacks", "clean", "--n", "50"),
    ]
    for argv in ok:
        assert main([a.replace("{ws}", str(ws)) for a in argv]) == 0, capsys.readouterr().err
    assert json.loads((ws / "earlier" / "eval.json").read_text())["data"] == "npz"
    out = ws / "new_run"
    try:
        assert main([a.replace("{ws}", str(ws)) for a in _train()]) == 0, capsys.readouterr().err
        assert (out / "config.yaml").is_file() and (out / "eval.json").is_file()
    finally:
        # Other tests assert that no new_run exists; this is the one that was meant to create it.
        shutil.rmtree(out, ignore_errors=True)
