"""`train.tensorboard` (metrics.jsonl rows as TensorBoard scalars) and the `peak_memory_mb` column."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advtrain.config import load_config
from advtrain.errors import UserError
from advtrain.train import train
from advtrain.train.state import list_states

FAST = ["train.epochs=2", "train.batch_size=128", "train.val_steps=2", "train.progress=quiet", "data.val_size=200",
        "threat.eps=0.2", "eval.attacks=[clean]", "train.threads=1", "method.steps=2"]
CHECKED = ("lr", "train_loss", "train_acc", "val_clean_acc", "val_pgd_acc", "images_per_s", "peak_memory_mb",
           "co_pgd_acc")


def metrics_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in `folder` as (step, value) pairs, read the way TensorBoard reads a run folder."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={SCALARS: 0}).Reload()  # 0: keep every point
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()[SCALARS]}


def assert_scalars_match(run: Path) -> None:
    rows, logged = metrics_rows(run), scalars(run / "tensorboard")
    numbers = {key for row in rows for key, value in row.items() if key != "epoch" and isinstance(value, int | float)}
    assert set(logged) == numbers and set(CHECKED) <= numbers
    for key in numbers:
        expected = [(row["epoch"], row[key]) for row in rows]
        assert [step for step, _ in logged[key]] == [step for step, _ in expected], key
        for (_, got), (_, want) in zip(logged[key], expected, strict=True):
            assert got == pytest.approx(float(want), rel=1e-6), key  # stored as float32; co_collapse as 0/1


def assert_peak_memory(rows: list[dict]) -> None:
    for row in rows:
        assert isinstance(row["peak_memory_mb"], float)
        assert math.isfinite(row["peak_memory_mb"]) and row["peak_memory_mb"] > 0


def test_tensorboard_scalars_equal_the_metrics_rows_also_after_a_resume(tmp_path):
    pytest.importorskip("tensorboard")
    config = load_config(None, [*FAST, "train.tensorboard=true"])
    run = tmp_path / "run"
    train(config, run, log=lambda _: None)
    assert [row["epoch"] for row in metrics_rows(run)] == [1, 2]
    assert_peak_memory(metrics_rows(run))
    assert_scalars_match(run)
    # As if killed after epoch 2's row and scalars but before its state: the resumed run writes epoch 2 again into
    # a second event file of the same folder, and TensorBoard shows only the new epoch-2 values.
    (position, newest), _ = list_states(run / "checkpoints")
    assert position.epoch == 2
    for path in (newest.with_suffix(".json"), newest):  # its sidecar (the commit mark) first
        path.unlink()
    first_rows = metrics_rows(run)
    train(config, run, log=lambda _: None, resume=True)
    assert len(list((run / "tensorboard").iterdir())) == 2
    rows = metrics_rows(run)
    assert [row["epoch"] for row in rows] == [1, 2] and rows[0] == first_rows[0]
    assert rows[1]["seconds"] != first_rows[1]["seconds"]  # a new row, so the check below sees the purge work
    assert_scalars_match(run)


def test_without_the_option_nothing_imports_tensorboard_and_no_folder_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # any import of it now fails
    run = tmp_path / "run"
    train(load_config(None, FAST), run, log=lambda _: None)
    assert not (run / "tensorboard").exists()
    assert_peak_memory(metrics_rows(run))


def test_the_option_without_the_package_is_a_one_line_error_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    run = tmp_path / "run"
    with pytest.raises(UserError) as error:
        train(load_config(None, [*FAST, "train.tensorboard=true"]), run, log=lambda _: None)
    message = str(error.value)
    assert "\n" not in message and "pip install 'advtrain[tensorboard]'" in message
    assert "train.tensorboard: false" in message
    assert not run.exists()


def test_a_bad_tensorboard_value_on_the_command_line_is_a_one_line_error_with_exit_code_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "advtrain", "train", "--out", "X", "--set",
                             "train.tensorboard=banana"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.tensorboard" in lines[0], result.stderr
    assert not (tmp_path / "X").exists()


def test_peak_memory_is_per_window_on_a_linux_cpu():
    import numpy as np

    from advtrain.runtime import peak_memory_mb, reset_peak_memory

    cpu = torch.device("cpu")
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("no /proc/self/clear_refs: the CPU peak is the process's, not resettable")
    reset_peak_memory(cpu)
    before = peak_memory_mb(cpu)
    block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    high = peak_memory_mb(cpu)
    del block
    reset_peak_memory(cpu)
    after = peak_memory_mb(cpu)
    assert high - before >= 290  # the window saw the block
    assert high - after >= 290  # a new window forgot it
