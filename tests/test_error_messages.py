"""A file the CLI cannot use gets one line that says what is true about it and the fix: no library warnings before
it, no advice that does not apply (numpy's allow_pickle, torch's weights_only), nothing written.

Each case runs the real CLI in a subprocess: torch prints its warnings to the process's stderr, which pytest's
in-process warning capture would hide.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from advtrain.models.spec import ModelSpec

DIGITS_MODEL = ["--model", "small_cnn", "--data", "digits", "--n", "10", "--attacks", "clean"]
# Were a bad file ever accepted, the run would still be tiny: one epoch, clean evaluation only.
TINY_TRAIN = [
    "--set", "method.name=standard", "--set", "train.epochs=1", "--set", "train.val_steps=0",
    "--set", "eval.attacks=[clean]", "--quiet",
]  # fmt: skip
PYTHON_TAG = "method: !!python/object/apply:os.system ['echo owned']\n"


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def _gray_npz(path: Path) -> None:
    """Ten-class 1×32×32 images: CIFAR's size, one channel."""
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (40, 1, 32, 32), dtype=np.uint8), y_train=np.arange(40) % 10,
        x_test=rng.integers(0, 256, (10, 1, 32, 32), dtype=np.uint8), y_test=np.arange(10) % 10,
    )  # fmt: skip


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("error_messages")
    _gray_npz(root / "gray32.npz")
    (root / "notes.npz").write_text("x_train, y_train: see the spreadsheet\n")
    torch.manual_seed(0)
    state = ModelSpec("small_cnn", num_classes=10, in_channels=1, input_size=8).build().state_dict()
    with (root / "pickled.pt").open("wb") as f:
        pickle.dump(state, f)  # a state_dict, but pickled directly rather than by torch.save
    torch.save(state, root / "protocol4.pt", pickle_protocol=4)
    torch.save(state, root / "protocol3.pt", pickle_protocol=3)
    (root / "configs").mkdir()
    (root / "configs" / "digits.yaml").write_text("train:\n  epochs: 1\n")
    (root / "tagged.yaml").write_text(PYTHON_TAG)
    (root / "tagged_run").mkdir()
    (root / "tagged_run" / "config.yaml").write_text(PYTHON_TAG)
    return root


def _cli(ws: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    argv = [a.replace("{ws}", str(ws)) for a in argv]
    return subprocess.run(
        [sys.executable, "-m", "advtrain", *argv], capture_output=True, text=True, cwd=ws, timeout=600
    )


@pytest.mark.parametrize(
    ("argv", "says", "never_says"),
    [
        pytest.param(
            ["train", *TINY_TRAIN, "--set", "data.name=cifar10", "--set", "data.root={ws}/gray32.npz",
             "--out", "{ws}/new_run"],
            ["{ws}/gray32.npz: images are 1×32×32 but cifar10 images are 3×32×32", "data.name=npz"], [],
            id="one-channel-npz-as-cifar10",
        ),
        pytest.param(
            ["eval", "--weights", "{ws}/pickled.pt", *DIGITS_MODEL, "--out", "{ws}/new.json"],
            ["{ws}/pickled.pt is a plain pickle (as pickle.dump writes), not a torch.save checkpoint",
             "re-save with torch.save("], ["Python objects", "weights_only"],
            id="raw-pickle-pt",
        ),
        pytest.param(
            ["eval", "--weights", "{ws}/protocol4.pt", *DIGITS_MODEL, "--out", "{ws}/new.json"],
            ["{ws}/protocol4.pt was saved with pickle protocol 4, which torch's safe loader cannot read",
             "re-save with torch.save(model.state_dict(), path) and its default protocol"], ["Python objects"],
            id="torch-save-protocol-4",
        ),
        pytest.param(
            ["train", *TINY_TRAIN, "--set", "data.name=npz", "--set", "data.root={ws}/notes.npz",
             "--out", "{ws}/new_run"],
            ["npz: {ws}/notes.npz is not an .npz archive (np.savez writes a zip file; this file starts with b'x_trai')",
             "give an .npz with x_train, y_train, x_test, y_test"], ["allow_pickle", "pickled"],
            id="text-file-named-npz",
        ),
        pytest.param(
            ["train", "--config", "{ws}/configs", "--out", "{ws}/new_run"],
            ["config file {ws}/configs is a folder: pass one of its YAML files (digits.yaml)"], ["not found"],
            id="config-folder",
        ),
        pytest.param(
            ["train", "--config", "{ws}/tagged.yaml", "--out", "{ws}/new_run"],
            ["config file {ws}/tagged.yaml uses the Python-object tag !!python/object/apply:os.system at line 1",
             "which advtrain refuses for safety", "write plain values instead"], ["syntax", "not valid YAML"],
            id="python-tag-in-config",
        ),
        pytest.param(
            ["eval", "{ws}/tagged_run", "--n", "10"],
            ["{ws}/tagged_run/config.yaml uses the Python-object tag !!python/object/apply:os.system",
             "restore the config.yaml advtrain train wrote"], ["not valid YAML"],
            id="python-tag-in-run-config",
        ),
    ],
)
def test_a_file_that_cannot_be_used_gets_one_true_line(ws, argv, says, never_says):
    before = _snapshot(ws)
    result = _cli(ws, argv)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("advtrain: error: "), result.stderr
    for fragment in says:
        assert fragment.replace("{ws}", str(ws)) in lines[0], result.stderr
    for fragment in never_says:
        assert fragment not in lines[0], result.stderr
    assert _snapshot(ws) == before


def test_a_state_dict_saved_with_protocol_3_loads_without_torch_warnings(ws):
    """torch's safe loader reads protocol 3 but warns about it in two lines; the user sees the evaluation only."""
    out = ws / "protocol3.json"
    try:
        result = _cli(ws, ["eval", "--weights", "{ws}/protocol3.pt", *DIGITS_MODEL, "--out", str(out)])
        assert result.returncode == 0, result.stderr
        # Nothing but progress on stderr (no torch warning); on stdout the images and precision, then the table's
        # one row.
        assert all(line.startswith("progress  ") for line in result.stderr.splitlines()), result.stderr
        assert result.stdout.splitlines()[0].endswith(" images, fp32 on cpu"), result.stdout
        rows = [line.split()[0] for line in result.stdout.splitlines()[3:] if line.strip()]
        assert [row for row in rows if row != "wrote"] == ["clean"], result.stdout
        assert out.is_file()
    finally:
        out.unlink(missing_ok=True)  # the other cases assert the workspace is unchanged
