"""The evaluation batch size (issue 9): "auto" sized to free memory, its arithmetic, validation, the eval JSON
record, and a CUDA out-of-memory error turned into a one-line message naming a smaller batch."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from advtrain.checkpoint import save_weights
from advtrain.cli import main
from advtrain.config import load_config
from advtrain.errors import UserError
from advtrain.eval import EvalSettings, attack_specs, evaluate_attacks, evaluate_loaded, load_for_eval
from advtrain.eval.batching import CPU_EVAL_BATCH, batch_for_memory, resolve_eval_batch
from advtrain.models.spec import ModelSpec
from tests.helpers import digits_tensors, trained_digits_cnn

MiB = 2**20


@pytest.mark.parametrize(
    ("free", "per_example", "n", "kwargs", "expected"),
    [
        (10_000, 1.0, 10**6, {}, 6976),  # 0.7·10,000 = 7,000 → down to 109·64
        (64 * MiB, 64 * 1024, 10**6, {"headroom": 0.5}, 512),  # exactly 512 fit: a multiple of 64 is kept
        (64 * MiB, 64 * 1024 + 1, 10**6, {"headroom": 0.5}, 448),  # one byte more: 511 fit → 7·64
        (10_000, 1.0, 100, {}, 100),  # never more than the images there are
        (10_000, 1.0, 0, {}, 1),  # … but at least 1
        (10**12, 1.0, 10**6, {}, 8192),  # the cap
        (10**12, 1.0, 10**6, {"cap": 1000}, 1000),
        (1000, 10.0, 10**6, {}, 64),  # 70 fit: one multiple of 64
        (500, 10.0, 10**6, {}, 64),  # 35 fit, too few for 64: the multiple is the smallest batch
        (0, 1000.0, 10**6, {}, 64),
        (10_000, 1.0, 10**6, {"multiple": 100}, 7000),
        (10_000, 0.0, 10**6, {}, 8192),  # nothing measured: the cap
    ],
)
def test_batch_for_memory_is_the_largest_multiple_that_fits_the_headroom(free, per_example, n, kwargs, expected):
    assert batch_for_memory(free, per_example, n, **kwargs) == expected


@pytest.mark.parametrize("kwargs", [{"multiple": 0}, {"cap": 32}, {"headroom": 0.0}, {"headroom": 1.5}])
def test_batch_for_memory_refuses_inconsistent_arguments(kwargs):
    with pytest.raises(ValueError):
        batch_for_memory(10_000, 1.0, 100, **kwargs)


def test_resolve_eval_batch_on_cpu_is_256_for_auto_and_the_integer_otherwise():
    model = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    assert resolve_eval_batch(model, x[:5], y[:5], len(y), "auto", None) == CPU_EVAL_BATCH == 256
    assert resolve_eval_batch(model, x[:5], y[:5], len(y), 37, None) == 37
    assert resolve_eval_batch(model, x[:5], y[:5], len(y), 10**6, torch.bfloat16) == 10**6


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("banana", "batch size 'banana': use a positive integer or auto"),
        ("Auto", "batch size 'Auto': use a positive integer or auto"),
        (True, "batch size True: use a positive integer or auto"),
        (0, "batch size must be >= 1, got 0"),
    ],
)
def test_resolve_eval_batch_refuses_anything_else_in_one_line(setting, message):
    _, _, x, y = digits_tensors()
    with pytest.raises(UserError) as info:
        resolve_eval_batch(trained_digits_cnn(), x[:5], y[:5], len(y), setting, None)
    assert str(info.value) == message


class _OutOfMemoryAbove(nn.Module):
    """A linear classifier that raises CUDA's out-of-memory error for batches above `limit` images.

    No GPU runs in CI, so this is how a test gets the exact exception type torch raises when a CUDA allocation
    fails; everything else about the evaluation is real.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        torch.manual_seed(0)
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.linear(x.flatten(1))


def test_evaluate_turns_out_of_memory_into_one_line_naming_half_the_batch():
    _, _, x, y = digits_tensors()
    x, y = x[:100], y[:100]
    specs = attack_specs(["clean", "pgd"], [0.1], steps=2)
    model = _OutOfMemoryAbove(limit=50)
    for batch in (100, 256):  # 256 > 100 images: the batch that ran held 100
        with pytest.raises(UserError) as info:
            evaluate_attacks(model, x, y, specs, batch_size=batch)
        assert str(info.value) == "evaluation ran out of GPU memory at batch size 100: pass --batch-size 50"
    results = evaluate_attacks(model, x, y, specs, batch_size=50)  # what the message says works
    assert [len(r.correct) for r in results] == [100, 100]
    with pytest.raises(UserError, match=r"^evaluation ran out of GPU memory at batch size 1: .*--device cpu$"):
        evaluate_attacks(_OutOfMemoryAbove(limit=0), x, y, specs, batch_size=1)


def test_config_takes_an_integer_or_auto_for_eval_batch_size():
    assert load_config(None).eval.batch_size == "auto"
    assert load_config(None, ["eval.batch_size=512"]).eval.batch_size == 512
    for value, message in [
        ("banana", "eval.batch_size: 'banana' is not allowed: choose one of auto"),
        ("0", "eval.batch_size must be >= 1, got 0"),
        ("1.5", "eval.batch_size: expected an integer, got 1.5"),
    ]:
        with pytest.raises(UserError) as info:
            load_config(None, [f"eval.batch_size={value}"])
        assert str(info.value) == message


def _weights(folder: Path) -> Path:
    """The shared digits CNN as a weights file with its sidecar, as `advtrain train` writes it."""
    path = folder / "cnn.safetensors"
    save_weights(path, trained_digits_cnn().state_dict(), {"model": ModelSpec("small_cnn", 10, 1, 8).to_dict()})
    return path


def _eval(weights: Path, out: Path, *flags: str) -> int:
    return main(["eval", "--weights", str(weights), "--data", "digits", "--n", "40", "--steps", "2",
                 "--device", "cpu", "--out", str(out), *flags])


def test_cli_eval_auto_is_the_default_and_records_256_on_cpu(tmp_path, capsys):
    weights = _weights(tmp_path)
    assert _eval(weights, tmp_path / "auto.json", "--attacks", "clean,pgd", "--batch-size", "auto") == 0
    auto = json.loads((tmp_path / "auto.json").read_text())
    assert auto["batch_size"] == 256
    assert _eval(weights, tmp_path / "default.json", "--attacks", "clean,pgd") == 0
    default = json.loads((tmp_path / "default.json").read_text())
    assert default["batch_size"] == 256 and default["results"] == auto["results"]
    assert _eval(weights, tmp_path / "seven.json", "--attacks", "clean", "--batch-size", "7") == 0
    assert json.loads((tmp_path / "seven.json").read_text())["batch_size"] == 7
    # An analysis next to the attacks runs on the same resolved batch, figures included.
    assert _eval(weights, tmp_path / "gini.json", "--attacks", "clean,gini") == 0
    assert json.loads((tmp_path / "gini.json").read_text())["batch_size"] == 256
    assert (tmp_path / "gini-figures" / "saliency.png").is_file()


@pytest.mark.parametrize("value", ["banana", "", "2.5"])
def test_cli_eval_refuses_a_bad_batch_size_in_one_line(tmp_path, capsys, value):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        _eval(tmp_path / "never_read.safetensors", tmp_path / "eval.json", "--batch-size", value)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"argument --batch-size: expected a positive integer or auto, got {value!r}" in err
    assert not (tmp_path / "eval.json").exists()


def test_cli_eval_refuses_batch_size_zero_in_one_line(tmp_path, capsys):
    capsys.readouterr()
    assert _eval(_weights(tmp_path), tmp_path / "eval.json", "--batch-size", "0") == 2
    err = capsys.readouterr().err
    assert err == "advtrain: error: --batch-size must be >= 1, got 0\n"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_auto_on_cuda_sizes_the_batch_and_matches_that_batch_given_explicitly(tmp_path, precision):
    loaded, data = load_for_eval(run_dir=None, weights=_weights(tmp_path), model_name=None, data_name="digits",
                                 data_root=None)
    settings = EvalSettings(attacks=("clean", "pgd"), eps=(0.1,), steps=5, device="cuda", precision=precision)
    auto, _ = evaluate_loaded(loaded, data, settings)
    n = len(data.y_test)
    # Digits has 360 test images, far fewer than fit an H200-class GPU: the batch is all of them.
    assert auto["batch_size"] >= min(64, n) and auto["batch_size"] <= n
    assert auto["batch_size"] % 64 == 0 or auto["batch_size"] == n
    explicit, _ = evaluate_loaded(loaded, data, replace(settings, batch_size=auto["batch_size"]))
    assert explicit["results"] == auto["results"] and explicit["batch_size"] == auto["batch_size"]
